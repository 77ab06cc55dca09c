"""vingd's own engine: natural-gradient VI on pure state, one compiled step chunk.

Each step, on the guide's family over the flat unconstrained latent vector,

    θ_{t+1} = θ_t + ρ_t ∇_μ ELBO = (1 − ρ_t) θ_t + ρ_t ∇_μ E_q[log p(y, z)]

(∇_μ H[q] = −θ for these families), with ∇_μ E_q[log p] from an estimator in
`vingd.estimators`. For a Gaussian with exact Hessians this is variational online Newton:
Λ ← (1−ρ)Λ + ρ E[−∇²f], m ← m + ρ Λ⁻¹ E[∇f] (Khan et al. 2018). Around it:

- domain: steps leaving the domain are corrected (iBLR), halved or rejected (`optim.damped_step`);
- low-rank precision (`AutoNaturalLowRankMVN`): the family takes SLANG's projected step and
  averages a projected mean precision (`vingd.low_rank`), halving steps that lose D > 0;
- adaptive ρ (default): the ELBO is estimated with the same fresh noise before and after each
  step (common random numbers; not the step's own draws, which would favour it). A significant
  drop (beyond two standard errors of the paired differences, capped by the estimate's own)
  declines the step and halves ρ; a significant gain grows ρ ×1.5 up to 1; a change within the
  noise keeps the step and shrinks ρ ×0.9. Once such a step brings ρ to `SETTLE` or below, the
  fit has settled: every step is kept and ρ stays (halved, and the step declined, only where the
  ELBO falls by more than one draw's spread of log joints; grown back to at most `SETTLE` on a
  significant gain). The iterates are then a stationary chain around the optimum, and the
  window's average is Polyak–Ruppert averaging at a constant step (Polyak & Juditsky 1992;
  Dhaka et al. 2020). Annealing ρ on, or declining the steps whose noise lowered the ELBO
  estimate, froze slow directions short of the optimum and biased the rest (eight schools, full
  covariance: the largest mean error 0.19 sd from the family's optimum, now 0.04, median of 10
  seeds; `make bench-accuracy`);
- mean-field with exact Hessians: the mean takes the Newton step of the ELBO,
  m ← m + ρ E[−∇²f]⁻¹ E[∇f] (the ELBO's Hessian in m is E[∇²f]), while the precision takes the
  natural-gradient step Λ ← (1−ρ)Λ + ρ diag E[−∇²f]. The fixed point is the mean-field optimum;
  the diagonal step alone is a Jacobi iteration that crawls on correlated posteriors. Where
  E[−∇²f] is not positive definite (far from the optimum of a location–scale model), the mean
  takes the saddle-free Newton step with |E[∇²f]| (`estimators.newton_or_saddle_free`).
  Where declines have brought adaptive ρ below its start (before it settles), ρ is a trust
  region: with τ = ρ/ρ₀ the mean takes m + ρ((1−τ)Λ + τ E[−∇²f])⁻¹E[∇f], Levenberg–Marquardt
  damped by q's own precision (`estimators.damped_newton`), so that a declined step is retried
  in a safer direction, not only a shorter one. A Newton step along a nearly flat direction of
  a few draws' Hessian (eight schools' funnel) had been declined down to ρ = 0.016 before, and
  kilpisjarvi's fit stalled far from the optimum on 2 of 40 keys (0 of 40 damped; steps to
  1 nat over 13 posteriors, 8 keys each: the same, medians summing to 196 against 193.5);
- momentum (heavy ball, β): θ_{t+1} = θ_t + ρ d_t + β(θ_t − θ_{t−1}), restarted on a drop (as
  in adaptive-restart acceleration), for large mean-field fits without exact Hessians;
- stopping: after each chunk of `window` steps, the fit has settled when the mean loss
  improved less than max(`tol`·|loss|, 2 standard errors) since the previous chunk; then it
  averages θ over that chunk and the next (Polyak averaging, in natural parameters where the
  family has no `average` of its own: mean field and low rank average m and Λ apart) until the
  average's Monte Carlo error, from how far each window's average moved from the one before
  (at least `MIN_SHIFTS` of them), is at most `mcse` sds of q, and returns the average. Each
  window that leaves it above `mcse` doubles the draws per step of the next (batches of
  `num_samples`, up to `max_num_samples`, while they still quieten the windows:
  `draws_quieten`):
  at a constant ρ a window's variance falls as 1/draws, so the average, weighted by steps ×
  draws, reaches `mcse` for about the same draws in all, and few draws' bias falls with them
  (eight schools' mean-field Newton step through the funnel: at `mcse=0.005` the largest mean
  error went from 0.061 to 0.030 sd of q*, 10 seeds). Settled at ρ = `SETTLE`, one window's
  average has the Monte Carlo error of the mean of about `window` steps' targets, 1.8× below
  the last iterate's (tested on a skewed posterior whose Gaussian optimum is exact). A rise
  beyond the noise (`window_verdict`) is divergence: the fit stops with a warning and returns
  the latest valid average before it, `converged=False`;
- minibatches: the model is re-seeded each step, so `numpyro.plate(..., subsample_size=B)` draws
  a fresh minibatch and scales its log likelihood by N/B: unbiased natural-gradient steps (mean
  field without its Newton mean step there: one minibatch's E_B[∇²f]⁻¹E_B[∇f] is biased).

The chunk runs under `lax.scan` and is compiled once per model, guide type and latent layout
(`compile_key`), settings and shapes.
`AutoExpFamily` guides (a family per site) take their step from `vingd.expfam_fit`, inside the
same loop (`_scan_chunk`, `_run_fit`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import Trace_ELBO
from scipy.special import fdtri
from tqdm import tqdm

from vingd.estimators import (
    antithetic_draws,
    damped_newton,
    default_estimator,
    get_estimator,
    validate_num_samples,
)
from vingd.expfam import AutoExpFamily
from vingd.families.diagonal_normal import DiagonalNormal
from vingd.families.multivariate_normal import MultivariateNormal
from vingd.guides import check_param_shapes, check_params, flat_view_of, guide_latents
from vingd.log_joint import LogJoint, full_data, num_observations, subsamples
from vingd.optim import StepInfo, damped_step, validate_step_size
from vingd.pytree import merge_arrays, split_arrays
from vingd.validation import as_rng_key, check_model, is_integer, is_real

GROW, SHRINK, DECAY = 1.5, 0.5, 0.9
#: adaptive ρ's floor. Low, as a start far out on a log link needs it: a Poisson GLM with counts
#: ~10⁶ from the prior median moves its mean ρ·Σy/Λ ≈ 10⁸ρ a step (the gradient against q's
#: precision), so every step overshot and was declined at a floor of 10⁻⁴; at 10⁻⁸ the fit
#: finds a step that gains and ρ grows back ×1.5 a gain (counts up to ~10⁹ at `init_scale` 0.1)
MIN_STEP_SIZE = 1e-8
#: adaptive ρ below which over a whole window a flat loss is a frozen fit, not a converged one
#: (settled fits hold ρ near `SETTLE`; no default fit of the models in `models/` went below 0.0125)
FROZEN_STEP_SIZE = 1e-3
#: fit's warnings point at the first caller outside vingd (`fit`, `compare`, the CLI, ...)
_VINGD = (os.path.dirname(__file__) + os.sep,)
#: adaptive ρ at or below which a step within the noise settles the fit, and its ceiling after
SETTLE = 0.2
#: `fit`'s default `max_num_samples`, in multiples of `num_samples`
MAX_BATCHES = 8


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The static settings of a fit (hashed into the compile cache)."""

    chunk: int
    step_size: Any  # None (adaptive), CONSTANT (ρ held in the state), or an optax schedule
    estimator: str
    num_samples: int
    momentum: float
    max_backoffs: int
    newton_mean: bool = True  # the estimator's Newton mean step, where it gives one
    initial_step_size: float = 1.0  # ρ₀: adaptive ρ below it damps the Newton mean step
    max_batches: int = 1  # the most batches of `num_samples` draws a step may take (1: fixed)


