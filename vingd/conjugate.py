"""Exact natural-gradient (CAVI) steps for conditionally conjugate sites of `AutoExpFamily`.

For a factor q_s with natural parameter θ_s and h ≡ 1, ∇_μₛ H[q] = −θ_s, so the natural-gradient
step on the ELBO is

    θ_s ← (1 − ρ) θ_s + ρ η̄_s,      η̄_s = ∇_μₛ E_q[log p(y, z)]

(Khan & Lin 2017). When log p is affine in T_s(z_s) given the other sites (the complete
conditional p(z_s | y, z₋ₛ) is in q_s's family: conditional conjugacy), η̄_s = E_q₋ₛ[η_s(z₋ₛ)] is
the expected natural parameter of that conditional, and ρ = 1 is the coordinate-ascent (CAVI)
update (Hoffman, Blei, Wang & Paisley 2013, eq. 15). A prior in q_s's own family contributes
exactly its natural parameter to η̄_s; a conjugate likelihood, its expected sufficient statistics.

How η̄_s is computed, exactly and with no model-specific code: if log p is multi-affine in the
sites' statistics, E_q[log p] depends on q only through the mean parameters μ = (μ_s), and equals
the expectation under *any* distribution with those means. `vingd.expectation` evaluates it under
the families' moment atoms (two points per continuous site with E[T] = μ_s, the full support of
a discrete site), as a differentiable function of μ; η̄_s is its gradient in μ_s by autodiff.
Where log p is not affine in T_s the atoms give a deterministic (unscented-like) approximation
instead; `conjugate_sites` tells which sites are exact, by checking that η̄_s does not change when
μ_s does (an affine function has a constant gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vingd.expectation import atom_axis, expected_log_density
from vingd.optim import damped_step


def expected_log_joint(model, guide, means, *args, **kwargs) -> jax.Array:
    """E_q[log p(y, z)] from the mean parameters `{site: μ_s}` of an `AutoExpFamily` guide.

    Exact when log p is affine in each site's statistics given the others; cost: one model
    evaluation per combination of atoms (2 per continuous site, K per discrete site).
    """
    axes, total = [], jnp.zeros(())
    for name, site in guide.sites.items():
        axis, log_jacobian = atom_axis(site, means[name])
        axes.append(axis)
        total = total + log_jacobian
    key = jax.random.PRNGKey(0)
    return total + expected_log_density(model, axes, args, kwargs, rng_key=key)


def means_of(guide, params) -> dict:
    """`{site: μ_s}` for the natural parameters in `params`."""
    return {
        name: site.family.natural_to_mean(params[site.param]) for name, site in guide.sites.items()
    }


def expected_naturals(model, guide, params, *args, **kwargs) -> dict:
    """`{site: η̄_s = ∇_μₛ E_q[log p]}`, as natural-parameter NamedTuples, at `params`.

    For a conditionally conjugate site this is the natural parameter of its CAVI update.
    """
    grads = jax.grad(lambda m: expected_log_joint(model, guide, m, *args, **kwargs))(
        means_of(guide, params)
    )
    return {name: site.family.natural_type(*grads[name]) for name, site in guide.sites.items()}


def conjugate_elbo(model, guide, params, *args, **kwargs) -> jax.Array:
    """E_q[log p] + H[q] with the atom expectation (exact for conditionally conjugate models)."""
    entropy = sum(site.family.entropy(params[site.param]) for site in guide.sites.values())
    return expected_log_joint(model, guide, means_of(guide, params), *args, **kwargs) + entropy


def default_order(guide) -> tuple:
    """Local sites (sharing a plate with observed data) first, then global ones, each in model
    order: CAVI's usual E-step-then-M-step sweep. Starting with the local sites also breaks the
    symmetry of their uniform start against the global sites' initial values."""
    observed = set()
    for site in guide.prototype_trace.values():
        if site["type"] == "sample" and site["is_observed"]:
            observed |= {frame.name for frame in site["cond_indep_stack"]}
    local = [name for name, site in guide.sites.items() if site.plates & observed]
    return (*local, *(name for name in guide.sites if name not in local))


