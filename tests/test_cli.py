"""The `vingd` command end to end on a small model in a temporary directory, and its errors."""

import numpy as np
import pytest
import xarray as xr
from conftest import linear_regression
from test_compare import exact_reference

import vingd_models
from vingd import cli

TINY = "tiny_regression"


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch, conjugate):
    """A conjugate regression with its exact posterior as the reference, registered as TINY."""
    example = vingd_models.ExampleModel(
        name=TINY,
        description="Bayesian linear regression with known noise (40 x 3)",
        model=linear_regression,
        load=lambda: ((conjugate.X, conjugate.y), {}),
        reference=lambda: exact_reference(conjugate),
    )
    monkeypatch.setitem(vingd_models.REGISTRY, TINY, example)


def test_models_lists_the_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in vingd_models.REGISTRY)


def test_fit_writes_datatree_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", TINY, "--num-steps", "5", "--draws", "200", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "PSIS k̂" in printed and "effective sample size" in printed and "w[2]" in printed
    assert {p.name for p in out.iterdir()} == {
        "posterior.nc",
        "summary.csv",
        "elbo.png",
        "forest.png",
    }
    tree = xr.open_datatree(out / "posterior.nc")
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(
        tree.children
    )
    assert tree["posterior"].sizes["draw"] == 200 and tree.attrs["model"] == TINY
    assert (out / "summary.csv").read_text().splitlines()[0].split(",")[:3] == [
        "variable",
        "mean",
        "sd",
    ]


def test_compare_writes_a_report(tmp_path, capsys):
    out = tmp_path / "compare"
    argv = [
        *("compare", TINY, "--family", "mvn", "--vingd-steps", "5", "--adam-steps", "50"),
        *("--lr", "0.01", "--draws", "200", "--out", str(out)),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith(f"Report: {out / 'report.md'}")
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| vingd", "| SVI"))]
    assert len(rows) == 2
    elbos = [float(row.split("|")[5].split("±")[0]) for row in rows]
    assert np.all(np.isfinite(elbos))
    for image in ("traces.png", "forest.png"):
        assert f"]({image})" in report and (out / image).stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "no_such_model"], "Unknown model 'no_such_model'"),
        (["fit", "no_such_model"], "Unknown model 'no_such_model'"),
        (["fit", TINY, "--guide", "full"], "argument --guide: invalid choice: 'full'"),
        (["fit", TINY, "--draws", "many"], "argument --draws: 'many' is not an integer"),
        (["fit", TINY, "--draws", "3"], "argument --draws: must be an integer >= 25, got 3"),
        (["compare", TINY, "--draws", "5"], "argument --draws: must be an integer >= 25"),
        (["fit", TINY, "--num-steps", "0"], "argument --num-steps: must be an integer >= 1"),
        (["fit", TINY, "--estimator", "hvp"], "does not work with --guide mvn; use --guide mea"),
        (["compare", TINY, "--lr", "-1"], "Adam's learning rate) must be a number > 0"),
        (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vingd: error: ") and message in err and "\n" not in err


def test_unwritable_out_fails_before_fitting(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["fit", TINY, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vingd: error: ") and str(blocker) in err and "\n" not in err


def test_breast_cancer_data_is_standardised():
    X, y, names = vingd_models.logistic_regression.load_arrays()
    assert X.shape == (569, 30) and len(names) == 30
    assert set(np.unique(y)) == {0.0, 1.0} and int(y.sum()) == 357
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(X.std(0), 1, atol=1e-12)
