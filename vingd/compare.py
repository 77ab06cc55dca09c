"""vingd against NumPyro SVI + Adam, side by side on the same model, data and key.

Each method is timed with compilation apart from running (ahead-of-time `lower().compile()` for
Adam's scan of `SVI.update`, the same split `vingd.fit` reports), and every method's final ELBO is
estimated the same way, by `vingd.elbo` with many particles.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from vingd.guides import AutoNaturalMVN, AutoNaturalNormal
from vingd.infer import elbo, fit

VINGD_GUIDES = {"mvn": AutoNaturalMVN, "meanfield": AutoNaturalNormal}
ADAM_GUIDES = {"mvn": AutoMultivariateNormal, "meanfield": AutoNormal}


@dataclasses.dataclass(frozen=True)
class Method:
    """One competitor: `engine` is "vingd" or "adam"; `family` is "mvn" or "meanfield"."""

    engine: str
    family: str
    num_steps: int
    step_size: float | None = None  # ρ for vingd (None: the guide's default), lr for Adam

    @property
    def name(self) -> str:
        guide = (VINGD_GUIDES if self.engine == "vingd" else ADAM_GUIDES)[self.family].__name__
        rate = (
            ""
            if self.step_size is None
            else f" ({'ρ' if self.engine == 'vingd' else 'lr'}={self.step_size:g})"
        )
        label = "vingd" if self.engine == "vingd" else "SVI+Adam"
        return f"{label} {guide}{rate}"


DEFAULT_METHODS = (
    Method("vingd", "mvn", 100),
    Method("vingd", "meanfield", 300),
    Method("adam", "mvn", 5000, 1e-2),
    Method("adam", "meanfield", 5000, 1e-2),
)


@dataclasses.dataclass(frozen=True)
class MethodResult:
    method: Method
    guide: object
    params: dict
    losses: np.ndarray  # −ELBO estimate per step
    compile_seconds: float
    run_seconds: float
    elbo: float  # from `num_particles` draws
    elbo_se: float


def _run_adam(model, method, args, kwargs, rng_key):
    guide = ADAM_GUIDES[method.family](model)
    svi = SVI(model, guide, optax.adam(method.step_size), Trace_ELBO())
    state = svi.init(rng_key, *args, **kwargs)

    def run(state, args, kwargs):
        def step(state, _):
            return svi.update(state, *args, **kwargs)

        return jax.lax.scan(step, state, length=method.num_steps)

    start = time.perf_counter()
    compiled = jax.jit(run).lower(state, args, kwargs).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    state, losses = jax.block_until_ready(compiled(state, args, kwargs))
    run_seconds = time.perf_counter() - start
    return guide, svi.get_params(state), np.asarray(losses), compile_seconds, run_seconds


def _run_vingd(model, method, args, kwargs, rng_key):
    guide = VINGD_GUIDES[method.family](model)
    result = fit(
        model,
        *args,
        guide=guide,
        num_steps=method.num_steps,
        step_size=method.step_size,
        rng_key=rng_key,
        **kwargs,
    )
    return guide, result.params, result.losses, result.compile_seconds, result.run_seconds


def compare(
    model,
    *args,
    methods: Sequence[Method] = DEFAULT_METHODS,
    rng_key=None,
    num_particles: int = 2000,
    **kwargs,
) -> list[MethodResult]:
    """Fit `model(*args, **kwargs)` with each method; one key and one ELBO estimator for all."""
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    fit_key, elbo_key = jax.random.split(rng_key)
    results = []
    for method in methods:
        runner = {"vingd": _run_vingd, "adam": _run_adam}[method.engine]
        guide, params, losses, compile_seconds, run_seconds = runner(
            model, method, args, kwargs, fit_key
        )
        value, se = elbo(
            model, guide, params, *args, rng_key=elbo_key, num_particles=num_particles, **kwargs
        )
        results.append(
            MethodResult(method, guide, params, losses, compile_seconds, run_seconds, value, se)
        )
    return results


def format_table(results: Sequence[MethodResult]) -> str:
    """A Markdown table: method, steps, seconds (compile apart), final ELBO ± standard error."""
    header = "| method | steps | compile s | run s | final ELBO |\n|---|---:|---:|---:|---:|"
    rows = [
        f"| {r.method.name} | {r.method.num_steps} | {r.compile_seconds:.2f} | {r.run_seconds:.3f} "
        f"| {r.elbo:.2f} ± {r.elbo_se:.2f} |"
        for r in results
    ]
    return "\n".join([header, *rows])
