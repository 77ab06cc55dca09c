"""`vingd.fit` for `AutoExpFamily`: natural-gradient VI on a product of exponential families.

Each step moves every site's factor q_s(z_s | θ_s) along its own natural gradient,

    θ_s ← θ_s + ρ ∇_μₛ ELBO = (1 − ρ) θ_s + ρ η̄_s,      η̄_s = ∇_μₛ E_q[log p(y, z)],

since every vingd family has base measure h ≡ 1 in its parametrisation (Gamma's θ₁ = α − 1,
the log-normal's 1/x folded into θ₁, ...), so ∇_μ H[q_s] = −θ_s exactly (Khan & Lin 2017;
Khan & Rue 2023). A Gaussian in unconstrained space (a site with no family of its own) carries
its Jacobian E[log |det ∂x/∂u|] in the expectation. η̄_s comes from the estimator shared with
`vingd.ExpFamELBO` (`vingd.expectation.particles`), per site:

- "exact": discrete sites, summed over their supports, and continuous sites whose log joint is
  affine in T_s given the others (conditionally conjugate, detected once per fit by
  `vingd.conjugate.is_affine`), through their moment atoms: η̄_s is the gradient in μ_s of an
  exact expectation, so a conjugate model is solved by one step with ρ = 1 (CAVI, all sites at
  once) and a prior in the site's own family contributes its natural parameter with no noise;
- "draw": the other continuous sites, reparameterised (implicitly for Gamma, Beta, Dirichlet;
  antithetic pairs for Gaussians); ∇_θ by autodiff becomes ∇_μ by `family.natural_gradient`;
- "score": discrete sites of a `discrete="score"` guide, score-function gradients with a
  leave-one-out baseline.

The loop around the step is `vingd.infer`'s: each site's step kept valid by `damped_step`
(corrections, backoffs and rejections counted over sites), adaptive ρ (one for all sites) with
the common-random-numbers ELBO check, convergence by windows, Polyak averaging, one compiled
chunk per model, guide, settings and shapes.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from vingd.conjugate import is_affine
from vingd.expectation import MAX_GRID, particles, site_modes, surrogate
from vingd.families import Categorical, DiagonalNormal
from vingd.guides import guide_latents
from vingd.infer import (
    FitConfig,
    FitState,
    _compiled,
    _run_fit,
    _scan_chunk,
    _validate,
    collapsed_sites,
    factor_marginals,
    flag_improper,
    step_size_setting,
)
from vingd.log_joint import subsamples
from vingd.optim import StepInfo, damped_step
from vingd.pytree import merge_arrays, split_arrays
from vingd.validation import as_rng_key, check_latents

ESTIMATORS = ("auto", "reparam")
#: the most atom-grid points per particle that exact continuous sites may add up to
MAX_EXACT_POINTS = 64


def _entropy(guide, naturals) -> jax.Array:
    return sum(site.family.entropy(naturals[name]) for name, site in guide.sites.items())


def _is_valid(guide, params) -> jax.Array:
    return jnp.all(jnp.stack([s.family.is_valid(params[s.param]) for s in guide.sites.values()]))


def _q(guide, params) -> list:
    """q's factors as numpyro distributions."""
    return [s.family.to_numpyro(params[s.param]) for s in guide.sites.values()]


