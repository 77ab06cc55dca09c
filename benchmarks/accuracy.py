"""Accuracy at the end of a fit: vingd and SVI + Adam against the family's optimum q* and
the reference posterior.

For each model and Gaussian family (full covariance, mean field), over the unconstrained latents:

- q*, the family's optimum: exact where the model's ELBO for Gaussian q is closed up to 1-D
  quadrature (all three here: `vingd_models.optima`; the many-draw q* of earlier rounds was
  0.019 sd off in eight schools' mean-field log τ, 0.0005 on diamonds). Else vingd
  with many draws per step in float64 (a burn-in with adaptive ρ, then the Polyak average of θ
  over `window` steps at a fixed ρ), from two seeds: q* is their mean, their difference its
  own error. float64 because float32 natural parameters cannot hold diamonds' q* (cond
  Λ ≈ 3.5e5: rounding θ* to float32 moves its mean by 0.15 sd);
- vingd's default fit (`vingd.fit`: 16 draws, adaptive ρ, its stopping rule and averaging to
  `mcse=0.02`), and ones averaged to `mcse=0.005` (up to 2,000 steps) and `mcse=0.0025` (up
  to 5,000; not on diamonds, `SKIP`), from `--seeds` seeds: the median and the worst;
- SVI + Adam as `benchmarks/run.py` runs it: 10,000 steps, lr 1e-3, 1e-2, 5e-2, one particle;
- SVI + Adam to convergence: 4 particles, lr decayed exponentially from 1e-2 to 1e-5 over
  100,000 steps (400,000 on diamonds, which is still short of q*: see its row).

Scores: the ELBO below q*'s, in nats, with common random numbers (the same 8,192 antithetic base
draws for every q of a model, so small differences are resolved); the largest
|E_q − E_q*| / sd_q* over latents and the range of sd_q / sd_q* (exact Gaussian moments); the
same in constrained space against the reference (posteriordb's Stan draws, or NUTS as in
`benchmarks/run.py`), from 20,000 draws of each q with common base noise (±0.01 or so). For
vingd's fits also the calibration of `FitResult.mcse`: the RMS over latents of the means' errors
against q* (in sds) divided by it, 1 where the fit's estimate of its own error is right.

    .venv/bin/python benchmarks/accuracy.py [--models NAME ...] [--seeds N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.util import constrain_fn

import vingd
import vingd_models
from vingd.compare import GUIDES, Method, _run_adam, _shared_start, reference_moments
from vingd.log_joint import LogJoint
from vingd_models.optima import optimum as optimum_of

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import LEARNING_RATES, reference_for  # noqa: E402

SUITE = {
    "eight_schools-eight_schools_noncentered": ("mvn", "meanfield"),
    "breast_cancer_logistic": ("mvn", "meanfield"),
    "diamonds-diamonds": ("mvn",),
}
#: q*'s many-draw fit per model: draws per step, adaptive burn-in steps, fixed ρ, averaged steps
OPTIMUM = {"diamonds-diamonds": dict(num_samples=256, burn=30, rho=0.5, window=60)}
#: vingd's fits: the defaults, and averaged to a tighter Monte Carlo error
VINGD = {
    "default": {},
    "mcse=0.005": dict(mcse=0.005, num_steps=2000),
    "mcse=0.0025": dict(mcse=0.0025, num_steps=5000),
}
#: settings not run on a model (diamonds' fits do not reach mcse=0.005 in 2,000 steps)
SKIP = {"diamonds-diamonds": ("mcse=0.0025",)}
ADAM_STEPS = 10_000  # as benchmarks/run.py
ADAM_LONG = {"diamonds-diamonds": 400_000}  # converged Adam's steps (default 100,000)
ADAM_PARTICLES, ADAM_LR = 4, (1e-2, 1e-5)
ELBO_DRAWS, MOMENT_DRAWS = 8192, 20_000
#: converged: an ELBO within this many nats of q*'s
CONVERGED = 0.01


# -- Gaussians over one flat latent order (the full-covariance guide's) ------------------------
def _site_index(unpack, dim) -> dict:
    return {
        k: np.asarray(v).astype(int).ravel() for k, v in unpack(np.arange(dim, dtype=float)).items()
    }


def gaussian(guide, params, order: dict, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale_tril) of `guide` with `params` over the latent vector laid out as `order`
    (site -> flat positions), from any of vingd's or numpyro's Gaussian guides."""
    if isinstance(guide, vingd.AutoNaturalMVN | GUIDES["adam"]["mvn"]):
        post = guide.get_posterior(params)
        loc, tril, index = post.loc, post.scale_tril, _site_index(guide._unpack_latent, dim)
    elif isinstance(guide, vingd.AutoNaturalNormal):
        loc, sd = guide.family.loc_scale(guide.flatten(params))
        loc, tril, index = loc, jnp.diag(sd), _site_index(guide.unpack_latent, dim)
    else:  # numpyro AutoNormal: per-site loc and scale
        loc = {s: np.ravel(params[f"{s}_auto_loc"]) for s in order}
        sd = {s: np.ravel(params[f"{s}_auto_scale"]) for s in order}
        mean, scale = np.zeros(dim), np.zeros(dim)
        for s, at in order.items():
            mean[at], scale[at] = loc[s], sd[s]
        return mean, np.diag(scale)
    perm = np.empty(dim, int)
    for s, at in order.items():
        perm[at] = index[s]
    loc, tril = np.asarray(loc, np.float64), np.asarray(tril, np.float64)
    cov = (tril @ tril.T)[np.ix_(perm, perm)]
    return loc[perm], np.linalg.cholesky(cov)


