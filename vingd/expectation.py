"""E_q[log p(y, z)] under a mean-field `AutoExpFamily` guide, exact where it can be.

With q = Π_s q_s, the expected log joint is Σ_t E_q[log p_t] over the model's sample sites t.
Each latent site contributes a small weighted set of values, an `Axis`:

- the atoms of its family, `family.atoms(μ)`: for a continuous family two equally weighted
  points with E[T] = μ, so E_q[f] is exact for every f affine in T(z_s); for a discrete family
  its whole support with weights q(z_s), element by element: exact enumeration;
- or reparameterised draws, one row per particle, shared by all the sites drawn this way.

All elements of an array site take the same atom index together, so an axis has two (or K)
points however large the site; the expectation is the weighted sum over the product of the axes.
That is exact (i) for terms affine in each continuous site's joint statistic T(z_s), which is what
conditional conjugacy means (a coupled draw has the right marginals, and an affine function sees
nothing else), and (ii) for discrete sites whose per-element weights meet terms *locally*: a term
inside all of the discrete site's plates has, at each plate index, the weight of that element; a
term outside them must not depend on the site (it gets the site's uniform average). Model code
needs nothing special: every evaluation sees values of the sites' usual shapes.

Cost: one model evaluation per grid point, Π_s (number of points of s), vectorised by `vmap`.

The ELBO estimator built on it, shared by `ExpFamELBO` (numpyro's loss) and `vingd.fit`, works
per particle (`particles`): each site is summed over its atoms ("exact"), drawn with
reparameterised gradients ("draw"), or drawn with score-function gradients and a leave-one-out
baseline ("score", for discrete supports too large to enumerate; `surrogate`). Entropies are in
closed form.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions.util import scale_and_mask
from numpyro.infer.elbo import ELBO

from vingd.families import Beta, DiagonalNormal, Gamma, InverseGamma, LogNormal

MAX_GRID = 2**14


class Axis(NamedTuple):
    """Values for some latent sites, with their weights.

    values: `{site: array (n, *site_shape)}` in the model's space.
    weights: (n,) shared by all elements, or (n, *batch_shape) per element of one site.
    plates: names of the plates that the per-element weights' batch dims belong to.
    """

    values: dict
    weights: jax.Array
    plates: frozenset = frozenset()


def log_density_terms(model, values, args, kwargs, *, rng_key, params=None):
    """`({site: log density array}, {site: plate names})` for every sample site of `model` run
    with its latents set to `values` (scaled and masked as numpyro does)."""
    substituted = handlers.substitute(
        handlers.seed(model, rng_key), data={**(params or {}), **values}
    )
    trace = handlers.trace(substituted).get_trace(*args, **kwargs)
    terms, plates = {}, {}
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        if not site["is_observed"] and name not in values:
            raise ValueError(
                f"The model's latent site {name!r} has no factor in the guide; build the guide "
                "from this model (AutoExpFamily(model)) and pass the same arguments."
            )
        terms[name] = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"])
        plates[name] = frozenset(frame.name for frame in site["cond_indep_stack"])
    return terms, plates


def expected_log_density(model, axes, args, kwargs, *, rng_key, params=None) -> jax.Array:
    """Σ_t E[log p_t] over the product of `axes` (see the module docstring for when it is exact)."""
    sizes = [int(axis.weights.shape[0]) for axis in axes]
    num_points = math.prod(sizes)
    if num_points > MAX_GRID:
        raise ValueError(
            f"The expectation needs {num_points} model evaluations (points per site: {sizes}), "
            f"more than {MAX_GRID}. Enumerate fewer discrete sites, or use Monte Carlo draws."
        )
    grid = [jnp.asarray(i) for i in np.unravel_index(np.arange(num_points), sizes)]
    term_plates = {}

    def at(point):
        values = {}
        for axis, i in zip(axes, point, strict=True):
            values.update({name: v[i] for name, v in axis.values.items()})
        terms, plates = log_density_terms(
            model, values, args, kwargs, rng_key=rng_key, params=params
        )
        term_plates.update(plates)
        return terms

    terms = jax.vmap(at)(grid)
    total = jnp.zeros(())
    for name, log_density in terms.items():
        weight = jnp.ones(())
        for axis, index, size in zip(axes, grid, sizes, strict=True):
            weight = weight * _aligned(axis, index, size, log_density.ndim, term_plates[name])
        total = total + jnp.sum(weight * log_density)
    return total


def _aligned(axis, index, size, ndim, plates):
    """The axis' weights at the grid points, shaped to broadcast against a (G, *batch) term."""
    w = axis.weights[index]  # (G,) shared, or (G, *site batch) per element
    if w.ndim == 1:
        return w.reshape((-1,) + (1,) * (ndim - 1))
    batch = w.shape[1:]
    if not axis.plates <= plates or len(batch) > ndim - 1:  # the term is outside the site's
        return jnp.full((1,) * ndim, 1.0 / size, w.dtype)  # plates: it must not depend on it
    return w.reshape((-1,) + (1,) * (ndim - 1 - len(batch)) + batch)


