"""Quantile functions by bisection on the CDF, for families whose inverse CDF jax lacks.

numpyro's Gamma and Beta `icdf` need tensorflow_probability; jax has the CDFs (`gammainc`,
`betainc`), so the quantile is found by bisection in a coordinate u in which the whole support is
a finite interval at float64 resolution (log x for the Gamma, logit x for the Beta): 64 halvings
of a bracket of width < 1500 reach the spacing of float64 numbers. jit-clean (`lax.fori_loop`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc, gammainc

BISECTION_STEPS = 64


def bisect_quantile(cdf, q, lower: float, upper: float) -> jax.Array:
    """u ∈ [lower, upper] with cdf(u) = q, for `cdf` increasing in u (broadcast over q)."""
    shape = jnp.shape(cdf(jnp.full(jnp.shape(q), lower)))
    dtype = jnp.result_type(float)
    bracket = (jnp.full(shape, lower, dtype), jnp.full(shape, upper, dtype))

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < q
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, halve, bracket)
    return 0.5 * (lo + hi)


@jax.jit
def gamma_icdf(shape, q):
    """x with P(X ≤ x) = q for X ~ Gamma(shape, 1): bisection on u = log x."""
    return jnp.exp(bisect_quantile(lambda u: gammainc(shape, jnp.exp(u)), q, -750.0, 710.0))


@jax.jit
def beta_icdf(a, b, q):
    """x with P(X ≤ x) = q for X ~ Beta(a, b): bisection on u = logit x."""
    return jax.nn.sigmoid(
        bisect_quantile(lambda u: betainc(a, b, jax.nn.sigmoid(u)), q, -750.0, 40.0)
    )
