"""Two time-series models of the posteriordb subset, translated from Stan.

AR(K), `arK-arK`:

    y_t ~ N(α + Σ_{k=1..K} β_k y_{t−k}, σ²)  for t > K,
    α ~ N(0, 10²),  β_k ~ N(0, 10²),  σ ~ half-Cauchy(0, 2.5)

GARCH(1, 1), `garch-garch11`:

    y_t ~ N(μ, σ_t²),  σ_t² = α₀ + α₁ (y_{t−1} − μ)² + β₁ σ_{t−1}²,  σ_1 given,

with Stan's flat priors on μ ∈ ℝ, α₀ > 0, α₁ ∈ (0, 1) and β₁ ∈ (0, 1 − α₁).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .posteriordb import stan_data


def ar(y, *, order: int):
    """AR(`order`) on the series y, conditioning on its first `order` values."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([order]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    lags = jnp.stack([y[order - k : y.shape[0] - k] for k in range(1, order + 1)], axis=-1)
    numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma).to_event(1), obs=y[order:])


def garch11(y, *, sigma1):
    """GARCH(1, 1) on the series y with initial volatility `sigma1`.

    β₁'s flat prior on (0, 1 − α₁) is written as β₁ = (1 − α₁) u, u ~ Uniform(0, 1), plus the
    Jacobian log(1 − α₁): the same density in the same unconstrained coordinates (logit u) as
    Stan's, with a support that does not depend on another latent.
    """
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.Uniform(0.0, 1.0))
    beta1_unit = numpyro.sample("beta1_unit", dist.Uniform(0.0, 1.0))
    beta1 = numpyro.deterministic("beta1", (1.0 - alpha1) * beta1_unit)
    numpyro.factor("beta1_jacobian", jnp.log1p(-alpha1))

    def variance_step(variance, y_prev):
        variance = alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * variance
        return variance, variance

    _, variances = jax.lax.scan(variance_step, jnp.square(sigma1), y[:-1])
    sigma = jnp.sqrt(jnp.concatenate([jnp.square(sigma1)[None], variances]))
    numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)


def load_ar():
    """`(args, kwargs)` for `ar`: 200 simulated AR(5) observations."""
    d = stan_data("arK-arK")
    return (jnp.asarray(d["y"], jnp.result_type(float)),), {"order": int(d["K"])}


def load_garch11():
    """`(args, kwargs)` for `garch11`: 200 simulated GARCH(1, 1) observations, σ₁ = 0.5."""
    d = stan_data("garch-garch11")
    dtype = jnp.result_type(float)
    return (jnp.asarray(d["y"], dtype),), {"sigma1": jnp.asarray(d["sigma1"], dtype)}
