"""Eight schools (Rubin 1981; BDA3 §5.5), non-centred, as posteriordb's
`eight_schools-eight_schools_noncentered`.

    θ̃_j ~ N(0, 1),  μ ~ N(0, 5²),  τ ~ half-Cauchy(0, 5),  θ_j = μ + τ θ̃_j,  y_j ~ N(θ_j, σ_j²)

with the standard errors σ_j known. θ is a deterministic site, as in the reference draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .optima import GaussianELBO, gaussian_expectation, lognormal_moment, normal_prior
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


def _expected_log_joint(mean, cov, sigma, y):
    """E_q[log p(y, z)] for q = N(mean, cov) over (θ̃_1..θ̃_J, μ, u = log τ): every term is a
    Gaussian or lognormal moment (E[e^{ku} X] = E[e^{ku}](E[X] + k Cov(u, X)), and its
    second-order analogue) but the half-Cauchy's E[log(1 + e^{2u}/25)], a 1-D quadrature."""
    J = sigma.shape[0]
    t, m, u = slice(0, J), J, J + 1
    mt, mm, mu = mean[t], mean[m], mean[u]
    var = jnp.diag(cov)
    vt, vm, vu = var[t], var[m], var[u]
    cut, cum, cmt = cov[u, t], cov[u, m], cov[m, t]
    prior = normal_prior(mt, vt, 1.0) + normal_prior(mm, vm, 5.0)
    # half-Cauchy(5) on τ = e^u, with the Jacobian's u
    prior += jnp.log(2 / (5 * jnp.pi)) + mu
    prior -= gaussian_expectation(lambda x: jax.nn.softplus(2 * x - jnp.log(25.0)), mu, vu)
    # E[(y − μ − e^u θ̃)²], term by term
    e1, e2 = lognormal_moment(mu, vu, 1), lognormal_moment(mu, vu, 2)
    e_t = e1 * (mt + cut)
    e_mt = e1 * ((mm + cum) * (mt + cut) + cmt)
    e_tt = e2 * ((mt + 2 * cut) ** 2 + vt)
    square = y**2 - 2 * y * (mm + e_t) + (mm**2 + vm) + 2 * e_mt + e_tt
    likelihood = jnp.sum(-0.5 * jnp.log(2 * jnp.pi * sigma**2) - square / (2 * sigma**2))
    return prior + likelihood


#: the Gaussian families' ELBO in closed form (`vingd_models.optima`)
GAUSSIAN_ELBO = GaussianELBO(("theta_trans", "mu", "tau"), _expected_log_joint)
