"""Seconds per step of vingd's estimators against an Adam AutoNormal step, on the 2,049-weight BNN.

Each method runs `--steps` steps after compilation, `--repeats` times in one process; reported
are the median seconds per step and its ratio to SVI + Adam (`AutoNormal`, one particle,
`Trace_ELBO`, a `lax.scan` of updates). vingd runs with a fixed ρ (no ELBO check) and one
draw (as Adam's one particle; IVON's setting) or one antithetic pair, the cheapest settings, and
with its defaults (adaptive ρ: a second evaluation of the log joint per draw for the
common-random-numbers check; 16 draws).

    .venv/bin/python benchmarks/step_cost.py [--steps N] [--repeats R] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import vingd
import vingd_models

HERE = Path(__file__).parent
#: (label, estimator, num_samples, step_size): None step size = adaptive
SETTINGS = [
    ("ggn, 1 draw, fixed ρ", "ggn", 1, 0.05),
    ("gradsq, 1 draw, fixed ρ", "gradsq", 1, 0.05),
    ("stein, 1 draw, fixed ρ", "stein", 1, 0.05),
    ("ggn, 2 draws, fixed ρ", "ggn", 2, 0.05),
    ("gradsq, 2 draws, fixed ρ", "gradsq", 2, 0.05),
    ("stein, 2 draws, fixed ρ", "stein", 2, 0.05),
    ("hvp, 2 draws, fixed ρ", "hvp", 2, 0.05),
    ("ggn, 16 draws, adaptive ρ (default)", "ggn", 16, None),
    ("stein, 16 draws, adaptive ρ", "stein", 16, None),
]


def adam_seconds_per_step(model, args, kwargs, steps, repeats):
    svi = SVI(model, AutoNormal(model), optax.adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), *args, **kwargs)

    def run(state):
        return jax.lax.scan(lambda s, _: svi.update(s, *args, **kwargs), state, length=steps)

    compiled = jax.jit(run).lower(state).compile()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state))
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def vingd_seconds_per_step(model, args, kwargs, steps, repeats, estimator, draws, step_size):
    times = []
    for _ in range(repeats + 1):  # the first run compiles
        result = vingd.fit(
            model,
            *args,
            guide=vingd.AutoNaturalNormal(model),
            num_steps=steps,
            window=steps,
            tol=None,
            estimator=estimator,
            num_samples=draws,
            step_size=step_size,
            progress_bar=False,
            **kwargs,
        )
        times.append(result.run_seconds / result.num_steps)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "step_cost.md")
    args = parser.parse_args(argv)

    example = vingd_models.get("breast_cancer_bnn")
    model_args, model_kwargs = example.load()
    adam = adam_seconds_per_step(example.model, model_args, model_kwargs, args.steps, args.repeats)
    rows = [f"| SVI + Adam AutoNormal (1 particle) | {1e3 * adam:.3f} | 1.0× |"]
    for label, estimator, draws, step_size in SETTINGS:
        seconds = vingd_seconds_per_step(
            example.model, model_args, model_kwargs, args.steps, args.repeats,
            estimator, draws, step_size,
        )  # fmt: skip
        rows.append(f"| vingd {label} | {1e3 * seconds:.3f} | {seconds / adam:.1f}× |")
        print(rows[-1], flush=True)
    report = (
        f"# Cost per step, {example.name} (2,049 weights, 569 observations)\n\n"
        f"Machine: {jax.devices()[0].device_kind}; median of {args.repeats} runs of "
        f"{args.steps} steps, compilation excluded.\n\n"
        "| method | ms per step | × Adam step |\n|---|---:|---:|\n" + "\n".join(rows) + "\n"
    )
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
