"""Gaussian with low-rank-plus-diagonal precision, updated by SLANG's projected natural gradient.

q(z) = N(m, Λ⁻¹) with Λ = UUᵀ + diag(D), U: d×k, D > 0. Not an exponential family in (m, U, D)
(a curved one), so it has its own step instead of θ ← θ + ρ∇_μ: the full-covariance VON step,
with E[∇²f] ≈ BWBᵀ + diag(c) from an estimator (p columns: Stein draws, signed gradients),

    Λ_full = (1−ρ)Λ + ρ E[−∇²f],      m' = m + ρ Λ'⁻¹ E[∇f],

projected back to rank k (SLANG; Mishkin et al. 2018, "SLANG: Fast Structured Covariance
Approximations for Bayesian Deep Learning with Natural Gradient", NeurIPS): with
M = (1−ρ)UUᵀ − ρBWBᵀ of rank ≤ k + p, U'U'ᵀ is M's best positive rank-k part and
D' = (1−ρ)D − ρc + diag(M − U'U'ᵀ), so diag(Λ') = diag(Λ_full) exactly. Everything is O(d(k+p)²):
Λ⁻¹ by Woodbury through the Cholesky factor of the k×k capacitance C = I + UᵀD⁻¹U, never a d×d
matrix (unless the curvature itself is dense, as with exact Hessians).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vingd.families.base import Stateless, one_parameter
from vingd.optim import StepInfo


@one_parameter
class LowRankNormalParams(NamedTuple):
    """(m, U, D): the mean and the precision's factors, Λ = UUᵀ + diag(D)."""

    loc: jax.Array  # (d,)
    factor: jax.Array  # (d, k)
    diag: jax.Array  # (d,), > 0


class LowRankCurvature(NamedTuple):
    """What an estimator hands the step: E[∇f], and E[∇²f] ≈ B W Bᵀ + diag(c) factored."""

    grad: jax.Array  # (d,)
    basis: jax.Array  # B, (d, p)
    weights: jax.Array  # W, (p, p), symmetric
    diag: jax.Array  # c, (d,): curvature known to be diagonal (e.g. independent priors)


def _capacitance_cholesky(params):
    """Lower L with LLᵀ = C = I_k + UᵀD⁻¹U."""
    factor, diag = params.factor, params.diag
    eye = jnp.eye(factor.shape[-1], dtype=factor.dtype)
    return jnp.linalg.cholesky(eye + factor.T @ (factor / diag[:, None]))


def _truncate(q, inner, rank):
    """Best positive rank-`rank` part of M = Q·inner·Qᵀ (orthonormal Q), and diag of the rest.

    Returns U' (d × rank) with U'U'ᵀ the top `rank` positive eigenpairs of M, and
    diag(M − U'U'ᵀ), computed from the discarded eigenpairs (no cancellation).
    """
    values, vectors = jnp.linalg.eigh(0.5 * (inner + inner.T))  # ascending
    kept = jnp.zeros_like(values).at[-rank:].set(jnp.maximum(values[-rank:], 0))
    rotated = q @ vectors
    return rotated[:, -rank:] * jnp.sqrt(kept[-rank:]), (rotated**2) @ (values - kept)


