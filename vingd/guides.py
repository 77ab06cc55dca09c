"""Exponential-family guides whose parameters are natural parameters.

The guides are `numpyro.infer.autoguide.AutoGuide`s: they work in `SVI`, `Predictive`,
`sample_posterior`, `median` and `quantiles` like numpyro's own. Each registers, with
`constraints.real`, one natural-parameter NamedTuple per family it holds, so `vingd.NGD`
recognises what to update and how. For `vingd.fit` each guide also exposes a flat view:
a family over the concatenated unconstrained latent vector (`flat_family`, `flatten`,
`unflatten`, `unpack_latent`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from contextlib import ExitStack

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import LowerCholeskyAffine
from numpyro.distributions.util import cholesky_of_inverse
from numpyro.infer.autoguide import AutoContinuous, AutoNormal

from vingd.families import DiagonalNormal, MultivariateNormal
from vingd.initialization import init_to_median
from vingd.low_rank import LowRankNormal, LowRankNormalParams
from vingd.prototype import CompiledPrototype
from vingd.validation import (
    check_latents,
    check_model,
    explained_invalid_parameters,
    is_integer,
    is_real,
)


def _host(x):
    """`x` as a NumPy array, for host arithmetic (operations on device arrays would each compile
    on first use); a tracer stays one (a guide first run inside `vmap`, e.g. by `Predictive`)."""
    return x if isinstance(x, jax.core.Tracer) else np.asarray(x)


def needs_setup(method):
    """`method`, or a `ValueError` saying how to set the guide up if it has never run."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if self.prototype_trace is None:
            raise ValueError(
                f"{type(self).__name__}.{method.__name__} needs the guide set up on the model's "
                "data: fit it (vingd.fit, SVI.init), or, for a new guide given saved params, call "
                "guide.init_params(*model_args, **model_kwargs) first."
            )
        return method(self, *args, **kwargs)

    return checked


class _FlatView:
    """What `vingd.fit` reads from a Gaussian guide besides its flat view (`flatten`,
    `unflatten`, `unpack_latent`): the family, the initial parameters, the compile key."""

    @property
    def flat_family(self):
        return self.family

    @property
    def compile_key(self):
        """What `fit`'s compiled step depends on: the class, the model and the layout of the
        flat latent (site names and shapes, in order)."""
        layout = tuple((name, np.shape(value)) for name, value in self._init_locs.items())
        return type(self), self.model, layout

    def init_params(self, *args, **kwargs) -> dict:
        """The parameters a fit starts from (the guide is set up on first use, under the seed
        handler in effect, or seed 0), without drawing from the guide as a guide call would."""
        if self.prototype_trace is None:
            seeded = any(isinstance(h, handlers.seed) for h in numpyro.primitives._PYRO_STACK)
            with contextlib.nullcontext() if seeded else handlers.seed(rng_seed=0):
                self._setup_prototype(*args, **kwargs)
        return self._initial_params()


def validate_init_scale(init_scale) -> None:
    """`ValueError` unless `init_scale` is a number whose precision 1/init_scale² is a finite,
    normal number in JAX's default float (else the start's precision is 0 or inf)."""
    info = np.finfo(jnp.result_type(float))
    low, high = 1 / math.sqrt(float(info.max)), 1 / math.sqrt(float(info.tiny))
    try:  # (a real too large for a float: OverflowError)
        valid = is_real(init_scale) and low < float(init_scale) < high
    except OverflowError:
        valid = False
    if not valid:
        raise ValueError(
            f"init_scale must be a number between {low:.1e} and {high:.1e} (its precision "
            f"1/init_scale² finite and nonzero in {info.dtype}), got {init_scale!r}."
        )