def standardised(mean, tril, mean_opt, tril_opt):
    """(E_q − E_q*) / sd_q* and sd_q / sd_q*, per latent."""
    sd, sd_opt = np.sqrt(np.sum(tril**2, 1)), np.sqrt(np.sum(tril_opt**2, 1))
    return (mean - mean_opt) / sd_opt, sd / sd_opt


class Scorer:
    """A model's scores of a Gaussian q = N(mean, tril trilᵀ) over the flat latent: the ELBO with
    fixed antithetic base draws, and constrained moments against the reference."""

    def __init__(self, example, ref_guide, dim, reference):
        model, (args, kwargs) = example.model, example.load()
        self.dim, self.unpack = dim, ref_guide._unpack_latent
        log_joint = LogJoint(model, args, kwargs, self.unpack)
        eps = jax.random.normal(jax.random.PRNGKey(123), (ELBO_DRAWS // 2, dim))
        eps = jnp.concatenate([eps, -eps])
        self._elbo = jax.jit(
            lambda m, L: jax.lax.map(lambda e: log_joint(m + L @ e), eps, batch_size=512)
        )
        base = jax.random.normal(jax.random.PRNGKey(321), (MOMENT_DRAWS, dim))

        def constrained(m, L):
            def one(e):
                return constrain_fn(model, args, kwargs, self.unpack(m + L @ e))

            return jax.lax.map(one, base, batch_size=1000)

        self._constrained = jax.jit(constrained)
        self.moments = reference_moments(reference, model, args, kwargs) if reference else None

    def elbo(self, mean, tril) -> float:
        values = np.asarray(
            self._elbo(jnp.asarray(mean, jnp.float32), jnp.asarray(tril, jnp.float32))
        )
        entropy = 0.5 * self.dim * np.log(2 * np.pi * np.e) + np.sum(np.log(np.abs(np.diag(tril))))
        return float(np.mean(values, dtype=np.float64) + entropy)

    def against_reference(self, mean, tril):
        """max |E_q − E_ref| / sd_ref and (min, max) sd_q / sd_ref over the reference's sites."""
        if self.moments is None:
            return None
        draws = self._constrained(jnp.asarray(mean, jnp.float32), jnp.asarray(tril, jnp.float32))
        errors, ratios = [], []
        for site, (m, sd) in self.moments.items():
            x = np.asarray(draws[site], np.float64)
            errors.append(np.ravel((x.mean(0) - m) / sd))
            ratios.append(np.ravel(x.std(0, ddof=1) / sd))
        errors, ratios = np.concatenate(errors), np.concatenate(ratios)
        return float(np.abs(errors).max()), float(ratios.min()), float(ratios.max())


# -- q*: many-draw vingd in float64, in a child process ----------------------------------------
def _optimum_child(name, family, out):
    """Run in a float64 process: q* from two seeds (`OPTIMUM`), written to `out` (.npz)."""
    example = vingd_models.get(name)
    args, kwargs = example.load()
    init = _shared_start(example.model, args, kwargs, jax.random.PRNGKey(0))
    ref = vingd.AutoNaturalMVN(example.model, init_loc_fn=init)
    with handlers.seed(rng_seed=0):  # (the set-up's key)
        ref.init_params(*args, **kwargs)
    dim = int(np.size(ref._init_latent))
    order = _site_index(ref._unpack_latent, dim)
    settings = OPTIMUM[name]
    fits = []
    for seed in range(2):
        guide = GUIDES["vingd"][family](example.model, init_loc_fn=init)
        common = dict(guide=guide, num_samples=settings["num_samples"], progress_bar=False)
        burn = vingd.fit(
            example.model, *args, num_steps=settings["burn"], tol=None,
            rng_key=jax.random.PRNGKey(10 + seed), **common, **kwargs,
        )  # fmt: skip
        # two windows at a fixed ρ; tol=inf stops after the second and returns its average
        result = vingd.fit(
            example.model, *args, num_steps=2 * settings["window"], window=settings["window"],
            tol=float("inf"), mcse=None, step_size=settings["rho"], init_params=burn.params,
            rng_key=jax.random.PRNGKey(20 + seed), **common, **kwargs,
        )  # fmt: skip
        assert result.averaged
        fits.append(gaussian(guide, result.params, order, dim))
    (m0, L0), (m1, L1) = fits
    # q*: the two seeds' average (covariances averaged), and how far apart they are
    mean = (m0 + m1) / 2
    tril = np.linalg.cholesky((L0 @ L0.T + L1 @ L1.T) / 2)
    error, ratio = standardised(m1, L1, m0, L0)
    np.savez(out, mean=mean, tril=tril, seeds_apart=np.abs(error).max(),
             sd_apart=np.abs(ratio - 1).max())  # fmt: skip


def optimum(name, family, order, dim):
    """q* for `name`'s `family` over the latent laid out as `order` (mean, tril), and how it
    was made: exact where the model's Gaussian ELBO is closed (`vingd_models.optima`), else
    the many-draw fit (`OPTIMUM`) in a float64 child process."""
    example = vingd_models.get(name)
    spec = example.gaussian_elbo
    if spec is not None:
        args, kwargs = example.load()
        at = np.concatenate([order[site] for site in spec.sites])
        mean, cov = np.empty(dim), np.empty((dim, dim))
        mean[at], cov[np.ix_(at, at)] = optimum_of(spec, dim, args, kwargs, family)
        how = "exact: the closed-form ELBO's maximiser (Gauss–Hermite, Newton in float64)"
        return mean, np.linalg.cholesky(cov), how
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimum.npz"
        env = {**os.environ, "JAX_ENABLE_X64": "1"}
        subprocess.run(
            [sys.executable, __file__, "--optimum", name, family, str(out)], env=env, check=True
        )
        settings = OPTIMUM[name]
        with np.load(out) as q:
            how = (
                f"{settings['num_samples']} draws per step, {settings['burn']} adaptive steps, "
                f"then ρ = {settings['rho']} averaged over {settings['window']} steps (float64); "
                f"its two seeds differ by {float(q['seeds_apart']):.4f} sd in the mean and "
                f"{float(q['sd_apart']):.4f} in sd ratio"
            )
            return q["mean"], q["tril"], how


# -- the competitors ----------------------------------------------------------------------------
def adam_converged(model, guide, args, kwargs, rng_key, num_steps):
    """SVI + Adam, `ADAM_PARTICLES` particles, lr decayed exponentially over `num_steps`."""
    first, last = ADAM_LR
    schedule = optax.exponential_decay(first, num_steps, last / first)
    svi = SVI(model, guide, optax.adam(schedule), Trace_ELBO(num_particles=ADAM_PARTICLES))
    state = svi.init(rng_key, *args, **kwargs)
    run = jax.jit(
        lambda s: jax.lax.scan(lambda s, _: svi.update(s, *args, **kwargs), s, length=num_steps)
    )
    state, _ = run(state)
    return svi.get_params(state)


def score_row(label, steps, fits, scorer, opt, elbo_opt, mcses=None):
    """A table row: the scores of each (mean, tril) in `fits` (one, or one per seed); with the
    fits' reported `mcses`, their calibration: the RMS over latents of the mean's error against
    q*, in sds, divided by the fit's `FitResult.mcse` (the same measure; 1 when it is right)."""
    gaps, errors, ratios, ref_errors, ref_ratios, calibration = [], [], [], [], [], []
    for i, (mean, tril) in enumerate(fits):
        gaps.append(elbo_opt - scorer.elbo(mean, tril))
        error, ratio = standardised(mean, tril, *opt)
        errors.append(np.abs(error).max())
        if mcses is not None:
            calibration.append(float(np.sqrt(np.mean(error**2))) / mcses[i])
        ratios.append((ratio.min(), ratio.max()))
        ref = scorer.against_reference(mean, tril)
        if ref is not None:
            ref_errors.append(ref[0])
            ref_ratios.append(ref[1:])

    def cell(values, fmt):
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(float(np.median(values)), fmt)} ({format(max(values), fmt)})"

    def span(pairs):
        low, high = min(p[0] for p in pairs), max(p[1] for p in pairs)
        return f"{low:.2f}–{high:.2f}"

    row = {
        "method": label,
        "steps": steps,
        "elbo_gap": cell(gaps, ".3f"),
        "error": cell(errors, ".3f"),
        "sd_ratio": span(ratios),
        "ref_error": cell(ref_errors, ".3f") if ref_errors else "—",
        "ref_sd_ratio": span(ref_ratios) if ref_ratios else "—",
        "calibration": cell(calibration, ".2f") if calibration else "—",
        "raw": dict(gap=gaps, error=errors, ref_error=ref_errors, calibration=calibration),
    }
    print(f"  {label}: {json.dumps({k: v for k, v in row.items() if k != 'raw'})}", flush=True)
    return row


def run_family(name, family, example, scorer, order, dim, seeds):
    args, kwargs = example.load()
    model = example.model
    start = time.perf_counter()
    mean_opt, tril_opt, how = optimum(name, family, order, dim)
    opt = (mean_opt, tril_opt)
    elbo_opt = scorer.elbo(*opt)
    rows = [score_row("family optimum q*", "—", [opt], scorer, opt, elbo_opt)]
    # vingd's default fit, and one averaged to a tighter Monte Carlo error, one per seed
    init = _shared_start(model, args, kwargs, jax.random.PRNGKey(0))
    for what, settings in VINGD.items():
        if what in SKIP.get(name, ()):
            continue
        fits, steps, errors = [], [], []
        for seed in range(seeds):
            guide = GUIDES["vingd"][family](model, init_loc_fn=init)
            result = vingd.fit(
                model, *args, guide=guide, rng_key=jax.random.PRNGKey(seed), progress_bar=False,
                **settings, **kwargs,
            )  # fmt: skip
            fits.append(gaussian(guide, result.params, order, dim))
            steps.append(result.num_steps)
            errors.append(result.mcse)
        label = f"vingd {what} (its mcse {np.median(errors):.3f}), median (worst) of {seeds} seeds"
        steps_cell = f"{int(np.median(steps))} ({min(steps)}–{max(steps)})"
        rows.append(score_row(label, steps_cell, fits, scorer, opt, elbo_opt, errors))
    # SVI + Adam as benchmarks/run.py runs it: compare()'s start and fit keys
    start_key, fit_key, _ = jax.random.split(jax.random.PRNGKey(0), 3)
    init = _shared_start(model, args, kwargs, start_key)
    for lr in LEARNING_RATES:
        method = Method("adam", family, ADAM_STEPS, lr)
        guide = method.guide(model, init)
        run = _run_adam(model, method, guide, args, kwargs, fit_key)
        fit = gaussian(guide, run.params, order, dim)
        rows.append(score_row(f"SVI + Adam lr={lr:g}", ADAM_STEPS, [fit], scorer, opt, elbo_opt))
    long_steps = ADAM_LONG.get(name, 100_000)
    guide = GUIDES["adam"][family](model, init_loc_fn=init)
    params = adam_converged(model, guide, args, kwargs, fit_key, long_steps)
    label = (
        f"SVI + Adam, {ADAM_PARTICLES} particles, lr {ADAM_LR[0]:g} → {ADAM_LR[1]:g} (exponential)"
    )
    fit = gaussian(guide, params, order, dim)
    row = score_row(label, long_steps, [fit], scorer, opt, elbo_opt)
    if row["raw"]["gap"][0] > CONVERGED:
        row["method"] += f", not converged (ELBO > {CONVERGED} nat below q*)"
    rows.append(row)
    seconds = time.perf_counter() - start
    return rows, elbo_opt, how, seconds


def _count(steps) -> str:
    return f"{steps:,}" if isinstance(steps, int) else steps


def table(rows) -> str:
    head = (
        "| method | steps | ELBO below q* (nats) | max \\|mean error\\| vs q* (sd) | sd / sd q* "
        "| max \\|mean error\\| vs reference (sd) | sd / sd reference "
        "| RMS error vs q* ÷ its mcse |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"| {r['method']} | {_count(r['steps'])} | {r['elbo_gap']} | {r['error']} "
        f"| {r['sd_ratio']} | {r['ref_error']} | {r['ref_sd_ratio']} | {r['calibration']} |"
        for r in rows
    ]
    return head + "\n" + "\n".join(lines)


def summary(name, family, rows) -> str:
    """One line of the summary table from a family's rows (q*, vingd default, vingd averaged
    to tighter mcse's, ..., converged Adam); "—" for a setting not run (`SKIP`)."""
    optimum_row, ours, long_adam = rows[0], rows[1], rows[-1]
    tighter = ""
    for what in list(VINGD)[1:]:
        row = next((r for r in rows if r["method"].startswith(f"vingd {what} ")), None)
        tighter += "| — | — " if row is None else f"| {row['steps']} | {row['error']} "
    ref = "—"
    if ours["raw"]["ref_error"]:
        ref = f"{optimum_row['ref_error']} / {ours['ref_error']} / {long_adam['ref_error']}"
    return (
        f"| {name} | {family} | {ours['steps']} | {ours['elbo_gap']} | {ours['error']} "
        + tighter
        + f"| {_count(long_adam['steps'])} | {long_adam['elbo_gap']} | {long_adam['error']} "
        f"| {ref} |"
    )


SUMMARY_HEAD = (
    "| model | guide | vingd steps | vingd: ELBO below q* | vingd: max \\|error\\| vs q* "
    + "".join(f"| vingd {what}: steps | its max \\|error\\| vs q* " for what in list(VINGD)[1:])
    + "| long Adam: steps | long Adam: ELBO below q* | long Adam: max \\|error\\| vs q* "
    "| max \\|error\\| vs reference: q* / vingd / long Adam |\n"
    "|---|---|" + "---:|" * (7 + 2 * (len(VINGD) - 1))
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "accuracy.md")
    parser.add_argument("--optimum", nargs=3, metavar=("NAME", "FAMILY", "OUT"), help="(internal)")
    args = parser.parse_args(argv)
    if args.optimum:
        _optimum_child(*args.optimum)
        return 0

    total = time.perf_counter()
    sections, lines = [], []
    for name in args.models:
        example = vingd_models.get(name)
        model_args, model_kwargs = example.load()
        init = _shared_start(example.model, model_args, model_kwargs, jax.random.PRNGKey(0))
        ref_guide = vingd.AutoNaturalMVN(example.model, init_loc_fn=init)
        with handlers.seed(rng_seed=0):
            ref_guide.init_params(*model_args, **model_kwargs)
        dim = int(np.size(ref_guide._init_latent))
        order = _site_index(ref_guide._unpack_latent, dim)
        reference = reference_for(example, SUITE[name])
        scorer = Scorer(example, ref_guide, dim, reference)
        source = "posteriordb" if example.reference is not None else "NUTS, 2,000 draws"
        for family in SUITE[name]:
            print(f"{name} {family}", flush=True)
            rows, elbo_opt, how, seconds = run_family(
                name, family, example, scorer, order, dim, args.seeds
            )
            lines.append(summary(name, family, rows))
            sections.append(
                f"### {name}, {family}\n\n{example.description}. Reference: {source}. "
                f"q*: ELBO {elbo_opt:.3f}; {how}. ({seconds:.0f} s)\n\n" + table(rows) + "\n"
            )
    device = jax.devices()[0].device_kind
    report = (
        "# Accuracy at the end of a fit\n\n"
        f"Machine: {device}; `make bench-accuracy` ({time.perf_counter() - total:.0f} s). "
        "Errors in units of q*'s (or the reference's) sd; vingd rows: median (worst) of "
        f"{args.seeds} seeds. How q*, the long Adam run and the scores are made: the docstring "
        "of benchmarks/accuracy.py.\n\n"
        + f"{SUMMARY_HEAD}\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(sections)
    )
    args.out.write_text(report)
    print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