def _run_chunk(state, arrays, cap, *, model, guide, config, static, modes):
    """`config.chunk` steps of the product-family step (see the module docstring)."""
    args, kwargs = merge_arrays(arrays, static)
    modes = dict(modes)
    names = {site.param: name for name, site in guide.sites.items()}
    exact = [n for n in guide.sites if modes[n] == "exact"]
    sampled = len(exact) < len(modes)

    def propose(params, velocity, rho, _, keys):  # (`particles` seeds the model itself)
        naturals = {names[p]: theta for p, theta in params.items()}

        def objective(means, drawn):
            terms = particles(
                model,
                guide,
                {**naturals, **drawn},
                modes,
                keys.draw,
                config.num_samples,
                args,
                kwargs,
                means=means,
            )
            return surrogate(terms), terms.log_joints

        means = {n: guide.sites[n].family.natural_to_mean(naturals[n]) for n in exact}
        drawn = {n: theta for n, theta in naturals.items() if n not in means}
        (value, log_joints), (grad_means, grad_naturals) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(means, drawn)
        entropy = _entropy(guide, naturals)
        new, infos = {}, []
        for n, site in guide.sites.items():
            family, theta = site.family, naturals[n]
            if n in grad_means:
                target = family.natural_type(*grad_means[n])
            else:
                target = family.natural_gradient(theta, grad_naturals[n])
            direction = jax.tree.map(
                lambda g, t, v: rho * (g - t) + config.momentum * v,
                target,
                theta,
                velocity[site.param],
            )
            new[site.param], info = damped_step(family, theta, direction, 1.0, config.max_backoffs)
            infos.append(info)

        def recheck(new):
            # the ELBO change, from draws common to θ and θ' but independent of the step's own
            # (those would favour a step fitted to their noise, and ρ would never anneal)
            def log_joints_at(params):
                at = {names[p]: theta for p, theta in params.items()}
                return particles(
                    model, guide, at, modes, keys.check, config.num_samples, args, kwargs
                ).log_joints

            if sampled:  # θ and θ' in one program: the model's evaluation compiled once
                both = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, new)
                before, after = jax.vmap(log_joints_at)(both)
            else:  # (exact: no noise)
                before, after = log_joints, log_joints_at(new)
            change = _entropy(guide, {names[p]: t for p, t in new.items()}) - entropy
            return after - before, change, before

        info = StepInfo(*(sum(x) for x in zip(*infos, strict=True)))
        return value + entropy, new, info, recheck

    return _scan_chunk(
        propose,
        state,
        cap,
        config,
        partial(_is_valid, guide),
        lambda params: factor_marginals(_q(guide, params)),
    )


def _affine_sites(params, arrays, *, model, guide, static, names):
    """`is_affine` for each site in `names`, at `params` (compiled once, like the chunk)."""
    args, kwargs = merge_arrays(arrays, static)
    keys = jax.random.split(jax.random.PRNGKey(0), len(names))
    return jnp.stack(
        [
            is_affine(model, guide, params, name, args, kwargs, rng_key=key)
            for name, key in zip(names, keys, strict=True)
        ]
    )


def _num_atoms(site, natural) -> int:
    """Points of a discrete site's axis: K for a categorical (logits' last axis), 2 otherwise."""
    return int(natural.logits.shape[-1]) if isinstance(site.family, Categorical) else 2


def estimators_by_site(model, guide, params, *args, estimator="auto", **kwargs) -> dict:
    """`{site: "exact" | "draw" | "score"}`: how `vingd.fit` estimates each site's η̄_s.

    Continuous sites are "exact" with `estimator="auto"` where `conjugate.is_affine` holds at
    `params` and the exact sites' atom grid stays within `MAX_EXACT_POINTS` per particle
    (in model order); the rest are drawn.
    """
    modes = site_modes(guide)
    continuous = [n for n, s in guide.sites.items() if not s.is_discrete]
    naturals = guide.naturals(params)
    atoms = {n: _num_atoms(s, naturals[n]) for n, s in guide.sites.items() if s.is_discrete}
    discrete_points = math.prod(k for n, k in atoms.items() if modes[n] == "exact")
    grid = math.prod(atoms.values()) * 2 ** len(continuous)  # the check's: all sites' atoms
    if estimator == "reparam" or not continuous or grid > MAX_GRID:
        return modes
    arrays, static = split_arrays((args, kwargs))
    check, _ = _compiled(
        _affine_sites,
        ({s.param: params[s.param] for s in guide.sites.values()}, arrays),
        model=model,
        guide=guide,
        static=static,
        names=tuple(continuous),
    )
    affine = np.asarray(check({s.param: params[s.param] for s in guide.sites.values()}, arrays))
    points = discrete_points
    for name, exact in zip(continuous, affine, strict=True):
        if exact and 2 * points <= MAX_EXACT_POINTS:
            modes[name], points = "exact", 2 * points
    return modes