class AutoNaturalNormal(AutoNormal, CompiledPrototype, _FlatView):
    """Mean-field Gaussian, one `DiagonalNormal` per latent site in unconstrained space.

    Locations start at the prior median (`vingd.initialization.init_to_median`, exact where the
    prior's CDF is known): Newton-like steps from there are stable where a random start can
    saturate a likelihood. Parameters are named
    `f"{site}_{prefix}_natural"` and hold θ = (m/σ², −1/(2σ²)). Plates are
    recreated from the model, and constrained sites are reached through `biject_to`, exactly as in
    `AutoNormal` (whose posterior helpers this guide reuses).
    """

    family = DiagonalNormal()
    #: `vingd.fit`'s default (initial) ρ.
    default_step_size = 0.5
    #: `vingd.fit`'s default heavy-ball momentum.
    default_momentum = 0.0

    def __init__(self, model, *, prefix="auto", init_loc_fn=init_to_median, init_scale=0.1):
        validate_init_scale(init_scale)
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, init_scale=init_scale)

    def _setup_prototype(self, *args, **kwargs):
        check_model(self.model, args, kwargs, type(self).__name__)
        with explained_invalid_parameters(self.model, args, kwargs):
            super()._setup_prototype(*args, **kwargs)
        _, self._unravel = ravel_pytree(self._init_locs)

    def _param_name(self, site):
        return f"{site}_{self.prefix}_natural"

    def _initial(self, site):
        init_loc = _host(self._init_locs[site])
        return self.family.from_loc_scale(init_loc, 0 * init_loc + self._init_scale)

    def _initial_params(self):
        """θ at the initial locations with scale `init_scale`, per site."""
        return {self._param_name(site): self._initial(site) for site in self._init_locs}

    def __call__(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            natural = numpyro.param(self._param_name(name), self._initial(name))
            loc, scale = self.family.loc_scale(natural)
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                q = dist.Normal(loc, scale).to_event(self._event_dims[name])
                if site["fn"].support is not dist.constraints.real:
                    q = dist.TransformedDistribution(q, dist.biject_to(site["fn"].support))
                result[name] = numpyro.sample(name, q)
        return result

    def _as_loc_scale(self, params):
        """The `AutoNormal` parameter dict equivalent to natural `params`."""
        out = {}
        for site in self._init_locs:
            loc, scale = self.family.loc_scale(params[self._param_name(site)])
            out[f"{site}_{self.prefix}_loc"] = loc
            out[f"{site}_{self.prefix}_scale"] = scale
        return out

    @needs_setup
    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs):
        return super().sample_posterior(
            rng_key, self._as_loc_scale(params), *args, sample_shape=sample_shape, **kwargs
        )

    @needs_setup
    def median(self, params):
        return super().median(self._as_loc_scale(params))

    @needs_setup
    def quantiles(self, params, quantiles):
        return super().quantiles(self._as_loc_scale(params), quantiles)

    # -- the flat view used by vingd.fit ---------------------------------------------------
    def flatten(self, params):
        """One `DiagonalNormalNatural` over the raveled unconstrained latents."""
        naturals = {site: params[self._param_name(site)] for site in self._init_locs}
        eta1, _ = ravel_pytree({k: v.eta1 for k, v in naturals.items()})
        eta2, _ = ravel_pytree({k: v.eta2 for k, v in naturals.items()})
        return self.family.natural_type(eta1, eta2)

    def unflatten(self, natural):
        eta1, eta2 = self._unravel(natural.eta1), self._unravel(natural.eta2)
        return {
            self._param_name(s): self.family.natural_type(eta1[s], eta2[s]) for s in self._init_locs
        }

    def unpack_latent(self, z):
        return self._unravel(z)


class _FlatContinuous(AutoContinuous, CompiledPrototype, _FlatView):
    """An AutoContinuous guide with one parameter, its family over the flat latent: it is its
    own flat view for `vingd.fit`."""

    def _get_posterior(self):
        return self.family.to_numpyro(numpyro.param(self._param_name, self._initial()))

    def _initial_params(self):
        return {self._param_name: self._initial()}

    @needs_setup
    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs):
        return super().sample_posterior(rng_key, params, *args, sample_shape=sample_shape, **kwargs)

    # -- the flat view used by vingd.fit ---------------------------------------------------
    def flatten(self, params):
        return params[self._param_name]

    def unflatten(self, natural):
        return {self._param_name: natural}

    def unpack_latent(self, z):
        return self._unpack_latent(z)


