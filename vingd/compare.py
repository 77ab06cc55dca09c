"""vingd against NumPyro SVI + Adam, side by side on the same model, data, start and key.

Per `Method`, `compare` reports:

- the ELBO trace (−loss per step) against steps and against wall seconds. Compilation is timed
  apart (`vingd.fit` reports it; Adam's `lax.scan` of `SVI.update` is compiled ahead of time),
  the run is timed on a second, warm run of the compiled program (an executable's first run
  also loads it: 1–12 ms here, as long as a small model's whole vingd fit); vingd's steps share
  each chunk's wall time (`FitResult.step_seconds`), Adam's the time of its one scan;
- the final ELBO, E_q[log p(y, z) − log q(z)], from many draws z ~ q and its standard error;
- the steps and seconds until the trace, smoothed by a centred moving average, first comes
  within 1 nat of the best final ELBO of the methods with its guide family (None for a method
  whose own final ELBO ends further away): each family has its own optimum, and a mean-field
  fit of a correlated posterior is never within 1 nat of full covariance's;
- the PSIS k̂ of the fit, from the same draws (`vingd.diagnostics`; Yao et al. 2018);
- given a reference posterior (draws from NUTS or posteriordb, or an exact posterior), for each
  element z of every site it covers, the standardised mean error (E_q[z] − E_ref[z]) / sd_ref(z)
  and the sd ratio sd_q(z) / sd_ref(z): 0 and 1 for a perfect fit; mean-field fits of
  correlated posteriors show sd ratios below 1.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.infer.initialization import init_to_median, init_to_value

from vingd.diagnostics import MIN_DRAWS, PSIS, Draws, draw, verdict
from vingd.estimators import get_estimator
from vingd.guides import AutoNaturalLowRankMVN, AutoNaturalMVN, AutoNaturalNormal
from vingd.infer import clear_cache, fit
from vingd.optim import validate_step_size
from vingd.validation import as_rng_key, is_integer, is_real, trace_model

GUIDES = {
    "vingd": {
        "mvn": AutoNaturalMVN,
        "meanfield": AutoNaturalNormal,
        "lowrank": AutoNaturalLowRankMVN,
    },
    "adam": {
        "mvn": AutoMultivariateNormal,
        "meanfield": AutoNormal,
        "lowrank": AutoLowRankMultivariateNormal,
    },
}
#: "Converged" means within this many nats of the best final ELBO.
WITHIN = 1.0


@dataclasses.dataclass(frozen=True)
class Method:
    """One competitor.

    Attributes:
        engine: "vingd" (`vingd.fit`) or "adam" (`numpyro.infer.SVI`, `optax.adam`, Trace_ELBO).
        family: "mvn" (full-covariance Gaussian), "meanfield" (diagonal Gaussian) or "lowrank"
            (rank √d plus diagonal: precision for vingd, covariance for numpyro).
        num_steps: the most steps (vingd stops earlier once converged; Adam takes them all).
        step_size: Adam's learning rate (required); vingd's fixed ρ, or None for adaptive ρ.
        estimator: vingd's ∇_μ estimator (see `vingd.estimators`); None for `fit`'s default.
    """

    engine: str
    family: str
    num_steps: int
    step_size: float | None = None
    estimator: str | None = None

    def __post_init__(self):
        if self.engine not in GUIDES:
            raise ValueError(f"engine must be one of {sorted(GUIDES)}, got {self.engine!r}.")
        if self.family not in GUIDES[self.engine]:
            raise ValueError(
                f"family must be one of {sorted(GUIDES[self.engine])}, got {self.family!r}."
            )
        steps = self.num_steps
        if not is_integer(steps) or steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}.")
        if self.engine == "vingd":
            if self.step_size is not None:
                validate_step_size(self.step_size, int(steps))  # (over its own steps, as fit)
            if self.estimator is not None:
                get_estimator(self.estimator, GUIDES["vingd"][self.family].family)
            return
        if not is_real(self.step_size) or not self.step_size > 0:
            raise ValueError(
                f"step_size (Adam's learning rate) must be a number > 0, got {self.step_size!r}."
            )
        if self.estimator is not None:
            raise ValueError("estimator applies to engine='vingd' only; leave it None for Adam.")

    @property
    def name(self) -> str:
        guide = GUIDES[self.engine][self.family].__name__
        if self.engine == "adam":
            return f"SVI+Adam {guide} (lr={self.step_size:g})"
        settings = ["adaptive ρ" if self.step_size is None else f"ρ={self.step_size:g}"]
        settings += [] if self.estimator is None else [self.estimator]
        return f"vingd {guide} ({', '.join(settings)})"

    def guide(self, model, init_loc_fn):
        return GUIDES[self.engine][self.family](model, init_loc_fn=init_loc_fn)


def default_methods(
    vingd_steps: int = 1000, adam_steps: int = 5000, learning_rates=(3e-3, 1e-2, 3e-2)
) -> tuple[Method, ...]:
    """Both vingd guides, and both numpyro guides under Adam at each learning rate."""
    return (
        Method("vingd", "mvn", vingd_steps),
        Method("vingd", "meanfield", vingd_steps),
        *(
            Method("adam", family, adam_steps, lr)
            for family in ("mvn", "meanfield")
            for lr in learning_rates
        ),
    )


def smoothed(trace: np.ndarray) -> np.ndarray:
    """Centred moving average over 2% of the steps (at least 1), shrinking at the ends."""
    kernel = np.ones(max(1, len(trace) // 50))
    return np.convolve(trace, kernel, "same") / np.convolve(np.ones(len(trace)), kernel, "same")


def step_seconds(run_seconds: float, num_steps: int) -> np.ndarray:
    """Wall seconds at the end of each step of one compiled run of equal steps (Adam's
    `lax.scan`)."""
    return run_seconds * np.arange(1, num_steps + 1) / num_steps


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method's fit and its scores; `losses[t]` = −ELBO estimate at step t."""

    method: Method
    guide: object
    params: dict
    losses: np.ndarray
    compile_seconds: float
    run_seconds: float
    seconds: np.ndarray  # wall seconds at the end of each step (`FitResult.step_seconds`)
    elbo: float  # from `num_draws` draws
    elbo_se: float
    khat: float  # PSIS
    # steps until the smoothed trace is within 1 nat of the best (all of them where only the
    # final result is); None where the final result is not
    steps_to_best: int | None
    seconds_to_best: float | None
    mean_error: dict | None  # site -> (E_q − E_ref) / sd_ref, per element; None: no reference
    sd_ratio: dict | None  # site -> sd_q / sd_ref

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def elbo_trace(self) -> np.ndarray:
        return -np.asarray(self.losses)

    def row(self) -> dict:
        """This result as one row of scalars (None where not available)."""
        row = {
            "method": self.name,
            "steps": len(self.losses),
            "compile_seconds": self.compile_seconds,
            "run_seconds": self.run_seconds,
            "elbo": self.elbo,
            "elbo_se": self.elbo_se,
            "steps_to_best": self.steps_to_best,
            "seconds_to_best": self.seconds_to_best,
            "khat": self.khat,
            "verdict": verdict(self.khat),
        }
        if self.mean_error is not None:
            errors = np.concatenate([np.ravel(e) for e in self.mean_error.values()])
            ratios = np.concatenate([np.ravel(r) for r in self.sd_ratio.values()])
            row |= {
                "max_abs_mean_error": float(np.abs(errors).max()),
                "min_sd_ratio": float(ratios.min()),
                "max_sd_ratio": float(ratios.max()),
            }
        return row


