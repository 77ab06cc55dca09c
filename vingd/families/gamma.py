"""Gamma on the positive reals: T(x) = (log x, x)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily
from vingd.families.digamma import gamma_shape
from vingd.families.quantiles import gamma_icdf


class GammaNatural(NamedTuple):
    """θ = (α − 1, −β), elementwise (shape α, rate β)."""

    eta1: jax.Array
    eta2: jax.Array


class GammaMean(NamedTuple):
    """μ = E[(log x, x)] = (ψ(α) − log β, α/β), elementwise."""

    mu1: jax.Array
    mu2: jax.Array


class Gamma(ExponentialFamily):
    """Gamma(α, β) over every element of an array: A(θ) = Σ log Γ(α) − α log β.

    μ → θ: log μ₂ − μ₁ = log α − ψ(α) gives α (`gamma_shape`, Minka 2002), then β = α/μ₂.
    Draws are implicitly reparameterised (numpyro's Gamma sampler).
    """

    natural_type = GammaNatural
    mean_type = GammaMean
    support = constraints.positive

    def log_partition(self, natural):
        shape, rate = self.shape_rate(natural)
        return jnp.sum(gammaln(shape) - shape * jnp.log(rate))

    def sufficient_statistics(self, x):
        return GammaMean(jnp.log(x), x)

    def natural_to_mean(self, natural):
        shape, rate = self.shape_rate(natural)
        return GammaMean(digamma(shape) - jnp.log(rate), shape / rate)

    def mean_to_natural(self, mean):
        shape = gamma_shape(jnp.log(mean.mu2) - mean.mu1)
        return self.from_shape_rate(shape, shape / mean.mu2)

    def sample(self, rng_key, natural, sample_shape=()):
        return self.elementwise(natural).sample(rng_key, tuple(sample_shape))

    def is_valid(self, natural):
        finite = jnp.all(jnp.isfinite(natural.eta1)) & jnp.all(jnp.isfinite(natural.eta2))
        return finite & jnp.all(natural.eta1 > -1) & jnp.all(natural.eta2 < 0)

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.eta1))

    def elementwise(self, natural):
        """numpyro's Gamma with one batch element per array element."""
        return dist.Gamma(*self.shape_rate(natural))

    def atoms(self, mean):
        """Two equally weighted points x± with E[T] = μ: exact E_q[f] for f affine in T.

        ½(x₊ + x₋) = μ₂ and ½(log x₊ + log x₋) = μ₁: x± are the roots of x² − 2μ₂x + e^{2μ₁}
        (real since e^{μ₁} < μ₂ by Jensen), x₋ = e^{2μ₁}/x₊ for accuracy.
        """
        geometric = jnp.exp(mean.mu1)
        upper = mean.mu2 + jnp.sqrt((mean.mu2 - geometric) * (mean.mu2 + geometric))
        lower = jnp.exp(2 * mean.mu1 - jnp.log(upper))
        return jnp.stack([lower, upper]), jnp.full(2, 0.5, upper.dtype)

    def icdf(self, natural, q):
        """Elementwise quantiles: x with P(X ≤ x) = q (bisection on the CDF, `gamma_icdf`)."""
        shape, rate = self.shape_rate(natural)
        return gamma_icdf(shape, q) / rate

    def initial(self, value, scale):
        """θ with mean `value` and coefficient of variation `scale` (α = 1/scale²)."""
        shape = jnp.full_like(value, 1 / scale**2)
        return self.from_shape_rate(shape, shape / value)

    @staticmethod
    def shape_rate(natural):
        """(α, β) from θ."""
        return natural.eta1 + 1, -natural.eta2

    @staticmethod
    def from_shape_rate(shape, rate):
        """θ from (α, β)."""
        return GammaNatural(shape - 1, -rate)