class AutoNaturalMVN(_FlatContinuous):
    """Full-covariance Gaussian over all unconstrained latents, raveled in `AutoContinuous` order.

    One parameter, `f"{prefix}_natural"`, holds θ = (Λm, −½Λ). `get_posterior(params)` is the
    numpyro `MultivariateNormal` over the flat latent vector.
    """

    family = MultivariateNormal()
    #: `vingd.fit`'s default ρ: a damped Newton step, stable under Monte Carlo noise.
    default_step_size = 0.5
    default_momentum = 0.0

    def __init__(self, model, *, prefix="auto", init_loc_fn=init_to_median, init_scale=0.1):
        validate_init_scale(init_scale)
        self._init_scale = init_scale
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        check_model(self.model, args, kwargs, type(self).__name__)
        with explained_invalid_parameters(self.model, args, kwargs):
            super()._setup_prototype(*args, **kwargs)

    @property
    def _param_name(self):
        return f"{self.prefix}_natural"

    def _initial(self):
        init = _host(self._init_latent)
        eye = np.eye(init.size, dtype=init.dtype)
        return self.family.from_loc_precision(init, eye / self._init_scale**2)

    def get_base_dist(self):
        return dist.Normal(jnp.zeros(self.latent_dim), 1).to_event(1)

    @needs_setup
    def get_transform(self, params):
        natural = params[self._param_name]
        scale_tril = cholesky_of_inverse(self.family.precision(natural))
        return LowerCholeskyAffine(self.family.loc(natural), scale_tril)

    @needs_setup
    def get_posterior(self, params):
        """The numpyro `MultivariateNormal` over the flat unconstrained latents."""
        transform = self.get_transform(params)
        return dist.MultivariateNormal(transform.loc, scale_tril=transform.scale_tril)

    @needs_setup
    def median(self, params):
        return self._unpack_and_constrain(self.family.loc(params[self._param_name]), params)

    @needs_setup
    def quantiles(self, params, quantiles):
        transform = self.get_transform(params)
        scale = jnp.linalg.norm(transform.scale_tril, axis=-1)
        latent = dist.Normal(transform.loc, scale).icdf(jnp.asarray(quantiles)[..., None])
        return self._unpack_and_constrain(latent, params)


class AutoNaturalLowRankMVN(_FlatContinuous):
    """Gaussian over all unconstrained latents with precision Λ = UUᵀ + diag(D), U of `rank`
    columns: SLANG (Mishkin et al. 2018), for latent dimensions in the thousands.

    One parameter, `f"{prefix}_low_rank"`, holds `LowRankNormalParams(loc, factor, diag)`; it
    starts at (prior median, 0, 1/init_scale²). Memory and time per step are O(d·rank²).
    `vingd.fit` updates it (see `vingd.low_rank`); `vingd.NGD` does not. `get_posterior(params)`
    is a numpyro distribution over the flat latent vector.

    Args:
        rank: columns of U, an integer in [1, d]; default round(√d), as numpyro's
            `AutoLowRankMultivariateNormal`.
    """

    family = LowRankNormal()
    default_step_size = 0.5
    default_momentum = 0.0

    def __init__(
        self, model, *, rank=None, prefix="auto", init_loc_fn=init_to_median, init_scale=0.1
    ):
        if rank is not None and (not is_integer(rank) or rank < 1):
            raise ValueError(f"rank must be an integer >= 1 (or None for √d), got {rank!r}.")
        validate_init_scale(init_scale)
        self.rank, self._init_scale = None if rank is None else int(rank), init_scale
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs):
        check_model(self.model, args, kwargs, type(self).__name__)
        with explained_invalid_parameters(self.model, args, kwargs):
            super()._setup_prototype(*args, **kwargs)
        if self.rank is None:
            self.rank = max(1, round(self.latent_dim**0.5))
        if self.rank > self.latent_dim:
            self.prototype_trace = None  # stay unset: a later call must not pass with this rank
            raise ValueError(
                f"rank must be at most the latent dimension {self.latent_dim}, got {self.rank}; "
                f"use rank={self.latent_dim} (or AutoNaturalMVN) for a full-rank precision."
            )

    @property
    def _param_name(self):
        return f"{self.prefix}_low_rank"

    def _initial(self):
        init = _host(self._init_latent)
        return LowRankNormalParams(
            init,
            np.zeros((init.size, self.rank), init.dtype),
            0 * init + self._init_scale**-2,
        )

    @needs_setup
    def get_transform(self, params):
        raise NotImplementedError(
            f"{type(self).__name__} has no O(d·rank) bijection from base noise (its draws use "
            "d + rank normals); use get_posterior(params) or sample_posterior."
        )

    @needs_setup
    def get_posterior(self, params):
        """`LowRankPrecisionNormal` over the flat unconstrained latents."""
        return self.family.to_numpyro(params[self._param_name])

    @needs_setup
    def median(self, params):
        return self._unpack_and_constrain(params[self._param_name].loc, params)

    @needs_setup
    def quantiles(self, params, quantiles):
        posterior = self.get_posterior(params)
        latent = dist.Normal(posterior.mean, jnp.sqrt(posterior.variance)).icdf(
            jnp.asarray(quantiles)[..., None]
        )
        return self._unpack_and_constrain(latent, params)


