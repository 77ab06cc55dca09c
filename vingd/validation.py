"""Checks of a model and its data, run before any fitting, with errors that name the site."""

from __future__ import annotations

import contextlib
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.extend.core import Var
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform


def is_integer(x) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def as_rng_key(rng_key, default_seed: int = 0) -> jax.Array:
    """`rng_key` (a `jax.random` key), an integer seed as `PRNGKey(seed)`, or
    `PRNGKey(default_seed)` for None; `ValueError` for anything else."""
    if rng_key is None or is_integer(rng_key):
        return jax.random.PRNGKey(default_seed if rng_key is None else int(rng_key))
    try:
        key = rng_key if isinstance(rng_key, jax.Array) else np.asarray(rng_key)
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        if typed or (key.dtype == np.uint32 and key.shape[-1:] == (2,)):
            return rng_key
    except (TypeError, ValueError):
        pass
    raise ValueError(
        f"rng_key must be a jax.random key (e.g. jax.random.PRNGKey(0)) or an integer seed, "
        f"got {rng_key!r}."
    )


def trace_model(model, args, kwargs):
    """One forward run of `model`, hidden from any enclosing handler; its trace.

    Latents are drawn uniformly in unconstrained space, as numpyro's `initialize_model` does, so
    models with improper priors (`ImproperUniform`, Stan's flat priors) trace too.
    """
    with handlers.block():
        seeded = handlers.seed(model, rng_seed=0)
        substituted = handlers.substitute(seeded, substitute_fn=init_to_uniform)
        return handlers.trace(substituted).get_trace(*args, **kwargs)


def inspect_model(model, args, kwargs, inspect):
    """`inspect(trace)` for a run of `model` that is traced, not executed (`jax.eval_shape`):
    shapes, supports and the arrays passed in are concrete, values computed in the model are
    tracers. No operation is compiled, where an executed run compiles each one on first use."""
    result = []
    jax.eval_shape(lambda: result.append(inspect(trace_model(model, args, kwargs))))
    return result[0]


def check_model(model, args, kwargs, guide_name: str, guide_latents=None) -> None:
    """Raise `ValueError` for data or latents that natural-gradient Gaussian guides cannot fit.

    - observed values that are NaN or infinite (the site is named);
    - discrete latent sites (`AutoExpFamily` fits those);
    - no latent sites at all;
    - latent sites whose support is computed from other latents (`Uniform(lo, lo + 2)`);
    - with `guide_latents` (site -> shape, from a guide's set-up; `vingd.fit`): latent sites
      other than the guide's (a guide built for another model), and `numpyro.param` sites,
      which `fit` does not learn.

    Observed values computed inside the model (rather than passed in) are not checked.
    """
    check = partial(_check_trace, guide_name=guide_name, guide_latents=guide_latents)
    latents = inspect_model(model, args, kwargs, check)
    moving = _supports_set_by_latents(model, args, kwargs, latents)
    if moving:
        raise ValueError(
            f"Latent site(s) {', '.join(map(repr, moving))} have a support that depends on "
            f"other latents; {guide_name} maps each latent onto the support found at set-up, "
            "through one fixed bijection, so its draws would leave the support the model then "
            "has. Give such a site a fixed support and transform it in the model instead: e.g. "
            f"u = numpyro.sample('u', dist.Uniform(0, 1)) and numpyro.deterministic("
            f"{moving[0]!r}, lo + (hi - lo) * u)."
        )


