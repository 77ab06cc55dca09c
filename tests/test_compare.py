"""`vingd.compare` on a conjugate model, scored against its exact posterior; its plots."""

import dataclasses

import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import linear_regression
from matplotlib.figure import Figure

from vingd import clear_cache, plots
from vingd.compare import (
    Comparison,
    Method,
    compare,
    default_methods,
    reference_moments,
    smoothed,
    steps_to_within,
)
from vingd_models.references import GaussianPosterior

NUM_DRAWS = 2000
EXACT = "vingd AutoNaturalMVN (ρ=1)"
MEAN_FIELD = "vingd AutoNaturalNormal (adaptive ρ)"
SHORT_ADAM = "SVI+Adam AutoNormal (lr=0.01)"
ORDER = [1, 2, 3, 0]  # conjugate's (b, w) order -> the model's site order (w, b)


def exact_reference(c):
    """The exact posterior of `linear_regression`, per site."""
    return {
        "b": dist.Normal(c.mean[0], np.sqrt(c.cov[0, 0])),
        "w": dist.MultivariateNormal(c.mean[1:], c.cov[1:, 1:]),
    }


def log_evidence_and_mean_field_gap(c):
    """log p(y), and KL(q* ‖ p) of the mean-field optimum q* = N(m, diag(Λ)⁻¹) for N(m, Λ⁻¹)."""
    X, y = np.asarray(c.X), np.asarray(c.y)
    phi = np.concatenate([np.ones((len(y), 1)), X], 1)
    prior_cov = np.diag([4.0, 1.0, 1.0, 1.0])
    cov = 0.25 * np.eye(len(y)) + phi @ prior_cov @ phi.T  # noise sd 0.5
    _, logdet = np.linalg.slogdet(2 * np.pi * cov)
    log_evidence = -0.5 * (logdet + y @ np.linalg.solve(cov, y))
    gap = 0.5 * (np.log(np.diag(c.precision)).sum() - np.linalg.slogdet(c.precision)[1])
    return log_evidence, gap


@pytest.fixture(scope="module")
def comparison(conjugate):
    methods = [
        Method("adam", "meanfield", 100, 1e-2),  # far too few steps
        Method("vingd", "meanfield", 300),
        Method("vingd", "mvn", 10, step_size=1.0),  # exact after one step
    ]
    return compare(  # (cold compiles: compile seconds are checked, on programs of their own)
        linear_regression,
        conjugate.X,
        conjugate.y,
        methods=methods,
        reference=exact_reference(conjugate),
        num_draws=NUM_DRAWS,
    )


def by_name(comparison):
    return {r.name: r for r in comparison.results}


def test_ranks_methods_by_final_elbo(comparison):
    assert [r.name for r in comparison.ranking] == [EXACT, MEAN_FIELD, SHORT_ADAM]
    assert comparison.best_elbo == by_name(comparison)[EXACT].elbo


def test_final_elbos_match_the_closed_form(comparison, conjugate):
    log_evidence, gap = log_evidence_and_mean_field_gap(conjugate)
    results = by_name(comparison)
    exact = results[EXACT]
    assert exact.elbo == pytest.approx(log_evidence, abs=1e-6) and exact.elbo_se < 1e-8
    mean_field = results[MEAN_FIELD]
    # the mean-field optimum, up to Monte Carlo error and a little unconverged slack
    assert abs(mean_field.elbo - (log_evidence - gap)) < 5 * mean_field.elbo_se + 0.05
    assert results[SHORT_ADAM].elbo < log_evidence - gap - 5


def test_accuracy_against_the_exact_posterior(comparison, conjugate):
    tolerance = 5 / np.sqrt(NUM_DRAWS)  # Monte Carlo error of means and sds in sd units
    results = by_name(comparison)
    exact, mean_field = results[EXACT], results[MEAN_FIELD]
    for result in (exact, mean_field):  # both have the exact mean (a Gaussian target)
        errors = np.concatenate([np.ravel(e) for e in result.mean_error.values()])
        assert np.all(np.abs(errors) < tolerance)
    for site in ("b", "w"):
        np.testing.assert_allclose(exact.sd_ratio[site], 1, atol=tolerance)
    expected = conjugate.mean_field_sd / np.sqrt(np.diag(conjugate.cov))  # (b, w) order
    np.testing.assert_allclose(mean_field.sd_ratio["b"], expected[0], atol=tolerance)
    np.testing.assert_allclose(mean_field.sd_ratio["w"], expected[1:], atol=tolerance)
    assert results[SHORT_ADAM].row()["max_abs_mean_error"] > 1


