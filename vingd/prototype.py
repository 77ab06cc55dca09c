"""A guide's set-up (`AutoGuide._setup_prototype`) with its initial values computed in one
compiled program.

numpyro's `initialize_model` draws the initial values (e.g. 15 prior draws per site for
`init_to_median`) and checks the log density and its gradient there op by op; each operation
is compiled on first use, which costs seconds in a fresh process (more than compiling `fit`'s
whole step). Here the model is run once at a feasible point, for its structure (sites, supports,
plates, transforms), and the initial values, their transform to unconstrained space and the
check are one `jax.jit`. Where the initial point is not valid, numpyro's own set-up is used,
with its retries and its errors.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.util import (
    _get_model_transforms,
    _prepare_model_for_potential,
    get_potential_fn,
    potential_energy,
    transform_fn,
)

from vingd.pytree import merge_arrays, split_arrays


def _at_zero(site):
    """A feasible value: the support's bijection at 0 (no random draw, unlike
    `init_to_feasible`)."""
    if site["type"] != "sample" or site["is_observed"] or site["value"] is not None:
        return None
    transform = biject_to(site["fn"].support)
    shape = site["kwargs"].get("sample_shape", ()) + transform.inverse_shape(site["fn"].shape())
    return transform(jnp.zeros(shape))


@partial(jax.jit, static_argnums=(0, 1, 3))
def _initial_values(model, init_loc_fn, rng_key, static, arrays):
    args, kwargs = merge_arrays(arrays, static)
    seeded = handlers.substitute(handlers.seed(model, rng_key), substitute_fn=init_loc_fn)
    trace = handlers.trace(seeded).get_trace(*args, **kwargs)
    latent = {
        name: site
        for name, site in trace.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["fn"].support.is_discrete
    }
    transforms = {name: biject_to(site["fn"].support) for name, site in latent.items()}
    values = {name: site["value"] for name, site in latent.items()}
    unconstrained = transform_fn(transforms, values, invert=True)
    plates = {k: s["value"] for k, s in trace.items() if s["type"] == "plate"}
    # (seeded: a `scan` in the model asks for a key, which would otherwise come from a `seed`
    # outside this program, e.g. SVI's, and leak its tracer there)
    at_plates = handlers.seed(handlers.substitute(model, plates), jax.random.fold_in(rng_key, 1))
    energy, grad = jax.value_and_grad(lambda z: potential_energy(at_plates, args, kwargs, z))(
        unconstrained
    )
    valid = jnp.isfinite(energy) & jnp.all(jnp.isfinite(ravel_pytree(grad)[0]))
    return unconstrained, valid


def initial_values(model, init_loc_fn, rng_key, args, kwargs):
    """(unconstrained initial values by `init_loc_fn`, whether the log density and its gradient
    are finite there), from one compiled program (cached per model, strategy and shapes).
    Under a transform (a guide first run inside `vmap`, `lax.map`) it cannot tell: False, so
    that numpyro's own set-up, which runs there, takes over."""
    arrays, static = split_arrays((args, kwargs))
    unconstrained, valid = _initial_values(model, init_loc_fn, rng_key, static, arrays)
    if isinstance(valid, jax.core.Tracer):  # set up under a transform (Predictive's vmap)
        return unconstrained, False
    return unconstrained, bool(valid)


class CompiledPrototype(AutoGuide):
    """Mixin: `AutoGuide._setup_prototype` with `initial_values` (put it after numpyro's guide
    class among the bases, so that class's own set-up still runs around this one)."""

    def _setup_prototype(self, *args, **kwargs):
        rng_key = numpyro.prng_key()
        # (without numpyro's validation of distribution arguments: run op by op, its checks
        # compiled 4–5 operations, ~0.2 s in a fresh process; where an argument is invalid, the
        # log density at the start is not finite, and numpyro's own set-up below says which)
        with handlers.block():
            with numpyro.validation_enabled(False):
                feasible = handlers.substitute(
                    handlers.seed(self.model, rng_key), substitute_fn=_at_zero
                )
                transforms, replay, enumerate_support, trace = _get_model_transforms(
                    feasible, args, kwargs
                )
            init_locs, valid = initial_values(self.model, self.init_loc_fn, rng_key, args, kwargs)
        if not valid or enumerate_support:  # numpyro's set-up retries, or says what is wrong
            return super()._setup_prototype(*args, **kwargs)
        model = _prepare_model_for_potential(self.model, trace, enum=False)
        self._potential_fn_gen, postprocess_fn_gen = get_potential_fn(
            model, transforms, replay_model=replay, dynamic_args=True
        )
        self.prototype_trace = trace
        self._potential_fn = self._potential_fn_gen(*args, **kwargs)
        # as numpyro: a fixed seed, for models whose deterministic sites subsample
        self._postprocess_fn = handlers.seed(postprocess_fn_gen(*args, **kwargs), rng_seed=0)
        # in the model's order (a dict out of jit comes in key order), as numpyro's
        self._init_locs = {name: init_locs[name] for name in trace if name in init_locs}
        self._prototype_frames, self._prototype_plate_sizes = {}, {}
        for name, site in trace.items():
            if site["type"] == "sample" and not site["is_observed"]:
                for frame in site["cond_indep_stack"]:
                    if self._prototype_frames.setdefault(frame.name, frame) != frame:
                        raise ValueError(
                            f"The plate {frame.name!r} has inconsistent dim or size at site "
                            f"{name!r}; check the model."
                        )
            elif site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
