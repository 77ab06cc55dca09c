"""Bernoulli on {0, 1}: T(x) = x."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily


class BernoulliNatural(NamedTuple):
    """θ = log(p/(1 − p)), elementwise."""

    logits: jax.Array


class BernoulliMean(NamedTuple):
    """μ = E[x] = p, elementwise."""

    probs: jax.Array


class Bernoulli(ExponentialFamily):
    """Bernoulli(p) over every element of an array: A(θ) = Σ log(1 + e^θ).

    Draws are not reparameterisable; expectations over a Bernoulli factor are exact sums over
    {0, 1} (`atoms`) or score-function estimates.
    """

    natural_type = BernoulliNatural
    mean_type = BernoulliMean
    support = constraints.boolean

    def log_partition(self, natural):
        return jnp.sum(jax.nn.softplus(natural.logits))

    def sufficient_statistics(self, x):
        return BernoulliMean(jnp.asarray(x, jnp.result_type(float)))

    def natural_to_mean(self, natural):
        return BernoulliMean(jax.nn.sigmoid(natural.logits))

    def mean_to_natural(self, mean):
        return BernoulliNatural(jnp.log(mean.probs) - jnp.log1p(-mean.probs))

    def natural_gradient(self, natural, grad_natural):
        """∇_θ/(p(1 − p)): the base's VJP through θ(μ) in closed form, 0 where F underflows."""
        p = jax.nn.sigmoid(natural.logits)
        fisher = p * (1 - p)
        safe = jnp.where(fisher > 0, fisher, 1.0)
        return BernoulliNatural(jnp.where(fisher > 0, grad_natural[0] / safe, 0.0))

    def sample(self, rng_key, natural, sample_shape=()):
        shape = tuple(sample_shape) + jnp.shape(natural.logits)
        draws = jax.random.bernoulli(rng_key, jax.nn.sigmoid(natural.logits), shape)
        return draws.astype(jnp.result_type(natural.logits))

    def is_valid(self, natural):
        return jnp.all(jnp.isfinite(natural.logits))

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.logits))

    def elementwise(self, natural):
        """numpyro's Bernoulli with one batch element per array element."""
        return dist.BernoulliLogits(natural.logits)

    def atoms(self, mean):
        """The whole support {0, 1} with weights (1 − p, p), per element: q itself."""
        p = mean.probs
        return jnp.stack([jnp.zeros_like(p), jnp.ones_like(p)]), jnp.stack([1 - p, p])

    def initial(self, value, scale):
        """The uniform distribution (θ = 0): discrete factors start at maximum entropy."""
        return BernoulliNatural(jnp.zeros(jnp.shape(value), jnp.result_type(float)))
