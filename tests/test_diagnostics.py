"""ArviZ DataTree output and the PSIS diagnostic, on a conjugate model with a known posterior."""

import dataclasses
import subprocess
import sys

import arviz
import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from conftest import NOISE_SD
from matplotlib import pyplot
from numpyro import handlers
from numpyro.infer.svi import SVIRunResult
from scipy.stats import multivariate_normal

import vingd
from vingd import diagnostics

matplotlib.use("Agg")

FEATURES = ["x0", "x1", "x2"]
NUM_DRAWS = 400


def plated_regression(X, y=None):
    """conftest's `linear_regression` with named plates (same exact posterior)."""
    with numpyro.plate("feature", X.shape[1]):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", X @ w + b)
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def log_evidence(c):
    """log p(y) of the conjugate model: y ~ N(0, σ²I + X Xᵀ + 2² 11ᵀ)."""
    X, y = np.asarray(c.X), np.asarray(c.y)
    cov = NOISE_SD**2 * np.eye(len(y)) + X @ X.T + 4.0
    return multivariate_normal(np.zeros(len(y)), cov).logpdf(y)


@dataclasses.dataclass(frozen=True)
class Fit:
    """A fit result as `to_datatree` reads it: params, a loss per step, scalar settings."""

    params: dict
    losses: np.ndarray
    step_sizes: np.ndarray
    num_steps: int
    converged: bool
    estimator: str


@pytest.fixture(scope="module")
def exact(conjugate):
    """AutoNaturalMVN set to the exact posterior, and a made-up three-step fit that found it."""
    guide = vingd.AutoNaturalMVN(plated_regression)
    handlers.seed(guide, 0)(conjugate.X, conjugate.y)  # sets the guide up
    order = [1, 2, 3, 0]  # the flat latent is (w, b); conjugate's is (b, w)
    natural = guide.family.from_loc_precision(
        conjugate.mean[order], conjugate.precision[np.ix_(order, order)]
    )
    losses = np.array([90.0, 40.0, 38.2])
    return guide, Fit({guide._param_name: natural}, losses, np.ones(3), 3, True, "hessian")


@pytest.fixture(scope="module")
def tree(exact, conjugate):
    guide, fit = exact
    return diagnostics.to_datatree(
        plated_regression,
        guide,
        fit,
        conjugate.X,
        conjugate.y,
        num_samples=NUM_DRAWS,
        coords={"feature": FEATURES},
        attrs={"model": "plated_regression", "unused": None},
    )


def test_datatree_groups_dims_and_coords(tree, conjugate):
    groups = {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    assert groups | {"sample_stats"} <= set(tree.children)
    posterior = tree["posterior"]
    assert posterior["w"].dims == ("chain", "draw", "feature")
    assert posterior["b"].dims == ("chain", "draw")
    assert posterior["mu"].dims == ("chain", "draw", "obs")  # deterministic sites too
    assert posterior.sizes["chain"] == 1 and posterior.sizes["draw"] == NUM_DRAWS
    assert list(posterior["feature"].values) == FEATURES
    n = len(conjugate.y)
    for group in ("posterior_predictive", "log_likelihood"):
        assert tree[group]["y"].dims == ("chain", "draw", "obs")
        assert tree[group]["y"].shape == (1, NUM_DRAWS, n)
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, conjugate.y)
    # pointwise log likelihood of the draws, as numpyro computes it
    z = posterior.isel(chain=0)
    expected = dist.Normal(z["mu"].values, NOISE_SD).log_prob(np.asarray(conjugate.y))
    np.testing.assert_allclose(tree["log_likelihood"]["y"].values[0], expected, rtol=1e-10)


def test_draws_are_the_exact_posterior(tree, conjugate):
    w = tree["posterior"]["w"].values[0]
    exact_sd = np.sqrt(np.diag(conjugate.cov))[1:]
    error = (w.mean(0) - conjugate.mean[1:]) / exact_sd
    assert np.all(np.abs(error) < 5 / np.sqrt(NUM_DRAWS))  # Monte Carlo tolerance
    np.testing.assert_allclose(w.std(0) / exact_sd, 1, atol=5 / np.sqrt(2 * NUM_DRAWS))


def test_sample_stats_and_attrs(tree, exact, conjugate):
    _, fit = exact
    stats = tree["sample_stats"]
    np.testing.assert_array_equal(stats["elbo"].values, -fit.losses)
    np.testing.assert_array_equal(stats["step_sizes"].values, fit.step_sizes)
    assert stats["elbo"].dims == stats["step_sizes"].dims == ("step",)
    assert stats["log_p"].dims == stats["log_q"].dims == ("chain", "draw")
    attrs = tree.attrs
    assert attrs["guide"] == "AutoNaturalMVN" and attrs["model"] == "plated_regression"
    assert "unused" not in attrs  # None values are left out
    assert attrs["num_steps"] == 3 and attrs["estimator"] == "hessian" and attrs["num_draws"] == 400
    assert attrs["converged"] == 1  # netCDF has no booleans
    # q is the exact posterior: log p(y, z) − log q(z) = log p(y) for every draw
    assert attrs["elbo"] == pytest.approx(log_evidence(conjugate), abs=1e-6)
    assert attrs["elbo_se"] < 1e-8
    assert attrs["psis_verdict"] == "good"
    assert attrs["psis_ess"] == pytest.approx(400, rel=1e-4)  # equal weights: every draw