def _cell(value, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The results of `compare`, in the order of its methods."""

    results: tuple[MethodResult, ...]

    @property
    def best_elbo(self) -> float:
        """The best final ELBO of all methods."""
        return float(np.nanmax([r.elbo for r in self.results]))

    @property
    def family_best(self) -> dict[str, float]:
        """name -> the best final ELBO of the methods with its guide family: what its steps to
        1 nat are counted to (and `vingd.plots.plot_traces` measures its gap from)."""
        finals = [(r.method, r.elbo) for r in self.results]
        return {r.name: _family_best(finals, r.method.family) for r in self.results}

    @property
    def ranking(self) -> tuple[MethodResult, ...]:
        """Results by final ELBO, best first (a non-finite ELBO ranks last)."""
        return tuple(
            sorted(self.results, key=lambda r: -r.elbo if math.isfinite(r.elbo) else math.inf)
        )

    @property
    def traces(self) -> dict:
        """name -> (ELBO per step, wall seconds per step), for `vingd.plots.plot_traces`."""
        return {r.name: (r.elbo_trace, r.seconds) for r in self.results}

    def to_dict(self) -> dict[str, list]:
        """Columns of scalars, one entry per method (pandas-free; `pandas.DataFrame` takes it)."""
        rows = [r.row() for r in self.results]
        return {key: [row.get(key) for row in rows] for key in rows[0]}

    def to_markdown(self) -> str:
        """A Markdown table, best final ELBO first."""
        header = [
            "method",
            "steps",
            "compile s",
            "run s",
            "final ELBO ± se",
            f"steps to {WITHIN:g} nat",
            f"s to {WITHIN:g} nat",
            "PSIS k̂",
        ]
        accuracy = self.results[0].mean_error is not None
        header += ["max abs mean error (sd)", "sd ratio"] if accuracy else []
        lines = [
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
        ]
        for result in self.ranking:
            row = result.row()
            cells = [
                row["method"],
                str(row["steps"]),
                # (vingd's program is cached within a process; Adam's is compiled each run)
                "cached" if row["compile_seconds"] == 0 else f"{row['compile_seconds']:.2f}",
                f"{row['run_seconds']:.3g}",
                f"{row['elbo']:.2f} ± {row['elbo_se']:.2f}",
                _cell(row["steps_to_best"]),
                _cell(row["seconds_to_best"], ".3g"),  # (sub-millisecond runs: digits)
                f"{row['khat']:.2f} ({row['verdict']})",
            ]
            if accuracy:
                cells += [
                    f"{row['max_abs_mean_error']:.2f}",
                    f"{row['min_sd_ratio']:.2f}–{row['max_sd_ratio']:.2f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _draw_moments(site: str, value) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of one site's reference: a numpyro distribution, or draws (num_draws, ...)."""
    if isinstance(value, dist.Distribution):
        return np.asarray(value.mean), np.sqrt(np.asarray(value.variance))
    draws = np.asarray(value, dtype=float)
    if draws.ndim < 1 or len(draws) < 2:
        raise ValueError(
            f"reference[{site!r}] must hold at least 2 draws along its first axis, got shape "
            f"{draws.shape}."
        )
    return draws.mean(0), draws.std(0, ddof=1)


def reference_moments(reference, model, args=(), kwargs=None) -> dict:
    """site -> (mean, sd) of a reference posterior, checked against the model's sites.

    `reference` maps latent or deterministic sites to draws of shape (num_draws, *site_shape)
    (e.g. NUTS or posteriordb) or to exact numpyro distributions; or it is an exact posterior
    with `mean` and `sd` dicts per site (e.g. `vingd_models.references.GaussianPosterior`).
    """
    if isinstance(reference, Mapping):
        moments = {site: _draw_moments(site, value) for site, value in reference.items()}
    elif isinstance(getattr(reference, "mean", None), Mapping) and hasattr(reference, "sd"):
        moments = {
            site: (np.asarray(mean), np.asarray(reference.sd[site]))
            for site, mean in reference.mean.items()
        }
    else:
        raise ValueError(
            "reference must map site names to draws (num_draws, *shape) or to numpyro "
            "distributions, or have `mean` and `sd` dicts per site; got "
            f"{type(reference).__name__}."
        )
    trace = trace_model(model, args, kwargs or {})
    shapes = {
        name: np.shape(site["value"])
        for name, site in trace.items()
        if site["type"] == "deterministic" or (site["type"] == "sample" and not site["is_observed"])
    }
    for site, (mean, _) in moments.items():
        if site not in shapes:
            raise ValueError(
                f"reference site {site!r} is not a latent or deterministic site of the model; "
                f"its sites: {sorted(shapes)}."
            )
        if mean.shape != shapes[site]:
            raise ValueError(
                f"reference[{site!r}] has shape {mean.shape} per draw but the model's site has "
                f"shape {shapes[site]}."
            )
    return moments


def _shared_start(model, args, kwargs, rng_key):
    """`init_to_value` at one prior-median point: every method starts from the same location."""
    start = handlers.substitute(handlers.seed(model, rng_key), substitute_fn=init_to_median)
    trace = handlers.trace(start).get_trace(*args, **kwargs)
    return init_to_value(
        values={
            name: site["value"]
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
    )


class _Run(NamedTuple):
    params: dict
    losses: np.ndarray
    compile_seconds: float
    run_seconds: float
    seconds: np.ndarray  # at the end of each step


def _run_vingd(model, method, guide, args, kwargs, rng_key) -> _Run:
    def run():
        return fit(
            model,
            *args,
            guide=guide,
            num_steps=method.num_steps,
            step_size=method.step_size,
            estimator=method.estimator,
            rng_key=rng_key,
            progress_bar=False,
            **kwargs,
        )

    compile_seconds = run().compile_seconds
    result = run()  # the same fit, on the loaded program
    return _Run(
        result.params, result.losses, compile_seconds, result.run_seconds, result.step_seconds
    )


def _run_adam(model, method, guide, args, kwargs, rng_key) -> _Run:
    svi = SVI(model, guide, optax.adam(method.step_size), Trace_ELBO())
    state = svi.init(rng_key, *args, **kwargs)

    def run(state):
        return jax.lax.scan(
            lambda s, _: svi.update(s, *args, **kwargs), state, length=method.num_steps
        )

    start = time.perf_counter()
    compiled = jax.jit(run).lower(state).compile()
    compile_seconds = time.perf_counter() - start
    jax.block_until_ready(compiled(state))  # (loads the program)
    start = time.perf_counter()
    state, losses = jax.block_until_ready(compiled(state))
    run_seconds = time.perf_counter() - start
    seconds = step_seconds(run_seconds, method.num_steps)
    return _Run(svi.get_params(state), losses, compile_seconds, run_seconds, seconds)


def steps_to_within(losses, elbo: float, best: float) -> int | None:
    """Steps until the smoothed ELBO trace (−`losses`) is within `WITHIN` nats of `best`, for
    a fit whose final ELBO `elbo` is; else None.

    A final ELBO short of the mark never got there: a noisy trace crossing it on the way does
    not count. A result that gets there though its trace does not (the trace is of the
    iterates; vingd returns their average, whose ELBO is higher) got there at its last step.
    """
    if not elbo >= best - WITHIN:
        return None
    within = np.flatnonzero(smoothed(-np.asarray(losses)) >= best - WITHIN)
    return int(within[0]) + 1 if within.size else len(losses)


def _family_best(finals, family: str) -> float:
    """The best of the final ELBOs `finals` ((method, ELBO) pairs) whose method has guide
    `family`."""
    return float(np.nanmax([elbo for method, elbo in finals if method.family == family]))


def _score(method, guide, run: _Run, draws: Draws, *, best: float, moments) -> MethodResult:
    losses = np.asarray(run.losses)
    elbo, elbo_se = draws.elbo
    steps = steps_to_within(losses, elbo, best)
    seconds = None if steps is None else float(run.seconds[steps - 1])
    mean_error = sd_ratio = None
    if moments is not None:
        q = draws.posterior
        mean_error = {s: (q[s].mean(0) - m) / sd for s, (m, sd) in moments.items()}
        sd_ratio = {s: q[s].std(0, ddof=1) / sd for s, (_, sd) in moments.items()}
    return MethodResult(
        method=method,
        guide=guide,
        params=run.params,
        losses=losses,
        compile_seconds=run.compile_seconds,
        run_seconds=run.run_seconds,
        seconds=run.seconds,
        elbo=elbo,
        elbo_se=elbo_se,
        khat=PSIS.from_draws(draws).khat,
        steps_to_best=steps,
        seconds_to_best=seconds,
        mean_error=mean_error,
        sd_ratio=sd_ratio,
    )


_RUNNERS = {"vingd": _run_vingd, "adam": _run_adam}


def compare(
    model,
    *args,
    methods: Sequence[Method] | None = None,
    reference=None,
    rng_key=None,
    num_draws: int = 2000,
    cold_compiles: bool = True,
    **kwargs,
) -> Comparison:
    """Fit `model(*args, **kwargs)` with each method, from one start and one key, and score them.

    Args:
        methods: `Method`s to run; default `default_methods()`.
        reference: a reference posterior (see `reference_moments`): draws from NUTS or
            posteriordb, or an exact posterior; adds the standardised mean error and sd ratio
            of every site it covers.
        rng_key: a `jax.random` key (default `PRNGKey(0)`).
        num_draws: draws from each fitted q, for its final ELBO, PSIS k̂ and accuracy.
        cold_compiles: empty JAX's caches (`jax.clear_caches`, and `vingd.clear_cache`)
            before each method, so that each compiles as in a fresh process. Else a method
            compiled after another finds the jitted helpers they share (JAX's and NumPyro's:
            draws, Cholesky, transforms) traced already, ~1 s of a small model's compile, and
            the order of `methods` decides who pays it. It empties the caller's caches too.
    """
    methods = default_methods() if methods is None else tuple(methods)
    if not methods or not all(isinstance(m, Method) for m in methods):
        raise ValueError("methods must be a non-empty sequence of vingd.compare.Method objects.")
    if not is_integer(num_draws) or num_draws < MIN_DRAWS:  # (before the fits, not after them)
        raise ValueError(f"num_draws must be an integer >= {MIN_DRAWS}, got {num_draws!r}.")
    moments = None if reference is None else reference_moments(reference, model, args, kwargs)
    rng_key = as_rng_key(rng_key)
    start_key, fit_key, draw_key = jax.random.split(rng_key, 3)
    init_loc_fn = _shared_start(model, args, kwargs, start_key)

    fits = []
    for method in methods:
        if cold_compiles:
            jax.clear_caches()
            clear_cache()
        guide = method.guide(model, init_loc_fn)
        run = _RUNNERS[method.engine](model, method, guide, args, kwargs, fit_key)
        draws = draw(
            model, guide, run.params, *args, num_samples=num_draws, rng_key=draw_key, **kwargs
        )
        fits.append((method, guide, run, draws))
    finals = [(method, draws.elbo[0]) for method, *_, draws in fits]
    return Comparison(
        tuple(
            _score(*fitted, best=_family_best(finals, fitted[0].family), moments=moments)
            for fitted in fits
        )
    )
