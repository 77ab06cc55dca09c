"""Full-covariance Gaussian in natural parameters, computed through the Cholesky factor of Λ."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpyro.distributions as dist
from numpyro.distributions.util import cholesky_of_inverse

from vingd.families.base import ExponentialFamily


class MultivariateNormalNatural(NamedTuple):
    """θ = (Λm, −½Λ) with Λ the precision; only the symmetric part of `eta2` is used."""

    eta1: jax.Array
    eta2: jax.Array


class MultivariateNormalMean(NamedTuple):
    """μ = E[(z, zzᵀ)] = (m, Σ + mmᵀ)."""

    mu1: jax.Array
    mu2: jax.Array


def _symmetric(a):
    # (the array's own method: NumPy's on the host, where a jnp operation would compile)
    return 0.5 * (a + a.swapaxes(-1, -2))


class MultivariateNormal(ExponentialFamily):
    """N(m, Λ⁻¹) over a vector, T(z) = (z, zzᵀ).

    With Λ = −2 sym(η₂) = LLᵀ: A(θ) = ½ η₁ᵀ Λ⁻¹ η₁ − Σ log Lᵢᵢ + (d/2) log 2π. Because
    ⟨η₂, zzᵀ⟩ = ⟨sym η₂, zzᵀ⟩, A is the exact log partition for any square η₂, so ∇²A = Cov[T]
    holds entrywise. No inverse is ever formed: solves go through L.
    """

    natural_type = MultivariateNormalNatural
    mean_type = MultivariateNormalMean

    def log_partition(self, natural):
        chol = self.precision_cholesky(natural)
        loc = jsl.cho_solve((chol, True), natural.eta1)
        dim = natural.eta1.shape[-1]
        return (
            0.5 * jnp.dot(natural.eta1, loc)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            + 0.5 * dim * math.log(2 * math.pi)
        )

    def sufficient_statistics(self, x):
        return MultivariateNormalMean(x, jnp.outer(x, x))

    def natural_to_mean(self, natural):
        chol = self.precision_cholesky(natural)
        loc = jsl.cho_solve((chol, True), natural.eta1)
        cov = jsl.cho_solve((chol, True), jnp.eye(loc.shape[-1], dtype=loc.dtype))
        return MultivariateNormalMean(loc, cov + jnp.outer(loc, loc))

    def entropy(self, natural):
        """(d/2) log(2πe) − Σ log Lᵢᵢ: the closed form, free of A(θ) − ⟨θ, μ⟩'s cancellation."""
        dim = natural.eta1.shape[-1]
        log_det = jnp.sum(jnp.log(jnp.diagonal(self.precision_cholesky(natural))))
        return 0.5 * dim * (math.log(2 * math.pi) + 1) - log_det

    def mean_to_natural(self, mean):
        cov = _symmetric(mean.mu2) - jnp.outer(mean.mu1, mean.mu1)
        cov_chol = (jnp.linalg.cholesky(cov), True)
        precision = jsl.cho_solve(cov_chol, jnp.eye(cov.shape[-1], dtype=cov.dtype))
        return MultivariateNormalNatural(
            jsl.cho_solve(cov_chol, mean.mu1), -0.5 * _symmetric(precision)
        )

    def sample(self, rng_key, natural, sample_shape=()):
        chol = self.precision_cholesky(natural)
        loc = jsl.cho_solve((chol, True), natural.eta1)
        eps = jax.random.normal(rng_key, tuple(sample_shape) + loc.shape, loc.dtype)
        # z = m + L⁻ᵀε has covariance L⁻ᵀL⁻¹ = Λ⁻¹.
        return loc + jsl.solve_triangular(chol.T, eps[..., None], lower=False)[..., 0]

    def is_valid(self, natural):
        chol = self.precision_cholesky(natural)
        finite = jnp.all(jnp.isfinite(natural.eta1)) & jnp.all(jnp.isfinite(chol))
        return finite & jnp.all(jnp.diagonal(chol) > 0)

    def to_numpyro(self, natural):
        """numpyro's `MultivariateNormal`, given its `scale_tril` (what it computes from a
        `precision_matrix` too): its check of a precision by eigenvalues refuses one that this
        family's Cholesky test accepts, at rounding level (a non-identified posterior's)."""
        scale_tril = cholesky_of_inverse(self.precision(natural))
        return dist.MultivariateNormal(self.loc(natural), scale_tril=scale_tril)

    def corrected_step(self, natural, direction, step_size):
        """iBLR (Lin, Schmidt & Khan 2020, eq. 9): S' = S + ρG + ½ρ²GS⁻¹G, m' = m + ρS'⁻¹ĝ.

        With S = Λ, G = −2 sym(direction₂) and ĝ = direction₁ − G·m the expected gradient;
        S' = ½S + ½(S + ρG)S⁻¹(S + ρG) ≻ 0 for any G. Equal to the plain step up to O(ρ²).
        """
        precision = self.precision(natural)
        chol = (jnp.linalg.cholesky(precision), True)
        loc = jsl.cho_solve(chol, natural.eta1)
        g = -2 * _symmetric(direction.eta2)
        new_precision = _symmetric(
            precision + step_size * g + 0.5 * step_size**2 * g @ jsl.cho_solve(chol, g)
        )
        grad = direction.eta1 - g @ loc
        return MultivariateNormalNatural(
            new_precision @ loc + step_size * grad, -0.5 * new_precision
        )

    @staticmethod
    def precision(natural):
        """Λ = −2 sym(η₂)."""
        return -2 * _symmetric(natural.eta2)

    def precision_cholesky(self, natural):
        """Lower L with LLᵀ = Λ (NaN where Λ is not positive definite)."""
        return jnp.linalg.cholesky(self.precision(natural))

    def loc(self, natural):
        """m = Λ⁻¹η₁."""
        return jsl.cho_solve((self.precision_cholesky(natural), True), natural.eta1)

    def marginals(self, natural):
        """(m, diag Λ⁻¹): diag Λ⁻¹ is the column sums of squares of L⁻¹, for LLᵀ = Λ."""
        chol = self.precision_cholesky(natural)
        inverse = jsl.solve_triangular(chol, jnp.eye(chol.shape[-1], dtype=chol.dtype), lower=True)
        return jsl.cho_solve((chol, True), natural.eta1), jnp.sum(inverse**2, axis=0)

    @staticmethod
    def from_loc_precision(loc, precision):
        """θ from (m, Λ)."""
        return MultivariateNormalNatural(precision @ loc, -0.5 * precision)
