"""The README's "In Python" block runs as written, on a bundled model."""

import re
from pathlib import Path

import jax
import numpy as np

import vingd_models

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_python_block_runs_as_written():
    section = README.read_text().split("## In Python", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = vingd_models.get("breast_cancer_logistic")
    (X, y), kwargs = example.load()
    assert not kwargs
    namespace = {"model": example.model, "X": X, "y": y, "rng_key": jax.random.PRNGKey(0)}
    exec(compile(block, str(README), "exec"), namespace)
    fit, result = namespace["fit"], namespace["result"]
    assert fit.converged and np.isfinite(result.losses[-1])
    # SVI + NGD(0.05) for 2,000 steps and vingd.fit end near the same ELBO
    elbo, _ = namespace["vingd"].elbo(example.model, namespace["guide"], fit.params, X, y)
    assert abs(-result.losses[-200:].mean() - elbo) < 3
