"""Figures for fits and comparisons: plain matplotlib `Figure`s, no pyplot state (headless-safe).

Save one with `figure.savefig(path)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from vingd.compare import WITHIN, Comparison, smoothed

#: Gaps below this many nats are drawn at it (a log axis has no zero).
FLOOR = 1e-2


def plot_traces(
    traces: Mapping[str, tuple[np.ndarray, np.ndarray]], best: float | Mapping[str, float]
) -> Figure:
    """The gap `best` − ELBO (smoothed) against steps and against wall seconds, log–log.

    Args:
        traces: name -> (ELBO per step, wall seconds at each step), e.g. `Comparison.traces`.
        best: the ELBO to measure gaps from, or name -> each trace's, e.g.
            `Comparison.family_best` (each method's gap to its guide family's best).
    """
    figure = Figure(figsize=(11, 5 + 0.1 * len(traces)), layout="constrained")
    by_steps, by_seconds = figure.subplots(1, 2, sharey=True)
    for name, (elbo_trace, seconds) in traces.items():
        target = best[name] if isinstance(best, Mapping) else best
        gap = np.maximum(target - smoothed(np.asarray(elbo_trace)), FLOOR)
        by_steps.plot(np.arange(1, len(gap) + 1), gap, label=name)
        by_seconds.plot(seconds, gap)
    for axes, label in ((by_steps, "step"), (by_seconds, "wall seconds (compile excluded)")):
        axes.set(xscale="log", yscale="log", xlabel=label)
        axes.axhline(WITHIN, color="0.3", linestyle=":", linewidth=1)
        axes.grid(True, which="major", alpha=0.3)
    by_steps.set_ylabel("best ELBO − ELBO (nats, smoothed)")
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    return figure


def _labels(site: str, shape: tuple) -> list[str]:
    return (
        [site] if shape == () else [f"{site}[{','.join(map(str, i))}]" for i in np.ndindex(shape)]
    )


def plot_forest(comparison: Comparison) -> Figure:
    """Each method against the reference, per latent, in the reference's standard units.

    A method's marker is its standardised mean error (E_q − E_ref) / sd_ref and its bar spans
    ± sd_q / sd_ref; the shaded band is the reference's own ±1 sd. A perfect fit sits on 0 with
    bars that reach the band's edges; mean-field fits show short bars.
    """
    first = comparison.results[0]
    if first.mean_error is None:
        raise ValueError(
            "plot_forest needs a comparison run with a reference (compare(..., reference=...))."
        )
    labels = [
        label for site, error in first.mean_error.items() for label in _labels(site, error.shape)
    ]
    num_methods = len(comparison.results)
    figure = Figure(
        figsize=(8, 1.5 + len(labels) * (0.2 + 0.05 * num_methods)), layout="constrained"
    )
    axes = figure.subplots()
    axes.axvspan(-1, 1, color="0.9", label="reference ± 1 sd")
    axes.axvline(0, color="0.5", linewidth=1)
    offsets = np.linspace(-0.3, 0.3, num_methods) if num_methods > 1 else np.zeros(1)
    for offset, result in zip(offsets, comparison.results, strict=True):
        error = np.concatenate([np.ravel(e) for e in result.mean_error.values()])
        ratio = np.concatenate([np.ravel(r) for r in result.sd_ratio.values()])
        axes.errorbar(
            error,
            np.arange(len(labels)) + offset,
            xerr=ratio,
            fmt="o",
            markersize=3,
            linewidth=1,
            label=result.name,
        )
    axes.set_yticks(np.arange(len(labels)), labels)
    axes.invert_yaxis()
    axes.set_xlabel("(E_q − E_ref) / sd_ref;  bars: ± sd_q / sd_ref")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure
