"""The model's log joint f(z) = log p(y, z) over a guide's flat unconstrained latent vector.

`LogJoint(model, args, kwargs, unpack_latent)(z)` is f at z, Jacobians of the constraining maps
included (NumPyro's `potential_energy`, negated). `LogJoint.split(z, key)` also gives the
log joint apart from its observation terms and a randomly signed sum of those terms,

    f(z) = f_prior(z) + Σₙ ℓₙ(z),      ℓ_s(z) = Σₙ sₙ ℓₙ(z),   sₙ = ±1 at random,

so that E_s[(∇ℓ_s)²] = Σₙ (∇ℓₙ)²: the per-observation squared gradients (the empirical Fisher
that VOGN and Vadam use as curvature) from one extra backward pass instead of one per
observation. A scaled site (cₙ: N/B on a minibatch) weights its terms by √cₙ, so that the sum
is Σₙ cₙ(∇ℓₙ)², unbiased for the whole data's. An observation is an element of an observed
site's batch shape, with `to_event` dimensions unwrapped (a `Bernoulli(...).to_event(1)` over
n labels has n terms).

With `fisher=True` the signed sum is instead Σₙ sₙ √Fₙ ηₙ(z), for likelihoods written in
parameters ηₙ whose Fisher information Fₙ is known (`fisher_terms`: Bernoulli and Binomial
logits, Poisson log rate, Normal location and log scale), held fixed (no gradient): then
E_s[(∇·)²] = Σₙ Fₙ(∇ηₙ)², the diagonal of the generalised Gauss–Newton matrix JᵀFJ
(Schraudolph 2002; Martens 2020), the Fisher of the model. Other likelihoods keep their
empirical terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer.util import _unconstrain_params, compute_log_probs, potential_energy
from numpyro.primitives import Messenger

from vingd.validation import inspect_model


class full_data(Messenger):
    """Run `fn` with every subsampled plate at its full size (scale 1): the whole data's log
    joint, for judging a fit (ELBO, PSIS, ArviZ) rather than one noisy, N/B-scaled minibatch."""

    def process_message(self, msg):
        if msg["type"] == "plate" and msg["value"] is None:
            size = msg["args"][0]
            msg["value"], msg["args"] = jnp.arange(size), (size, None)


def observation_terms(site) -> jax.Array:
    """√cₙ ℓₙ for each observation of an observed `site`, cₙ the site's scale (N/B on a
    minibatch, a tempering): weighted so that a signed sum's squared gradient is
    Σₙ cₙ (∇ℓₙ)², the scaled empirical Fisher (as `fisher_terms` weights √Fₙ by √cₙ)."""
    fn, event_dims = site["fn"], 0
    while isinstance(fn, dist.Independent):
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    terms = fn.log_prob(site["value"])
    if site["scale"] is not None:
        root = jnp.sqrt(jnp.asarray(site["scale"]))
        terms = terms * jnp.reshape(root, root.shape + (1,) * event_dims)
    return terms


def _observation_shape(fn, value) -> tuple[int, ...]:
    return jnp.broadcast_shapes(fn.batch_shape, jnp.shape(value)[: jnp.ndim(value) - fn.event_dim])


def fisher_terms(site) -> list[tuple[jax.Array, jax.Array]] | None:
    """[(ηₙ, √Fₙ), ...] per observation of `site`, ηₙ a parameter of its likelihood and Fₙ
    its Fisher information (scaled as the site is); None for other distributions."""
    fn, masks, event_dims = site["fn"], [], 0  # masks: (mask, event dims outside it)
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
        if isinstance(fn, dist.MaskedDistribution):
            masks.append((jnp.asarray(fn._mask), event_dims))
        elif isinstance(fn, dist.Independent):
            event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    shape = _observation_shape(fn, site["value"])
    # a masked-out observation has no term, so no Fisher (a mask is over its wrapper's batch
    # shape, which lacks the event dimensions reinterpreted inside it)
    weight = jnp.ones(shape)
    for mask, outside in masks:
        weight = weight * jnp.reshape(mask, mask.shape + (1,) * (event_dims - outside))
    if isinstance(fn, dist.BernoulliLogits | dist.BernoulliProbs):
        pairs = [(fn.logits, jnp.sqrt(jax.nn.sigmoid(fn.logits) * jax.nn.sigmoid(-fn.logits)))]
    elif isinstance(fn, dist.BinomialLogits | dist.BinomialProbs):
        p, q = jax.nn.sigmoid(fn.logits), jax.nn.sigmoid(-fn.logits)
        pairs = [(fn.logits, jnp.sqrt(fn.total_count * p * q))]
    elif type(fn) is dist.Poisson:
        pairs = [(jnp.log(fn.rate), jnp.sqrt(fn.rate))]
    elif type(fn) is dist.Normal:
        pairs = [(fn.loc, 1 / fn.scale), (jnp.log(fn.scale), jnp.full_like(fn.scale, 2**0.5))]
    else:
        return None
    scale = 1.0 if site["scale"] is None else jnp.sqrt(jnp.asarray(site["scale"]))
    return [
        (jnp.broadcast_to(eta, shape), jax.lax.stop_gradient(root * scale * weight))
        for eta, root in pairs
    ]


def num_observations(model, args, kwargs) -> int:
    """How many observation terms ℓₙ `model(*args, **kwargs)` has (see `observation_terms`)."""

    def count(trace):
        observed = [s for s in trace.values() if s["type"] == "sample" and s["is_observed"]]
        return sum(int(jnp.size(observation_terms(site))) for site in observed)

    return inspect_model(model, args, kwargs, count)


def subsamples(model, args, kwargs) -> bool:
    """Whether `model(*args, **kwargs)` runs a plate on a minibatch (`subsample_size` below
    the plate's size)."""

    def subsampled(trace):
        plates = [site["args"] for site in trace.values() if site["type"] == "plate"]
        return any(batch is not None and batch < size for size, batch in plates)

    return inspect_model(model, args, kwargs, subsampled)


class LogJoint:
    """f(z) for `model(*args, **kwargs)`, z the flat latent read by `unpack_latent`."""

    def __init__(self, model, args, kwargs, unpack_latent):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.unpack_latent = unpack_latent

    def __call__(self, z) -> jax.Array:
        params = self.unpack_latent(z)
        return -potential_energy(self.model, self.args, self.kwargs, params)

    def split(self, z, rng_key, fisher: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(f(z), f_prior(z), Σₙ sₙ ℓₙ(z)) with signs sₙ drawn from `rng_key`, from one trace;
        with `fisher`, Σₙ sₙ √Fₙ ηₙ(z) for the likelihoods `fisher_terms` knows."""
        model = _unconstrain_params(self.model, self.unpack_latent(z))
        log_probs, trace = compute_log_probs(model, self.args, self.kwargs, {})
        observed = [s for s in trace.values() if s["type"] == "sample" and s["is_observed"]]
        prior = sum(
            (v for k, v in log_probs.items() if not trace[k]["is_observed"]), start=jnp.zeros(())
        )
        total = prior + sum((log_probs[s["name"]] for s in observed), start=jnp.zeros(()))
        signed = jnp.zeros(())
        for i, site in enumerate(observed):
            pairs = fisher_terms(site) if fisher else None
            if pairs is None:
                pairs = [(observation_terms(site), 1.0)]
            for j, (terms, weight) in enumerate(pairs):
                key = jax.random.fold_in(jax.random.fold_in(rng_key, i), j)
                signs = jax.random.rademacher(key, terms.shape, terms.dtype)
                signed = signed + jnp.sum(signs * weight * terms)
        return total, prior, signed
