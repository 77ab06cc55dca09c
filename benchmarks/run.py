"""vingd against NumPyro SVI + Adam, side by side in one process: the README's benchmark table.

For each model and guide family (full covariance, mean field, low rank + diagonal), vingd
(`AutoNaturalMVN`, `AutoNaturalNormal`, `AutoNaturalLowRankMVN`; adaptive ρ, default estimator)
and SVI + Adam (`AutoMultivariateNormal`, `AutoNormal`, `AutoLowRankMultivariateNormal`;
learning rates 1e-3, 1e-2, 5e-2) run from one start with one key
(`vingd.compare`). Reported per method: steps and seconds until the smoothed ELBO trace is within
1 nat of the best final ELBO of any method of that family (compile apart and included),
final ELBO from 2,000 draws, PSIS k̂, and accuracy against a reference (posteriordb's Stan draws,
or a long NUTS run cached under benchmarks/references/).

`--suite posteriordb` runs every posteriordb posterior in `models/` (both Gaussian families) and
writes benchmarks/posteriordb.md: where vingd's defaults stand on models it was not tuned on.

    .venv/bin/python benchmarks/run.py [--suite main|posteriordb] [--models NAME ...]
                                       [--adam-steps N] [--out FILE]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

import vingd_models
from vingd.compare import Method, compare
from vingd.validation import trace_model

HERE = Path(__file__).parent
LEARNING_RATES = (1e-3, 1e-2, 5e-2)
#: model -> the guide families to compare (full covariance is out of reach at 2,049 weights;
#: low rank is rank √d ≈ 45 there)
SUITE = {
    "breast_cancer_logistic": ("mvn", "meanfield"),
    "eight_schools-eight_schools_noncentered": ("mvn", "meanfield"),
    "diamonds-diamonds": ("mvn", "meanfield"),
    "breast_cancer_bnn": ("meanfield", "lowrank"),
}
SUITES = {
    "main": (SUITE, "results.md"),
    "posteriordb": (
        {name: ("mvn", "meanfield") for name in vingd_models.POSTERIORDB},
        "posteriordb.md",
    ),
}


def nuts_reference(example, num_samples=2000, seed=0) -> dict:
    """A long NUTS run, cached as .npz: site -> draws (num_samples, *shape)."""
    path = HERE / "references" / f"{example.name}.npz"
    if path.exists():
        with np.load(path) as cached:
            return dict(cached)
    args, kwargs = example.load()
    mcmc = MCMC(NUTS(example.model), num_warmup=1000, num_samples=num_samples, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), *args, **kwargs)
    draws = {k: np.asarray(v, np.float32) for k, v in mcmc.get_samples().items()}
    np.savez_compressed(path, **draws)
    return draws


def reference_for(example, family_names):
    if example.reference is not None:
        reference = example.reference()
        if not isinstance(reference, dict):  # an exact posterior
            return reference
        # posteriordb draws also hold deterministic sites
        args, kwargs = example.load()
        latent = trace_model(example.model, args, kwargs)
        return {k: v for k, v in reference.items() if latent[k]["type"] == "sample"}
    if "mvn" in family_names:  # small enough for NUTS
        return nuts_reference(example)
    return None


def methods_for(family, adam_steps):
    adam = [Method("adam", family, adam_steps, lr) for lr in LEARNING_RATES]
    return [Method("vingd", family, 1000), *adam]


def _fastest(rows, engine, family, cost):
    """The row of `engine` on `family` that gets within 1 nat at the least `cost(row)`, else
    (none does) the best final ELBO."""
    rows = [r for r in rows if r["engine"] == engine and r["family"] == family]
    reached = [r for r in rows if r["seconds_to_best"] is not None]
    if reached:
        return min(reached, key=cost)
    return max(rows, key=lambda r: r["elbo"] if math.isfinite(r["elbo"]) else -math.inf)


def summary_row(name, family, rows):
    """Each ratio against the Adam learning rate best at that measure: fewest steps, least run
    time, least time with compile (Adam's compile is the same program at every rate, so the
    last would otherwise be picked by compile-time noise)."""
    measures = {
        "steps": lambda r: r["steps_to_best"],
        "run": lambda r: r["seconds_to_best"],
        "with compile": lambda r: r["seconds_to_best"] + r["compile_seconds"],
    }
    ours = _fastest(rows, "vingd", family, measures["run"])  # (one vingd row per family)
    theirs = {k: _fastest(rows, "adam", family, cost) for k, cost in measures.items()}

    def ratio(measure):
        if ours["seconds_to_best"] is None or theirs[measure]["seconds_to_best"] is None:
            return "—"
        value = measures[measure](theirs[measure]) / measures[measure](ours)
        return f"{value:.0f}×" if value >= 10 else f"{value:.2g}×"

    fastest = theirs["run"]
    best = max((r for r in rows if r["engine"] == "adam"), key=lambda r: r["elbo"])
    errors = "—"
    if "max_abs_mean_error" in ours:
        errors = f"{ours['max_abs_mean_error']:.2f} / {best['max_abs_mean_error']:.2f}"
    return (
        f"| {name} | {family} | {_cell(ours['steps_to_best'])} "
        f"| {_cell(fastest['steps_to_best'])} ({fastest['method'].split('lr=')[-1].rstrip(')')}) "
        f"| {ratio('steps')} | {ratio('run')} | {ratio('with compile')} "
        f"| {ours['elbo'] - fastest['elbo']:+.2f} | {errors} |"
    )


def _cell(value):
    return "—" if value is None else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=list(SUITES), default="main")
    parser.add_argument("--models", nargs="+", help="a subset of the suite's models")
    parser.add_argument("--adam-steps", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="default: benchmarks/<the suite's file>")
    args = parser.parse_args(argv)
    suite, out = SUITES[args.suite]
    out = args.out or HERE / out
    unknown = sorted(set(args.models or ()) - set(suite))
    if unknown:
        parser.error(f"not in the {args.suite!r} suite: {unknown}; it has {sorted(suite)}")

    sections, summary = [], []
    for name in args.models or suite:
        example = vingd_models.get(name)
        families = suite[name]
        start = time.perf_counter()
        reference = reference_for(example, families)
        model_args, model_kwargs = example.load()
        source = "none" if reference is None else "posteriordb"
        if reference is not None and example.reference is None:
            source = "NUTS, 2,000 draws"
        tables = []
        for family in families:
            comparison = compare(
                example.model,
                *model_args,
                methods=methods_for(family, args.adam_steps),
                reference=reference,
                **model_kwargs,
            )
            rows = [
                r.row() | {"engine": r.method.engine, "family": r.method.family}
                for r in comparison.results
            ]
            summary.append(summary_row(name, family, rows))
            tables.append(comparison.to_markdown())
        sections.append(
            f"### {name}\n\n{example.description}. Reference: {source}. "
            f"({time.perf_counter() - start:.0f} s)\n\n" + "\n\n".join(tables) + "\n"
        )
        print(sections[-1], flush=True)

    header = (
        "| model | guide | vingd steps to 1 nat | Adam steps to 1 nat (fastest lr) | steps ratio "
        "| seconds ratio (run) | seconds ratio (with compile) | ELBO vingd − Adam "
        "| max \\|mean error\\| (sd): vingd / best Adam |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    device = jax.devices()[0].device_kind
    report = (
        f"# vingd vs NumPyro SVI + Adam\n\nMachine: {device}, "
        f"{jax.device_count()} device(s); Adam {args.adam_steps} steps per learning rate. "
        "Each ratio is against the learning rate best at that measure; the fastest lr is the "
        "one with the least run time to 1 nat; the ELBO difference is against it, the error "
        "(against the reference, over latents) against the Adam run with the best final ELBO."
        "\n\n"
        f"{header}\n" + "\n".join(summary) + "\n\n" + "\n".join(sections)
    )
    out.write_text(report)
    print(f"\n{header}\n" + "\n".join(summary))
    print(f"\nWrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