def test_steps_and_seconds_to_within_one_nat(comparison):
    results = by_name(comparison)
    exact = results[EXACT]
    assert 1 < exact.steps_to_best <= 4  # step 1's loss is at the start, before any step
    assert 0 < exact.seconds_to_best <= exact.run_seconds
    assert results[SHORT_ADAM].steps_to_best is None
    assert results[SHORT_ADAM].seconds_to_best is None
    for r in comparison.results:
        assert len(r.elbo_trace) == len(r.seconds) == len(r.losses)
        assert np.all(np.diff(r.seconds) > 0) and 0 < r.seconds[-1] <= r.run_seconds
        if r.method.engine == "adam":  # (one scan of equal steps)
            assert r.seconds[-1] == pytest.approx(r.run_seconds)
        assert r.compile_seconds > 0


@pytest.mark.parametrize("cold", [True, False])
def test_cold_compiles_compile_every_method_as_in_a_fresh_process(conjugate, cold):
    method = Method("vingd", "mvn", 10, step_size=1.0)
    clear_cache()
    results = compare(
        linear_regression, conjugate.X, conjugate.y, methods=[method, method],
        num_draws=NUM_DRAWS, cold_compiles=cold,
    ).results  # fmt: skip
    assert results[0].compile_seconds > 0
    # warm, the second finds the first's program (vingd's cache), cold it compiles its own
    assert (results[1].compile_seconds > 0) == cold


def test_steps_to_within_one_nat_count_where_the_result_gets_there():
    rising = -np.linspace(-20.0, -10.0, 100)  # losses: an ELBO trace rising from -20 to -10
    # the trace is −20 + 10 t/99 at step t + 1: first at or above −11 at t = 90 (steps 91)
    assert steps_to_within(rising, elbo=-10.0, best=-10.0) == 91
    # a trace crossing the mark on the way does not count if the result ends short of it
    assert steps_to_within(rising, elbo=-11.5, best=-10.0) is None
    # an averaged result above its iterates' trace got there at the last step
    assert steps_to_within(rising + 3, elbo=-10.2, best=-10.0) == 100


def test_tidy_outputs(comparison):
    table = comparison.to_dict()
    assert all(len(column) == 3 for column in table.values())
    assert table["method"] == [r.name for r in comparison.results]
    assert {"elbo", "elbo_se", "khat", "verdict", "min_sd_ratio", "steps_to_best"} <= set(table)
    lines = comparison.to_markdown().splitlines()
    assert len(lines) == 2 + 3 and "sd ratio" in lines[0]
    assert lines[2].startswith(f"| {EXACT} |")  # best first
    assert lines[-1].startswith(f"| {SHORT_ADAM} |") and "| — |" in lines[-1]
    # a program compiled by an earlier run in the process is said to be cached, not 0.00 s
    cached = Comparison(
        tuple(dataclasses.replace(r, compile_seconds=0.0) for r in comparison.results)
    )
    assert all("| cached |" in line for line in cached.to_markdown().splitlines()[2:])


def test_plots(comparison, tmp_path):
    traces = plots.plot_traces(comparison.traces, comparison.family_best)
    assert isinstance(traces, Figure) and len(traces.axes) == 2
    forest = plots.plot_forest(comparison)
    labels = [t.get_text() for t in forest.axes[0].get_yticklabels()]
    assert labels == ["b", "w[0]", "w[1]", "w[2]"]
    for name, figure in {"traces.png": traces, "forest.png": forest}.items():
        figure.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0
    without = Comparison(
        tuple(dataclasses.replace(r, mean_error=None, sd_ratio=None) for r in comparison.results)
    )
    with pytest.raises(ValueError, match="needs a comparison run with a reference"):
        plots.plot_forest(without)
    assert "sd ratio" not in without.to_markdown()


