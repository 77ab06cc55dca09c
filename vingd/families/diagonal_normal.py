"""Mean-field Gaussian: independent normals over every element of an array."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from vingd.families.base import ExponentialFamily


class DiagonalNormalNatural(NamedTuple):
    """θ = (m/σ², −1/(2σ²)), elementwise."""

    eta1: jax.Array
    eta2: jax.Array


class DiagonalNormalMean(NamedTuple):
    """μ = E[(z, z²)] = (m, m² + σ²), elementwise."""

    mu1: jax.Array
    mu2: jax.Array


class DiagonalNormal(ExponentialFamily):
    """N(m, diag σ²) with T(z) = (z, z²); the event is the whole parameter array.

    A(θ) = Σ −η₁²/(4η₂) − ½ log(−2η₂) + ½ log 2π.
    """

    natural_type = DiagonalNormalNatural
    mean_type = DiagonalNormalMean

    def log_partition(self, natural):
        eta1, eta2 = natural
        return jnp.sum(
            -(eta1**2) / (4 * eta2) - 0.5 * jnp.log(-2 * eta2) + 0.5 * math.log(2 * math.pi)
        )

    def sufficient_statistics(self, x):
        return DiagonalNormalMean(x, x**2)

    def natural_to_mean(self, natural):
        loc, scale = self.loc_scale(natural)
        return DiagonalNormalMean(loc, loc**2 + scale**2)

    def entropy(self, natural):
        """Σ ½ log(2πe σ²): the closed form, free of A(θ) − ⟨θ, μ⟩'s cancellation."""
        return jnp.sum(0.5 * (math.log(2 * math.pi) + 1) - 0.5 * jnp.log(-2 * natural.eta2))

    def mean_to_natural(self, mean):
        var = mean.mu2 - mean.mu1**2
        return DiagonalNormalNatural(mean.mu1 / var, -0.5 / var)

    def sample(self, rng_key, natural, sample_shape=()):
        loc, scale = self.loc_scale(natural)
        eps = jax.random.normal(rng_key, tuple(sample_shape) + jnp.shape(loc), jnp.result_type(loc))
        return loc + scale * eps

    def is_valid(self, natural):
        finite = jnp.all(jnp.isfinite(natural.eta1)) & jnp.all(jnp.isfinite(natural.eta2))
        return finite & jnp.all(natural.eta2 < 0)

    def to_numpyro(self, natural):
        loc, scale = self.loc_scale(natural)
        return dist.Normal(loc, scale).to_event(jnp.ndim(loc))

    def corrected_step(self, natural, direction, step_size):
        """iBLR (Lin, Schmidt & Khan 2020, eq. 9): S' = S + ρG + ½ρ²G²/S, m' = m + ρS'⁻¹ĝ.

        With S = −2η₂ the precision, G = −2·direction₂ its change and ĝ = direction₁ − G·m the
        expected gradient; S' > 0 for any G. Equal to the plain step up to O(ρ²).
        """
        loc, _ = self.loc_scale(natural)
        precision = -2 * natural.eta2
        g = -2 * direction.eta2
        new_precision = precision + step_size * g + 0.5 * step_size**2 * g**2 / precision
        grad = direction.eta1 - g * loc
        return DiagonalNormalNatural(new_precision * loc + step_size * grad, -0.5 * new_precision)

    def loc(self, natural):
        """m = η₁ / (−2η₂)."""
        return natural.eta1 / (-2 * natural.eta2)

    @staticmethod
    def loc_scale(natural):
        """(m, σ) from θ."""
        precision = -2 * natural.eta2
        return natural.eta1 / precision, jax.lax.rsqrt(precision)

    def marginals(self, natural):
        """(means, variances) of q's coordinates."""
        return self.loc(natural), 1 / (-2 * natural.eta2)

    def average(self, stacked, weights):
        """Polyak average of the iterates `stacked` (along a leading axis) with `weights`: the
        mean Σwₜmₜ and the precision ΣwₜΛₜ, apart. The average of θ = (Λm, −½Λ) itself weights
        each mean by its precision, biased where the curvature moves with the chain (eight
        schools, whose precisions grow with τ: 0.116 sd from the family's optimum against
        0.062 averaged apart, median of 10 fits to `mcse=0.005`)."""
        loc = jnp.tensordot(weights, self.loc(stacked), axes=1)
        precision = jnp.tensordot(weights, -2 * stacked.eta2, axes=1)
        return DiagonalNormalNatural(precision * loc, -0.5 * precision)

    @staticmethod
    def from_loc_scale(loc, scale):
        """θ from (m, σ)."""
        precision = 1 / scale**2
        return DiagonalNormalNatural(loc * precision, -0.5 * precision)
