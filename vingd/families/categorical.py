"""Categorical over one-hot vectors (last axis): T(x) = x."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from vingd.families.base import ExponentialFamily


class CategoricalNatural(NamedTuple):
    """θ = logits (last axis: the K categories; defined up to an additive constant)."""

    logits: jax.Array


class CategoricalMean(NamedTuple):
    """μ = E[x] = p = softmax(θ) (last axis)."""

    probs: jax.Array


class Categorical(ExponentialFamily):
    """Categorical(p) with the sample space of one-hot vectors x ∈ {e₁, …, e_K}, so T(x) = x.

    A(θ) = Σ_batch log Σ_k e^{θ_k}. The parametrisation is the overcomplete one (logits): θ and
    θ + c·1 are the same distribution, F = diag p − ppᵀ is singular along 1, and
    `mean_to_natural(μ) = log μ` is the representative with A = 0. The natural gradient through
    it is unique up to that constant, which no update can feel. `to_numpyro` is numpyro's
    Categorical over the index of the one-hot vector (the same law under x ↦ argmax x).
    """

    natural_type = CategoricalNatural
    mean_type = CategoricalMean

    def log_partition(self, natural):
        return jnp.sum(jax.nn.logsumexp(natural.logits, -1))

    def sufficient_statistics(self, x):
        return CategoricalMean(jnp.asarray(x, jnp.result_type(float)))

    def natural_to_mean(self, natural):
        return CategoricalMean(jax.nn.softmax(natural.logits, -1))

    def mean_to_natural(self, mean):
        return CategoricalNatural(jnp.log(mean.probs))

    def natural_gradient(self, natural, grad_natural):
        """∇_θ/p: the base's VJP through θ(μ) = log μ in closed form, 0 where p underflows.

        (∇_θ L = p ⊙ (∇_p L − ⟨p, ∇_p L⟩), so this is ∇_p L up to a constant; where p_k = 0
        ∇_θₖ L carries no information and that logit is left alone.)
        """
        probs = jax.nn.softmax(natural.logits, -1)
        safe = jnp.where(probs > 0, probs, 1.0)
        return CategoricalNatural(jnp.where(probs > 0, grad_natural[0] / safe, 0.0))

    def sample(self, rng_key, natural, sample_shape=()):
        """One-hot draws of shape `sample_shape + θ.shape`."""
        index = self.elementwise(natural).sample(rng_key, tuple(sample_shape))
        num_categories = natural.logits.shape[-1]
        return jax.nn.one_hot(index, num_categories, dtype=jnp.result_type(natural.logits))

    def is_valid(self, natural):
        return jnp.all(jnp.isfinite(natural.logits))

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.logits) - 1)

    def elementwise(self, natural):
        """numpyro's Categorical over indices, batch shape = the leading axes."""
        return dist.CategoricalLogits(natural.logits)

    def atoms(self, mean):
        """The whole support e₁, …, e_K with weights p_k, per element: q itself.

        Returns one-hot values of shape (K, ..., K) and weights of shape (K, ...).
        """
        probs = mean.probs
        num_categories = probs.shape[-1]
        eye = jnp.eye(num_categories, dtype=probs.dtype)
        values = jnp.broadcast_to(
            eye.reshape((num_categories,) + (1,) * (probs.ndim - 1) + (num_categories,)),
            (num_categories, *probs.shape),
        )
        return values, jnp.moveaxis(probs, -1, 0)

    def initial(self, value, scale):
        """The uniform distribution (θ = 0) over the K categories of one-hot `value`."""
        return CategoricalNatural(jnp.zeros(jnp.shape(value), jnp.result_type(float)))
