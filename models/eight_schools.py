"""Eight schools (Rubin 1981; BDA3 §5.5), non-centred, as posteriordb's
`eight_schools-eight_schools_noncentered`.

    θ̃_j ~ N(0, 1),  μ ~ N(0, 5²),  τ ~ half-Cauchy(0, 5),  θ_j = μ + τ θ̃_j,  y_j ~ N(θ_j, σ_j²)

with the standard errors σ_j known. θ is a deterministic site, as in the reference draws.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .posteriordb import stan_data

POSTERIOR = "eight_schools-eight_schools_noncentered"


def model(sigma, y=None):
    theta_trans = numpyro.sample(
        "theta_trans", dist.Normal(0.0, 1.0).expand([sigma.shape[0]]).to_event(1)
    )
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def load():
    """`(args, kwargs)` for `model`: the schools' standard errors and estimated effects."""
    d = stan_data(POSTERIOR)
    dtype = jnp.result_type(float)
    return (jnp.asarray(d["sigma"], dtype), jnp.asarray(d["y"], dtype)), {}
