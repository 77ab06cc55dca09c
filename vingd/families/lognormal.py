"""Log-normal on the positive reals: T(x) = (log x, (log x)²)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily
from vingd.families.diagonal_normal import DiagonalNormal, DiagonalNormalMean, DiagonalNormalNatural

_NORMAL = DiagonalNormal()


class LogNormalNatural(NamedTuple):
    """θ = (m/s² − 1, −1/(2s²)), elementwise: the Gaussian's θ of log x with the 1/x folded in."""

    eta1: jax.Array
    eta2: jax.Array


class LogNormalMean(NamedTuple):
    """μ = E[(log x, (log x)²)] = (m, m² + s²), elementwise."""

    mu1: jax.Array
    mu2: jax.Array


class LogNormal(ExponentialFamily):
    """log x ~ N(m, s²) over every element of an array.

    The density (1/x) N(log x; m, s²) = exp(⟨θ, T(x)⟩ − A(θ)) with base measure h ≡ 1 once 1/x =
    e^{−log x} is folded into θ₁, so A(θ) = A_N(θ₁ + 1, θ₂) with A_N the Gaussian's, and μ is
    the Gaussian's mean parameter of log x.
    """

    natural_type = LogNormalNatural
    mean_type = LogNormalMean
    support = constraints.positive

    def log_partition(self, natural):
        return _NORMAL.log_partition(self._normal(natural))

    def sufficient_statistics(self, x):
        return LogNormalMean(jnp.log(x), jnp.log(x) ** 2)

    def natural_to_mean(self, natural):
        return LogNormalMean(*_NORMAL.natural_to_mean(self._normal(natural)))

    def mean_to_natural(self, mean):
        normal = _NORMAL.mean_to_natural(DiagonalNormalMean(*mean))
        return LogNormalNatural(normal.eta1 - 1, normal.eta2)

    def sample(self, rng_key, natural, sample_shape=()):
        return jnp.exp(_NORMAL.sample(rng_key, self._normal(natural), sample_shape))

    def is_valid(self, natural):
        return _NORMAL.is_valid(self._normal(natural))

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.eta1))

    def elementwise(self, natural):
        """numpyro's LogNormal with one batch element per array element."""
        return dist.LogNormal(*_NORMAL.loc_scale(self._normal(natural)))

    def atoms(self, mean):
        """exp(m ± s): two equally weighted points with E[T] = μ."""
        loc = mean.mu1
        scale = jnp.sqrt(mean.mu2 - loc**2)
        return jnp.exp(jnp.stack([loc - scale, loc + scale])), jnp.full(2, 0.5, loc.dtype)

    def initial(self, value, scale):
        """θ with median `value` and log-scale sd `scale`."""
        normal = _NORMAL.from_loc_scale(jnp.log(value), jnp.full_like(value, scale))
        return LogNormalNatural(normal.eta1 - 1, normal.eta2)

    @staticmethod
    def _normal(natural):
        return DiagonalNormalNatural(natural.eta1 + 1, natural.eta2)
