"""What a user waits for one fit in a fresh Python process: vingd against NumPyro SVI + Adam.

Each fit runs in its own new process and is timed from the call to the result: the guide's
set-up, compilation and the run (imports, data loading and JAX's start-up apart: the same for
both). In a fresh process every operation that runs outside a compiled program is compiled on
first use, so set-up can cost more than the fit itself; `make bench` reports compile seconds
and run seconds within one long process instead.

- vingd: `vingd.fit` with its defaults (it stops when converged; the exact prior median as
  start).
- Adam: `SVI.init` + `SVI.run` from numpyro's prior-median start (`init_to_median`), at the
  learning rate and for the number of steps `make bench` found it needs to come within 1 nat
  of the best ELBO (benchmarks/results.md); 10,000 steps where it never does.

Median of `--repeats` processes per fit, each cold (nothing on disk, as above) and warm: with
`vingd.enable_compilation_cache` on a directory that one earlier process of the same fit filled
(a script or notebook run again), for both libraries (it is JAX's cache, for any program).

    .venv/bin/python benchmarks/wall.py [--repeats N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ADAM_MAX_STEPS = 10_000


def child(engine, model_name, family, lr, steps, cache=None) -> dict:
    """One fit in this (fresh) process; its wall seconds from the call to the result (with the
    compilation cache in the directory `cache`, if given)."""
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.initialization import init_to_median

    import vingd
    import vingd_models
    from vingd.compare import GUIDES

    if cache:
        vingd.enable_compilation_cache(cache)
    example = vingd_models.get(model_name)
    args, kwargs = example.load()
    jnp.zeros(()).block_until_ready()  # JAX's start-up, outside the timing
    # each library's prior median: exact for vingd's default, from 15 draws for numpyro's
    init = {} if engine == "vingd" else {"init_loc_fn": init_to_median}
    guide = GUIDES[engine][family](example.model, **init)
    start = time.perf_counter()
    if engine == "vingd":
        result = vingd.fit(example.model, *args, guide=guide, progress_bar=False, **kwargs)
        jax.block_until_ready(result.params)
        return {
            "seconds": time.perf_counter() - start,
            "compile": result.compile_seconds,
            "run": result.run_seconds,
            "steps": result.num_steps,
        }
    svi = SVI(example.model, guide, optax.adam(lr), Trace_ELBO())
    run = svi.run(jax.random.PRNGKey(0), steps, *args, progress_bar=False, **kwargs)
    jax.block_until_ready(run.params)
    return {"seconds": time.perf_counter() - start, "steps": steps}


def adam_settings(results: Path) -> dict:
    """(model, family) -> (learning rate, steps to 1 nat or None) from `make bench`'s table."""
    row = re.compile(r"^\| (\S+) \| (\w+) \| \d+ \| (\S+) \(([\d.e-]+)\) \|", re.M)
    return {
        (m, family): (float(lr), None if steps == "—" else int(steps))
        for m, family, steps, lr in row.findall(results.read_text())
    }


def timed(engine, model_name, family, lr, steps, repeats, cache="") -> list[dict]:
    command = [sys.executable, __file__, "--child", engine, model_name, family, str(lr), str(steps)]
    runs = []
    for _ in range(repeats):
        out = subprocess.run([*command, cache], capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return runs


def warm(engine, model_name, family, lr, steps, repeats) -> list[dict]:
    """`timed` with a compilation cache that one earlier process of the same fit filled."""
    with tempfile.TemporaryDirectory() as cache:
        timed(engine, model_name, family, lr, steps, 1, cache)
        return timed(engine, model_name, family, lr, steps, repeats, cache)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument("--out", type=Path, default=HERE / "wall.md")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        engine, model_name, family, lr, steps, cache = args.child
        print(json.dumps(child(engine, model_name, family, float(lr), int(steps), cache)))
        return 0

    lines = [
        "| model | guide | vingd s (compile, run) | Adam s (steps, lr) | Adam / vingd "
        "| warm cache: vingd s (compile) | Adam s | Adam / vingd |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model_name, family), (lr, steps) in adam_settings(args.results).items():
        ours = timed("vingd", model_name, family, 0, 0, args.repeats)
        adam_steps = steps or ADAM_MAX_STEPS
        theirs = timed("adam", model_name, family, lr, adam_steps, args.repeats)
        ours_warm = warm("vingd", model_name, family, 0, 0, args.repeats)
        theirs_warm = warm("adam", model_name, family, lr, adam_steps, args.repeats)
        v = statistics.median(r["seconds"] for r in ours)
        a = statistics.median(r["seconds"] for r in theirs)
        vw = statistics.median(r["seconds"] for r in ours_warm)
        aw = statistics.median(r["seconds"] for r in theirs_warm)
        compile_warm = statistics.median(r["compile"] for r in ours_warm)
        compile_ = statistics.median(r["compile"] for r in ours)
        run = statistics.median(r["run"] for r in ours)
        reach = f"{steps:,}" if steps else f"{ADAM_MAX_STEPS:,}, never within 1 nat"
        lines.append(
            f"| {model_name} | {family} | {v:.2f} ({compile_:.2f}, {run:.3f}) "
            f"| {a:.2f} ({reach}, {lr:g}) | {a / v:.2g}× "
            f"| {vw:.2f} ({compile_warm:.2f}) | {aw:.2f} | {aw / vw:.2g}× |"
        )
        print(lines[-1], flush=True)
    report = (
        "# Fresh-process wall time, call to result: vingd vs NumPyro SVI + Adam\n\n"
        f"Median of {args.repeats} processes per fit, cold and with a warm compilation cache "
        "(`vingd.enable_compilation_cache`, filled by one earlier process of the same fit); "
        "see benchmarks/wall.py.\n\n" + "\n".join(lines) + "\n"
    )
    args.out.write_text(report)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