def guide_latents(guide) -> dict:
    """site -> shape of the latent sites `guide` was set up on (its prototype trace)."""
    return {
        name: jnp.shape(site["value"])
        for name, site in guide.prototype_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def check_param_shapes(guide_name: str, expected: dict, params: dict) -> None:
    """`ValueError` unless each of `expected`'s parameters in `params` has its shapes (params of
    the same guide type, fitted to data with other latent shapes, would fail deep in JAX)."""

    def shapes(tree):
        return [tuple(jnp.shape(x)) for x in jax.tree.leaves(tree)]

    for name, value in expected.items():
        if shapes(params[name]) != shapes(value):
            raise ValueError(
                f"params[{name!r}] has shapes {shapes(params[name])}, but {guide_name} on this "
                f"model and data has {shapes(value)}: params of a fit to data with other latent "
                "shapes? Fit this data from the guide's own start (no init_params)."
            )


def check_params(model, guide, params, args, kwargs) -> None:
    """Set a vingd `guide` up if it is new, and raise `ValueError` unless `params` hold its
    parameters and it was built for `model(*args, **kwargs)` (the same latent sites). A guide
    run with params it does not use draws silently from its initial values; a model whose
    observations were left out has them as latents the guide knows nothing of. numpyro's own
    guides pass unchecked."""
    if not hasattr(guide, "init_params"):
        return
    with handlers.block():  # (init_params seeds the set-up itself where nothing else does)
        expected = guide.init_params(*args, **kwargs)
    missing = sorted(set(expected) - set(params))
    if missing:
        raise ValueError(
            f"params lack {type(guide).__name__}'s parameter(s) {missing}; got keys "
            f"{sorted(params)}. Pass the params of a fit with this guide type (another guide's?)."
        )
    check_param_shapes(type(guide).__name__, expected, params)
    if isinstance(guide, _FlatView):
        check_model(model, args, kwargs, type(guide).__name__, guide_latents(guide))
    else:  # (AutoExpFamily: discrete latents too, which check_model refuses)
        check_latents(model, args, kwargs, type(guide).__name__, guide_latents(guide))


def flat_view_of(guide, user: str = "vingd.fit"):
    """`guide`, or a `ValueError` unless it is a Gaussian vingd guide over the flat latent
    (`user` names the caller: `vingd.fit` also takes `AutoExpFamily`, by its own path)."""
    if isinstance(guide, AutoNaturalNormal | AutoNaturalMVN | AutoNaturalLowRankMVN):
        return guide
    if user == "vingd.fit":
        accepted = "AutoNaturalNormal, AutoNaturalMVN, AutoNaturalLowRankMVN or AutoExpFamily"
        hint = "For numpyro's guides use numpyro.infer.SVI."
    else:
        accepted = "AutoNaturalNormal or AutoNaturalMVN"
        hint = "For AutoExpFamily use vingd.ExpFamELBO() or Trace_ELBO()."
    raise ValueError(f"{user} needs a vingd guide ({accepted}), got {type(guide).__name__}. {hint}")


__all__ = ["AutoNaturalLowRankMVN", "AutoNaturalMVN", "AutoNaturalNormal"]