class LowRankNormal(Stateless):
    """N(m, (UUᵀ + diag D)⁻¹) over a vector: sampling, density and SLANG's step in O(dk²)."""

    natural_type = LowRankNormalParams

    # -- linear algebra ---------------------------------------------------------------
    @staticmethod
    def precision_matvec(params, v):
        """Λv = U(Uᵀv) + D∘v for v of shape (..., d)."""
        return (v @ params.factor) @ params.factor.T + params.diag * v

    @staticmethod
    def solve(params, v):
        """Λ⁻¹v = D⁻¹v − D⁻¹U C⁻¹ UᵀD⁻¹v (Woodbury), for v of shape (..., d)."""
        chol = _capacitance_cholesky(params)
        scaled = v / params.diag
        projected = scaled @ params.factor  # (..., k)
        flat = projected.reshape(-1, projected.shape[-1])
        inner = jsl.cho_solve((chol, True), flat.T).T.reshape(projected.shape)
        return scaled - (inner @ params.factor.T) / params.diag

    @staticmethod
    def log_det_precision(params):
        """log det Λ = Σ log D + log det C (matrix determinant lemma)."""
        chol = _capacitance_cholesky(params)
        return jnp.sum(jnp.log(params.diag)) + 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))

    @staticmethod
    def marginal_variance(params):
        """diag(Λ⁻¹) = 1/D − rowsums((D⁻¹U L⁻ᵀ)²)."""
        chol = _capacitance_cholesky(params)
        x = jsl.solve_triangular(chol, (params.factor / params.diag[:, None]).T, lower=True)
        return 1 / params.diag - jnp.sum(x**2, axis=0)

    # -- the family interface `vingd.fit` uses ------------------------------------------
    @staticmethod
    def loc(params):
        return params.loc

    def marginals(self, params):
        """(means, variances) of q's coordinates."""
        return params.loc, self.marginal_variance(params)

    def sample(self, rng_key, params, sample_shape=()):
        """z = m + Λ⁻¹(Uε₁ + √D ε₂), ε ~ N(0, I_{k+d}): Cov = Λ⁻¹ΛΛ⁻¹ = Λ⁻¹ (as in SLANG)."""
        dim, rank = params.factor.shape
        eps = jax.random.normal(rng_key, (*sample_shape, rank + dim), params.loc.dtype)
        noise = eps[..., :rank] @ params.factor.T + jnp.sqrt(params.diag) * eps[..., rank:]
        return params.loc + self.solve(params, noise)

    def log_prob(self, params, z):
        """−½ d log 2π + ½ log det Λ − ½ (z−m)ᵀΛ(z−m)."""
        delta = z - params.loc
        quad = jnp.sum((delta @ params.factor) ** 2, -1) + jnp.sum(params.diag * delta**2, -1)
        dim = params.loc.shape[-1]
        return 0.5 * (self.log_det_precision(params) - quad - dim * math.log(2 * math.pi))

    def entropy(self, params):
        """½ d (1 + log 2π) − ½ log det Λ."""
        dim = params.loc.shape[-1]
        return 0.5 * (dim * (1 + math.log(2 * math.pi)) - self.log_det_precision(params))

    def is_valid(self, params):
        """Finite, and D ≥ √ε·diag(Λ) > 0: positive definite with D well enough away from 0 that
        the Woodbury solves keep at least half the digits."""
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in params]))
        floor = jnp.sqrt(jnp.finfo(params.diag.dtype).eps)
        diag_precision = params.diag + jnp.sum(params.factor**2, -1)
        return finite & jnp.all(params.diag > floor * diag_precision)

    def to_numpyro(self, params):
        return LowRankPrecisionNormal(*params)

    # -- SLANG's step and the Polyak average --------------------------------------------
    def _candidate(self, params, curvature, step_size, q, r):
        """One SLANG step at ρ = `step_size` (module docstring), valid or not; QR = [U, B]."""
        rank = params.factor.shape[-1]
        eye = jnp.eye(rank, dtype=r.dtype)
        # M = [U, B] blockdiag((1−ρ)I, −ρW) [U, B]ᵀ = (1−ρ)UUᵀ − ρBWBᵀ
        weights = jsl.block_diag((1 - step_size) * eye, -step_size * curvature.weights)
        factor, rest = _truncate(q, r @ weights @ r.T, rank)
        diag = (1 - step_size) * params.diag - step_size * curvature.diag + rest
        precision = LowRankNormalParams(params.loc, factor, diag)
        loc = params.loc + step_size * self.solve(precision, curvature.grad)
        return LowRankNormalParams(loc, factor, diag)

    def ngd_step(self, params, curvature, step_size, max_backoffs: int = 10):
        """SLANG's step at ρ·2⁻ᵏ for the least k ≤ `max_backoffs` that keeps D valid; else the
        mean's step alone, m + ρΛ⁻¹E[∇f] at the current precision (counted as corrected), or θ.

        With indefinite curvature (exact or Stein Hessians of a non-convex f) the dropped part
        of the projection has negative diagonal and D' can lose positivity; such a step is
        halved, as `optim.damped_step` does, and never applied. Near D's floor (`is_valid`) no
        halving helps, and with the empirical Fisher far from the optimum UUᵀ can outgrow D by
        more than the floor allows; rejecting the whole step there froze the mean too (a user's
        regression: ELBO −279 where full covariance reaches −63, reported converged). The mean
        step at the old precision keeps moving toward where the curvature is concave and
        smaller, and the precision steps become valid again. (Clipping D' instead would break
        diag(Λ') = diag(Λ_full) and hide the indefiniteness from the ELBO check.)
        """
        q, r = jnp.linalg.qr(jnp.concatenate([params.factor, curvature.basis], 1))

        def attempt(carry):
            k = carry[0] + 1
            new = self._candidate(params, curvature, step_size * 0.5**k, q, r)
            return k, new, self.is_valid(new)

        def searching(carry):
            return (carry[0] < max_backoffs) & ~carry[2]

        start = (jnp.asarray(-1), params, jnp.asarray(False))
        k, new, accepted = jax.lax.while_loop(searching, attempt, start)

        def mean_step():  # (a solve of its own: only where no halving was valid)
            loc = params.loc + step_size * self.solve(params, curvature.grad)
            finite = jnp.all(jnp.isfinite(loc))
            return params._replace(loc=jnp.where(finite, loc, params.loc)), finite

        new, moved = jax.lax.cond(accepted, lambda: (new, jnp.asarray(False)), mean_step)
        info = StepInfo(
            moved.astype(jnp.int32),
            jnp.clip(k, 0, max_backoffs),
            (~accepted & ~moved).astype(jnp.int32),
        )
        return new, info

    def average(self, stacked, weights):
        """Polyak average: mean Σwₜmₜ and the precision Σwₜ Λₜ projected as in the step.

        Averaging U itself is meaningless (eigenvectors have arbitrary signs and order); the
        average precision's low-rank part Σwₜ UₜUₜᵀ = BBᵀ, B = [√wₜ Uₜ]ₜ, is truncated to rank k
        with its diagonal kept, so diag of the result equals diag(Σwₜ Λₜ).
        """
        steps, dim, rank = stacked.factor.shape
        scaled = jnp.sqrt(weights)[:, None, None] * stacked.factor
        basis = jnp.moveaxis(scaled, 0, 1).reshape(dim, steps * rank)
        # BBᵀ's top eigenpairs from the Gram matrix BᵀB = VSVᵀ: U' = BV_k (U'U'ᵀ = Σ_top s u uᵀ)
        _, vectors = jnp.linalg.eigh(basis.T @ basis)
        factor = basis @ vectors[:, -rank:]
        rest = jnp.maximum(jnp.sum(basis**2, -1) - jnp.sum(factor**2, -1), 0)
        return LowRankNormalParams(weights @ stacked.loc, factor, weights @ stacked.diag + rest)