class FitState(NamedTuple):
    """What one step carries to the next."""

    natural: Any  # θ over the flat latent
    velocity: Any  # θ_t − θ_{t−1} (heavy ball)
    step_size: jax.Array  # ρ (adaptive or constant; ignored for a schedule)
    count: jax.Array
    rng_key: jax.Array
    settled: jax.Array  # adaptive ρ has settled: steps are kept, ρ stays at most SETTLE
    # the Polyak average of θ as (its first window's average θ₀, the average of θ − θ₀) and its
    # weight (steps × batches): each chunk averages its steps into it (not carried through the
    # chunk's loop); `_run_fit` sets `averaged` to 0 to start it afresh
    average: Any = None
    averaged: jax.Array | None = None
    batches: jax.Array | None = None  # batches of `num_samples` draws per step (`_run_fit`)

    @classmethod
    def start(cls, natural, step_size, rng_key) -> FitState:
        """θ at rest (no velocity) with ρ = `step_size` in θ's dtype, at step 0, not settled."""
        dtype = jnp.result_type(*jax.tree.leaves(natural))
        velocity = jax.tree.map(np.zeros_like, natural)  # (host arrays: nothing to compile)
        rho = np.asarray(step_size, dtype)
        zero = np.zeros((), dtype)
        average = (natural, velocity)  # (θ₀ and a zero deviation)
        start = (np.int32(0), rng_key, np.bool_(False), average, zero, np.int32(1))
        return cls(natural, velocity, rho, *start)


class StepKeys(NamedTuple):
    """One step's keys."""

    draw: jax.Array  # the estimator's draws
    check: jax.Array  # the ELBO check's draws (independent of the step's own)
    model: jax.Array  # the model's own randomness (a minibatch)


class StepStats(NamedTuple):
    """Per-step diagnostics."""

    loss: jax.Array  # −ELBO estimate at θ_t
    step_size: jax.Array
    accepted: jax.Array  # False where the ELBO check declined the step
    info: StepInfo


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns: `params` in `SVI`'s format, `losses[t]` = −ELBO estimate at step t."""

    params: dict
    losses: np.ndarray  # only the steps taken
    step_sizes: np.ndarray
    num_steps: int
    converged: bool
    averaged: bool  # params are the Polyak average over the settled windows
    mcse: float  # its Monte Carlo error in q's sds, RMS over the latents (NaN if not averaged)
    final_num_samples: int  # draws per step at the end (grown from num_samples towards mcse)
    num_declined: int  # steps the ELBO check declined (adaptive ρ)
    num_corrected: int  # steps needing the iBLR correction to stay in the domain
    num_backoffs: int
    num_rejected: int  # steps with no valid halving (e.g. non-finite log density)
    estimator: str
    compile_seconds: float  # 0.0 when the compiled chunk was reused
    run_seconds: float
    # wall seconds from the start of the run to the end of each step taken: a chunk's steps
    # share its time (its dispatch, run and the host's verdict on the chunk before) evenly
    step_seconds: np.ndarray


#: `FitConfig.step_size` for a constant ρ: its value rides in `FitState.step_size` (traced), so
#: that another value reuses the compiled program
CONSTANT = "constant"


def step_size_setting(step_size, adaptive_start: float) -> tuple[Any, float]:
    """(`FitConfig.step_size`, the state's starting ρ) for a validated `step_size`: None is
    adaptive from `adaptive_start`; a number is `CONSTANT`; a schedule is itself."""
    if step_size is None:
        return None, adaptive_start
    if callable(step_size):
        return step_size, 1.0
    return CONSTANT, step_size


def _validate(
    num_steps,
    step_size,
    num_samples,
    max_backoffs,
    momentum,
    window,
    tol,
    mcse,
    max_num_samples=None,
):
    """`ValueError` for a bad setting; else (num_steps, step_size) as Python numbers."""
    if not is_integer(num_steps) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    if step_size is not None:
        step_size = validate_step_size(step_size, int(num_steps))
    validate_num_samples(num_samples)
    if step_size is None and num_samples < 2:
        raise ValueError(
            "num_samples=1 needs a fixed step_size or a schedule: adaptive ρ (step_size=None) "
            "judges each step by the spread of the ELBO change over at least 2 draws."
        )
    if max_num_samples is not None and (
        not is_integer(max_num_samples)
        or max_num_samples < num_samples
        or max_num_samples % num_samples
    ):
        raise ValueError(
            f"max_num_samples must be a multiple of num_samples ({num_samples}) and at least "
            f"as large (the draws grow in batches of num_samples), or None for "
            f"{MAX_BATCHES} × num_samples; got {max_num_samples!r}."
        )
    if not is_integer(max_backoffs) or max_backoffs < 0:
        raise ValueError(f"max_backoffs must be an integer >= 0, got {max_backoffs!r}.")
    if not is_real(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}.")
    if not is_integer(window) or window < 2:
        raise ValueError(f"window must be an integer >= 2, got {window!r}.")
    if tol is not None and (not is_real(tol) or not tol >= 0):
        raise ValueError(f"tol must be a number >= 0, or None to run all num_steps; got {tol!r}.")
    if mcse is not None and (not is_real(mcse) or not mcse >= 0):
        raise ValueError(
            f"mcse must be a number >= 0 (a Monte Carlo error in q's sds), or None to return "
            f"the first settled window's average; got {mcse!r}."
        )
    return int(num_steps), step_size


def _tree_where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _newton_mean(family, natural, direction, displacement):
    """`direction` with its location part replaced so that the step moves m by `displacement`."""
    loc, _ = family.loc_scale(natural)
    new_precision = -2 * (natural.eta2 + direction.eta2)
    eta1 = new_precision * (loc + displacement) - natural.eta1
    usable = jnp.all(jnp.isfinite(displacement))
    return direction._replace(eta1=jnp.where(usable, eta1, direction.eta1))