def atom_axis(site, mean) -> tuple[Axis, jax.Array]:
    """The axis of a guide site's atoms at mean parameter `mean`, and E[log |det ∂x/∂u|] over
    them (nonzero for a Gaussian in unconstrained space only)."""
    values, weights = atoms(site.family, mean)
    plates = site.plates if weights.ndim > 1 else frozenset()
    axis = Axis({site.name: site.value(values)}, weights, plates)
    return axis, log_abs_det_jacobian(site, values, weights)


def atoms(family, mean):
    """`family.atoms(mean)`; for the Gaussian, m ± σ (two equally weighted points, E[T] = μ)."""
    if hasattr(family, "atoms"):
        return family.atoms(mean)
    loc = mean.mu1
    scale = jnp.sqrt(mean.mu2 - loc**2)
    return jnp.stack([loc - scale, loc + scale]), jnp.full(2, 0.5, loc.dtype)


def log_abs_det_jacobian(site, values, weights) -> jax.Array:
    """E[log |det ∂x/∂u|] over the (shared-weight) points of a site drawn in unconstrained space."""
    if site.transform is None:
        return jnp.zeros(())
    jac = jax.vmap(lambda u: jnp.sum(site.transform.log_abs_det_jacobian(u, site.transform(u))))
    return jnp.sum(weights * jac(values))


class Particles(NamedTuple):
    """Per-particle terms of the ELBO estimator (`particles`), shape (S,) each.

    log_joints: E over the exact axes of log p(y, z) + log |det ∂x/∂u|, at particle i's draws.
    log_q: Σ over score-function sites of log q_s(x_si | θ_s) (zeros without such sites).
    """

    log_joints: jax.Array
    log_q: jax.Array


def site_modes(guide, exact=()) -> dict:
    """`{site: mode}`: how `particles` treats each site of an `AutoExpFamily` guide.

    "exact": the site's atoms (exact enumeration for discrete sites, moment atoms for continuous
    ones, exact for conditionally conjugate sites; see `vingd.conjugate`); "draw": reparameterised
    draws; "score": draws with score-function gradients. Discrete sites are "exact" under
    `discrete="enumerate"` and "score" under `discrete="score"`; continuous sites are "draw"
    unless named in `exact`.
    """
    modes = {}
    for name, site in guide.sites.items():
        if site.is_discrete:
            modes[name] = "exact" if guide.discrete == "enumerate" else "score"
        else:
            modes[name] = "exact" if name in exact else "draw"
    return modes


