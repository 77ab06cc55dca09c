"""The guides' default initial values: prior medians, exact where the prior's CDF is known.

numpyro's `init_to_median` takes the median of 15 prior draws, and compiling a prior's sampler
(e.g. the Gamma rejection sampler behind a Student-t) costs more than the rest of a small
fit's set-up. `init_to_median` here takes the median from the inverse CDF where it has a closed
form, else by bisection on the CDF, F(x) = ½ (P(|X| ≤ x) = ½ for a folded prior), in the
prior's unconstrained space; priors with neither (multivariate ones) keep numpyro's draws.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer import initialization

#: Bisection bracket in unconstrained space, and its halvings (to below float64 resolution).
BRACKET, HALVINGS = 1e6, 100


def _univariate(fn):
    """The univariate distribution under `Independent` / `ExpandedDistribution` wrappers."""
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _bisect(cdf, transform, shape, dtype):
    """x = transform(u) with cdf(x) = ½, elementwise, by bisection on u."""

    def halve(_, bracket):
        low, high = bracket
        mid = 0.5 * (low + high)
        above = cdf(transform(mid)) > 0.5
        return jnp.where(above, low, mid), jnp.where(above, mid, high)

    start = (jnp.full(shape, -BRACKET, dtype), jnp.full(shape, BRACKET, dtype))
    low, high = jax.lax.fori_loop(0, HALVINGS, halve, start)
    return transform(0.5 * (low + high))


def prior_median(fn):
    """The elementwise median of `fn` (shape `fn.shape()`), or None where only draws give it."""
    base = _univariate(fn)
    if base.event_shape:
        return None
    dtype = jnp.result_type(float)
    try:
        median = base.icdf(jnp.asarray(0.5, dtype))
    except (NotImplementedError, ImportError):
        if isinstance(base, dist.FoldedDistribution):
            inner = base.base_dist

            def cdf(x):
                return inner.cdf(x) - inner.cdf(-x)
        else:
            cdf = base.cdf
        try:
            jax.eval_shape(cdf, jnp.ones(base.batch_shape, dtype))
        except (NotImplementedError, ImportError):
            return None
        median = _bisect(cdf, dist.biject_to(base.support), base.batch_shape, dtype)
    return jnp.broadcast_to(median, fn.shape())


def init_to_median(site=None, num_samples=15):
    """numpyro's `init_to_median` with the median exact (no draws) where `prior_median` has it;
    `num_samples` prior draws otherwise."""
    if site is None:
        return partial(init_to_median, num_samples=num_samples)
    if (
        site["type"] == "sample"
        and not site["is_observed"]
        and site["value"] is None
        and not site["fn"].support.is_discrete
    ):
        median = prior_median(site["fn"])
        if median is not None:
            shape = site["kwargs"].get("sample_shape", ())
            return jnp.broadcast_to(median, tuple(shape) + jnp.shape(median))
    return initialization.init_to_median(site, num_samples=num_samples)


__all__ = ["init_to_median", "prior_median"]