def _run_chunk(state, arrays, cap, *, model, guide, config, static):
    """`config.chunk` steps on the guide's flat family (`_scan_chunk` around `propose`)."""
    args, kwargs = merge_arrays(arrays, static)
    family = guide.flat_family
    estimator = get_estimator(config.estimator)

    def propose(natural, velocity, rho, trust, keys):
        # one minibatch per step, if the model subsamples
        log_joint = LogJoint(handlers.seed(model, keys.model), args, kwargs, guide.unpack_latent)
        estimate = functools.partial(
            estimator, log_joint, family, natural, num_samples=config.num_samples
        )
        if config.max_batches > 1:
            estimate = mean_of_batches(estimate, keys.draw, state.batches)
        else:
            estimate = estimate(keys.draw)
        entropy = family.entropy(natural)
        before = estimate.expected_log_joint + entropy
        if hasattr(family, "ngd_step"):  # a curved family (low-rank SLANG) projects its own step
            new, info = family.ngd_step(natural, estimate.grad_mean, rho, config.max_backoffs)
        else:
            direction = jax.tree.map(
                lambda g, t, v: rho * (g - t) + config.momentum * v,
                estimate.grad_mean,
                natural,
                velocity,
            )
            if estimate.newton is not None and config.newton_mean:
                curvature, grad = estimate.newton
                step = rho * damped_newton(curvature, grad, -2 * natural.eta2, trust)
                direction = _newton_mean(family, natural, direction, step)
            new, info = damped_step(family, natural, direction, 1.0, config.max_backoffs)

        def recheck(new):
            # fresh noise, shared by θ and θ': the step was fitted to the estimator's draws, so
            # re-using them would favour it (and keep ρ from annealing at the noise floor)
            draws = [
                antithetic_draws(keys.check, family, x, config.num_samples) for x in (natural, new)
            ]
            old, now = jnp.split(jax.vmap(log_joint)(jnp.concatenate(draws)), 2)
            return now - old, family.entropy(new) - entropy, old

        return before, new, info, recheck

    # where averaging the parameters themselves is meaningless, the family averages
    return _scan_chunk(
        propose,
        state,
        cap,
        config,
        family.is_valid,
        family.marginals,
        getattr(family, "average", None),
    )


def _batch_key(key, k):
    """`key` for k = 0 (so that one batch draws what one estimate always drew), else its k-th
    fold."""
    folded = jax.random.fold_in(key, k)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jnp.where(k == 0, jax.random.key_data(key), jax.random.key_data(folded))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))
    return jnp.where(k == 0, key, folded)


def mean_of_batches(estimate, rng_key, batches):
    """The mean of `batches` (traced) estimates `estimate(key)` from independent keys: one
    estimate from `batches` times its draws, for estimators whose every output is a mean over
    their draws (the Gaussian families' natural parameters and Newton terms; not
    a low-rank factorisation). One compiled estimator, looped: a fit takes more draws per step
    once settled (`_run_fit`) without a second program."""
    shapes = jax.eval_shape(estimate, rng_key)
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def add(k, total):
        new = estimate(_batch_key(rng_key, k))
        return jax.tree.map(lambda t, e: t + e / batches.astype(e.dtype), total, new)

    return jax.lax.fori_loop(0, batches, add, zero)


def factor_marginals(factors) -> tuple[jax.Array, jax.Array]:
    """(means, variances) of q's `factors` (numpyro distributions), each flattened and
    concatenated; moments a factor lacks (a categorical's) are left out."""
    means, variances = [jnp.zeros(0)], [jnp.zeros(0)]
    for q in factors:
        try:
            mean, variance = q.mean, q.variance
        except NotImplementedError:
            continue
        shape = q.batch_shape + q.event_shape
        means.append(jnp.ravel(jnp.broadcast_to(mean, shape)))
        variances.append(jnp.ravel(jnp.broadcast_to(variance, shape)))
    return jnp.concatenate(means), jnp.concatenate(variances)


def marginal_shift(previous, last) -> float:
    """√(mean_i ((m_i − m'_i) / sd_i)²): how far q's marginal means moved from `previous` to
    `last` (each (means, variances)), in `last`'s sds, root mean square over the latents (a maximum
    would grow as √(2 log d) with the noise alone). Between two windows' averages at the same
    stationary point it is √2 times the Monte Carlo error of one window's average."""
    (before, _), (now, variance) = (tuple(map(np.asarray, m)) for m in (previous, last))
    squares = (now - before) ** 2 / variance
    squares = squares[np.isfinite(squares) & np.isfinite(variance)]
    return float(np.sqrt(np.mean(squares))) if squares.size else float("nan")


