"""The guides behave as numpyro AutoGuides: plates, constrained sites, Predictive, posteriors."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EVERY_GUIDE
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Predictive, Trace_ELBO

import vingd

GUIDES = pytest.mark.parametrize("guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN])
Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    """Non-centred eight schools: a plate and a positive latent (tau)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_raw = numpyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        numpyro.deterministic("theta", mu + tau * theta_raw)
        numpyro.sample("y", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


def fitted(guide_class, num_steps=40):
    guide = guide_class(eight_schools)
    result = vingd.fit(
        eight_schools, SIGMA, Y, guide=guide, num_steps=num_steps, rng_key=jax.random.PRNGKey(0)
    )
    return guide, result


@GUIDES
def test_sample_posterior_shapes_support_and_moments(guide_class):
    guide, result = fitted(guide_class)
    draws = guide.sample_posterior(jax.random.PRNGKey(1), result.params, sample_shape=(4000,))
    assert draws["theta_raw"].shape == (4000, 8) and draws["tau"].shape == (4000,)
    assert np.all(draws["tau"] > 0)
    # draws agree with the guide's own quantiles (Monte Carlo tolerance of a quantile estimate)
    q = guide.quantiles(result.params, [0.25, 0.5, 0.75])
    for name in ["mu", "tau", "theta_raw"]:
        emp = np.quantile(np.asarray(draws[name]), [0.25, 0.5, 0.75], axis=0)
        iqr = q[name][2] - q[name][0]
        assert np.all(np.abs(emp - np.asarray(q[name])) < 0.1 * iqr)
    median = guide.median(result.params)
    np.testing.assert_allclose(median["tau"], q["tau"][1], rtol=1e-8)
    assert np.all(np.isfinite(result.losses))


@GUIDES
def test_predictive_and_svi_work_unchanged(guide_class):
    guide, result = fitted(guide_class, num_steps=5)
    pred = Predictive(eight_schools, guide=guide, params=result.params, num_samples=100)(
        jax.random.PRNGKey(2), SIGMA
    )
    assert pred["y"].shape == (100, 8) and pred["theta"].shape == (100, 8)
    assert np.all(np.isfinite(pred["y"]))
    svi = SVI(
        eight_schools, guide_class(eight_schools), vingd.NGD(0.02), Trace_ELBO(num_particles=4)
    )
    run = svi.run(jax.random.PRNGKey(3), 200, SIGMA, Y, progress_bar=False)
    assert np.all(np.isfinite(run.losses))
    assert np.mean(run.losses[-20:]) < np.mean(run.losses[:20])


def ar1(y):
    """A state-space model written with numpyro's `scan` (a local latent per step)."""
    phi = numpyro.sample("phi", dist.Normal(0.0, 0.5))
    scale = numpyro.sample("scale", dist.HalfNormal(1.0))

    def step(h, y_t):
        h = numpyro.sample("h", dist.Normal(phi * h, scale))
        numpyro.sample("y", dist.Normal(h, 0.3), obs=y_t)
        return h, h

    scan(step, jnp.zeros(()), y)


@EVERY_GUIDE
def test_a_scan_model_works_in_elbo_datatree_predictive_and_svi(guide_class):
    """numpyro's `scan` takes np.shape of every site of a guide trace it replays, param sites
    too (a full-covariance θ's fields differ in shape: ValueError, and traced fields cannot
    become an array), and asks for a key in the compiled set-up (SVI's seed leaked a tracer)."""
    y = jnp.sin(jnp.arange(12.0))
    guide = guide_class(ar1)
    result = vingd.fit(ar1, y, guide=guide, num_steps=10)
    value, _ = vingd.elbo(ar1, guide, result.params, y, num_particles=100)
    assert np.isfinite(value)
    tree = vingd.to_datatree(ar1, guide, result.params, y, num_samples=25)
    assert tree.posterior["h"].shape == (1, 25, 12)
    predictive = Predictive(
        ar1, guide=guide, params=result.params, num_samples=20, return_sites=["h"]
    )
    assert predictive(jax.random.PRNGKey(1), y)["h"].shape == (20, 12)
    if guide_class is not vingd.AutoNaturalLowRankMVN:  # (fitted by `fit` only)
        svi = SVI(ar1, guide_class(ar1), vingd.NGD(0.02), Trace_ELBO(num_particles=4))
        run = svi.run(jax.random.PRNGKey(3), 20, y, progress_bar=False)
        assert np.all(np.isfinite(run.losses))


@pytest.mark.parametrize(
    "guide_class",
    [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN, vingd.AutoNaturalLowRankMVN],
)
def test_a_new_guide_given_saved_params_works_in_elbo_psis_datatree_and_predictive(guide_class):
    """A guide built afresh (a new session, params saved) is first run inside `lax.map` or
    `vmap` there: its set-up once met a traced value (TracerBoolConversionError)."""
    guide, result = fitted(guide_class, num_steps=5)
    (expected, se), (value, se_fresh) = (
        vingd.elbo(eight_schools, g, result.params, SIGMA, Y)
        for g in (guide, guide_class(eight_schools))
    )  # (a set-up inside the map takes a key from the seed: other draws, the same ELBO)
    assert abs(value - expected) < 4 * np.hypot(se, se_fresh)
    psis = vingd.psis_diagnostic(eight_schools, guide_class(eight_schools), result.params, SIGMA, Y)
    assert np.isfinite(psis.khat)
    tree = vingd.to_datatree(
        eight_schools, guide_class(eight_schools), result.params, SIGMA, Y, num_samples=50
    )
    assert tree.posterior["tau"].shape == (1, 50)
    predictive = Predictive(
        eight_schools,
        guide=guide_class(eight_schools),
        params=result.params,
        num_samples=200,
        return_sites=["mu"],
    )
    draws = predictive(
        jax.random.PRNGKey(2),
        SIGMA,
        Y,
    )
    median = guide.median(result.params)["mu"]
    assert draws["mu"].shape == (200,) and abs(np.median(draws["mu"]) - median) < 2.0


@EVERY_GUIDE
def test_a_guide_never_run_says_how_to_set_it_up(guide_class):
    guide, result = fitted(guide_class, num_steps=5)
    fresh = guide_class(eight_schools)
    # (each was AttributeError: _init_locs, _init_latent or 'NoneType'; or, AutoExpFamily's
    # median and quantiles, an empty dict)
    for method, method_args in [
        ("median", (result.params,)),
        ("quantiles", (result.params, [0.5])),
        ("sample_posterior", (jax.random.PRNGKey(0), result.params)),
    ]:
        with pytest.raises(ValueError, match=rf"{method} needs the guide set up.*init_params"):
            getattr(fresh, method)(*method_args)
    fresh.init_params(SIGMA, Y)  # (no seed handler needed)
    np.testing.assert_allclose(
        fresh.median(result.params)["tau"], guide.median(result.params)["tau"]
    )


def test_mvn_posterior_is_numpyro_multivariate_normal_in_autocontinuous_order():
    guide, result = fitted(vingd.AutoNaturalMVN, num_steps=3)
    posterior = guide.get_posterior(result.params)
    assert isinstance(posterior, dist.MultivariateNormal) and posterior.event_shape == (10,)
    unpacked = guide._unpack_latent(posterior.loc)
    assert set(unpacked) == {"mu", "tau", "theta_raw"}
    np.testing.assert_allclose(guide.median(result.params)["mu"], unpacked["mu"], rtol=1e-10)
    np.testing.assert_allclose(
        guide.median(result.params)["tau"], jnp.exp(unpacked["tau"]), rtol=1e-10
    )


def test_mean_field_params_are_named_per_site():
    guide, result = fitted(vingd.AutoNaturalNormal, num_steps=1)
    assert set(result.params) == {"mu_auto_natural", "tau_auto_natural", "theta_raw_auto_natural"}
    assert result.params["theta_raw_auto_natural"].eta1.shape == (8,)
    flat = guide.flatten(result.params)
    back = guide.unflatten(flat)
    for k in result.params:
        np.testing.assert_array_equal(back[k].eta2, result.params[k].eta2)


START = {"mu": 1.0, "tau": 2.0, "theta_raw": jnp.linspace(-1.0, 1.0, 8)}


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (vingd.AutoNaturalNormal, numpyro.infer.autoguide.AutoNormal),
        (vingd.AutoNaturalMVN, numpyro.infer.autoguide.AutoMultivariateNormal),
    ],
)
def test_compiled_setup_matches_numpyros(ours, theirs):
    """vingd's set-up (one compiled program for the initial values) leaves the guide as
    numpyro's op-by-op set-up does: the same start, plates, event dims, order and transforms."""
    init = numpyro.infer.init_to_value(values=START)
    guides = [cls(eight_schools, init_loc_fn=init) for cls in (ours, theirs)]
    for guide in guides:
        guide._setup_prototype = handlers_seeded(guide._setup_prototype)
        guide._setup_prototype(SIGMA, Y)
    a, b = guides
    assert list(a._init_locs) == list(b._init_locs) == ["mu", "tau", "theta_raw"]
    for site in START:
        np.testing.assert_allclose(a._init_locs[site], b._init_locs[site], rtol=1e-6)
    np.testing.assert_allclose(a._init_locs["tau"], np.log(2.0), rtol=1e-6)  # unconstrained
    assert a._prototype_frames == b._prototype_frames
    assert a._prototype_frame_full_sizes == b._prototype_frame_full_sizes == {"school": 8}
    constrained = [g._postprocess_fn(g._init_locs) for g in guides]
    assert set(constrained[0]) == set(constrained[1]) >= {"theta", "tau"}  # deterministic too
    for site, value in constrained[0].items():
        np.testing.assert_allclose(value, constrained[1][site], rtol=1e-6)
    if hasattr(b, "_event_dims"):
        assert a._event_dims == b._event_dims
    else:
        np.testing.assert_allclose(a._init_latent, b._init_latent, rtol=1e-6)


