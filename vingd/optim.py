"""The natural-gradient update, kept in the domain, and the optimizer for `numpyro.infer.SVI`.

The update on natural parameters θ with the ELBO gradient in mean parameters (the Bayesian
learning rule; Khan & Lin 2017, Khan & Rue 2023):

    θ ← θ + ρ ∇_μ ELBO = θ + ρ F(θ)⁻¹ ∇_θ ELBO.

A step that would leave the natural domain (e.g. a precision that is not positive definite) is
replaced by the family's corrected step where it has one (the improved Bayesian learning rule for
Gaussians, Lin, Schmidt & Khan 2020, valid for any curvature), then, as a last resort, halved up
to `max_backoffs` times, and otherwise rejected (θ is kept: non-finite directions end here). All
three events are counted; an invalid state is never returned.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.optim import _NumPyroOptim

from vingd.families import family_of, is_natural


class StepInfo(NamedTuple):
    """What the domain safeguard did in one update (summed over parameters)."""

    num_corrected: jax.Array  # steps that needed the family's corrected (iBLR) form
    num_backoffs: jax.Array  # halvings of ρ applied
    num_rejected: jax.Array  # parameters left unchanged because no halving was valid


#: steps over which a schedule is checked where the number of steps is not known (SVI)
SCHEDULE_CHECKED_STEPS = 10_000


def validate_step_size(step_size, num_steps: int = SCHEDULE_CHECKED_STEPS):
    """`step_size` as a float (a schedule as it is), or a `ValueError` unless it is a number in
    (0, 1] (a Python or NumPy scalar, or a 0-d array) or a schedule whose ρ_t is in [0, 1] at
    steps t < `num_steps` (evaluated ahead, vectorised: a ρ_t > 1 overshoots and one < 0 or NaN
    steps backwards, and inside the compiled loop neither could be refused; 0, the end of an
    annealed schedule, takes no step)."""
    if callable(step_size):
        steps = np.arange(num_steps, dtype=np.int32)
        values = np.broadcast_to(np.asarray(jax.vmap(step_size)(steps)), steps.shape)
        bad = np.flatnonzero(~((values >= 0) & (values <= 1)))
        if bad.size:
            raise ValueError(
                f"the step_size schedule gives ρ = {float(values[bad[0]]):.4g} at step {bad[0]} "
                f"({bad.size} of its first {num_steps} steps are outside [0, 1]); a schedule "
                "must give natural-gradient steps in [0, 1], e.g. lambda t: 1 / (1 + t / 10)."
            )
        return step_size
    scalar = np.ndim(step_size) == 0 and np.issubdtype(np.asarray(step_size).dtype, np.number)
    if isinstance(step_size, bool | np.bool_) or not scalar or not 0 < float(step_size) <= 1:
        raise ValueError(
            f"step_size must be a number in (0, 1] (or an optax schedule), got {step_size!r}. "
            "Natural-gradient steps are in (0, 1]; 1 is a full Newton/CAVI step."
        )
    return float(step_size)


def damped_step(family, natural, direction, step_size, max_backoffs: int = 10):
    """The valid step θ' nearest to θ + ρ·direction, and what it took (`StepInfo`).

    With s = ρ·2⁻ᵏ for the least k ≤ `max_backoffs` that gives a valid state: θ + s·direction if
    valid, else `family.corrected_step(θ, direction, s)`. If no k works, θ is kept. jit-clean: the
    search is a `lax.while_loop`.
    """

    def attempt(carry):
        k = carry[0] + 1
        scale = step_size * 0.5**k
        plain = jax.tree.map(lambda t, d: t + scale * d, natural, direction)
        plain_ok = family.is_valid(plain)
        fixed = family.corrected_step(natural, direction, scale)
        step = jax.tree.map(lambda p, c: jnp.where(plain_ok, p, c), plain, fixed)
        return k, step, ~plain_ok, family.is_valid(step)

    def searching(carry):
        k, _, _, valid = carry
        return (k < max_backoffs) & ~valid

    start = (jnp.asarray(-1), natural, jnp.asarray(False), jnp.asarray(False))
    k, step, corrected, accepted = jax.lax.while_loop(searching, attempt, start)
    k = jnp.maximum(k, 0)
    new = jax.tree.map(lambda c, t: jnp.where(accepted, c, t), step, natural)
    info = StepInfo(
        (accepted & corrected).astype(jnp.int32),
        jnp.minimum(k, max_backoffs),
        (~accepted).astype(jnp.int32),
    )
    return new, info


def _sum_infos(infos):
    return StepInfo(*(sum(x) for x in zip(*infos, strict=True)))


class NaturalGradientState(NamedTuple):
    count: jax.Array
    info: StepInfo  # running totals since init


def natural_gradient(step_size=0.05, *, max_backoffs: int = 10) -> optax.GradientTransformation:
    """An optax transformation doing natural-gradient descent on vingd guide parameters.

    SVI hands it ∇_θ loss (loss = −ELBO) for each natural parameter θ; the update is
    θ ← θ − ρ_t F(θ)⁻¹ ∇_θ loss, with F⁻¹∇_θ computed as ∇_μ by a vector–Jacobian product
    through the family's mean→natural map, then kept valid by `damped_step`.

    Args:
        step_size: ρ in (0, 1], or an optax schedule `count -> ρ`. The default suits
            `Trace_ELBO` gradients (noisy curvature); with `vingd.NaturalELBO`, ρ up to 1 works.
        max_backoffs: halvings of ρ tried before a step is rejected.
    """
    step_size = validate_step_size(step_size)
    schedule = step_size if callable(step_size) else optax.constant_schedule(step_size)

    def init(params):
        others = [
            "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_natural)[0]
            if not is_natural(leaf)
        ]
        if others:
            raise ValueError(
                f"vingd.NGD updates only natural parameters of vingd guides, but got other "
                f"parameters {others}. Use a vingd guide (AutoNaturalNormal, AutoNaturalMVN), or "
                "give those parameters their own optimizer with optax.multi_transform. "
                "AutoNaturalLowRankMVN's step is a projection, not θ + ρ∇_μ: fit it with vingd.fit."
            )
        zero = jnp.zeros((), jnp.int32)
        return NaturalGradientState(zero, StepInfo(zero, zero, zero))

    def update(grads, state, params):
        rho = schedule(state.count)
        infos = []

        def step(theta, grad):
            family = family_of(theta)
            direction = jax.tree.map(jnp.negative, family.natural_gradient(theta, grad))
            new, info = damped_step(family, theta, direction, rho, max_backoffs)
            infos.append(info)
            return jax.tree.map(jnp.subtract, new, theta)

        updates = jax.tree.map(step, params, grads, is_leaf=is_natural)
        return updates, NaturalGradientState(state.count + 1, _sum_infos([state.info, *infos]))

    return optax.GradientTransformation(init, update)


class NGD(_NumPyroOptim):
    """Natural-gradient descent as a NumPyro optimizer: `SVI(model, guide, NGD(0.1), Trace_ELBO())`.

    A thin wrapper of `natural_gradient` (the optax transformation, which `SVI` would also accept
    as it is). `NGD.diagnostics(svi_state.optim_state)` reports backoffs and rejections.
    """

    def __init__(self, step_size=0.05, *, max_backoffs: int = 10):
        self.transformation = natural_gradient(step_size, max_backoffs=max_backoffs)

        def init_fn(params):
            return params, self.transformation.init(params)

        def update_fn(step, grads, state):
            params, opt_state = state
            updates, opt_state = self.transformation.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        super().__init__(lambda *fns: fns, init_fn, update_fn, lambda state: state[0])

    @staticmethod
    def diagnostics(optim_state) -> StepInfo:
        """Totals of corrected, backed-off and rejected steps, from `svi_state.optim_state`."""
        _, (_, state) = optim_state
        return state.info