def test_arviz_summary_loo_and_forest_run(tree, tmp_path):
    summary = arviz.summary(tree)
    assert {"b", "w[x0]", "mu[0]"} <= set(summary.index)
    assert np.all(np.isfinite(summary["mean"]))
    loo = arviz.loo(tree)
    assert np.isfinite(loo.elpd) and np.max(loo.pareto_k) < 0.7
    plot = arviz.plot_forest(tree, var_names=["w", "b"], backend="matplotlib")
    pyplot.close(plot.get_viz("figure"))
    diagnostics.save_forest(tree, tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 0
    assert set(diagnostics.summary(tree).columns) >= {"mean", "sd"}


def test_netcdf_round_trip(tree, tmp_path):
    tree.to_netcdf(tmp_path / "posterior.nc")
    loaded = xr.open_datatree(tmp_path / "posterior.nc")
    assert set(loaded.children) == set(tree.children)
    assert loaded.attrs["psis_verdict"] == tree.attrs["psis_verdict"]
    xr.testing.assert_allclose(loaded["posterior"].to_dataset(), tree["posterior"].to_dataset())


def test_fit_may_be_an_svi_result_or_params_but_not_anything_else(exact, conjugate):
    guide, fit = exact
    svi_result = SVIRunResult(fit.params, None, fit.losses)  # what numpyro's SVI.run returns
    tree = diagnostics.to_datatree(
        plated_regression, guide, svi_result, conjugate.X, conjugate.y, num_samples=25
    )
    assert list(tree["sample_stats"].data_vars) == ["log_p", "log_q", "elbo"]
    params_only = diagnostics._unpack_fit(fit.params)
    assert params_only == (fit.params, {}, {})
    with pytest.raises(ValueError, match=r"fit must be a params dict or a result with `\.params`"):
        diagnostics.to_datatree(plated_regression, guide, [fit], conjugate.X, conjugate.y)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 25"):
        diagnostics.psis_diagnostic(
            plated_regression, guide, fit.params, conjugate.X, conjugate.y, num_samples=5
        )


def _gaussian_q(guide, params, *, shift_sd=0.0, scale=1.0):
    """The fitted Gaussian with its mean moved by `shift_sd` sds and its sds multiplied."""
    family = guide.family
    natural = params[guide._param_name]
    loc, precision = family.loc(natural), family.precision(natural)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    return {guide._param_name: family.from_loc_precision(loc + shift_sd * sd, precision / scale**2)}


def test_psis_khat_small_for_the_exact_posterior(exact, conjugate):
    guide, fit = exact
    psis = diagnostics.psis_diagnostic(
        plated_regression, guide, fit.params, conjugate.X, conjugate.y, num_samples=1000
    )
    assert psis.khat < diagnostics.GOOD and psis.verdict == "good"
    assert psis.ess == pytest.approx(1000, rel=1e-6)  # equal weights


def test_psis_khat_large_for_a_too_narrow_gaussian(exact, conjugate):
    # q = N(m, Σ/9): the ratios p/q have tail index k = 1 − (1/3)² ≈ 0.89 (Yao et al. 2018)
    guide, fit = exact
    narrow = _gaussian_q(guide, fit.params, scale=1 / 3)
    psis = diagnostics.psis_diagnostic(
        plated_regression, guide, narrow, conjugate.X, conjugate.y, num_samples=2000
    )
    assert psis.khat > diagnostics.OK and psis.verdict == "unreliable"


def test_importance_resampling_corrects_a_shifted_q(exact, conjugate):
    guide, fit = exact
    shifted = _gaussian_q(guide, fit.params, shift_sd=0.5, scale=1.3)
    psis = diagnostics.psis_diagnostic(
        plated_regression, guide, shifted, conjugate.X, conjugate.y, num_samples=4000
    )
    assert psis.verdict in ("good", "ok")
    exact_sd = np.sqrt(np.diag(conjugate.cov))[1:]
    before = (psis.draws["w"].mean(0) - conjugate.mean[1:]) / exact_sd
    resampled = psis.resample(jax.random.PRNGKey(1))["w"]
    after = (resampled.mean(0) - conjugate.mean[1:]) / exact_sd
    np.testing.assert_allclose(before, 0.5, atol=0.1)
    assert np.all(np.abs(after) < 5 / np.sqrt(psis.ess))


@pytest.mark.parametrize(
    ("khat", "expected"),
    [
        (-np.inf, "good"),
        (0.49, "good"),
        (0.5, "ok"),
        (0.69, "ok"),
        (0.7, "unreliable"),
        (np.nan, "unreliable"),
    ],
)
def test_verdict_thresholds(khat, expected):
    assert diagnostics.verdict(khat) == expected


def test_degenerate_ratios():
    log_q = np.linspace(-3.0, 0.0, 100)
    exact = diagnostics.PSIS.from_draws(diagnostics.Draws({}, {}, log_q - 38.2, log_q))
    assert exact.khat == -np.inf and exact.verdict == "good"  # p/q constant, q spread out
    collapsed = diagnostics.PSIS.from_draws(
        diagnostics.Draws({}, {}, np.full(100, -80.0), 0 * log_q)
    )
    assert collapsed.khat == np.inf and collapsed.verdict == "unreliable"  # q is one point
    broken = diagnostics.PSIS.from_draws(diagnostics.Draws({}, {}, np.full(100, np.nan), log_q))
    assert broken.verdict == "unreliable"
    with pytest.raises(ValueError, match="Cannot resample"):
        broken.resample(jax.random.PRNGKey(0))


def subsampled_regression(X, y=None):
    """`plated_regression` fitted by minibatches of 10: the same posterior."""
    with numpyro.plate("feature", X.shape[1]):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    with numpyro.plate("obs", X.shape[0], subsample_size=10) as idx:
        mu = numpyro.deterministic("mu", X[idx] @ w + b)
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y[idx])


