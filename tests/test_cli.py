"""The `vingd` command end to end, and the bundled example model."""

import numpy as np

import models
from vingd import cli


def test_models_lists_the_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in models.REGISTRY)


def test_compare_prints_a_row_per_method(capsys):
    argv = [
        "compare",
        "breast_cancer_logistic",
        "--vingd-steps",
        "5",
        "--adam-steps",
        "50",
        "--particles",
        "20",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = [
        line for line in out.splitlines() if line.startswith("| vingd") or line.startswith("| SVI")
    ]
    assert len(rows) == 4
    elbos = [float(row.split("|")[-2].split("±")[0]) for row in rows]
    assert np.all(np.isfinite(elbos))


def test_unknown_model_is_one_clear_line(capsys):
    assert cli.main(["compare", "no_such_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vingd: error: Unknown model 'no_such_model'") and "\n" not in err


def test_breast_cancer_data_is_standardised():
    X, y, names = models.logistic_regression.load_arrays()
    assert X.shape == (569, 30) and len(names) == 30
    assert set(np.unique(y)) == {0.0, 1.0} and int(y.sum()) == 357
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(X.std(0), 1, atol=1e-12)
