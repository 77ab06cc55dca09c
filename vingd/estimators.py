"""Estimators of ∇_μ E_q[f] for Gaussian q, with f the log joint in unconstrained space.

By Bonnet's and Price's theorems, for T(z) = (z, zzᵀ) and mean m,

    ∇_{μ₁} E_q[f] = E_q[∇f] − E_q[∇²f] m,      ∇_{μ₂} E_q[f] = ½ E_q[∇²f]

(Opper & Archambeau 2009; Khan et al. 2018, eq. 5), so an estimator needs E[∇f] and a curvature
estimate E[∇²f] (the diagonal for a mean-field q). They differ in how they get the curvature:

| name      | curvature from                               | cost per draw   | quadratic f |
|-----------|----------------------------------------------|-----------------|-------------|
| "hessian" | exact Hessian (Price)                        | d grad. passes  | exact       |
| "hvp"     | Hutchinson v ∘ (∇²f v), Rademacher v (diag)  | 2 grad. passes  | unbiased    |
| "stein"   | Σ⁻¹(z − m)∇f(z)ᵀ, symmetrised (IVON's)       | 1 grad. pass    | unbiased    |
| "reparam" | autodiff in μ of a reparameterised E_q[f]    | 1 grad. pass    | unbiased    |

Draws come in antithetic pairs m ± δ, so E[∇f] is exact for quadratic f, and with "hessian"
one step with ρ = 1 lands on the exact Gaussian posterior of a conjugate model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vingd.families import DiagonalNormal, MultivariateNormal


class Estimate(NamedTuple):
    """∇_μ E_q[f] in the shape of the natural parameters, and f at each of the draws used."""

    grad_mean: object  # natural-parameter NamedTuple
    log_joints: jax.Array  # f(z_s), shape (num_samples,)
    newton_step: jax.Array | None = None  # (−E[∇²f])⁻¹E[∇f] where known (mean-field + Hessian)

    @property
    def expected_log_joint(self) -> jax.Array:
        """The Monte Carlo estimate of E_q[f]."""
        return self.log_joints.mean()


def antithetic_draws(rng_key, family, natural, num_samples: int):
    """`num_samples` draws from q as pairs m ± (z − m); the same key gives the same noise."""
    loc = family.loc(natural)
    half = family.sample(rng_key, natural, (num_samples // 2,))
    return jnp.concatenate([half, 2 * loc - half])


def _diagonal(family) -> bool:
    if isinstance(family, DiagonalNormal):
        return True
    if isinstance(family, MultivariateNormal):
        return False
    raise TypeError(f"vingd's estimators need a Gaussian family, got {family!r}.")


def _bonnet_price(family, natural, grad, hess) -> object:
    """(E[∇f] − E[∇²f] m, ½ E[∇²f]) from the two expectations (diagonal or full `hess`)."""
    loc = family.loc(natural)
    if jnp.ndim(hess) == 1:
        return family.natural_type(grad - hess * loc, 0.5 * hess)
    hess = 0.5 * (hess + hess.T)
    return family.natural_type(grad - hess @ loc, 0.5 * hess)


def price_hessian(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Exact Hessians at each draw (small latent dimension)."""
    z = antithetic_draws(rng_key, family, natural, num_samples)
    values, grads = jax.vmap(jax.value_and_grad(log_joint))(z)
    grad, hess = grads.mean(0), jax.vmap(jax.hessian(log_joint))(z).mean(0)
    if not _diagonal(family):
        return Estimate(_bonnet_price(family, natural, grad, hess), values)
    # The full Hessian is at hand: also give the Newton step of the ELBO in the mean, whose
    # Hessian is E[∇²f] exactly (NaN where −E[∇²f] is not positive definite).
    chol = jnp.linalg.cholesky(-0.5 * (hess + hess.T))
    newton = jax.scipy.linalg.cho_solve((chol, True), grad)
    return Estimate(_bonnet_price(family, natural, grad, jnp.diagonal(hess)), values, newton)


def hutchinson_hvp(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Diagonal curvature E[v ∘ ∇²f v] from one Hessian–vector product per draw: O(d) memory."""
    if not _diagonal(family):
        raise ValueError(
            'The "hvp" estimator gives a diagonal curvature: use it with AutoNaturalNormal.'
        )
    draw_key, probe_key = jax.random.split(rng_key)
    z = antithetic_draws(draw_key, family, natural, num_samples)
    probes = jax.random.rademacher(probe_key, z.shape, z.dtype)

    def one(zi, v):
        value, grad = jax.value_and_grad(log_joint)(zi)
        _, hv = jax.jvp(jax.grad(log_joint), (zi,), (v,))
        return value, grad, v * hv

    values, grads, diags = jax.vmap(one)(z, probes)
    return Estimate(_bonnet_price(family, natural, grads.mean(0), diags.mean(0)), values)


def stein(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Gradient-only curvature E[Σ⁻¹(z − m)∇f(z)ᵀ] (Stein's lemma; IVON), symmetrised."""
    z = antithetic_draws(rng_key, family, natural, num_samples)
    values, grads = jax.vmap(jax.value_and_grad(log_joint))(z)
    loc = family.loc(natural)
    if _diagonal(family):
        whitened = (z - loc) * (-2 * natural.eta2)
        hess = (whitened * grads).mean(0)
    else:
        whitened = (z - loc) @ family.precision(natural)
        hess = whitened.T @ grads / z.shape[0]
    return Estimate(_bonnet_price(family, natural, grads.mean(0), hess), values)


def reparam(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Autodiff of the reparameterised E_q[f] with respect to μ (first order; the noisiest)."""

    def expected(mean):
        z = antithetic_draws(rng_key, family, family.mean_to_natural(mean), num_samples)
        values = jax.vmap(log_joint)(z)
        return values.mean(), values

    grad, values = jax.grad(expected, has_aux=True)(family.natural_to_mean(natural))
    return Estimate(family.natural_type(*grad), values)


ESTIMATORS = {"hessian": price_hessian, "hvp": hutchinson_hvp, "stein": stein, "reparam": reparam}


def default_estimator(family, dim: int) -> str:
    """Exact Hessians while they are cheap; then O(d)-memory curvature."""
    if _diagonal(family):
        return "hessian" if dim <= 100 else "hvp"
    return "hessian" if dim <= 200 else "stein"


def get_estimator(name: str):
    """The estimator called `name`, or a `ValueError` listing the choices."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {name!r}.") from None
