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

`ExpFamELBO` is the numpyro loss built on it: discrete sites enumerated, continuous sites drawn,
entropies in closed form.
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


def elbo(rng_key, params, model, guide, args, kwargs, num_particles=1) -> jax.Array:
    """E_q[log p(y, z)] + H[q]: discrete sites summed exactly, continuous sites drawn.

    `guide` is a set-up `AutoExpFamily`; `params` holds its natural parameters.
    """
    draw_key, model_key = jax.random.split(rng_key)
    keys = jax.random.split(draw_key, len(guide.sites))
    axes, draws, total = [], {}, jnp.zeros(())
    shared = jnp.full(num_particles, 1.0 / num_particles)
    for key, site in zip(keys, guide.sites.values(), strict=True):
        natural = params[site.param]
        total = total + site.family.entropy(natural)
        if site.is_discrete:
            axes.append(atom_axis(site, site.family.natural_to_mean(natural))[0])
        else:
            x = site.family.sample(key, natural, (num_particles,))
            draws[site.name] = site.value(x)
            total = total + log_abs_det_jacobian(site, x, shared)
    if draws:
        axes.append(Axis(draws, shared))
    return total + expected_log_density(model, axes, args, kwargs, rng_key=model_key, params=params)


class ExpFamELBO(ELBO):
    """The ELBO for `AutoExpFamily` guides, for `numpyro.infer.SVI`: −(E_q[log p] + H[q]).

    Discrete factors are summed over their supports exactly (no score function needed), each
    continuous factor contributes `num_particles` reparameterised draws, and entropies are in
    closed form. With `vingd.NGD` the discrete step is θ ← (1 − ρ)θ + ρ E_{q₋ₛ}[log p(z_s = k, ·)]
    up to a constant, exact in expectation over the continuous draws.
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=num_particles)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if not getattr(guide, "sites", None):
            raise ValueError(
                "ExpFamELBO needs a vingd.AutoExpFamily guide (set up by SVI.init); got "
                f"{type(guide).__name__}."
            )
        value = elbo(rng_key, param_map, model, guide, args, kwargs, self.num_particles)
        return {"loss": -value, "mutable_state": None}


__all__ = ["Axis", "ExpFamELBO", "elbo", "expected_log_density", "log_density_terms"]
