"""Checks of a model and its data, run before any fitting, with errors that name the site."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from numpyro import handlers
from numpyro.infer.initialization import init_to_uniform


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
    - with `guide_latents` (site -> shape, from a guide's set-up; `vingd.fit`): latent sites
      other than the guide's (a guide built for another model), and `numpyro.param` sites,
      which `fit` does not learn.

    Observed values computed inside the model (rather than passed in) are not checked.
    """
    check = partial(_check_trace, guide_name=guide_name, guide_latents=guide_latents)
    inspect_model(model, args, kwargs, check)


def _check_trace(trace, guide_name: str, guide_latents=None) -> None:
    for name, site in trace.items():
        if site["type"] == "param" and guide_latents is not None:
            raise ValueError(
                f"The model has a numpyro.param site {name!r}: vingd.fit learns the guide's "
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
        elif site["fn"].support.is_discrete:
            raise ValueError(
                f"Latent site {name!r} is discrete ({type(site['fn']).__name__}, support "
                f"{site['fn'].support}); {guide_name} fits continuous latents only. Use "
                "vingd.AutoExpFamily(model), which gives discrete sites Bernoulli or Categorical "
                "families, or marginalise it out in the model (numpyro.contrib.funsor)."
            )
    latents = {
        name: np.shape(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    if not latents:
        raise ValueError(
            f"The model has no latent sample sites, so there is nothing for {guide_name} to fit. "
            "Check that the data are passed as `obs=` only where intended."
        )
    if guide_latents is not None and latents != dict(guide_latents):
        raise ValueError(
            f"The guide was built for a model with latent sites {dict(guide_latents)}, but the "
            f"model being fitted has {latents}. Build the guide from this model: "
            f"{guide_name}(model)."
        )