def _check_data(guide, args, kwargs):
    """The guide's model and data checks: set-up on first use, the data checks after that."""
    if guide.prototype_trace is None or not guide.sites:  # (not set up, or set-up failed)
        guide.prototype_trace = None
        guide.init_params(*args, **kwargs)
        return
    # (first: its data checks hold the discrete latents at their set-up values, of those shapes)
    check_latents(guide.model, args, kwargs, "AutoExpFamily", guide_latents(guide))
    latents = {
        name: site
        for name, site in guide.prototype_trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    guide._check_data(latents, args, kwargs)


def fit_exp_family(
    model,
    *args,
    guide,
    num_steps,
    step_size,
    estimator,
    num_samples,
    momentum,
    tol,
    window,
    mcse,
    rng_key,
    init_params,
    max_backoffs,
    progress_bar,
    max_num_samples=None,
    **kwargs,
):
    """`vingd.fit` for an `AutoExpFamily` guide (same arguments, same `FitResult`).

    `estimator` is "auto" (default: exact where conjugate or enumerable, draws elsewhere) or
    "reparam" (draws for every continuous site). Adaptive ρ starts at 1 when every site is
    exact (the ELBO check is then deterministic: CAVI with a safeguard), else at
    `guide.default_step_size`. Its draws per step stay `num_samples` (`max_num_samples` is
    validated, not used).
    """
    momentum = guide.default_momentum if momentum is None else momentum
    num_steps, step_size = _validate(
        num_steps, step_size, num_samples, max_backoffs, momentum, window, tol, mcse,
        max_num_samples,
    )  # fmt: skip
    estimator = "auto" if estimator is None else estimator
    if estimator not in ESTIMATORS:
        raise ValueError(
            f'estimator for AutoExpFamily must be "auto" (exact where conjugate or enumerable, '
            f'reparameterised draws elsewhere) or "reparam" (draws for every continuous site), '
            f"got {estimator!r}."
        )
    _check_data(guide, args, kwargs)
    _, run_key = jax.random.split(as_rng_key(rng_key))  # the same split as for the Gaussian guides
    start = guide.init_params(*args, **kwargs)
    if init_params is not None:
        missing = sorted(set(start) - set(init_params))
        if missing:
            raise ValueError(f"init_params lacks the guide's parameter(s) {missing}.")
        start = {p: init_params[p] for p in start}
    for name, site in guide.sites.items():
        if not bool(site.family.is_valid(start[site.param])):
            raise ValueError(
                f"init_params[{site.param!r}] is not a valid natural parameter of site "
                f"{name!r}'s {type(site.family).__name__} factor."
            )
    modes = estimators_by_site(model, guide, start, *args, estimator=estimator, **kwargs)
    all_exact = all(mode == "exact" for mode in modes.values())
    num_draws = 1 if all_exact else num_samples

    step_size, rho0 = step_size_setting(step_size, 1.0 if all_exact else guide.default_step_size)
    config = FitConfig(
        min(window, num_steps), step_size, estimator, num_draws, momentum, max_backoffs
    )

    result = _run_fit(
        _run_chunk,
        FitState.start(start, rho0, run_key),
        args,
        kwargs,
        config=config,
        num_steps=num_steps,
        tol=tol,
        progress_bar=progress_bar,
        unflatten=dict,
        mcse=mcse,
        minibatches=bool(subsamples(model, args, kwargs)),
        model=model,
        guide=guide,
        modes=tuple(modes.items()),
    )
    # (a Gaussian site's precision collapsed onto a flat direction: `infer.flag_improper`)
    flat = collapsed_sites(
        {
            name: -2 * np.asarray(result.params[site.param].eta2)
            for name, site in guide.sites.items()
            if isinstance(site.family, DiagonalNormal)
        }
    )
    if not flat:
        return result
    return flag_improper(
        result, flat, jnp.result_type(result.params[guide.sites[flat[0]].param].eta2)
    )


__all__ = ["estimators_by_site", "fit_exp_family"]