def handlers_seeded(setup):
    return lambda *args: numpyro.handlers.seed(setup, 0)(*args)


def test_setup_falls_back_to_numpyro_where_the_start_is_not_valid():
    """Where the log density is not finite at the start, numpyro's set-up runs (with its
    retries) and says so."""

    def impossible():
        numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("never", -jnp.inf)

    with pytest.raises(RuntimeError, match="Cannot find valid initial parameters"):
        vingd.fit(impossible, guide=vingd.AutoNaturalNormal(impossible), num_steps=2)


def _compilations_in_setup(guide, *args):
    """How many XLA programs the guide's set-up compiles (JAX logs each one)."""
    messages = []

    class Handler(logging.Handler):
        def emit(self, record):
            if "Finished XLA compilation" in record.getMessage():
                messages.append(record.getMessage())

    handler = Handler()
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles(True):
            numpyro.handlers.seed(guide._setup_prototype, 0)(*args)
    finally:
        logging.getLogger("jax").removeHandler(handler)
    return len(messages)


def test_setup_compiles_a_few_programs_not_one_per_operation():
    """Op-by-op set-up (numpyro's) compiles every operation on first use; vingd's compiles its
    initial values as one program. Shapes no other test uses, so nothing is cached yet."""

    def regression(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(X @ w, s), obs=y)

    rng = np.random.default_rng(0)
    counts = {}
    for name, dim, guide_class in [
        ("vingd", 37, vingd.AutoNaturalNormal),
        ("numpyro", 38, numpyro.infer.autoguide.AutoNormal),
    ]:
        X = rng.normal(size=(51, dim))
        guide = guide_class(regression, init_loc_fn=numpyro.infer.init_to_median)
        counts[name] = _compilations_in_setup(guide, X, X.sum(1))
    assert counts["vingd"] <= 25 and counts["numpyro"] >= 3 * counts["vingd"], counts
