"""Dirichlet on the simplex (last axis): T(x) = log x."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln, logsumexp
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily
from vingd.families.digamma import dirichlet_concentration


class DirichletNatural(NamedTuple):
    """θ = α − 1 (last axis: the simplex)."""

    eta: jax.Array


class DirichletMean(NamedTuple):
    """μ = E[log x] = ψ(α) − ψ(α₀), α₀ = Σ_k α_k."""

    mu: jax.Array


def simplex_atoms(mean_log: jax.Array) -> jax.Array:
    """Two points x⁽¹⁾, x⁽²⁾ of the simplex (last axis) with ½(log x⁽¹⁾ + log x⁽²⁾) = `mean_log`.

    With g = exp μ (Σg < 1 by Jensen) split into the first ⌊K/2⌋ coordinates (A) and the rest
    (B), take x⁽¹⁾ = g·r, x⁽²⁾ = g/r with r = a on A and b on B. Both sum to one iff
    G_A a + G_B b = 1 and G_A/a + G_B/b = 1, i.e. G_A a² − (1 + G_A² − G_B²) a + G_A = 0: the
    smaller root a = 2G_A / (c + √D), c = 1 + G_A² − G_B², D = c² − 4G_A² =
    (1 − G_A − G_B)(1 − G_A + G_B)(1 + G_A − G_B)(1 + G_A + G_B) > 0, and b = (1 − G_A a)/G_B > 0.
    Returns shape (2, ..., K).
    """
    half = mean_log.shape[-1] // 2
    log_ga = logsumexp(mean_log[..., :half], axis=-1)
    log_gb = logsumexp(mean_log[..., half:], axis=-1)
    ga, gb = jnp.exp(log_ga), jnp.exp(log_gb)
    one_minus_g = -jnp.expm1(jnp.logaddexp(log_ga, log_gb))
    d = one_minus_g * (1 - ga + gb) * (1 + ga - gb) * (1 + ga + gb)
    log_a = jnp.log(2.0) + log_ga - jnp.log(1 + ga**2 - gb**2 + jnp.sqrt(d))
    log_b = jnp.log1p(-jnp.exp(log_ga + log_a)) - log_gb
    k = jnp.arange(mean_log.shape[-1])
    log_r = jnp.where(k < half, log_a[..., None], log_b[..., None])
    return jnp.exp(jnp.stack([mean_log + log_r, mean_log - log_r]))


class Dirichlet(ExponentialFamily):
    """Dirichlet(α) over the last axis, independent over the leading ones.

    A(θ) = Σ_batch [Σ_k log Γ(α_k) − log Γ(α₀)]. μ → θ solves ψ(α_k) − ψ(α₀) = μ_k
    (`dirichlet_concentration`). Draws are implicitly reparameterised (numpyro's Dirichlet).
    """

    natural_type = DirichletNatural
    mean_type = DirichletMean
    support = constraints.simplex

    def log_partition(self, natural):
        alpha = natural.eta + 1
        return jnp.sum(gammaln(alpha)) - jnp.sum(gammaln(jnp.sum(alpha, -1)))

    def sufficient_statistics(self, x):
        return DirichletMean(jnp.log(x))

    def natural_to_mean(self, natural):
        alpha = natural.eta + 1
        return DirichletMean(digamma(alpha) - digamma(jnp.sum(alpha, -1, keepdims=True)))

    def mean_to_natural(self, mean):
        return DirichletNatural(dirichlet_concentration(mean.mu) - 1)

    def sample(self, rng_key, natural, sample_shape=()):
        return self.elementwise(natural).sample(rng_key, tuple(sample_shape))

    def is_valid(self, natural):
        return jnp.all(jnp.isfinite(natural.eta)) & jnp.all(natural.eta > -1)

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.eta) - 1)

    def elementwise(self, natural):
        """numpyro's Dirichlet with batch shape = the leading axes."""
        return dist.Dirichlet(natural.eta + 1)

    def atoms(self, mean):
        """Two equally weighted simplex points with E[log x] = μ (`simplex_atoms`)."""
        points = simplex_atoms(mean.mu)
        return points, jnp.full(2, 0.5, points.dtype)

    def initial(self, value, scale):
        """θ with mean `value` and Var[log x_k] ≈ scale² for the smallest x_k (α ≥ 1/scale²)."""
        concentration = 1 / (scale**2 * jnp.min(value, -1, keepdims=True))
        return DirichletNatural(concentration * value - 1)
