"""The model's log joint f(z) = log p(y, z) over a guide's flat unconstrained latent vector.

`LogJoint(model, args, kwargs, unpack_latent)(z)` is f at z, Jacobians of the constraining maps
included (NumPyro's `potential_energy`, negated). `LogJoint.split(z, key)` also gives the
log joint apart from its observation terms and a randomly signed sum of those terms,

    f(z) = f_prior(z) + Σₙ ℓₙ(z),      ℓ_s(z) = Σₙ sₙ ℓₙ(z),   sₙ = ±1 at random,

so that E_s[(∇ℓ_s)²] = Σₙ (∇ℓₙ)²: the per-observation squared gradients (the empirical Fisher
that VOGN and Vadam use as curvature) from one extra backward pass instead of one per
observation. An observation is an element of an observed site's batch shape, with
`to_event` dimensions unwrapped (a `Bernoulli(...).to_event(1)` over n labels has n terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer.util import _unconstrain_params, compute_log_probs, potential_energy

from vingd.validation import trace_model


def observation_terms(site) -> jax.Array:
    """ℓₙ for each observation of an observed `site` (scaled as the site is)."""
    fn, event_dims = site["fn"], 0
    while isinstance(fn, dist.Independent):
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    terms = fn.log_prob(site["value"])
    if site["scale"] is not None:
        scale = jnp.asarray(site["scale"])
        terms = terms * jnp.reshape(scale, scale.shape + (1,) * event_dims)
    return terms


def num_observations(model, args, kwargs) -> int:
    """How many observation terms ℓₙ `model(*args, **kwargs)` has (see `observation_terms`)."""
    trace = trace_model(model, args, kwargs)
    observed = [s for s in trace.values() if s["type"] == "sample" and s["is_observed"]]
    return sum(int(jnp.size(observation_terms(site))) for site in observed)


class LogJoint:
    """f(z) for `model(*args, **kwargs)`, z the flat latent read by `unpack_latent`."""

    def __init__(self, model, args, kwargs, unpack_latent):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.unpack_latent = unpack_latent

    def __call__(self, z) -> jax.Array:
        params = self.unpack_latent(z)
        return -potential_energy(self.model, self.args, self.kwargs, params)

    def split(self, z, rng_key) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(f(z), f_prior(z), Σₙ sₙ ℓₙ(z)) with signs sₙ drawn from `rng_key`, from one trace."""
        model = _unconstrain_params(self.model, self.unpack_latent(z))
        log_probs, trace = compute_log_probs(model, self.args, self.kwargs, {})
        observed = [s for s in trace.values() if s["type"] == "sample" and s["is_observed"]]
        prior = sum(
            (v for k, v in log_probs.items() if not trace[k]["is_observed"]), start=jnp.zeros(())
        )
        total = prior + sum((log_probs[s["name"]] for s in observed), start=jnp.zeros(()))
        signed = jnp.zeros(())
        for i, site in enumerate(observed):
            key = jax.random.fold_in(rng_key, i)
            terms = observation_terms(site)
            signed = signed + jnp.sum(jax.random.rademacher(key, terms.shape, terms.dtype) * terms)
        return total, prior, signed