def test_default_methods_sweep_adam_learning_rates():
    methods = default_methods(vingd_steps=10, adam_steps=20, learning_rates=(1e-3, 1e-2))
    assert [(m.engine, m.family) for m in methods[:2]] == [("vingd", "mvn"), ("vingd", "meanfield")]
    assert {(m.family, m.step_size) for m in methods[2:]} == {
        (f, lr) for f in ("mvn", "meanfield") for lr in (1e-3, 1e-2)
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engine": "sgd", "family": "mvn"}, "engine must be one of"),
        (
            {"engine": "vingd", "family": "full"},
            r"family must be one of \['lowrank', 'meanfield', 'mvn'\], got 'full'",
        ),
        ({"engine": "vingd", "family": "mvn", "num_steps": 0}, "num_steps must be an integer"),
        ({"engine": "adam", "family": "mvn"}, "Adam's learning rate"),
        ({"engine": "vingd", "family": "mvn", "step_size": -1.0}, "step_size must be"),
        ({"engine": "vingd", "family": "mvn", "estimator": "magic"}, "estimator must be one of"),
        (
            {"engine": "adam", "family": "mvn", "step_size": 0.1, "estimator": "hvp"},
            "engine='vingd' only",
        ),
    ],
)
def test_bad_methods_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Method(**{"num_steps": 10, **kwargs})


def test_reference_forms_and_errors(conjugate):
    args = (conjugate.X, conjugate.y)
    with pytest.raises(ValueError, match="reference must map site names"):
        reference_moments([1.0], linear_regression, args)
    with pytest.raises(ValueError, match="'sigma' is not a latent or deterministic site"):
        reference_moments({"sigma": np.ones(10)}, linear_regression, args)
    with pytest.raises(ValueError, match=r"reference\['w'\] has shape \(2,\)"):
        reference_moments({"w": np.ones((10, 2))}, linear_regression, args)
    with pytest.raises(ValueError, match=r"at least 2 draws"):
        reference_moments({"b": np.ones(1)}, linear_regression, args)
    with pytest.raises(ValueError, match="non-empty sequence"):
        compare(linear_regression, *args, methods=[])
    exact = GaussianPosterior(  # the models' exact form: means, and cov in site order (w, b)
        {"w": conjugate.mean[1:], "b": conjugate.mean[0]}, conjugate.cov[np.ix_(ORDER, ORDER)]
    )
    moments = reference_moments(exact, linear_regression, args)
    np.testing.assert_allclose(moments["w"][1], np.sqrt(np.diag(conjugate.cov))[1:])
    draws = {"w": np.random.default_rng(0).normal(size=(500, 3)), "b": np.tile([0.0, 1.0], 250)}
    (w_mean, w_sd), (b_mean, b_sd) = reference_moments(draws, linear_regression, args).values()
    assert w_mean.shape == w_sd.shape == (3,) and b_mean == 0.5 and b_sd > 0


def test_smoothing_keeps_length_and_constants():
    trace = np.r_[np.zeros(100), np.ones(100)]
    out = smoothed(trace)
    assert out.shape == trace.shape
    np.testing.assert_allclose(out[:98], 0) and np.testing.assert_allclose(out[102:], 1)
    np.testing.assert_allclose(smoothed(np.full(7, 3.0)), 3.0)


def test_steps_to_one_nat_count_to_the_best_of_the_same_guide_family(comparison):
    """Each guide family has an optimum of its own (mean field's below full covariance's): a
    method's steps to 1 nat count to the best final ELBO of its family."""
    results = by_name(comparison)
    mean_field, exact = results[MEAN_FIELD], results[EXACT]
    best = comparison.family_best
    assert best[EXACT] == exact.elbo == comparison.best_elbo > mean_field.elbo
    assert best[MEAN_FIELD] == best[SHORT_ADAM] == mean_field.elbo
    for name in (MEAN_FIELD, SHORT_ADAM):
        r = results[name]
        assert r.steps_to_best == steps_to_within(r.losses, r.elbo, mean_field.elbo)
    assert mean_field.steps_to_best is not None and results[SHORT_ADAM].steps_to_best is None
