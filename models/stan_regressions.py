"""The seven Gaussian linear regressions of the posteriordb subset, translated from Stan.

Each is y ~ N(Xβ, σ²) with the Stan program's priors; a parameter that Stan gives no sampling
statement has Stan's implicit flat prior on its support (`ImproperUniform`). Stan's transformed
data (logs, standardisation, indicators) are computed by the loaders, which build the design
matrix X column by column in the order of the Stan program's coefficients.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .optima import GaussianELBO, gaussian_expectation, lognormal_moment, normal_prior
from .posteriordb import stan_data


def _arrays(*arrays):
    dtype = jnp.result_type(float)
    return tuple(jnp.asarray(a, dtype) for a in arrays)


def _flat(support, size=None):
    """Stan's implicit prior: flat on `support` (a vector of `size` when given)."""
    return dist.ImproperUniform(support, (), () if size is None else (size,))


def flat_regression(X, y=None):
    """y ~ N(Xβ, σ²) with flat priors p(β) ∝ 1, p(σ) ∝ 1 on σ > 0 (posteriordb's ARM models)."""
    beta = numpyro.sample("beta", _flat(constraints.real, X.shape[1]))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def kidscore_momiq(X, y=None):
    """kid_score ~ N(β₁ + β₂ mom_iq, σ²), p(β) ∝ 1, σ ~ half-Cauchy(0, 2.5)."""
    beta = numpyro.sample("beta", _flat(constraints.real, X.shape[1]))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def blr(X, y=None):
    """y ~ N(Xβ, σ²), β ~ N(0, 10² I), σ ~ half-N(0, 10²)."""
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def kilpisjarvi(x, y=None, *, prior):
    """y ~ N(α + βx, σ²), α ~ N(μ_α, s_α²), β ~ N(μ_β, s_β²), p(σ) ∝ 1 on σ > 0.

    `prior` = (μ_α, s_α, μ_β, s_β), part of posteriordb's data.
    """
    mu_alpha, sd_alpha, mu_beta, sd_beta = prior
    alpha = numpyro.sample("alpha", dist.Normal(mu_alpha, sd_alpha))
    beta = numpyro.sample("beta", dist.Normal(mu_beta, sd_beta))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    numpyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


def diamonds(X, y=None):
    """brms's model: y ~ N(Intercept + X_c b, σ²) with the columns of X_c centred.

    b ~ N(0, I), Intercept ~ Student-t(3, 8, 10), σ ~ half-Student-t(3, 0, 10).
    """
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    numpyro.sample("y", dist.Normal(intercept + X @ b, sigma), obs=y)


def _diamonds_expected_log_joint(mean, cov, X, y):
    """E_q[log p(y, z)] for q = N(mean, cov) over (b, Intercept, u = log σ): N(0, I) moments for b;
    Student-t priors on the intercept and on σ = e^u (folded: twice the density, with the
    Jacobian's u) by 1-D quadrature; and E[log N(y | Intercept + Xb, σ)] = −N(½ log 2π + E[u])
    − ½ Σₙ E[e^{−2u} rₙ²], rₙ = yₙ − dₙᵀβ Gaussian and correlated with u:
    E[e^{ku} r²] = E[e^{ku}]((E[r] + k Cov(u, r))² + Var(r))."""
    D = X.shape[1]
    beta, u = slice(0, D + 1), D + 1
    prior = normal_prior(mean[:D], jnp.diag(cov)[:D], 1.0)
    mc, vc, mu, vu = mean[D], cov[D, D], mean[u], cov[u, u]
    prior += gaussian_expectation(dist.StudentT(3.0, 8.0, 10.0).log_prob, mc, vc)
    sigma_prior = dist.StudentT(3.0, 0.0, 10.0)
    prior += jnp.log(2.0) + mu
    prior += gaussian_expectation(lambda x: sigma_prior.log_prob(jnp.exp(x)), mu, vu)
    design = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    r_mean = y - design @ mean[beta]
    r_cov_u = -design @ cov[beta, u]
    r_var = jnp.einsum("ni,ij,nj->n", design, cov[beta, beta], design)
    k = -2.0
    squares = lognormal_moment(mu, vu, k) * jnp.sum((r_mean + k * r_cov_u) ** 2 + r_var)
    likelihood = -y.shape[0] * (0.5 * jnp.log(2 * jnp.pi) + mu) - 0.5 * squares
    return prior + likelihood


#: diamonds' ELBO for Gaussian q in closed form up to quadrature (`vingd_models.optima`)
DIAMONDS_ELBO = GaussianELBO(("b", "Intercept", "sigma"), _diamonds_expected_log_joint)


def _with_intercept(*columns):
    return np.column_stack([np.ones_like(columns[0]), *columns])


def load_kidiq():
    """`kidiq-kidscore_momiq`: kid_score on [1, mom_iq] (434 children)."""
    d = stan_data("kidiq-kidscore_momiq")
    return _arrays(_with_intercept(d["mom_iq"]), d["kid_score"]), {}


def load_earnings():
    """`earnings-logearn_interaction_z`: log earn on [1, z_height, male, z_height·male]."""
    d = stan_data("earnings-logearn_interaction_z")
    height, male = d["height"].astype(float), d["male"].astype(float)
    z_height = (height - height.mean()) / height.std(ddof=1)  # Stan's sd is the sample sd
    X = _with_intercept(z_height, male, z_height * male)
    return _arrays(X, np.log(d["earn"])), {}


def load_mesquite():
    """`mesquite-logmesquite_logvas`: log weight on log canopy volume, area, shape, total height,
    density and the group indicator."""
    d = stan_data("mesquite-logmesquite_logvas")
    d1, d2 = d["diam1"], d["diam2"]
    X = _with_intercept(
        np.log(d1 * d2 * d["canopy_height"]),
        np.log(d1 * d2),
        np.log(d1 / d2),
        np.log(d["total_height"]),
        np.log(d["density"]),
        d["group"],
    )
    return _arrays(X, np.log(d["weight"])), {}


def load_nes2000():
    """`nes2000-nes`: party identification on ideology, race, age group indicators (30-44,
    45-64, 65+), education, gender and income."""
    d = stan_data("nes2000-nes")
    age = d["age_discrete"]
    X = _with_intercept(
        d["real_ideo"],
        d["race_adj"],
        age == 2,
        age == 3,
        age == 4,
        d["educ1"],
        d["gender"],
        d["income"],
    )
    return _arrays(X, d["partyid7"]), {}


def load_sblrc():
    """`sblrc-blr`: 100 simulated observations, 5 correlated predictors, no intercept."""
    d = stan_data("sblrc-blr")
    return _arrays(d["X"], d["y"]), {}


def load_kilpisjarvi():
    """`kilpisjarvi_mod-kilpisjarvi`: summer temperature on (shifted) year, 62 years."""
    d = stan_data("kilpisjarvi_mod-kilpisjarvi")
    prior = tuple(float(d[k]) for k in ("pmualpha", "psalpha", "pmubeta", "psbeta"))
    return _arrays(d["x"], d["y"]), {"prior": prior}


def load_diamonds():
    """`diamonds-diamonds`: log price on 24 centred predictors (5,000 diamonds)."""
    d = stan_data("diamonds-diamonds")
    X = d["X"][:, 1:]  # brms's design matrix; its first column is the intercept
    return _arrays(X - X.mean(0), d["Y"]), {}
