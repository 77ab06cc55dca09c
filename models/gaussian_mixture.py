"""Two-component normal mixture, posteriordb's `low_dim_gauss_mix-low_dim_gauss_mix`.

    y_n ~ θ N(μ₁, σ₁²) + (1 − θ) N(μ₂, σ₂²),  μ₁ < μ₂,  μ_k ~ N(0, 2²),  σ_k ~ half-N(0, 2²),
    θ ~ Beta(5, 5)

As in Stan's `ordered[2] mu`, μ lives on the ordered vectors (which removes label switching)
with the N(0, 2²) density restricted there: a flat `ordered_vector` site plus a factor.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .posteriordb import stan_data

POSTERIOR = "low_dim_gauss_mix-low_dim_gauss_mix"


def model(y):
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mixing = dist.Categorical(probs=jnp.stack([theta, 1.0 - theta]))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.MixtureSameFamily(mixing, dist.Normal(mu, sigma)), obs=y)


def load():
    """`(args, kwargs)` for `model`: 1,000 simulated, well-separated observations."""
    return (jnp.asarray(stan_data(POSTERIOR)["y"], jnp.result_type(float)),), {}
