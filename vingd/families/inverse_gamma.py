"""Inverse-gamma on the positive reals: T(x) = (log x, 1/x)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily
from vingd.families.digamma import gamma_shape
from vingd.families.gamma import Gamma, GammaMean

_GAMMA = Gamma()


class InverseGammaNatural(NamedTuple):
    """θ = (−α − 1, −β), elementwise (shape α, scale β)."""

    eta1: jax.Array
    eta2: jax.Array


class InverseGammaMean(NamedTuple):
    """μ = E[(log x, 1/x)] = (log β − ψ(α), α/β), elementwise."""

    mu1: jax.Array
    mu2: jax.Array


class InverseGamma(ExponentialFamily):
    """x with 1/x ~ Gamma(α, β), over every element of an array: A(θ) = Σ log Γ(α) − α log β.

    μ → θ: log μ₂ + μ₁ = log α − ψ(α) gives α (`gamma_shape`), then β = α/μ₂.
    """

    natural_type = InverseGammaNatural
    mean_type = InverseGammaMean
    support = constraints.positive

    def log_partition(self, natural):
        shape, scale = self.shape_scale(natural)
        return jnp.sum(gammaln(shape) - shape * jnp.log(scale))

    def sufficient_statistics(self, x):
        return InverseGammaMean(jnp.log(x), 1 / x)

    def natural_to_mean(self, natural):
        shape, scale = self.shape_scale(natural)
        return InverseGammaMean(jnp.log(scale) - digamma(shape), shape / scale)

    def mean_to_natural(self, mean):
        shape = gamma_shape(jnp.log(mean.mu2) + mean.mu1)
        return self.from_shape_scale(shape, shape / mean.mu2)

    def sample(self, rng_key, natural, sample_shape=()):
        return self.elementwise(natural).sample(rng_key, tuple(sample_shape))

    def is_valid(self, natural):
        finite = jnp.all(jnp.isfinite(natural.eta1)) & jnp.all(jnp.isfinite(natural.eta2))
        return finite & jnp.all(natural.eta1 < -1) & jnp.all(natural.eta2 < 0)

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.eta1))

    def elementwise(self, natural):
        """numpyro's InverseGamma with one batch element per array element."""
        return dist.InverseGamma(*self.shape_scale(natural))

    def atoms(self, mean):
        """1/y± for the Gamma atoms y± of 1/x (E[log y] = −μ₁, E[y] = μ₂)."""
        points, weights = _GAMMA.atoms(GammaMean(-mean.mu1, mean.mu2))
        return 1 / points, weights

    def icdf(self, natural, q):
        """Elementwise quantiles: 1/y for the Gamma(α, β) quantile y at 1 − q."""
        shape, scale = self.shape_scale(natural)
        return 1 / _GAMMA.icdf(_GAMMA.from_shape_rate(shape, scale), 1 - q)

    def initial(self, value, scale):
        """θ with mean `value` and coefficient of variation ≈ `scale` (α = 2 + 1/scale²)."""
        shape = jnp.full_like(value, 2 + 1 / scale**2)
        return self.from_shape_scale(shape, value * (shape - 1))

    @staticmethod
    def shape_scale(natural):
        """(α, β) from θ."""
        return -natural.eta1 - 1, -natural.eta2

    @staticmethod
    def from_shape_scale(shape, scale):
        """θ from (α, β)."""
        return InverseGammaNatural(-shape - 1, -scale)
