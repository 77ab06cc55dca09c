"""Bad input gets a clear error naming what was wrong and what to do."""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import linear_regression
from numpyro.infer import SVI, Trace_ELBO

import vingd

GUIDES = pytest.mark.parametrize("guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN])


def discrete_model(y=None):
    p = numpyro.sample("p", dist.Beta(1.0, 1.0))
    numpyro.sample("coin", dist.Bernoulli(p))
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def no_latent_model(y=None):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


@GUIDES
def test_discrete_latent_is_named(guide_class):
    with pytest.raises(
        ValueError, match=r"Latent site 'coin' is discrete.*discrete exponential families"
    ):
        vingd.fit(discrete_model, 0.5, guide=guide_class(discrete_model), num_steps=1)
    svi = SVI(discrete_model, guide_class(discrete_model), vingd.NGD(0.1), Trace_ELBO())
    with pytest.raises(ValueError, match="Latent site 'coin' is discrete"):
        svi.init(jax_key(), 0.5)


@GUIDES
def test_model_without_latents(guide_class):
    with pytest.raises(ValueError, match="no latent sample sites"):
        vingd.fit(no_latent_model, 0.5, guide=guide_class(no_latent_model), num_steps=1)


@GUIDES
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_observations_are_named(conjugate, guide_class, bad):
    y = conjugate.y.at[3].set(bad)
    with pytest.raises(ValueError, match=r"Observed site 'y' has 1 NaN or infinite"):
        vingd.fit(
            linear_regression, conjugate.X, y, guide=guide_class(linear_regression), num_steps=1
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"num_steps": 2.5}, "num_steps must be an integer >= 1"),
        ({"step_size": 0.0}, "step_size must be a finite number > 0"),
        ({"step_size": -1.0}, "step_size must be a finite number > 0"),
        ({"step_size": float("nan")}, "step_size must be a finite number > 0"),
        ({"num_samples": 3}, "num_samples must be 1 or an even integer"),
        ({"num_samples": 1}, "num_samples=1 needs a fixed step_size"),
    ],
)
def test_invalid_fit_settings(conjugate, kwargs, message):
    guide = vingd.AutoNaturalMVN(linear_regression)
    with pytest.raises(ValueError, match=message):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=guide, **kwargs)


@pytest.mark.parametrize("num_samples", [3, 0, True, 2.0])
def test_invalid_natural_elbo_settings(num_samples):
    with pytest.raises(ValueError, match="num_samples must be 1 or an even integer >= 2"):
        vingd.NaturalELBO(num_samples=num_samples)
    with pytest.raises(ValueError, match="estimator must be one of"):
        vingd.NaturalELBO(estimator="newton")


def test_fit_needs_a_vingd_guide(conjugate):
    from numpyro.infer.autoguide import AutoNormal

    with pytest.raises(ValueError, match=r"needs a vingd guide.*got AutoNormal"):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=AutoNormal(linear_regression))


@GUIDES
def test_invalid_init_scale(guide_class):
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        guide_class(linear_regression, init_scale=0.0)


def jax_key():
    import jax

    return jax.random.PRNGKey(0)
