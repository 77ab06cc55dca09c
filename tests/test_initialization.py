"""Initial values at exact prior medians: inverse CDFs, bisection on CDFs, numpyro's draws."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from scipy import stats

import vingd
from vingd.initialization import init_to_median, prior_median

MEDIANS = [
    (dist.Normal(3.0, 2.0), 3.0),  # closed-form inverse CDF
    (dist.HalfCauchy(5.0), 5.0),
    (dist.StudentT(3.0, 8.0, 10.0), 8.0),  # bisection on the CDF (no closed-form inverse)
    (dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)), 10 * stats.t.ppf(0.75, 3)),
    (dist.Gamma(2.0, 1.5), stats.gamma.ppf(0.5, 2.0, scale=1 / 1.5)),
    (dist.Beta(2.0, 5.0), stats.beta.ppf(0.5, 2.0, 5.0)),
    (dist.InverseGamma(3.0, 2.0), stats.invgamma.ppf(0.5, 3.0, scale=2.0)),
]


@pytest.mark.parametrize(("fn", "expected"), MEDIANS, ids=lambda x: type(x).__name__)
def test_prior_median_is_exact(fn, expected):
    np.testing.assert_allclose(prior_median(fn), expected, rtol=1e-6)


def test_prior_median_keeps_batch_and_event_shapes():
    fn = dist.Gamma(jnp.array([1.0, 2.0, 3.0]), 1.0).expand([4, 3]).to_event(1)
    median = prior_median(fn)
    assert median.shape == (4, 3)
    np.testing.assert_allclose(median[2], stats.gamma.ppf(0.5, [1.0, 2.0, 3.0]), rtol=1e-6)


def test_multivariate_priors_keep_numpyros_draws():
    assert prior_median(dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2))) is None
    assert prior_median(dist.Dirichlet(jnp.ones(3))) is None

    def model():
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))

    seeded = handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_median)
    value = handlers.trace(seeded).get_trace()["x"]["value"]
    assert value.shape == (2,) and np.all(np.abs(value) < 1.5)  # the median of 15 draws


def test_guides_start_at_the_exact_prior_median():
    def model():
        numpyro.sample("tau", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
        numpyro.sample("mu", dist.StudentT(3.0, 8.0, 10.0))

    guide = vingd.AutoNaturalNormal(model)
    handlers.seed(guide._setup_prototype, jax.random.PRNGKey(0))()
    np.testing.assert_allclose(
        guide._init_locs["tau"], np.log(10 * stats.t.ppf(0.75, 3)), rtol=1e-6
    )
    np.testing.assert_allclose(guide._init_locs["mu"], 8.0, rtol=1e-6)
