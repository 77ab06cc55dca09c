"""Native-support families against the unconstrained Gaussian, both fitted with `vingd.fit`.

For each model, `AutoNaturalNormal` (a Gaussian over the unconstrained latents) and
`AutoExpFamily` (each site's own family: Gamma or log-normal for a scale, Beta for a
probability; the rest Gaussian) are fitted by `vingd.fit`, twice: with the defaults (adaptive ρ,
stopping by windows, Polyak average) and for a fixed number of steps (`tol=None`, the last
iterate, ρ annealed by the ELBO check). Reported per fit: the ELBO from 2,000 draws ± its
standard error, the scale's 5/50/95% quantiles (the guide's own, exact for its family) against
the posteriordb reference draws (Stan, NUTS), and per latent the standardised mean error
(E_q[z] − E_ref[z]) / sd_ref(z) and the sd ratio sd_q(z) / sd_ref(z), from 20,000 guide draws
(deterministic sites of the reference, such as eight schools' θ, computed from them).

    .venv/bin/python benchmarks/native_families.py [--steps N] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import numpyro
from numpyro.infer import Predictive

import vingd
import vingd_models

HERE = Path(__file__).parent
LEVELS = (0.05, 0.5, 0.95)
#: model -> (the scale site whose quantiles are shown, the guides to compare)
SUITE = {
    "eight_schools-eight_schools_noncentered": (
        "tau",
        {
            "Gaussian (unconstrained)": lambda m: vingd.AutoNaturalNormal(m),
            "Gamma on tau": lambda m: vingd.AutoExpFamily(m),
            "log-normal on tau": lambda m: vingd.AutoExpFamily(m, families={"tau": "lognormal"}),
        },
    ),
    "low_dim_gauss_mix-low_dim_gauss_mix": (
        "theta",
        {
            "Gaussian (unconstrained)": lambda m: vingd.AutoNaturalNormal(m),
            "Beta on theta, Gamma on sigma": lambda m: vingd.AutoExpFamily(m),
        },
    ),
}


def flat(draws: dict) -> dict:
    """site -> (num_draws, k): every scalar of every site, Stan-like names."""
    out = {}
    for site, value in draws.items():
        value = np.asarray(value).reshape(len(value), -1)
        if value.shape[1] == 1:
            out[site] = value[:, 0]
        else:
            out.update({f"{site}[{i + 1}]": value[:, i] for i in range(value.shape[1])})
    return out


def evaluate(example, guide, params, args, kwargs, reference, scale_site) -> dict:
    elbo, se = vingd.elbo(example.model, guide, params, *args, num_particles=2000, **kwargs)
    draws = guide.sample_posterior(
        jax.random.PRNGKey(2), params, *args, sample_shape=(20_000,), **kwargs
    )
    derived = [site for site in reference if site not in draws]  # deterministic sites
    if derived:
        predictive = Predictive(example.model, posterior_samples=draws, return_sites=derived)
        draws |= predictive(jax.random.PRNGKey(3), *args, **kwargs)
    draws = flat({site: draws[site] for site in reference})
    ref = flat(reference)
    quantiles = np.ravel(guide.quantiles(params, list(LEVELS))[scale_site])
    return {
        "elbo": elbo,
        "elbo_se": se,
        "quantiles": quantiles,
        "mean_error": {k: (draws[k].mean() - v.mean()) / v.std(ddof=1) for k, v in ref.items()},
        "sd_ratio": {k: draws[k].std(ddof=1) / v.std(ddof=1) for k, v in ref.items()},
    }


def run_model(name, scale_site, guides, steps) -> str:
    example = vingd_models.get(name)
    args, kwargs = example.load()
    reference = example.reference()  # latent and deterministic sites
    rows, per_latent = [], {}
    for label, make in guides.items():
        for protocol, options in (("default", {}), (f"{steps} steps", {"num_steps": steps})):
            guide = make(example.model)
            if protocol != "default":
                options = options | {"tol": None}
            start = time.perf_counter()
            result = vingd.fit(
                example.model,
                *args,
                guide=guide,
                rng_key=jax.random.PRNGKey(0),
                **options,
                **kwargs,
            )
            seconds = time.perf_counter() - start
            scores = evaluate(example, guide, result.params, args, kwargs, reference, scale_site)
            q = " / ".join(f"{x:.2f}" for x in scores["quantiles"])
            rows.append(
                f"| {label} | {protocol} | {result.num_steps} | {seconds:.1f} "
                f"| {scores['elbo']:.3f} ± {scores['elbo_se']:.3f} | {q} "
                f"| {max(abs(z) for z in scores['mean_error'].values()):.2f} "
                f"| {min(scores['sd_ratio'].values()):.2f}–{max(scores['sd_ratio'].values()):.2f} |"
            )
            if protocol != "default":
                per_latent[label] = scores
            print(rows[-1], flush=True)
    ref_q = " / ".join(
        f"{x:.2f}" for x in np.quantile(np.asarray(example.reference()[scale_site]), LEVELS)
    )
    header = (
        "| guide | fit | steps | seconds (with compile) | ELBO (2,000 draws) "
        f"| {scale_site} 5/50/95% | max abs std. mean error | sd ratio range |\n"
        "|---|---|---:|---:|---:|---|---:|---|"
    )
    reference_row = f"| reference (posteriordb, Stan NUTS) | | | | | {ref_q} | | |"
    latents = list(next(iter(per_latent.values()))["mean_error"])
    labels = list(per_latent)
    gaussian = per_latent[labels[0]]
    gains = "; ".join(
        f"{g}: {per_latent[g]['elbo'] - gaussian['elbo']:+.3f} ± "
        f"{np.hypot(per_latent[g]['elbo_se'], gaussian['elbo_se']):.3f}"
        for g in labels[1:]
    )
    summary = f"ELBO gain over the Gaussian, {steps}-step fits: {gains} nats.\n\n"
    detail = (
        f"Per latent, {steps}-step fits: standardised mean error / sd ratio.\n\n"
        "| latent | "
        + " | ".join(labels)
        + " |\n|---|"
        + "---|" * len(labels)
        + "\n"
        + "\n".join(
            f"| {k} | "
            + " | ".join(
                f"{per_latent[g]['mean_error'][k]:+.2f} / {per_latent[g]['sd_ratio'][k]:.2f}"
                for g in labels
            )
            + " |"
            for k in latents
        )
    )
    return (
        f"### {name}\n\n{example.description}.\n\n{header}\n"
        + "\n".join(rows)
        + f"\n{reference_row}\n\n{summary}{detail}\n"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=HERE / "native_families.md")
    args = parser.parse_args(argv)
    numpyro.enable_x64()
    sections = [run_model(name, *SUITE[name], args.steps) for name in args.models]
    device = jax.devices()[0].device_kind
    report = (
        "# Native-support families vs the unconstrained Gaussian (`vingd.fit`)\n\n"
        f"Machine: {device}; float64. Produced by `benchmarks/native_families.py` (see its "
        "docstring for the protocol).\n\n" + "\n".join(sections)
    )
    args.out.write_text(report)
    print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