def cavi_step(model, guide, params, *args, step_size=1.0, sites=None, **kwargs) -> dict:
    """One sweep θ_s ← (1 − ρ)θ_s + ρ η̄_s over `sites` in turn (Gauss–Seidel), kept valid.

    Each site's η̄_s uses the other sites' latest parameters, so with ρ = 1 this is one sweep of
    coordinate-ascent VI on the conditionally conjugate sites (for other sites η̄_s uses the atom
    approximation; see `conjugate_sites`). A step that would leave the natural domain is halved
    (`vingd.optim.damped_step`). jit-able with `model`, `guide` and `sites` static.

    Args:
        params: the guide's params (`guide.init_params(*args)`, `svi.get_params(state)`, ...).
        step_size: ρ in (0, 1].
        sites: the sites to update, in order; default `default_order(guide)`.
    """
    params = dict(params)
    for name in sites or default_order(guide):
        site = guide.sites[name]
        means = means_of(guide, params)

        def objective(mean, means=means, name=name):
            return expected_log_joint(model, guide, {**means, name: mean}, *args, **kwargs)

        target = site.family.natural_type(*jax.grad(objective)(means[name]))
        theta = params[site.param]
        direction = jax.tree.map(jnp.subtract, target, theta)
        params[site.param], _ = damped_step(site.family, theta, direction, step_size)
    return params


def is_affine(model, guide, params, name, args, kwargs, *, rng_key, rtol=None) -> jax.Array:
    """Whether E_q[log p] is affine in μ_s of site `name` at `params`: η̄_s is computed at μ_s
    and at the mean of a random valid perturbation of θ_s (others fixed); affine ⇔ equal
    gradients, to `rtol` of their scale (default max(1e-6, 1000·eps): in float32, 1e-6 was
    below rounding and left 4 of 5 conjugate Gamma sites of one model drawn). jit-able with
    everything but `params`, `args` and `kwargs` static."""
    site = guide.sites[name]
    means = means_of(guide, params)
    theta = params[site.param]
    leaves, treedef = jax.tree.flatten(theta)
    noise = [
        0.3 * (jnp.abs(x) + 1) * jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        for k, x in zip(jax.random.split(rng_key, len(leaves)), leaves, strict=True)
    ]
    other, _ = damped_step(site.family, theta, jax.tree.unflatten(treedef, noise), 1.0)

    def gradient(mean):
        flat = jax.grad(
            lambda m: expected_log_joint(model, guide, {**means, name: m}, *args, **kwargs)
        )(mean)
        return jnp.concatenate([jnp.ravel(x) for x in flat])

    g0 = gradient(means[name])
    g1 = gradient(site.family.natural_to_mean(other))
    scale = jnp.max(jnp.abs(g0)) + 1.0
    if rtol is None:
        rtol = max(1e-6, 1000 * float(jnp.finfo(g0.dtype).eps))
    return jnp.all(jnp.abs(g0 - g1) <= rtol * scale)


def conjugate_sites(model, guide, params, *args, rtol=None, seed=0, **kwargs) -> dict:
    """`{site: bool}`: whether E_q[log p] is affine in μ_s at `params`, i.e. η̄_s is exact
    (`is_affine`). Discrete sites are always exact (their expectation is a finite sum, linear in
    the probabilities). Run eagerly.
    """
    result = {}
    key = jax.random.PRNGKey(seed)
    for name, site in guide.sites.items():
        if site.is_discrete:
            result[name] = True
            continue
        key, sub = jax.random.split(key)
        check = jax.jit(
            lambda p, sub=sub, name=name: is_affine(
                model, guide, p, name, args, kwargs, rng_key=sub, rtol=rtol
            )
        )
        result[name] = bool(check(params))
    return result


__all__ = [
    "cavi_step",
    "conjugate_elbo",
    "conjugate_sites",
    "default_order",
    "expected_log_joint",
    "expected_naturals",
    "is_affine",
]