def _supports_set_by_latents(model, args, kwargs, latents: dict) -> list[str]:
    """The latent sites (of `latents`: site -> ShapeDtypeStruct) whose support's parameters
    are computed from latent values: found by tracing the model with the latents as inputs
    (jit inlined, nothing compiled) and following which outputs depend on them. A support
    computed from the data alone does not count. Through control flow (`scan`, `cond`,
    `while_loop`) every output counts as depending on every input, so a support that such a
    loop computes from data and latents together is refused too. A model that cannot be
    traced so (Python control flow on a latent's value) is not judged."""
    names = list(latents)

    def supports(values):
        with handlers.block():
            run = handlers.substitute(handlers.seed(model, rng_seed=0), data=values)
            trace = handlers.trace(run).get_trace(*args, **kwargs)
        return [jax.tree.leaves(trace[name]["fn"].support) for name in names]

    try:
        with jax.disable_jit():
            closed, shapes = jax.make_jaxpr(supports, return_shape=True)(latents)
    except Exception:  # (e.g. a concretization error: not this check's to report)
        return []
    dependent = set(closed.jaxpr.invars)
    for eqn in closed.jaxpr.eqns:
        if any(isinstance(v, Var) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    flags = iter(isinstance(v, Var) and v in dependent for v in closed.jaxpr.outvars)
    return [
        name
        for name, leaves in zip(names, shapes, strict=True)
        if any([next(flags) for _ in leaves])  # (a list: the iterator is drained per site)
    ]


def base_distribution(fn):
    """`fn` without its `Independent`, `ExpandedDistribution` and `MaskedDistribution`
    wrappers."""
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


@contextlib.contextmanager
def explained_invalid_parameters(model, args, kwargs):
    """Re-raise numpyro's "Normal distribution got invalid loc parameter" from a run of `model`
    inside (a guide's set-up) naming the site and the arguments that hold NaN or infinite
    values, the usual cause (a NaN covariate)."""
    try:
        yield
    except ValueError as error:
        if "distribution got invalid" not in str(error):
            raise
        raise ValueError(_invalid_parameter_message(error, model, args, kwargs)) from error


def _nonfinite_arguments(args, kwargs) -> list[str]:
    """Each array argument holding NaN or infinite values, as "args[0] (1 of 3)" or "x (1 of 3)"."""
    named = [(f"args[{i}]", arg) for i, arg in enumerate(args)] + list(kwargs.items())
    found = []
    for name, arg in named:
        for path, leaf in jax.tree_util.tree_leaves_with_path(arg):
            if isinstance(leaf, jax.core.Tracer):
                continue
            value = np.asarray(leaf)
            if np.issubdtype(value.dtype, np.number) and not np.all(np.isfinite(value)):
                bad = int(value.size - np.isfinite(value).sum())
                found.append(f"{name}{jax.tree_util.keystr(path)} ({bad} of {value.size})")
    return found


def _invalid_sites(model, args, kwargs) -> list[str]:
    """'site (Normal: loc)' for each sample site whose distribution has an invalid parameter,
    from a run without numpyro's validation (executed: this is only for the error message)."""
    try:
        with numpyro.validation_enabled(False):
            trace = trace_model(model, args, kwargs)
    except Exception:  # (the model fails elsewhere too: the original error says enough)
        return []
    found = []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        fn = base_distribution(site["fn"])
        invalid = [
            param
            for param, constraint in fn.arg_constraints.items()
            if param in fn.__dict__ and not np.all(constraint.check(getattr(fn, param)))
        ]
        if invalid:
            found.append(f"{name!r} ({type(fn).__name__}: {', '.join(invalid)})")
    return found


def _invalid_parameter_message(error, model, args, kwargs) -> str:
    sites = _invalid_sites(model, args, kwargs)
    arguments = _nonfinite_arguments(args, kwargs)
    message = str(error) + (f" At site {' and '.join(sites)}." if sites else "")
    if arguments:
        message += (
            f" The model's arguments hold NaN or infinite values: {', '.join(arguments)}. "
            "Drop or impute them (or model the missing covariates)."
        )
    return message


def _check_trace(trace, guide_name: str, guide_latents=None) -> dict:
    """`ValueError` for what `check_model` refuses; else the latents' shapes and dtypes."""
    for name, site in trace.items():
        if site["type"] == "param" and guide_latents is not None:
            raise ValueError(
                f"The model has a numpyro.param site {name!r}: vingd learns the guide's "
                "natural parameters only and would hold it at its initial value. Give it a "
                "prior (numpyro.sample) or pass it in as a constant."
            )
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            value = site["value"]
            if not isinstance(value, jax.core.Tracer) and not np.all(
                np.isfinite(np.asarray(value))
            ):
                bad = int(np.size(value) - np.isfinite(np.asarray(value)).sum())
                raise ValueError(
                    f"Observed site {name!r} has {bad} NaN or infinite value(s). Drop them, or "
                    "put any finite value where they are masked: a NaN under "
                    "numpyro.handlers.mask or obs_mask still makes the gradient NaN."
                )
            continue
        for frame in site["cond_indep_stack"]:
            plate = trace.get(frame.name, {})
            if plate.get("type") == "plate" and frame.size != plate["args"][0]:
                raise ValueError(
                    f"Latent site {name!r} is local to the subsampled plate {frame.name!r} "
                    f"(subsample_size={frame.size} of {plate['args'][0]}); {guide_name} fits "
                    "global latents only. Drop subsample_size from that plate, or move the site "
                    "out of it."
                )
        if site["fn"].support.is_discrete:
            base = base_distribution(site["fn"])
            marked = (
                " (vingd does not enumerate: its infer={'enumerate': ...} is not used)"
                if site["infer"].get("enumerate")
                else ""
            )
            raise ValueError(
                f"Latent site {name!r} is discrete ({type(base).__name__}, support "
                f"{site['fn'].support}){marked}; {guide_name} fits continuous latents only. Use "
                "vingd.AutoExpFamily(model), which gives discrete sites Bernoulli or Categorical "
                "families, or marginalise the site out of the model by hand (e.g. a "
                "dist.MixtureSameFamily likelihood)."
            )
    latents = _latent_shapes(trace)
    if not latents:
        raise ValueError(
            f"The model has no latent sample sites, so there is nothing for {guide_name} to fit. "
            "Check that the data are passed as `obs=` only where intended."
        )
    if guide_latents is not None:
        _compare_latents(latents, guide_latents, guide_name)
    return {
        name: jax.ShapeDtypeStruct(shape, jnp.result_type(trace[name]["value"]))
        for name, shape in latents.items()
    }


def _latent_shapes(trace) -> dict:
    return {
        name: np.shape(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def _compare_latents(latents, guide_latents, guide_name: str) -> None:
    if latents != dict(guide_latents):
        extra = sorted(set(latents) - set(guide_latents))
        hint = f" Is {extra} an observation whose data were not passed?" if extra else ""
        raise ValueError(
            f"The guide was built for a model with latent sites {dict(guide_latents)}, but the "
            f"model run with these arguments has {latents}.{hint} Pass the data the guide was "
            f"built with, or build the guide from this model: {guide_name}(model)."
        )


def check_latents(model, args, kwargs, guide_name: str, guide_latents) -> None:
    """`ValueError` unless `model(*args, **kwargs)` has the latent sites and shapes
    `guide_latents` (site -> shape, from a guide's set-up), discrete ones included."""
    latents = inspect_model(model, args, kwargs, _latent_shapes)
    _compare_latents(latents, guide_latents, guide_name)
