"""The example models: each loads, traces and takes a vingd step; references match the models;
(slow) each posteriordb translation matches its gold-standard reference under NUTS."""

import json
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vingd
import vingd_models
from vingd.validation import trace_model
from vingd_models import faithfulness, linear_regression, posteriordb
from vingd_models.references import GaussianPosterior


def test_every_installed_package_is_under_a_vingd_name():
    # a top-level `models` package would shadow, or be shadowed by, a user's own `models`
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    assert packages and all(name.split(".")[0] in ("vingd", "vingd_models") for name in packages)
    assert vingd_models.__name__ == "vingd_models" and vingd_models.get("breast_cancer_logistic")


def _trace(example):
    args, kwargs = example.load()
    return trace_model(example.model, args, kwargs)


def _site_shapes(trace):
    return {
        name: jnp.shape(site["value"])
        for name, site in trace.items()
        if site["type"] == "deterministic" or (site["type"] == "sample" and not site["is_observed"])
    }


def test_registry_has_the_issue_s_models():
    assert len(vingd_models.POSTERIORDB) == 12
    posteriors = {p.stem for p in (posteriordb.ROOT / "posteriors").glob("*-*.json")}
    assert set(vingd_models.POSTERIORDB) == posteriors
    for example in vingd_models.REGISTRY.values():
        assert example.description and "\n" not in example.description
    assert vingd_models.get("breast_cancer_logistic").reference is None
    with pytest.raises(KeyError, match="known models"):
        vingd_models.get("rats")


@pytest.mark.parametrize("name", list(vingd_models.REGISTRY))
def test_model_loads_traces_and_takes_a_vingd_step(name):
    example = vingd_models.get(name)
    trace = _trace(example)
    observed = [s for s in trace.values() if s["type"] == "sample" and s["is_observed"]]
    assert observed and all(np.all(np.isfinite(s["value"])) for s in observed)
    log_joint = sum(
        s["fn"].log_prob(s["value"]).sum() for s in trace.values() if s["type"] == "sample"
    )
    assert np.isfinite(log_joint)

    args, kwargs = example.load()
    guide = vingd.AutoNaturalNormal(example.model)
    fit = vingd.fit(
        example.model, *args, guide=guide, num_steps=1, num_samples=2, **kwargs
    )  # num_samples=2: one antithetic pair, the cheapest step
    assert np.all(np.isfinite(fit.losses))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(fit.params))


@pytest.mark.parametrize("name", vingd_models.POSTERIORDB)
def test_posteriordb_reference_has_the_model_s_sites(name):
    example = vingd_models.get(name)
    sites = _site_shapes(_trace(example))
    draws = example.reference()
    dimensions = json.loads((posteriordb.ROOT / "posteriors" / f"{name}.json").read_text())
    assert {k: int(np.prod(v.shape[1:])) for k, v in draws.items()} == dimensions["dimensions"]
    for site, value in draws.items():
        assert value.shape == (10_000, *sites[site]), site
        assert np.all(np.isfinite(value))


def test_reference_chains_keep_stan_s_order():
    chains = posteriordb.reference_chains("eight_schools-eight_schools_noncentered")
    assert chains["theta"].shape == (10, 1000, 8) and chains["tau"].shape == (10, 1000)
    draws = posteriordb.reference_draws("eight_schools-eight_schools_noncentered")
    np.testing.assert_array_equal(draws["theta"][1000:2000, 2], chains["theta"][1, :, 2])
    assert np.all(chains["tau"] > 0)
    # school 1 (y = 28) is shrunk toward, but stays above, school 3 (y = -3)
    assert draws["theta"][:, 0].mean() > draws["theta"][:, 2].mean()


def test_conjugate_reference_is_the_exact_posterior():
    """With ρ = 1, one vingd step on a conjugate Gaussian model is exact: an independent check
    of the closed form and of its flat (AutoContinuous) order."""
    example = vingd_models.get("statecrime_linear")
    reference = example.reference()
    assert isinstance(reference, GaussianPosterior)
    args, kwargs = example.load()
    guide = vingd.AutoNaturalMVN(example.model)
    fit = vingd.fit(example.model, *args, guide=guide, num_steps=1, step_size=1.0, **kwargs)
    posterior = guide.get_posterior(fit.params)
    np.testing.assert_allclose(posterior.mean, reference.flat_mean, atol=1e-10)
    np.testing.assert_allclose(posterior.covariance_matrix, reference.cov, atol=1e-10)

    draws = reference.sample(seed=0, num_draws=20_000)
    assert draws["w"].shape == (20_000, len(linear_regression.COVARIATES))
    se = reference.sd["w"] / np.sqrt(20_000)
    assert np.all(np.abs(draws["w"].mean(0) - reference.mean["w"]) < 5 * se)


@pytest.mark.slow
@pytest.mark.parametrize("name", vingd_models.POSTERIORDB)
def test_posteriordb_translation_is_faithful(name):
    result = faithfulness.check(vingd_models.get(name), seed=0)
    failed = [c for c in result.checks if not c.faithful]
    assert not failed, f"{name}: not within Monte Carlo error of the reference: {failed}"