def draws(site, rng_key, natural, num_particles: int) -> jax.Array:
    """`num_particles` draws of a site's factor; antithetic pairs m ± δ (in log space for a
    log-normal) for Gaussian factors when the number is even, so that the same key gives the
    same noise at any θ (common random numbers)."""
    family = site.family
    antithetic = num_particles % 2 == 0 and isinstance(family, DiagonalNormal | LogNormal)
    if not antithetic:
        return family.sample(rng_key, natural, (num_particles,))
    loc = family.natural_to_mean(natural)[0]  # E[z], or E[log x] for a log-normal
    half = family.sample(rng_key, natural, (num_particles // 2,))
    if isinstance(family, LogNormal):
        return jnp.concatenate([half, jnp.exp(2 * loc) / half])
    return jnp.concatenate([half, 2 * loc - half])


def particles(
    model, guide, naturals, modes, rng_key, num_particles, args, kwargs, *, means=None, params=None
) -> Particles:
    """The per-particle terms of E_q[log p(y, z)] under an `AutoExpFamily` guide.

    Sites in mode "exact" enter through their atoms at mean parameter `means[site]` (default
    μ(θ)), differentiable in μ; "draw" sites through `num_particles` reparameterised draws,
    differentiable in θ; "score" sites through draws with no gradient, whose log q is returned
    for a score-function term (`surrogate`). Particle i combines the i-th draw of every drawn site
    with the full grid of the exact sites' atoms. Without drawn sites there is one particle.
    """
    means = dict(means or {})
    draw_key, model_key = jax.random.split(rng_key)
    keys = jax.random.split(draw_key, len(guide.sites))
    sampled = any(modes[name] != "exact" for name in guide.sites)
    size = num_particles if sampled else 1
    axes, constant = [], jnp.zeros(())
    values, log_dets, log_q = {}, jnp.zeros(size), jnp.zeros(size)
    grouped = _grouped_draws(guide, naturals, modes, jax.random.fold_in(draw_key, 1), size)
    for key, (name, site) in zip(keys, guide.sites.items(), strict=True):
        natural = naturals[name]
        if modes[name] == "exact":
            mean = means[name] if name in means else site.family.natural_to_mean(natural)
            axis, log_jacobian = atom_axis(site, mean)
            axes.append(axis)
            constant = constant + log_jacobian
        elif modes[name] == "draw":
            x = grouped[name] if name in grouped else draws(site, key, natural, size)
            values[name] = site.value(x)
            if site.transform is not None:
                log_dets = log_dets + jax.vmap(lambda u, s=site: _log_det(s, u))(x)
        else:
            x = jax.lax.stop_gradient(site.family.sample(key, natural, (size,)))
            values[name] = site.value(x)
            log_q = log_q + jax.vmap(lambda v, s=site, t=natural: s.family.log_prob(t, v))(x)

    def at(value):
        point = Axis({k: v[None] for k, v in value.items()}, jnp.ones(1))
        return expected_log_density(
            model, [*axes, point], args, kwargs, rng_key=model_key, params=params
        )

    if values:
        log_joints = jax.vmap(at)(values)
    else:
        log_joints = expected_log_density(
            model, axes, args, kwargs, rng_key=model_key, params=params
        )[None]
    return Particles(log_joints + log_dets + constant, log_q)


def _grouped_draws(guide, naturals, modes, rng_key, size: int) -> dict:
    """`{site: (size, *shape) draws}` for the drawn sites of Gamma, inverse-Gamma and Beta
    factors, from one sampler call per family over all of its sites. numpyro's Gamma sampler
    (a rejection loop, with an implicit reparameterisation gradient) was compiled once per
    site and ELBO evaluation: with 7 drawn scalar Gamma sites the fit compiled in over 150 s,
    now 108 s (what else grows superlinearly with the sites is not yet known)."""
    groups: dict = {}
    for name, site in guide.sites.items():
        if modes[name] == "draw" and isinstance(site.family, Gamma | InverseGamma | Beta):
            groups.setdefault(type(site.family), []).append(name)
    out = {}
    for i, names in enumerate(groups.values()):
        if len(names) < 2:
            continue
        shapes = [jnp.broadcast_shapes(*map(jnp.shape, naturals[name])) for name in names]

        def raveled(field, names=names, shapes=shapes):
            leaves = [getattr(naturals[n], field) for n in names]
            return jnp.concatenate(
                [jnp.ravel(jnp.broadcast_to(x, s)) for x, s in zip(leaves, shapes, strict=True)]
            )

        first = naturals[names[0]]
        flat = type(first)(*map(raveled, first._fields))
        x = guide.sites[names[0]].family.sample(jax.random.fold_in(rng_key, i), flat, (size,))
        pieces = jnp.split(x, np.cumsum([math.prod(shape) for shape in shapes])[:-1], axis=1)
        for name, shape, piece in zip(names, shapes, pieces, strict=True):
            out[name] = piece.reshape((size, *shape))
    return out


def _log_det(site, u) -> jax.Array:
    return jnp.sum(site.transform.log_abs_det_jacobian(u, site.transform(u)))


def surrogate(terms: Particles, baseline: bool = True) -> jax.Array:
    """The mean of `terms.log_joints`, plus a zero-valued score-function term with gradient

        (1/S) Σᵢ (fᵢ − bᵢ) ∇_θ log q(xᵢ),      bᵢ = (1/(S−1)) Σ_{j≠i} f_j,

    the leave-one-out baseline (Kool, van Hoof & Welling 2019; Salimans & Knowles 2014): bᵢ is
    independent of xᵢ, so the gradient stays unbiased, and it removes the common part of the
    fᵢ, which dominates the variance of the plain score function. With one particle, or
    `baseline=False`, bᵢ = 0.
    """
    f = terms.log_joints
    size = f.shape[0]
    if baseline and size > 1:
        weights = jax.lax.stop_gradient(f - (f.sum() - f) / (size - 1))
    else:
        weights = jax.lax.stop_gradient(f)
    score = terms.log_q - jax.lax.stop_gradient(terms.log_q)  # zero, with ∇ log q as gradient
    return f.mean() + jnp.mean(weights * score)


def elbo(
    rng_key, params, model, guide, args, kwargs, num_particles=1, *, baseline=True
) -> jax.Array:
    """E_q[log p(y, z)] + H[q]: discrete sites summed exactly (or drawn with score-function
    gradients and a leave-one-out baseline under `discrete="score"`), continuous sites drawn.

    `guide` is a set-up `AutoExpFamily`; `params` holds its natural parameters. The value is an
    unbiased ELBO estimate; its gradient in θ is an unbiased estimate of ∇_θ ELBO.
    """
    naturals = {name: params[site.param] for name, site in guide.sites.items()}
    terms = particles(
        model,
        guide,
        naturals,
        site_modes(guide),
        rng_key,
        num_particles,
        args,
        kwargs,
        params=params,
    )
    entropy = sum(site.family.entropy(naturals[name]) for name, site in guide.sites.items())
    return surrogate(terms, baseline) + entropy


class ExpFamELBO(ELBO):
    """The ELBO for `AutoExpFamily` guides, for `numpyro.infer.SVI`: −(E_q[log p] + H[q]).

    Discrete factors are summed over their supports exactly (no score function needed), each
    continuous factor contributes `num_particles` reparameterised draws, and entropies are in
    closed form. With `vingd.NGD` the discrete step is θ ← (1 − ρ)θ + ρ E_{q₋ₛ}[log p(z_s = k, ·)]
    up to a constant, exact in expectation over the continuous draws. For a guide with
    `discrete="score"` the discrete factors are drawn too, with score-function gradients and a
    leave-one-out baseline (`surrogate`; needs `num_particles` ≥ 2, else no baseline).
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, *, baseline: bool = True):
        super().__init__(num_particles=num_particles)
        self.baseline = baseline

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if not getattr(guide, "sites", None):
            raise ValueError(
                "ExpFamELBO needs a vingd.AutoExpFamily guide (set up by SVI.init); got "
                f"{type(guide).__name__}."
            )
        value = elbo(
            rng_key,
            param_map,
            model,
            guide,
            args,
            kwargs,
            self.num_particles,
            baseline=self.baseline,
        )
        return {"loss": -value, "mutable_state": None}


__all__ = [
    "Axis",
    "ExpFamELBO",
    "Particles",
    "elbo",
    "expected_log_density",
    "log_density_terms",
    "particles",
    "site_modes",
    "surrogate",
]
