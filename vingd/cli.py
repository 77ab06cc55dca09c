"""The `vingd` command: `vingd models`, `vingd fit MODEL`, `vingd compare MODEL`.

A bad model name or option prints one line, `vingd: error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

import vingd_models
from vingd import diagnostics, plots
from vingd.compare import GUIDES, WITHIN, compare, default_methods
from vingd.estimators import ESTIMATORS, works_with
from vingd.infer import fit


class UsageError(Exception):
    """A bad command line, reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`).")


def _out_dir(path: str | None) -> Path | None:
    """The output directory, made before any fitting so that a bad path fails fast."""
    if path is None:
        return None
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_models(_args) -> None:
    width = max(map(len, vingd_models.REGISTRY))
    for example in vingd_models.REGISTRY.values():
        print(f"{example.name:{width}s}  {example.description}")


def cmd_fit(args) -> None:
    # (before any work: `fit` would find it only after loading the data)
    fits = [g for g, cls in GUIDES["vingd"].items() if works_with(args.estimator, cls.family)]
    if args.guide not in fits:
        raise UsageError(
            f"--estimator {args.estimator} does not work with --guide {args.guide}; use "
            + " or ".join(f"--guide {g}" for g in fits)
            + "."
        )
    example = vingd_models.get(args.model)
    out = _out_dir(args.out)
    model_args, model_kwargs = example.load()
    guide = GUIDES["vingd"][args.guide](example.model)
    fit_key, draw_key = jax.random.split(jax.random.PRNGKey(args.seed))
    print(f"Fitting {example.name} with {type(guide).__name__}: {example.description}", flush=True)
    result = fit(
        example.model,
        *model_args,
        guide=guide,
        num_steps=args.num_steps,
        step_size=args.step_size,
        estimator=args.estimator,
        rng_key=fit_key,
        **model_kwargs,
    )
    tree = diagnostics.to_datatree(
        example.model,
        guide,
        result,
        *model_args,
        num_samples=args.draws,
        rng_key=draw_key,
        attrs={"model": example.name, "step_size": args.step_size, "seed": args.seed},
        **model_kwargs,
    )
    summary = diagnostics.summary(tree)
    info = tree.attrs
    print(summary.to_string())
    print(
        f"ELBO {info['elbo']:.2f} ± {info['elbo_se']:.2f} after {len(result.losses)} steps "
        f"({result.compile_seconds:.2f} s compile, {result.run_seconds:.3f} s run); "
        f"PSIS k̂ {info['psis_khat']:.2f} ({info['psis_verdict']}; effective sample size "
        f"{info['psis_ess']:.0f} of {info['num_draws']})."
    )
    if out is not None:
        tree.to_netcdf(out / "posterior.nc")
        summary.to_csv(out / "summary.csv", index_label="variable")
        trace = (-result.losses, result.step_seconds)
        plots.plot_traces({type(guide).__name__: trace}, info["elbo"]).savefig(out / "elbo.png")
        diagnostics.save_forest(tree, out / "forest.png")
        print(f"Wrote posterior.nc (ArviZ DataTree), summary.csv, elbo.png, forest.png to {out}/")


def _report(example, comparison, figures, num_draws: int) -> str:
    notes = (
        f"Every method starts from the same point (a prior median, scale 0.1) with the same key. "
        f"Final ELBO ± standard error from {num_draws} draws of each fitted q; compile time is "
        f"apart from run time; *to {WITHIN:g} nat* is the first step (and run second) at which "
        f"the smoothed ELBO trace comes within {WITHIN:g} nat of the best final ELBO of its "
        "guide family (full covariance and mean field each have their own optimum). PSIS k̂ "
        "< 0.5 is good, < 0.7 ok, else unreliable (Yao et al. 2018)."
    )
    if comparison.results[0].mean_error is not None:
        notes += (
            " Against the reference posterior: the largest |E_q − E_ref| / sd_ref over latents, "
            "and the range of sd_q / sd_ref (1 is exact)."
        )
    return (
        "\n\n".join(
            [
                f"# vingd compare: {example.name}",
                example.description,
                notes,
                comparison.to_markdown(),
                *(f"![{name}]({name})" for name in figures),
            ]
        )
        + "\n"
    )


def cmd_compare(args) -> None:
    example = vingd_models.get(args.model)
    out = _out_dir(args.out)
    model_args, model_kwargs = example.load()
    reference = None if example.reference is None else example.reference()
    methods = [
        m
        for m in default_methods(args.vingd_steps, args.adam_steps, args.lr)
        if m.family in args.family
    ]
    print(f"Comparing on {example.name}: {example.description}", flush=True)
    comparison = compare(
        example.model,
        *model_args,
        methods=methods,
        reference=reference,
        rng_key=jax.random.PRNGKey(args.seed),
        num_draws=args.draws,
        **model_kwargs,
    )
    print(comparison.to_markdown())
    if out is not None:
        figures = {"traces.png": plots.plot_traces(comparison.traces, comparison.family_best)}
        if reference is not None:
            figures["forest.png"] = plots.plot_forest(comparison)
        for name, figure in figures.items():
            figure.savefig(out / name)
        report = out / "report.md"
        report.write_text(_report(example, comparison, figures, args.draws))
        print(f"Report: {report}")


def _at_least(low: int):
    """An argparse type: an integer >= `low` (checked before any work, not after a fit)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vingd", description="Natural-gradient VI for NumPyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the bundled models").set_defaults(func=cmd_models)

    p = sub.add_parser("fit", help="fit a bundled model; write an ArviZ DataTree, summary, plots")
    p.add_argument("model", help="a name from `vingd models`")
    p.add_argument("--guide", choices=list(GUIDES["vingd"]), default="mvn")
    p.add_argument(
        "--num-steps", type=_at_least(1), default=1000, help="the most steps (default 1000)"
    )
    p.add_argument("--step-size", type=float, help="fixed ρ in (0, 1] (default: adaptive)")
    p.add_argument(
        "--estimator", choices=sorted(ESTIMATORS), help="∇_μ estimator (default: by guide and d)"
    )
    p.add_argument(
        "--draws",
        type=_at_least(diagnostics.MIN_DRAWS),
        default=1000,
        help="posterior draws (default 1000)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for posterior.nc, summary.csv and the plots")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("compare", help="vingd against NumPyro SVI + Adam on a bundled model")
    p.add_argument("model", help="a name from `vingd models`")
    p.add_argument(
        "--family", choices=["mvn", "meanfield"], nargs="+", default=["mvn", "meanfield"]
    )
    p.add_argument("--vingd-steps", type=_at_least(1), default=1000, help="the most vingd steps")
    p.add_argument("--adam-steps", type=_at_least(1), default=5000)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2], help="Adam rates")
    p.add_argument(
        "--draws",
        type=_at_least(diagnostics.MIN_DRAWS),
        default=2000,
        help="draws per fit for ELBO, PSIS",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for report.md and its plots")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        args.func(args)
    except (UsageError, KeyError, ValueError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"vingd: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