class LowRankPrecisionNormal(dist.Distribution):
    """numpyro distribution N(loc, (factor factorᵀ + diag)⁻¹), reparameterised.

    numpyro's `LowRankMultivariateNormal` is the covariance form; this is the precision form.
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.real_vector,
        "factor": constraints.independent(constraints.real, 2),
        "diag": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    reparametrized_params = ("loc", "factor", "diag")
    pytree_data_fields = ("loc", "factor", "diag")

    def __init__(self, loc, factor, diag, *, validate_args=None):
        self.loc, self.factor, self.diag = loc, factor, diag
        self._params = LowRankNormalParams(loc, factor, diag)
        super().__init__(event_shape=jnp.shape(loc)[-1:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return LowRankNormal().sample(key, self._params, sample_shape)

    def log_prob(self, value):
        return LowRankNormal().log_prob(self._params, value)

    def entropy(self):
        return LowRankNormal().entropy(self._params)

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return LowRankNormal.marginal_variance(self._params)

    @property
    def precision_matrix(self):
        """UUᵀ + diag(D), dense (d × d)."""
        return self.factor @ jnp.swapaxes(self.factor, -1, -2) + jnp.vectorize(
            jnp.diag, signature="(d)->(d,d)"
        )(self.diag)

    @property
    def covariance_matrix(self):
        """(UUᵀ + diag(D))⁻¹, dense (d × d; O(d³), for moderate d)."""
        return jnp.linalg.inv(self.precision_matrix)