def _scan_chunk(propose, state, cap, config, is_valid, marginals, average=None):
    """`config.chunk` steps under `lax.scan`; steps at or past `cap` leave the state alone.

    The loop shared by every guide: `propose(θ, velocity, ρ, τ, keys)` (τ in (0, 1]: the trust
    region that adaptive ρ below its start `config.initial_step_size` is, before it settles;
    else 1; `StepKeys`) returns the ELBO estimate at θ, a valid candidate θ', its `StepInfo`,
    and `recheck(θ')`: the per-draw log-joint differences at θ' and θ with the same noise
    (`keys.check`), the entropy change, and the log joints at θ. Around it: ρ (adaptive, with
    the common-random-numbers ELBO check and the settled phase of the module docstring, or
    scheduled), heavy-ball velocity, and the Polyak average of θ over the chunk's active steps,
    merged into `state.average` (weighted by the steps × batches of draws in each;
    `average(stacked, weights)` where the family averages its own way); returned with the
    window's `marginals(θ)` (q's means and variances), the merged average and its `is_valid`
    (in the program: evaluated op by op, it would compile each operation).

    The average is kept as θ₀ (its first window's) plus the average of θ − θ₀, so that float32
    rounding scales with the iterates' spread, not with θ: merged as one θ, each window's
    merge rounded at ε|θ|, which a condition number multiplies (diamonds, cond Λ ≈ 3.5e5:
    averaged over 2,000 steps the mean ended 0.26 (0.83) sd from q* over 10 seeds).
    """
    adaptive = config.step_size is None
    scheduled = callable(config.step_size)
    constant = state.step_size  # (a constant ρ: loop-invariant, not carried)

    def step(state, keys):
        natural = state.natural
        if scheduled:
            rho = config.step_size(state.count)
        else:  # (a constant ρ read from the loop's input, not its carry: XLA hoists what it
            # can then, and a carried ρ made the 2,049-weight BNN's "stein" step 20% slower)
            rho = state.step_size if adaptive else constant
        trust = jnp.minimum(1, rho / config.initial_step_size) if adaptive else 1.0
        trust = jnp.where(state.settled, 1, trust)
        before, new, info, recheck = propose(natural, state.velocity, rho, trust, StepKeys(*keys))
        if adaptive:
            gains, entropy_change, log_joints = recheck(new)
            gain = gains.mean() + entropy_change
            # noise scale: the paired differences' standard error, capped by the current
            # estimate's own (a wild candidate must not widen its own tolerance)
            se = jnp.minimum(gains.std(), log_joints.std()) / math.sqrt(gains.shape[0])
            rounding = 10 * jnp.finfo(gains.dtype).eps * jnp.abs(before)
            dropped = ~(gain >= -2 * se - rounding)
            improved = gain > 2 * se + rounding
            # settled, only a step that lowers the ELBO by more than one draw's spread of log
            # joints is declined (and halves ρ): declining the steps whose noise happened to
            # lower it would bias the iterates that the average is taken over
            wild = ~(gain >= -log_joints.std() - rounding)
            declined = jnp.where(state.settled, wild, dropped)
            accepted = jnp.isfinite(gain) & ~declined
            # settled, ρ stays at most SETTLE: it halves on a declined step, grows back on a
            # significant gain, and is kept otherwise (no more annealing: the average over the
            # window, not a vanishing ρ, removes the jitter)
            grown = jnp.minimum(GROW * rho, jnp.where(state.settled, SETTLE, 1.0))
            shrunk = jnp.maximum(SHRINK * rho, MIN_STEP_SIZE)
            kept = jnp.where(state.settled, rho, jnp.maximum(DECAY * rho, MIN_STEP_SIZE))
            rho_next = jnp.where(improved, grown, jnp.where(declined, shrunk, kept))
            # (a check without noise, as for exact CAVI steps, never settles)
            noisy = gains.shape[0] > 1
            settled = state.settled | (noisy & accepted & ~improved & (rho_next <= SETTLE))
        else:
            accepted, dropped = jnp.asarray(True), jnp.asarray(False)
            rho_next, settled = rho, state.settled
        active = state.count < cap
        keep = active & accepted
        velocity = jax.tree.map(lambda n, t: n - t, new, natural)
        restart = ~keep | dropped  # (a drop kept by a settled fit restarts the heavy ball too)
        next_state = FitState(
            natural=_tree_where(keep, new, natural),
            velocity=_tree_where(restart, jax.tree.map(jnp.zeros_like, velocity), velocity),
            step_size=jnp.where(active, rho_next, state.step_size),
            count=state.count + active,
            rng_key=state.rng_key,
            settled=jnp.where(active, settled, state.settled),
        )
        return next_state, (StepStats(-before, rho, accepted, info), next_state.natural, active)

    # every step's keys at once: a threefry call inside the loop is a rolled loop of its own,
    # run (and compiled) apart
    key, chunk_key = jax.random.split(state.rng_key)
    keys = jax.random.split(chunk_key, (config.chunk, len(StepKeys._fields)))
    (origin, deviation), averaged, batches = state.average, state.averaged, state.batches
    # (not carried through the loop)
    state = state._replace(average=None, averaged=None, batches=None)
    state, (stats, naturals, active) = jax.lax.scan(step, state, keys)

    # the mean of θ over the chunk's active steps: Polyak averaging in natural parameters, or
    # the family's own
    def mean(stacked, weights):
        if average is not None:
            return average(stacked, weights)
        return jax.tree.map(lambda x: jnp.tensordot(weights, x, axes=1), stacked)

    taken = active.sum().astype(averaged.dtype)
    window = mean(naturals, active / jnp.maximum(taken, 1))
    # weighted by its steps × batches: at a constant ρ the iterates' variance is that of one
    # step's estimate, which falls as 1/batches
    total = averaged + taken * batches
    share = averaged / jnp.maximum(total, 1)  # (0 where the average starts afresh)
    # (a fresh start ignores the old average: 0·inf would poison every later one)
    fresh = averaged == 0
    origin = _tree_where(fresh, window, origin)
    deviation = _tree_where(fresh, jax.tree.map(jnp.zeros_like, window), deviation)
    if average is not None:  # (its own average of the whole θ: the deviation stays 0)
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), origin, window)
        origin = average(both, jnp.stack([share, 1 - share]))
    else:
        deviation = jax.tree.map(
            lambda o, d, w: share * d + (1 - share) * (w - o), origin, deviation, window
        )
    merged = jax.tree.map(jnp.add, origin, deviation)
    average = (origin, deviation)
    state = state._replace(rng_key=key, average=average, averaged=total, batches=batches)
    return state, stats, marginals(window), merged, is_valid(merged)


_COMPILED: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 32
# (XLA:CPU's default optimisation level. LLVM at -O1 compiled the fit program in 10–40% less
# time at the same step time, but its float32 reductions are less accurate: diamonds' full-
# covariance fit (5,000 observations, cond Λ ≈ 3.5e5) ended 0.266 (0.377) sd from q* over 10
# seeds against 0.136 (0.342), and 0.038 nats below its ELBO against 0.011.)


def clear_cache() -> None:
    """Forget every compiled fit program. A program is keyed by the model function and the
    shapes of its arguments, as `jax.jit` is, so data or settings that a model reads from
    globals are baked in: pass them as arguments, or clear the cache after changing them."""
    _COMPILED.clear()


