"""`enable_compilation_cache`: a fresh process loads a fit's programs from disk instead of
compiling them, and the fit is the same."""

import json
import subprocess
import sys

import pytest

import vingd

# a fresh process: fits a conjugate model with the cache at argv[1]; prints the cache's hits and
# misses (JAX's monitoring events) and the fitted parameters
FIT = """
import json, sys
import jax, numpy as np, numpyro, numpyro.distributions as dist
import vingd

events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
vingd.enable_compilation_cache(sys.argv[1])

def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

result = vingd.fit(model, np.array([0.3, 1.2, 0.9]), guide=vingd.AutoNaturalNormal(model),
                   num_steps=60, progress_bar=False)
print(json.dumps({
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
    "params": [np.asarray(x).tolist() for x in jax.tree.leaves(result.params)],
}))
"""


def _fit_in_fresh_process(cache) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(cache)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_the_fit_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = _fit_in_fresh_process(cache)
    assert first["hits"] == 0 and first["misses"] > 0  # (an empty cache: every program compiled)
    assert any(cache.iterdir())
    second = _fit_in_fresh_process(cache)
    # every program the first process compiled is loaded, none compiled again, same result
    assert second["misses"] == 0
    assert second["hits"] >= first["misses"]
    assert second["params"] == first["params"]


def test_bad_cache_paths_are_refused(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        vingd.enable_compilation_cache(file)
    with pytest.raises(TypeError, match="path must be a directory path"):
        vingd.enable_compilation_cache(3)
