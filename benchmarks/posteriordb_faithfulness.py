"""Are the posteriordb translations in `models/` faithful? NUTS against the reference draws.

Runs one short NUTS chain per posterior and prints, per posterior, the largest standardised
mean error (in Monte Carlo standard errors), the range of sd_nuts / sd_ref, the largest sd
error in standard errors, the smallest ESS and the divergences (`vingd_models.faithfulness`).

    python benchmarks/posteriordb_faithfulness.py [--warmup 1000] [--samples 1000] [NAME ...]
"""

from __future__ import annotations

import argparse
import sys

import numpyro

import vingd_models
from vingd_models import faithfulness


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="posteriors (default: all twelve)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every parameter")
    args = parser.parse_args(argv)
    numpyro.enable_x64()
    names = args.names or vingd_models.POSTERIORDB
    header = f"{'posterior':42s} {'dim':>4s} {'max z':>6s} {'sd ratio':>13s} {'max sd z':>8s}"
    print(header + f" {'min ESS':>7s} {'div':>4s} {'sec':>6s}  faithful")
    all_faithful = True
    for name in names:
        result = faithfulness.check(
            vingd_models.get(name), seed=args.seed, num_warmup=args.warmup, num_samples=args.samples
        )
        c = result.checks
        ratios = [x.sd_ratio for x in c]
        print(
            f"{name:42s} {len(c):4d} {max(x.z for x in c):6.2f} "
            f"{min(ratios):6.3f}-{max(ratios):6.3f} {max(x.sd_z for x in c):8.2f} "
            f"{min(x.ess for x in c):7.0f} {result.num_divergences:4d} {result.seconds:6.1f}  "
            f"{'yes' if result.faithful else 'NO'}",
            flush=True,
        )
        if args.verbose or not result.faithful:
            for x in c:
                print(
                    f"    {x.name:14s} ref {x.mean_ref:10.4g} ± {x.sd_ref:9.3g}   nuts "
                    f"{x.mean_nuts:10.4g} ± {x.sd_nuts:9.3g}   z {x.z:5.2f}  sd z {x.sd_z:5.2f}"
                )
        all_faithful &= result.faithful
    return 0 if all_faithful else 1


if __name__ == "__main__":
    sys.exit(main())
