"""The `vingd` command: `vingd models` and `vingd compare MODEL`."""

from __future__ import annotations

import argparse
import sys


def _models():
    import models

    return models


def cmd_models(_args) -> None:
    for example in _models().REGISTRY.values():
        print(f"{example.name:28s} {example.description}")


def cmd_compare(args) -> None:
    import vingd.compare as cmp

    example = _models().get(args.model)
    model_args, model_kwargs = example.load()
    methods = [
        cmp.Method("vingd", "mvn", args.vingd_steps),
        cmp.Method("vingd", "meanfield", 3 * args.vingd_steps),
        *(
            cmp.Method("adam", family, args.adam_steps, lr)
            for family in ("mvn", "meanfield")
            for lr in args.lr
        ),
    ]
    print(f"Fitting {example.name}: {example.description}", flush=True)
    results = cmp.compare(
        example.model, *model_args, methods=methods, num_particles=args.particles, **model_kwargs
    )
    print(cmp.format_table(results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vingd", description="Natural-gradient VI for NumPyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the bundled models").set_defaults(func=cmd_models)
    p = sub.add_parser("compare", help="vingd against NumPyro SVI + Adam on a bundled model")
    p.add_argument("model", help="a name from `vingd models`")
    p.add_argument("--vingd-steps", type=int, default=100, help="vingd steps (mean-field gets 3x)")
    p.add_argument("--adam-steps", type=int, default=5000)
    p.add_argument("--lr", type=float, nargs="+", default=[1e-2], help="Adam learning rates")
    p.add_argument("--particles", type=int, default=2000, help="particles for the final ELBO")
    p.set_defaults(func=cmd_compare)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (KeyError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        print(f"vingd: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
