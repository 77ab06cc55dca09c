"""vingd's own engine: natural-gradient VI on pure state, one compiled `lax.scan`.

Each step, on the guide's family over the flat unconstrained latent vector,

    θ_{t+1} = θ_t + ρ_t ∇_μ ELBO = (1 − ρ_t) θ_t + ρ_t ∇_μ E_q[log p(y, z)]

(∇_μ H[q] = −θ for these families), with ∇_μ E_q[log p] from `estimators.price_hessian`. For a
Gaussian this is variational online Newton: Λ ← (1−ρ)Λ + ρ E[−∇²f], m ← m + ρ Λ⁻¹ E[∇f]
(Khan et al. 2018). Steps that leave the domain are halved or rejected (`optim.damped_step`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import potential_energy

from vingd.estimators import price_hessian
from vingd.guides import flat_view_of
from vingd.optim import damped_step, validate_step_size
from vingd.validation import check_model


@dataclasses.dataclass(frozen=True)
class FitConfig:
    num_steps: int
    step_size: Any  # float or optax schedule
    num_samples: int
    max_backoffs: int


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns: `params` in `SVI`'s format, `losses[t]` = −ELBO at step t."""

    params: dict
    losses: np.ndarray
    num_backoffs: int
    num_rejected: int
    compile_seconds: float  # 0.0 when the compiled step was reused
    run_seconds: float


def _validate(num_steps, step_size, num_samples, max_backoffs):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    validate_step_size(step_size)
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, int)
        or num_samples < 2
        or num_samples % 2
    ):
        raise ValueError(
            f"num_samples must be an even integer >= 2 (draws come in antithetic pairs), got "
            f"{num_samples!r}."
        )
    if not isinstance(max_backoffs, int) or max_backoffs < 0:
        raise ValueError(f"max_backoffs must be an integer >= 0, got {max_backoffs!r}.")


def _split_arrays(tree):
    """Array leaves (traced) apart from the rest (static, hashed into the compile cache)."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]
    static = (treedef, tuple(None if a else x for x, a in zip(leaves, is_array, strict=True)))
    return arrays, static


def _merge_arrays(arrays, static):
    treedef, leaves = static
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if x is None else x for x in leaves])


def _run(natural, rng_key, arrays, *, model, guide, config, static):
    """`config.num_steps` natural-gradient steps under `lax.scan`."""
    args, kwargs = _merge_arrays(arrays, static)
    family = guide.flat_family

    def log_joint(z):
        return -potential_energy(model, args, kwargs, guide.unpack_latent(z))

    schedule = (
        config.step_size
        if callable(config.step_size)
        else optax.constant_schedule(config.step_size)
    )

    def step(carry, t):
        natural, key = carry
        key, draw_key = jax.random.split(key)
        estimate = price_hessian(log_joint, family, natural, draw_key, config.num_samples)
        loss = -(estimate.expected_log_joint + family.entropy(natural))
        direction = jax.tree.map(jnp.subtract, estimate.grad_mean, natural)
        natural, info = damped_step(family, natural, direction, schedule(t), config.max_backoffs)
        return (natural, key), (loss, info)

    (natural, _), (losses, info) = jax.lax.scan(
        step, (natural, rng_key), jnp.arange(config.num_steps)
    )
    return natural, losses, info.num_backoffs.sum(), info.num_rejected.sum()


_COMPILED: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 32


def _compiled_run(natural, rng_key, arrays, **static):
    """The compiled `_run` for these static settings and input shapes, and its compile seconds."""
    shapes = tuple((jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves((natural, arrays)))
    key = (tuple(sorted(static.items(), key=lambda kv: kv[0])), shapes, jax.tree.structure(natural))
    try:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    except KeyError:
        pass
    start = time.perf_counter()
    compiled = jax.jit(lambda *a: _run(*a, **static)).lower(natural, rng_key, arrays).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = compiled
    while len(_COMPILED) > _CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return compiled, seconds


def initial_params(guide, rng_key, *args, **kwargs) -> dict:
    """The guide's initial parameters (as `SVI.init` would make them)."""
    trace = handlers.trace(handlers.seed(guide, rng_key)).get_trace(*args, **kwargs)
    return {name: site["value"] for name, site in trace.items() if site["type"] == "param"}


def fit(
    model,
    *args,
    guide,
    num_steps: int = 100,
    step_size=None,
    num_samples: int = 8,
    rng_key=None,
    init_params: dict | None = None,
    max_backoffs: int = 10,
    **kwargs,
) -> FitResult:
    """Fit `guide` to `model(*args, **kwargs)` by natural-gradient VI.

    Args:
        model: a NumPyro model.
        guide: `AutoNaturalNormal` or `AutoNaturalMVN` of `model`.
        num_steps: number of steps (all taken; each step costs `num_samples` Hessians).
        step_size: ρ in (0, 1] or an optax schedule; default `guide.default_step_size` (0.5 for
            AutoNaturalMVN, 0.2 for AutoNaturalNormal). ρ = 1 solves a conjugate Gaussian model
            in one step; under Monte Carlo noise on other models ρ < 1 keeps the fit stable.
        num_samples: even number of antithetic draws per step.
        rng_key: a `jax.random` key (default `PRNGKey(0)`).
        init_params: parameters to start from (e.g. a previous fit's), else the guide's init.
        max_backoffs: halvings of ρ tried before a step that leaves the domain is rejected.
    """
    guide = flat_view_of(guide)
    step_size = guide.default_step_size if step_size is None else step_size
    _validate(num_steps, step_size, num_samples, max_backoffs)
    check_model(model, args, kwargs, type(guide).__name__)
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    init_key, run_key = jax.random.split(rng_key)
    if init_params is None:
        init_params = initial_params(guide, init_key, *args, **kwargs)
    natural = guide.flatten(init_params)
    if not bool(guide.flat_family.is_valid(natural)):
        raise ValueError(
            "init_params are not valid natural parameters (precision must be positive definite)."
        )
    arrays, static = _split_arrays((args, kwargs))
    config = FitConfig(num_steps, step_size, num_samples, max_backoffs)
    run, compile_seconds = _compiled_run(
        natural, run_key, arrays, model=model, guide=guide, config=config, static=static
    )
    start = time.perf_counter()
    natural, losses, num_backoffs, num_rejected = jax.block_until_ready(
        run(natural, run_key, arrays)
    )
    run_seconds = time.perf_counter() - start
    return FitResult(
        params=guide.unflatten(natural),
        losses=np.asarray(losses),
        num_backoffs=int(num_backoffs),
        num_rejected=int(num_rejected),
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
    )


def elbo(model, guide, params, *args, rng_key=None, num_particles: int = 2000, **kwargs):
    """ELBO of any guide's `params` from `num_particles` draws, and its standard error."""
    rng_key = jax.random.PRNGKey(1) if rng_key is None else rng_key
    keys = jax.random.split(rng_key, num_particles)
    loss = Trace_ELBO()

    def one(key):
        return -loss.loss(key, params, model, guide, *args, **kwargs)

    values = jax.lax.map(one, keys, batch_size=min(num_particles, 250))
    return float(values.mean()), float(values.std() / math.sqrt(num_particles))
