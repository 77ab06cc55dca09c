"""vingd's curvature estimators as a NumPyro ELBO, for `SVI(model, guide, NGD(ρ), NaturalELBO())`.

`Trace_ELBO` hands `NGD` a reparameterisation gradient whose curvature part is very noisy, so
SVI needs small steps. `NaturalELBO` instead evaluates the loss −ELBO with one of
`vingd.estimators` and, through a `jax.custom_vjp`, reports as the gradient of θ

    ∇_θ loss = −F(θ) ∇_μ ELBO,   ∇_μ ELBO = ∇_μ E_q[f] − θ,

(a Fisher–vector product: a JVP of μ(θ)), so that `NGD`'s F⁻¹ recovers the estimator's ∇_μ
exactly and SVI takes the same step as `vingd.fit` with a fixed ρ (GPyTorch's trick, in reverse).
The engine's extras (adaptive ρ, the mean-field Newton step, averaging, stopping) are `fit`'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.elbo import ELBO

from vingd.estimators import default_estimator, get_estimator, validate_num_samples
from vingd.guides import check_params, flat_view_of
from vingd.log_joint import LogJoint, num_observations


def _natural_loss(family, estimator, log_joint, rng_key, num_samples):
    """θ ↦ −ELBO(θ), with the estimator's natural gradient planted as its VJP."""

    def evaluate(natural):
        estimate = estimator(log_joint, family, natural, rng_key, num_samples)
        loss = -(estimate.expected_log_joint + family.entropy(natural))
        return loss, estimate.grad_mean

    @jax.custom_vjp
    def loss(natural):
        return evaluate(natural)[0]

    def forward(natural):
        value, grad_mean = evaluate(natural)
        return value, (natural, grad_mean)

    def backward(residual, cotangent):
        natural, grad_mean = residual
        ascent = jax.tree.map(jnp.subtract, grad_mean, natural)  # ∇_μ ELBO
        _, fisher_ascent = jax.jvp(family.natural_to_mean, (natural,), (ascent,))
        return (family.natural_type(*(-cotangent * x for x in fisher_ascent)),)

    loss.defvjp(forward, backward)
    return loss


class NaturalELBO(ELBO):
    """−ELBO of a vingd guide whose θ-gradient is −F(θ)·∇_μ ELBO from a vingd estimator.

    Args:
        num_samples: draws per step: an even number (antithetic pairs), or 1.
        estimator: "hessian", "hvp", "stein", "gradsq", "ggn" or "reparam"; default by family,
            dimension and number of observations (`vingd.estimators.default_estimator`).
    """

    def __init__(self, num_samples: int = 16, estimator: str | None = None):
        validate_num_samples(num_samples)
        if estimator is not None:
            get_estimator(estimator)
        self.num_samples = num_samples
        self.estimator = estimator
        super().__init__(num_particles=num_samples)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        guide = flat_view_of(guide, "NaturalELBO")
        if hasattr(guide.flat_family, "ngd_step"):
            raise ValueError(
                f"NaturalELBO works with AutoNaturalNormal and AutoNaturalMVN; fit "
                f"{type(guide).__name__} (its step is a projection) with vingd.fit."
            )
        # (once per trace: a guide set up for another model would fit a log joint that
        # ignores its latents, and report a falling loss)
        check_params(model, guide, param_map, args, kwargs)
        draw_key, model_key = jax.random.split(rng_key)
        log_joint = LogJoint(handlers.seed(model, model_key), args, kwargs, guide.unpack_latent)

        natural = guide.flatten(param_map)
        family = guide.flat_family
        name = self.estimator or default_estimator(
            family, int(jnp.size(natural.eta1)), num_observations(model, args, kwargs)
        )
        loss = _natural_loss(family, get_estimator(name), log_joint, draw_key, self.num_samples)
        return {"loss": loss(natural), "mutable_state": None}