def _compiled(run, traced: tuple, **static):
    """`run(*traced, **static)` compiled for these static settings and the shapes of `traced`
    (cached), and its compile seconds (0.0 when cached)."""
    shapes = tuple((jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(traced))
    # a guide is keyed by what the program depends on (its `compile_key`), not by identity,
    # so that a new guide for the same model reuses the program
    settings = tuple(sorted((k, getattr(v, "compile_key", v)) for k, v in static.items()))
    key = (run, settings, shapes, jax.tree.structure(traced))
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    fn = jax.jit(lambda *a: run(*a, **static))
    compiled = fn.lower(*traced).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = compiled
    while len(_COMPILED) > _CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return compiled, seconds


def initial_params(guide, rng_key, *args, **kwargs) -> dict:
    """The guide's initial parameters (as `SVI.init` would make them, without its draw from the
    guide, whose first-use cost is a compilation per operation)."""
    with handlers.seed(rng_seed=rng_key):
        return guide.init_params(*args, **kwargs)


def window_verdict(previous: np.ndarray, last: np.ndarray, tol: float) -> str:
    """How the mean loss moved from one window to the next: "improving" (down by at least
    max(tol·|loss|, 2 standard errors)), "worse" (up by more than max(tol·|loss|, 4 s.e.): the
    fit is diverging) or "settled".

    The standard error takes the spread of the quieter window: a transient (the first steps
    from a far start) widens a window's spread without being noise, and once let a fit that was
    still gaining 6 nats a step stop (posteriordb sblrc, mean field). A rise is "worse" only
    where it stays beyond 4 s.e. with each window's largest loss left out: one wild estimate in
    a window of a settled fit (eight schools' funnel: a 16-draw loss 6–18 nats above the rest)
    moved the mean by 4 s.e. and stopped 1 in 200 default fits as diverging, while a divergence
    raises several (a median would miss one that starts late in the window). Non-finite losses
    are left out; with fewer than two finite ones in a window, "improving" (nothing to judge)."""
    previous, last = previous[np.isfinite(previous)], last[np.isfinite(last)]
    if min(previous.size, last.size) < 2:
        return "improving"
    floor = tol * abs(last.mean())

    def change(previous, last):  # the fall in mean loss, and its standard error
        spread = min(previous.var(ddof=1), last.var(ddof=1))
        return previous.mean() - last.mean(), math.sqrt(spread / previous.size + spread / last.size)

    improvement, se = change(previous, last)
    if improvement > 0 and improvement >= max(floor, 2 * se):  # (a constant loss is settled)
        return "improving"
    if -improvement <= max(floor, 4 * se):
        return "settled"
    if min(previous.size, last.size) > 2:  # the rise without each window's largest loss
        improvement, se = change(np.sort(previous)[:-1], np.sort(last)[:-1])
    return "worse" if -improvement > max(floor, 4 * se) else "settled"


#: ε-scaled condition number of q's precision (scaled to unit diagonal) at or beyond which it
#: is numerically singular: its spread along the flattest direction is set by rounding
SINGULAR = 0.5


def singular_directions(precision, eps: float) -> tuple[float, np.ndarray]:
    """(κ, loading): κ the condition number of Λ scaled to unit diagonal, D^-½ΛD^-½ (scale-free:
    a latent's units do not count, only correlation does), and per coordinate the squared
    weight of the directions whose eigenvalue is at most `eps`/`SINGULAR` times the largest
    (all zero unless κ·`eps` ≥ `SINGULAR`)."""
    precision = np.asarray(precision, np.float64)
    scale = np.sqrt(np.abs(np.diag(precision)))
    values, vectors = np.linalg.eigh(precision / np.outer(scale, scale))
    kappa = values[-1] / values[0] if values[0] > 0 else math.inf
    flat = values <= values[-1] * eps / SINGULAR
    return kappa, np.sum(vectors[:, flat] ** 2, axis=1)


def collapse_floor(dtype) -> float:
    """1/ε times the smallest normal number of `dtype`: a Gaussian's precision at or below it
    is held by no posterior, only by a flat direction shrunk ×(1 − ρ) a step."""
    info = jnp.finfo(dtype)
    return float(info.tiny) / float(info.eps)


def collapsed_sites(precisions: dict) -> list[str]:
    """The sites of `precisions` (site -> a Gaussian's elementwise precision) where it has
    fallen to its dtype's `collapse_floor`."""
    return [
        name
        for name, precision in precisions.items()
        if np.any(np.asarray(precision) <= collapse_floor(jnp.result_type(precision)))
    ]


def flag_improper(result: FitResult, sites: list[str], dtype, how: str | None = None):
    """`result` with `converged=False`, after a warning that q's precision `how` (default: fell
    below `collapse_floor`) along `sites`: an improper or non-identified posterior (a flat
    prior, latents identified only through their sum) drives the precision there towards 0,
    each step by a factor 1 − ρ, until rounding stops it and the ELBO looks settled."""
    how = f"fell below {collapse_floor(dtype):.1g}" if how is None else how
    single = jnp.finfo(dtype).eps > np.finfo(np.float64).eps
    warnings.warn(
        f"vingd.fit: q's precision {how} along {', '.join(map(repr, sites))}, so q's spread "
        "there is set by rounding, not by the posterior: the posterior is improper or not "
        "identified there (a flat prior, or latents identified only through their sum or "
        "difference), or nearly so, unless a stall or divergence warned of above left q so. "
        "The fit is not reported converged. Give those latents proper priors or "
        "reparameterise them"
        + (
            " (or, for a proper posterior this ill-conditioned, enable float64: "
            "jax.config.update('jax_enable_x64', True))."
            if single
            else "."
        ),
        RuntimeWarning,
        skip_file_prefixes=_VINGD,
    )
    return dataclasses.replace(result, converged=False)


def _flag_flat(result: FitResult, guide) -> FitResult:
    """`flag_improper` where the fitted Gaussian's precision has collapsed in a latent
    (`collapse_floor`: every such site is named) or, full covariance, is numerically singular
    (`singular_directions`: the sites carrying 10% or more of the flat directions' weight)."""
    natural = guide.flatten(result.params)
    dtype = jnp.result_type(natural.eta2)
    if isinstance(guide.flat_family, MultivariateNormal):
        # on the host: as jnp operations, each would compile (~0.3 s in all)
        eta2 = np.asarray(natural.eta2, np.float64)
        precision = guide.flat_family.precision(natural._replace(eta2=eta2))
        diagonal = np.diag(precision)
    else:
        precision = diagonal = -2 * np.asarray(natural.eta2, np.float64)
    if not np.all(np.isfinite(precision)):  # (a fit that ended invalid has said so)
        return result
    sites = collapsed_sites(guide.unpack_latent(diagonal.astype(dtype)))
    if sites:
        return flag_improper(result, sites, dtype)
    if precision.ndim < 2:
        return result
    eps = float(jnp.finfo(dtype).eps)
    kappa, loading = singular_directions(precision, eps)
    if not loading.any():
        return result
    share = {k: float(np.sum(v)) for k, v in guide.unpack_latent(loading).items()}
    total = sum(share.values())
    sites = [k for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v >= 0.1 * total]
    how = (
        f"has condition number {kappa:.3g} (scaled to unit diagonal; "
        f"{jnp.dtype(dtype).name} resolves up to ~{SINGULAR / eps:.1g})"
    )
    return flag_improper(result, sites, dtype, how)


def fit(
    model,
    *args,
    guide,
    num_steps: int = 1000,
    step_size=None,
    estimator: str | None = None,
    num_samples: int = 16,
    max_num_samples: int | None = None,
    momentum: float | None = None,
    tol: float | None = 1e-4,
    window: int = 25,
    mcse: float | None = 0.02,
    rng_key=None,
    init_params: dict | None = None,
    max_backoffs: int = 10,
    progress_bar: bool | None = None,
    **kwargs,
) -> FitResult:
    """Fit `guide` to `model(*args, **kwargs)` by natural-gradient VI.

    Args:
        model: a NumPyro model.
        guide: `AutoNaturalNormal`, `AutoNaturalMVN` or `AutoNaturalLowRankMVN` of `model`,
            or `AutoExpFamily` (one family per site; its step is in `vingd.expfam_fit`).
        num_steps: the most steps to take.
        step_size: None (default) for adaptive ρ, starting at `guide.default_step_size`; or a
            fixed ρ in (0, 1], or an optax schedule `step -> ρ`. ρ = 1 with the "hessian"
            estimator solves a conjugate Gaussian model in one step.
        estimator: "hessian", "hvp", "stein", "gradsq", "ggn" or "reparam"
            (`vingd.estimators`); default "hessian" for full covariance and for small latent
            dimension, else "ggn" (mean-field and low rank; "hvp" / "stein" for a likelihood
            without several observation terms). For `AutoExpFamily`:
            "auto" (default; exact on conjugate and discrete sites) or "reparam".
        num_samples: draws per step: an even number (antithetic pairs), or 1 (one plain draw,
            the cheapest step; with a fixed `step_size` or a schedule).
        max_num_samples: the most draws per step while settled windows are averaged towards
            `mcse`: each window that leaves the average's error above it doubles the draws of
            the next, up to this (a multiple of `num_samples`; default 8 × `num_samples`;
            `num_samples` keeps them fixed), while the draws still quieten the windows
            (`draws_quieten`). The average reaches `mcse` for about the same number of draws
            either way, and with less of the bias that estimates from few draws have
            (`FitResult.final_num_samples`). Gaussian guides on the full data; not low rank
            nor `AutoExpFamily` (validated, and the draws stay fixed).
        momentum: heavy-ball β in [0, 1); default `guide.default_momentum`.
        tol: a window's mean loss that improves by less than max(tol·|loss|, 2 s.e.) has
            settled: the fit averages that window and the next (Polyak averaging, `mcse`) and
            returns the average; a rise of more than max(tol·|loss|, 4 s.e.) stops it, with a
            `RuntimeWarning` (diverging), returning the latest valid average before. None runs all
            `num_steps` and returns the last iterate.
        window: steps per chunk (convergence check and Polyak averaging).
        mcse: once settled, windows are averaged in until the Monte Carlo standard error of
            the average's means is at most `mcse` of q's sds (root mean square over the
            latents, estimated from the shifts between at least `MIN_SHIFTS` consecutive
            windows' averages, or one where it is negligible; `FitResult.mcse`), or `num_steps`
            (converged still, with `FitResult.mcse` above the target). None (or a large
            value) returns the first settled window's average, as do fits on minibatches
            (whose full-data answer needs a Robbins–Monro schedule).
        rng_key: a `jax.random` key, or an integer seed (default `PRNGKey(0)`).
        init_params: parameters to start from (e.g. a previous fit's), else the guide's init.
        max_backoffs: halvings of a step tried before it is rejected.
        progress_bar: show a tqdm bar for fits of more than one window; None shows it only
            on a terminal.
    """
    if isinstance(guide, AutoExpFamily):  # a product of families: vingd.expfam_fit
        from vingd.expfam_fit import fit_exp_family  # (which imports this module)

        return fit_exp_family(
            model,
            *args,
            guide=guide,
            num_steps=num_steps,
            step_size=step_size,
            estimator=estimator,
            num_samples=num_samples,
            max_num_samples=max_num_samples,  # (validated; its draws stay fixed)
            momentum=momentum,
            tol=tol,
            window=window,
            mcse=mcse,
            rng_key=rng_key,
            init_params=init_params,
            max_backoffs=max_backoffs,
            progress_bar=progress_bar,
            **kwargs,
        )
    guide = flat_view_of(guide)
    momentum = guide.default_momentum if momentum is None else momentum
    num_steps, step_size = _validate(
        num_steps,
        step_size,
        num_samples,
        max_backoffs,
        momentum,
        window,
        tol,
        mcse,
        max_num_samples,
    )
    if max_num_samples is None:
        max_num_samples = MAX_BATCHES * num_samples
    init_key, run_key = jax.random.split(as_rng_key(rng_key))
    initial = initial_params(guide, init_key, *args, **kwargs)  # (sets the guide up)
    check_model(model, args, kwargs, type(guide).__name__, guide_latents(guide))
    family = guide.flat_family
    if init_params is None:  # (valid by construction)
        natural = guide.flatten(initial)
    else:
        if set(init_params) != set(initial):
            raise ValueError(
                f"init_params must be {type(guide).__name__} params, with keys "
                f"{sorted(initial)}; got keys {sorted(init_params)} (another guide's?)."
            )
        check_param_shapes(type(guide).__name__, initial, init_params)
        natural = guide.flatten(init_params)
        if not bool(family.is_valid(natural)):
            raise ValueError(
                "init_params are not valid natural parameters (precision must be > 0)."
            )
    if momentum and hasattr(family, "ngd_step"):
        raise ValueError(
            f"momentum must be 0 for {type(guide).__name__}: its step is a projection, with no "
            f"heavy-ball form; got {momentum!r}."
        )
    dim = sum(int(np.size(loc)) for loc in guide._init_locs.values())
    if estimator is None:
        estimator = default_estimator(family, dim, num_observations(model, args, kwargs))
    get_estimator(estimator, family)  # the name, and that it works with the guide

    step_size, rho0 = step_size_setting(step_size, guide.default_step_size)
    minibatches = subsamples(model, args, kwargs)
    # On a minibatch the mean-field Newton step E_B[∇²f]⁻¹E_B[∇f] is biased (the mean of a
    # ratio is not the ratio of the means: for log σ it is ½ − B/(2Σr²/σ²), so σ shrinks);
    # the natural-gradient step, linear in the minibatch's estimates, stays unbiased.
    config = FitConfig(
        min(window, num_steps),
        step_size,
        estimator,
        num_samples,
        momentum,
        max_backoffs,
        newton_mean=not minibatches,
        initial_step_size=rho0 if step_size is None else 1.0,  # (adaptive ρ's trust only)
        # (a low-rank curvature is a factorisation, not a mean to average batches into)
        max_batches=1
        if minibatches or hasattr(family, "ngd_step")
        else max_num_samples // num_samples,
    )
    result = _run_fit(
        _run_chunk,
        FitState.start(natural, rho0, run_key),
        args,
        kwargs,
        config=config,
        num_steps=num_steps,
        tol=tol,
        mcse=mcse,
        progress_bar=progress_bar,
        unflatten=guide.unflatten,
        minibatches=bool(minibatches),
        model=model,
        guide=guide,
    )
    if isinstance(family, (DiagonalNormal, MultivariateNormal)):  # (low rank floors D)
        result = _flag_flat(result, guide)
    return result


class _NoBar:
    """tqdm's `update`, `set_postfix` and `refresh`, doing nothing (and a `total` to set)."""

    def update(self, n):
        pass

    def set_postfix(self, **values):
        pass

    def refresh(self):
        pass


#: consecutive windows of a settled adaptive fit left out as excursions (a loss rise beyond the
#: noise) before the next one is read as divergence
MAX_EXCURSIONS = 2
#: shifts between settled windows' averages that `averaged_mcse` must rest on before a fit stops
#: at its `mcse`. Stopping at the first estimate below it stopped where one shift happened to
#: read low: default fits (10 seeds, against the exact q*) ended with RMS errors 0.9–2.3× their
#: reported mcse in the median, up to 13× (eight schools); with 3, 0.7–1.2× (at most 4.5×) and
#: the worst latent's mean error 0.017–0.057 sd of q* from 0.031–0.086, for 12–50 more steps
MIN_SHIFTS = 3
#: an estimate at most this fraction of `mcse` stops the fit on any number of shifts: exact
#: steps (CAVI) shift by rounding alone, while under noise an estimate 10× low (χ²_d/d ≤ 0.01)
#: has probability ≤ 1% for d ≥ 2 latents
NEGLIGIBLE = 0.1
#: the Monte Carlo error of the returned means (in q's sds, root mean square over the latents)
#: beyond which a fit on minibatches is not reported converged: its noise floor (two windows'
#: averages 0.5 sd apart; a logistic regression's differ by 0.4–1.3 sds at N/B = 10, d = 3, and by
#: 2.1–3.3 at N/B = 100, d = 20, 3 keys each)
NOISE_FLOOR = 0.5 / math.sqrt(2)


def noise_scales(shifts, batches=None) -> np.ndarray:
    """shift_j² / (1/b_j + 1/b_{j−1}) for each `marginal_shift` between consecutive windows of
    b_j batches of draws (`batches`: b_0..b_n, default all 1): each an estimate of c, the
    variance of a one-batch window's average (a window of b_j batches has c/b_j)."""
    shifts = np.asarray(shifts, float)
    batches = np.ones(shifts.size + 1) if batches is None else np.asarray(batches, float)
    return shifts**2 / (1 / batches[1:] + 1 / batches[:-1])


def draws_quieten(scales, dof: int, level: float = 0.99) -> bool:
    """Whether more draws per step still quieten the windows: the latest of `noise_scales` is
    within the `level` quantile of its ratio to the first two's mean (pooled: one first draw
    too small had frozen the growth for good), F(dof, k·dof) for k of them, where each scale is
    c·χ²_dof/dof under noise that falls as 1/draws, `dof` the latents. Beyond it is a floor
    that draws do not lower (e.g. float32 rounding; there the scale grows with the draws).
    Few latents make the test lenient (F(1, 2) at 0.99: 98.5), and growing only costs draws."""
    scales = np.asarray(scales, float)
    if scales.size < 2:
        return True
    first = scales[: min(2, scales.size - 1)]
    return bool(scales[-1] <= fdtri(dof, first.size * dof, level) * first.mean())  # (NaN: no)


def averaged_mcse(shifts, batches=None) -> float:
    """The Monte Carlo standard error of the average of n = len(`shifts`) windows' averages,
    from the `marginal_shift` between each and the window before (windows of a stationary
    chain, ~independent at ρ = `SETTLE`): with c from `noise_scales`, the average weighted by
    the windows' batches b_j has error √(c/Σb_j) (RMS(shifts)/√(2n) for one batch
    throughout). NaN without finite shifts."""
    scales = noise_scales(shifts, batches)
    finite = np.isfinite(scales)
    if not finite.any():
        return float("nan")
    total = len(scales) if batches is None else np.sum(batches[1:])
    return float(np.sqrt(np.mean(scales[finite]) / total))


def _run_fit(
    run_chunk,
    state,
    args,
    kwargs,
    *,
    config,
    num_steps,
    tol,
    mcse,
    progress_bar,
    unflatten,
    minibatches=False,
    **settings,
) -> FitResult:
    """Compile `run_chunk(state, arrays, cap, config=, static=, **settings)` once (cached) and run
    it until `num_steps` or convergence (shared by every guide); `unflatten(θ)` gives the params
    dict.

    Once a window's loss has settled (`window_verdict`), the windows that follow are averaged
    into it (Polyak–Ruppert averaging at the settled ρ) until the average's Monte Carlo error
    (`averaged_mcse`, in q's sds) is at most `mcse`, or `num_steps`; under adaptive ρ a window
    whose loss rose beyond the noise is an excursion of the settled chain, left out. The
    average is returned where valid. On `minibatches` the first settled window's average is
    returned: there the settled chain wanders by sds of q (the loss verdicts, on minibatch
    estimates, called later windows diverging), and an error above `NOISE_FLOOR` is warned
    of, not converged.
    """
    arrays, static = split_arrays((args, kwargs))
    cap = jnp.asarray(num_steps, jnp.int32)
    run, compile_seconds = _compiled(
        run_chunk, (state, arrays, cap), config=config, static=static, **settings
    )
    chunks, ends, verdict = [], [], "improving"  # (`ends`: seconds at each chunk's return)
    # settled: each window is averaged in, and `shifts` has the marginal shift of each window
    # in the average from the window before; `sizes` the batches of draws of each window's
    # steps, from the window before the first
    polishing, shifts, sizes, error = False, [], [], float("nan")
    batches = window_batches = last_batches = 1
    mcse = None if minibatches else mcse
    fresh = np.zeros((), np.asarray(state.averaged).dtype)  # (`averaged` = 0: a new average)
    window, merged, valid = None, None, False
    fallback = None  # the latest valid average before the last window (where it diverges)
    excursions = 0  # consecutive windows left out as excursions of a settled chain
    judged = None  # the last window kept: the next is judged against it, as are the stall checks
    start = time.perf_counter()
    show = sys.stderr.isatty() if progress_bar is None else progress_bar
    # (a bar is made only to be shown: the first tqdm in a process, even disabled, takes 2–9 ms
    # for its lock, as long as a small model's whole fit)
    with (
        tqdm(total=num_steps, desc="vingd")
        if show and num_steps > config.chunk
        else contextlib.nullcontext(_NoBar())
    ) as bar:
        while int(state.count) < num_steps:
            before = int(state.count)
            if polishing and num_steps - before < config.chunk:
                break  # (a last, partial window would be averaged in unjudged)
            if valid:
                fallback = merged
            if not polishing:
                state = state._replace(averaged=fresh)
            kept = (state.average, state.averaged, merged, valid)  # (to leave this window out)
            previous_window, previous_batches = window, window_batches
            state, stats, window, merged, valid = run(state, arrays, cap)
            window_batches = last_batches = batches
            taken = int(state.count) - before
            chunks.append(jax.tree.map(lambda x, n=taken: np.asarray(x)[:n], stats))
            ends.append(time.perf_counter() - start)
            bar.update(taken)
            loss = f"{float(np.mean(chunks[-1].loss)):.7g}"
            bar.set_postfix(loss=loss)
            if tol is None or judged is None or taken < config.chunk:
                judged = chunks[-1]
                continue
            verdict = window_verdict(judged.loss, chunks[-1].loss, tol)
            excursion = verdict == "worse" and config.step_size is None and bool(state.settled)
            excursions = excursions + 1 if excursion else 0
            if excursion and excursions <= MAX_EXCURSIONS:
                # an excursion of a settled chain (adaptive ρ declines its wild steps): eight
                # schools' funnel, 1,150 steps settled, then a window 1.7 nats up (10 sds of
                # the settled windows' losses). Left out of the average, and out of the
                # comparison with the next window
                state = state._replace(average=kept[0], averaged=kept[1])
                merged, valid, window = kept[2], kept[3], previous_window
                window_batches = previous_batches
                verdict = "settled" if polishing else "improving"
                continue
            if verdict == "worse":
                break
            judged = chunks[-1]
            if verdict == "improving" and not polishing:
                continue
            # settled: from here every window is averaged in (a later gain beyond the noise,
            # reset on, had thrown away 1,800 steps' average for the last iterate at the cap)
            polishing = True
            shifts.append(marginal_shift(previous_window, window))
            sizes = sizes or [previous_batches]
            sizes.append(window_batches)
            error = averaged_mcse(shifts, sizes)
            bar.set_postfix(loss=loss, mcse=f"{error:.2g}")
            if mcse is None or np.isnan(error):  # (NaN: no moments to judge by)
                break
            if not error > mcse:
                if len(shifts) >= MIN_SHIFTS or error <= NEGLIGIBLE * mcse:
                    break
                continue  # (too few shifts to stop on; the draws stay)
            # still short of `mcse`: twice the draws per step for the next window (their
            # average's noise falls as fast per draw either way, and the bias of few-draw
            # estimates, e.g. a mean-field Newton step through a funnel, falls with it), while
            # the draws still quieten the windows: a window's shift, scaled to one batch
            # (`noise_scales`), far beyond the first ones' is a floor that draws do not lower
            # (`draws_quieten`), where more would only cost
            if draws_quieten(noise_scales(shifts, sizes), np.size(window[0])):
                batches = min(2 * batches, config.max_batches)
                state = state._replace(batches=np.int32(batches))
        if polishing and verdict != "worse":  # (also where num_steps ended the averaging)
            verdict = "settled"
        if verdict != "improving":  # stopped before the cap: the bar ends full, saying why
            bar.total = int(state.count)
            bar.set_postfix(
                loss=loss, **({"mcse": f"{error:.2g}"} if polishing else {}), stopped=verdict
            )
            bar.refresh()
    natural, averaged = state.natural, False
    if verdict == "settled" and bool(valid):
        natural, averaged = merged, True
    elif verdict == "worse":
        # diverging (a fixed ρ too large for the noise): stop at the better, earlier average
        rise = float(np.nanmean(chunks[-1].loss) - np.nanmean(judged.loss))
        warnings.warn(
            f"vingd.fit: the mean loss rose by {rise:.4g} over the last {config.chunk} steps, "
            "beyond the noise; stopped, returning "
            + (
                "the latest valid average before them"
                if fallback is not None
                else "the last iterate"
            )
            + (
                ". Try more num_samples (adaptive ρ's ELBO check is as noisy as its draws) or "
                "a small fixed step_size."
                if config.step_size is None
                else ". Try a smaller step_size, more num_samples, or the adaptive default "
                "(step_size=None)."
            ),
            RuntimeWarning,
            skip_file_prefixes=_VINGD,
        )
        if fallback is not None:
            natural, averaged = fallback, True
        error = float("nan")
    if not averaged:
        error = float("nan")
    jax.block_until_ready(natural)
    run_seconds = time.perf_counter() - start
    stats = jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
    nonfinite = int(np.sum(~np.isfinite(chunks[-1].loss)))
    if nonfinite:
        warnings.warn(
            f"vingd.fit: {nonfinite} of the last {chunks[-1].loss.size} ELBO estimates were NaN "
            "or infinite: the model's log density is not finite on part of q's support (e.g. a "
            "parameter that leaves a distribution's support, or a NaN in the data); the fit is "
            "not reported converged. Check the model there.",
            RuntimeWarning,
            skip_file_prefixes=_VINGD,
        )
    # steps not taken: declined by the ELBO check, or rejected (no valid halving). A window of
    # mostly those has a flat loss, which the verdict reads as settled (the only verdict it can
    # be mistaken for: the others are not converged anyway). Judged: the last window averaged
    # in, not an excursion left out.
    last = judged if verdict == "settled" and judged is not None else chunks[-1]
    rejected = last.info.num_rejected > 0
    not_taken = int(np.sum(~last.accepted | rejected))
    # adaptive ρ held far below its settled range over a window: the fit froze (a flat loss
    # again), whatever the steps' verdicts
    frozen = config.step_size is None and float(np.max(last.step_size)) < FROZEN_STEP_SIZE
    stalled = verdict == "settled" and (2 * not_taken > last.loss.size or frozen)
    if stalled and not nonfinite:  # (else: said above)
        far = (
            "Where even the shortest steps overshoot, the start is too far from the posterior "
            "for the log density's curvature there (e.g. a log link with large counts): start "
            "nearer it (init_loc_fn=numpyro.infer.init_to_value(values=...) or init_params), or "
            "try another rng_key, a fixed step_size, or another estimator."
        )
        if 2 * not_taken <= last.loss.size:  # frozen
            what = f"adaptive ρ stayed below {FROZEN_STEP_SIZE:g} over the last {last.loss.size} "
            what += "steps, so q hardly moved"
            advice = far
        else:
            what = (
                f"{not_taken} of the last {last.loss.size} steps were declined by the ELBO check "
                "or rejected (no halving of ρ kept the parameters valid)"
            )
            advice = (
                "Most were rejected: every halving left the gradient non-finite or the "
                "parameters invalid, so check the model where q goes: a density undefined "
                "there, or unbounded along some direction (an improper posterior)."
                if 2 * int(rejected.sum()) > not_taken
                else far
            )
        warnings.warn(
            f"vingd.fit: {what}, so the fit stalled (ρ = {float(last.step_size[-1]):.2g}) rather "
            f"than converged; it is not reported converged. {advice}",
            RuntimeWarning,
            skip_file_prefixes=_VINGD,
        )
    # (on the full data the error is only reported: there, one settled window's estimate
    # from the window before can be a transient's)
    noisy = minibatches and averaged and error > NOISE_FLOOR and not (nonfinite or stalled)
    if noisy:
        warnings.warn(
            f"vingd.fit: on minibatches, q's means have a Monte Carlo error of {error:.3g} of its "
            "own sds (root mean square over the latents, from the last two windows' averages): "
            "the fit is still moving or at the minibatch noise floor, not converged (the noise "
            "of the average falls as √(N/(B·steps)) for N observations in batches of B). For "
            "the full-data posterior use larger batches, or a Robbins–Monro schedule run for "
            "many steps (more as N/B grows), e.g. step_size=lambda t: 1 / (1 + t / 10), "
            "num_steps=..., tol=None, or the full data.",
            RuntimeWarning,
            skip_file_prefixes=_VINGD,
        )
    return FitResult(
        params=unflatten(natural),
        losses=stats.loss,
        step_sizes=stats.step_size,
        num_steps=int(state.count),
        converged=verdict == "settled" and not nonfinite and not stalled and not noisy,
        averaged=averaged,
        mcse=error,
        final_num_samples=last_batches * config.num_samples,
        num_declined=int((~stats.accepted).sum()),
        num_corrected=int(stats.info.num_corrected.sum()),
        num_backoffs=int(stats.info.num_backoffs.sum()),
        num_rejected=int(stats.info.num_rejected.sum()),
        estimator=config.estimator,
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
        step_seconds=chunk_step_seconds(ends, [c.loss.size for c in chunks]),
    )


def chunk_step_seconds(ends, sizes) -> np.ndarray:
    """Seconds at the end of each step of chunks of `sizes` steps returned at `ends` seconds
    (from 0): each chunk's steps share the time since the one before evenly."""
    starts = [0.0, *ends[:-1]]
    spans = zip(starts, ends, sizes, strict=True)
    return np.concatenate(
        [np.zeros(0)] + [a + (b - a) * np.arange(1, n + 1) / n for a, b, n in spans]
    )


def elbo(model, guide, params, *args, rng_key=None, num_particles: int = 2000, **kwargs):
    """ELBO of any guide's `params` from `num_particles` draws, and its standard error (on the
    whole data: subsampled plates at full size)."""
    rng_key = as_rng_key(rng_key, default_seed=1)
    if not is_integer(num_particles) or num_particles < 2:
        raise ValueError(
            f"num_particles must be an integer >= 2 (the standard error needs two), got "
            f"{num_particles!r}."
        )
    num_particles = int(num_particles)
    check_params(model, guide, params, args, kwargs)
    keys = jax.random.split(rng_key, num_particles)
    loss = Trace_ELBO()
    model = full_data(model)

    def one(key):
        return -loss.loss(key, params, model, guide, *args, **kwargs)

    values = jax.lax.map(one, keys, batch_size=min(num_particles, 250))
    return float(values.mean()), float(values.std() / math.sqrt(num_particles))