def test_diagnostics_of_a_subsampled_model_judge_the_whole_data(exact, conjugate):
    """The ELBO, PSIS k̂ and DataTree of a minibatch model are those of its full-data posterior
    (not of one N/B-scaled minibatch, nor an error for the missing subsampling key)."""
    guide, fit = exact
    args = (conjugate.X, conjugate.y)
    full = diagnostics.draw(plated_regression, guide, fit.params, *args, num_samples=200)
    sub = diagnostics.draw(subsampled_regression, guide, fit.params, *args, num_samples=200)
    np.testing.assert_allclose(sub.log_p, full.log_p, rtol=1e-10)
    assert sub.elbo[0] == pytest.approx(log_evidence(conjugate), abs=1e-6)  # exact q
    assert vingd.elbo(subsampled_regression, guide, fit.params, *args)[0] == pytest.approx(
        log_evidence(conjugate), abs=1e-6
    )
    tree = diagnostics.to_datatree(subsampled_regression, guide, fit, *args, num_samples=100)
    assert tree["log_likelihood"]["y"].shape == (1, 100, len(conjugate.y))


def test_importing_arviz_before_vingd_leaves_numpyro_whole():
    # arviz makes numpyro a lazy module; vingd's first numpyro import was once
    # `numpyro.distributions`, after which `numpyro.factor` raised AttributeError
    script = (
        "import arviz, vingd, numpyro\n"
        "trace = numpyro.handlers.trace(lambda: numpyro.factor('f', 1.0)).get_trace()\n"
        "assert float(trace['f']['fn'].log_prob(None)) == 1.0\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_factor_is_not_a_log_likelihood(exact, conjugate):
    """A `numpyro.factor` is an observed Unit site: in log_likelihood it made `arviz.loo` ask
    which of two arrays to use."""

    def penalised(X, y=None):
        plated_regression(X, y)
        numpyro.factor("penalty", 0.0)

    guide, fit = exact
    tree = diagnostics.to_datatree(
        penalised, guide, fit, conjugate.X, conjugate.y, num_samples=NUM_DRAWS
    )
    assert set(tree["log_likelihood"].data_vars) == {"y"}
    # nor data: a 0-size "penalty" in observed_data broke arviz's predictive plots
    assert set(tree["observed_data"].data_vars) == {"y"}
    assert np.isfinite(arviz.loo(tree).elpd)


def test_a_vector_observation_is_scored_per_element(exact, conjugate):
    """An observed `.to_event(1)` site (eight schools' y) had one log likelihood per draw, the
    sum, so `arviz.loo` saw a single observation; its elements are scored apart now, and their
    sum is the site's log density."""

    def vector_regression(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 2.0))
        numpyro.sample("y", dist.Normal(X @ w + b, NOISE_SD).to_event(1), obs=y)

    guide, fit = exact
    args = (conjugate.X, conjugate.y)
    tree = diagnostics.to_datatree(vector_regression, guide, fit, *args, num_samples=NUM_DRAWS)
    pointwise = tree["log_likelihood"]["y"]
    assert pointwise.shape == (1, NUM_DRAWS, conjugate.y.size)
    # the same draws under the plated model: the per-element terms are the same
    plated = diagnostics.to_datatree(plated_regression, guide, fit, *args, num_samples=NUM_DRAWS)
    np.testing.assert_allclose(pointwise, plated["log_likelihood"]["y"], rtol=1e-5)
    assert arviz.loo(tree).n_data_points == conjugate.y.size
