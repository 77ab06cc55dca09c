"""Poisson regression on a latent Gaussian process, posteriordb's `gp_pois_regr-gp_pois_regr`.

    ρ ~ Gamma(25, 4),  α ~ half-N(0, 2²),  f̃ ~ N(0, I),  f = L f̃,  k_n ~ Poisson(exp f_n)

where L Lᵀ = K + 10⁻¹⁰ I and K_ij = α² exp(−(x_i − x_j)² / (2ρ²)) (exponentiated quadratic
kernel, non-centred as in the Stan program). f is a deterministic site, as in the reference.

In float32 the jitter is 10⁻⁵ α² instead: K on this grid has eigenvalues far below float32's
rounding of its entries (~d·eps·α²), so with 10⁻¹⁰ the Cholesky factor was NaN for 37% of
the reference draws and at the prior medians; 10⁻⁵ α² keeps it finite for all of them and for
20,000 prior draws, and adds at most 1% to the smallest posterior variance of f.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .posteriordb import stan_data

POSTERIOR = "gp_pois_regr-gp_pois_regr"
JITTER = 1e-10  # float64, as in the Stan program
JITTER_FLOAT32 = 1e-5  # relative to α²


def model(x, k=None):
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([x.shape[0]]).to_event(1))
    sq_dist = (x[:, None] - x[None, :]) ** 2
    jitter = JITTER if jnp.result_type(x) == jnp.float64 else JITTER_FLOAT32 * alpha**2
    cov = alpha**2 * jnp.exp(-0.5 * sq_dist / rho**2) + jitter * jnp.eye(x.shape[0])
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=k)


def load():
    """`(args, kwargs)` for `model`: 11 inputs and their counts."""
    d = stan_data(POSTERIOR)
    return (jnp.asarray(d["x"], jnp.result_type(float)), jnp.asarray(d["k"])), {}
