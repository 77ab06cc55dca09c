"""Estimators of ∇_μ E_q[f] for Gaussian q, with f the log joint in unconstrained space.

By Bonnet's and Price's theorems, for T(z) = (z, zzᵀ) and mean m,

    ∇_{μ₁} E_q[f] = E_q[∇f] − E_q[∇²f] m,      ∇_{μ₂} E_q[f] = ½ E_q[∇²f]

(Opper & Archambeau 2009; Khan et al. 2018, eq. 5). Draws come in antithetic pairs m ± δ, so
both expectations are exact whenever f is quadratic (∇f linear, ∇²f constant): one step with
ρ = 1 then lands on the exact Gaussian posterior.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vingd.families import DiagonalNormal, MultivariateNormal


class Estimate(NamedTuple):
    """∇_μ E_q[f] in the shape of the natural parameters, and E_q[f] from the same draws."""

    grad_mean: object  # natural-parameter NamedTuple
    expected_log_joint: jax.Array


def antithetic_draws(rng_key, family, natural, num_samples: int):
    """`num_samples` draws from q as pairs m ± (z − m)."""
    loc = family.natural_to_mean(natural)[0]
    half = family.sample(rng_key, natural, (num_samples // 2,))
    return jnp.concatenate([half, 2 * loc - half])


def price_hessian(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Bonnet/Price estimate of ∇_μ E_q[f] with exact Hessians (small latent dimension).

    Args:
        log_joint: f, a scalar function of the flat unconstrained latent vector.
        family: `DiagonalNormal` (uses diag ∇²f) or `MultivariateNormal`.
        natural: θ of q over the flat latent.
        num_samples: an even number of draws (antithetic pairs).
    """
    z = antithetic_draws(rng_key, family, natural, num_samples)
    values, grads = jax.vmap(jax.value_and_grad(log_joint))(z)
    hessians = jax.vmap(jax.hessian(log_joint))(z)
    grad, hess = grads.mean(0), hessians.mean(0)
    loc = family.natural_to_mean(natural)[0]
    if isinstance(family, DiagonalNormal):
        hess = jnp.diagonal(hess)
        grad_mean = family.natural_type(grad - hess * loc, 0.5 * hess)
    elif isinstance(family, MultivariateNormal):
        hess = 0.5 * (hess + hess.T)
        grad_mean = family.natural_type(grad - hess @ loc, 0.5 * hess)
    else:
        raise TypeError(f"price_hessian needs a Gaussian family, got {family!r}.")
    return Estimate(grad_mean, values.mean())
