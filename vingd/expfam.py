"""`AutoExpFamily`: one exponential family per latent site, on the site's own support.

Each latent site z_s gets a factor q_s(z_s | θ_s) of the family its support calls for,

    real → DiagonalNormal     positive → Gamma        unit interval → Beta
    simplex → Dirichlet       boolean → Bernoulli     integer_interval(0, K−1) → Categorical

(overridable per site: `families={"sigma": "lognormal"}`), and a Gaussian in unconstrained space
(through `biject_to`, as `AutoNormal`) for supports with no family, which the guide says once.
Parameters are the families' natural-parameter NamedTuples, named `f"{site}_{prefix}_natural"`
and registered with `constraints.real`, so `vingd.NGD` updates them by θ ← θ + ρ ∇_μ ELBO.

Which loss to use with `numpyro.infer.SVI`:

- continuous latents only: `Trace_ELBO` (reparameterised: numpyro's implicit-reparameterisation
  samplers for Gamma, Beta, Dirichlet), or `TraceMeanField_ELBO`, with which a prior in the
  site's own family enters through its analytic KL, i.e. contributes exactly its natural
  parameter to ∇_μ ELBO, without Monte Carlo noise;
- discrete latents, `discrete="enumerate"` (the default): `vingd.ExpFamELBO`, which sums every
  discrete factor over its support exactly (`vingd.expectation`). Plain `Trace_ELBO` has no
  score-function term and would give biased gradients for discrete sites;
- discrete latents with supports too large to enumerate, `discrete="score"`: `vingd.ExpFamELBO`
  with `num_particles` ≥ 2 (score-function gradients with a leave-one-out baseline), or numpyro's
  `TraceGraph_ELBO` (score-function gradients, Rao-Blackwellised by the dependency graph, no
  baseline).

For exact coordinate-ascent steps on conditionally conjugate models see `vingd.conjugate`;
`vingd.fit` takes them (and Monte Carlo steps elsewhere) in its own loop (`vingd.expfam_fit`).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import Predictive
from numpyro.infer.autoguide import AutoGuide

from vingd.families import (
    Bernoulli,
    Beta,
    BetaNatural,
    Categorical,
    DiagonalNormal,
    Dirichlet,
    ExponentialFamily,
    Gamma,
    InverseGamma,
    LogNormal,
)
from vingd.guides import needs_setup, validate_init_scale
from vingd.initialization import init_to_median
from vingd.validation import check_model, explained_invalid_parameters

FAMILIES: dict[str, ExponentialFamily] = {
    "normal": DiagonalNormal(),
    "gamma": Gamma(),
    "lognormal": LogNormal(),
    "inverse_gamma": InverseGamma(),
    "beta": Beta(),
    "dirichlet": Dirichlet(),
    "bernoulli": Bernoulli(),
    "categorical": Categorical(),
}


def _base(support):
    """The support with `independent` wrappers removed."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _fits(name: str, support) -> bool:
    """Whether family `name` lives on `support` ("normal" also covers any continuous support,
    through `biject_to`; "categorical" any finite range of integers)."""
    base = _base(support)
    if name == "normal":
        return not support.is_discrete
    if name == "categorical":
        return base is constraints.boolean or isinstance(base, constraints.integer_interval)
    return _same_set(base, FAMILIES[name].support)


def _takes_no_arguments(model) -> bool:
    try:
        inspect.signature(model).bind()
    except TypeError:
        return False
    except ValueError:  # (no signature to read)
        return True
    return True


def _same_set(support, own) -> bool:
    """Whether `support` is the set `own`, however it was built: `Uniform(0, 1)`'s support is an
    `interval(0, 1)`, not `unit_interval`; `greater_than(0)` and `softplus_positive` are
    `positive`. An interval's ends are compared as numbers (open or closed: a density on them
    is the same), but `nonnegative`, which holds 0, is not `positive`."""

    def bounds(c):
        if isinstance(c, constraints._Interval):
            return "interval", c.lower_bound, c.upper_bound
        if isinstance(c, constraints._GreaterThan) and not isinstance(
            c, constraints._GreaterThanEq
        ):
            return "greater than", c.lower_bound
        return None

    if support is own:
        return True
    ours, theirs = bounds(support), bounds(own)
    if ours is None or theirs is None or ours[0] != theirs[0]:
        return False
    try:
        return all(np.all(np.asarray(a) == b) for a, b in zip(ours[1:], theirs[1:], strict=True))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return False  # (bounds computed from latents: not a fixed set)
    except ValueError:  # (bounds of shapes that do not broadcast)
        return False


def _default(support) -> str | None:
    """The family for a support, or None (then a Gaussian in unconstrained space)."""
    for name in ("gamma", "beta", "dirichlet", "bernoulli", "categorical"):
        if _fits(name, support):
            return name
    return "normal" if _base(support) is constraints.real else None


def _num_values(support) -> int | None:
    """K for a finite discrete support {0, …, K−1}; None if unbounded or not starting at 0."""
    base = _base(support)
    if base is constraints.boolean:
        return 2
    try:
        lower, upper = int(base.lower_bound), int(base.upper_bound)
    except (TypeError, AttributeError, jax.errors.ConcretizationTypeError):
        return None
    return upper + 1 if lower == 0 else None


@dataclasses.dataclass(frozen=True, eq=False)
class Site:
    """A latent site's factor: its family, parameter, plates, and the map to the site's value.

    `transform` is set for a Gaussian in unconstrained space (site value = transform(draw));
    a Categorical factor's draws are one-hot vectors, the site's value their index.
    """

    name: str
    family: ExponentialFamily
    param: str
    init: Any
    frames: tuple
    event_dim: int  # of the guide's sample, in the family's space
    transform: Any = None
    dtype: Any = None

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.family, Bernoulli | Categorical)

    @property
    def plates(self) -> frozenset:
        return frozenset(frame.name for frame in self.frames)

    def value(self, x):
        """The model's value for a draw (or atom) `x` of the family."""
        if self.transform is not None:
            return self.transform(x)
        if isinstance(self.family, Categorical):
            return jnp.argmax(x, -1).astype(self.dtype)
        if isinstance(self.family, Bernoulli):
            return x.astype(self.dtype)
        return x

    def elementwise(self, natural):
        """The numpyro distribution of the factor, one batch element per element of θ."""
        if isinstance(self.family, DiagonalNormal):
            return dist.Normal(*self.family.loc_scale(natural))
        return self.family.elementwise(natural)

    def distribution(self, natural):
        """The numpyro distribution sampled at the site, in the model's space."""
        q = self.elementwise(natural).to_event(self.event_dim)
        return q if self.transform is None else dist.TransformedDistribution(q, self.transform)


class AutoExpFamily(AutoGuide):
    """Mean-field guide with one exponential family per latent site, on the site's support.

    Args:
        model: a numpyro model.
        families: optional `{site: family}` overrides; a family is a name in `FAMILIES`
            ("normal", "gamma", "lognormal", "inverse_gamma", "beta", "dirichlet", "bernoulli",
            "categorical"). "normal" on a constrained site means a Gaussian in unconstrained space.
        prefix: parameter names are `f"{site}_{prefix}_natural"`.
        init_loc_fn: where continuous factors start (their mean, or median for log-normal and
            unconstrained Gaussians); discrete factors start uniform.
        init_scale: the starting spread: the sd of a Gaussian, the coefficient of variation of
            a Gamma, ≈ the sd of logit x of a Beta (of log x_min of a Dirichlet).
        discrete: "enumerate" (exact sums over each discrete factor; use `vingd.ExpFamELBO`) or
            "score" (score-function gradients; use numpyro's `TraceGraph_ELBO`).
        max_support: the largest support a discrete site may have under "enumerate".
    """

    #: `vingd.fit`'s default (initial) ρ where some site is estimated by Monte Carlo.
    default_step_size = 0.5
    #: `vingd.fit`'s default heavy-ball momentum.
    default_momentum = 0.0

    def __init__(
        self,
        model,
        families=None,
        *,
        prefix="auto",
        init_loc_fn=init_to_median,
        init_scale=0.1,
        discrete="enumerate",
        max_support=256,
    ):
        validate_init_scale(init_scale)
        if discrete not in ("enumerate", "score"):
            raise ValueError(f'discrete must be "enumerate" or "score", got {discrete!r}.')
        families = dict(families or {})
        for site, name in families.items():
            if name not in FAMILIES:
                raise ValueError(
                    f"Unknown family {name!r} for site {site!r}; choose one of "
                    f"{', '.join(sorted(FAMILIES))}."
                )
        self.families = families
        self._init_scale = init_scale
        self.discrete = discrete
        self.max_support = max_support
        self.sites: dict[str, Site] = {}
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    @property
    def compile_key(self):
        """What `fit`'s compiled programs depend on (not the initial values): the class, the
        model, the discrete settings, and each site's family, parameter, plates, shapes and
        support (which fixes the map to the model's space), so that a new guide for the same
        model reuses them, as the Gaussian guides' do."""
        layout = tuple(
            (
                name,
                type(site.family),
                site.param,
                site.frames,
                site.event_dim,
                str(site.dtype),
                repr(self.prototype_trace[name]["fn"].support),
                tuple(np.shape(x) for x in jax.tree.leaves(site.init)),
            )
            for name, site in self.sites.items()
        )
        return type(self), self.model, self.discrete, self.max_support, layout

    # -- set-up ------------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs):
        seeded = handlers.seed(self.model, rng_seed=0)
        with handlers.block(), explained_invalid_parameters(self.model, args, kwargs):
            trace = handlers.trace(
                handlers.substitute(seeded, substitute_fn=self.init_loc_fn)
            ).get_trace(*args, **kwargs)
        self.prototype_trace = trace
        latents = {
            name: site
            for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        unknown = set(self.families) - set(latents)
        if unknown:
            raise ValueError(
                f"families names site(s) {sorted(unknown)} that are not latent sample sites of "
                f"the model; its latent sites are {sorted(latents)}."
            )
        self._check_data(latents, args, kwargs)
        for name, site in trace.items():
            if site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
        fallback, sites = [], {}
        for name, site in latents.items():
            for frame in site["cond_indep_stack"]:
                self._prototype_frames[frame.name] = frame
                if frame.size != self._prototype_frame_full_sizes[frame.name]:
                    raise ValueError(
                        f"Latent site {name!r} is local to the subsampled plate {frame.name!r}; "
                        "AutoExpFamily supports latents in plates without subsampling only."
                    )
            sites[name] = self._make_site(name, site)
            if sites[name].transform is not None and name not in self.families:
                fallback.append(f"{name!r} ({site['fn'].support})")
        if fallback:
            warnings.warn(
                f"AutoExpFamily has no exponential family for the support of site(s) "
                f"{', '.join(fallback)}; using a Gaussian in unconstrained space (biject_to) "
                "for them.",
                UserWarning,
                stacklevel=3,
            )
        self.sites = sites

    def _check_data(self, latents, args, kwargs):
        """`check_model`'s data checks, with the discrete latents, which it rejects, held fixed."""
        discrete = {n: s["value"] for n, s in latents.items() if s["fn"].support.is_discrete}
        if len(discrete) < len(latents) or not latents:
            check_model(handlers.condition(self.model, discrete), args, kwargs, "AutoExpFamily")

    def _make_site(self, name, site) -> Site:
        support, value = site["fn"].support, jnp.asarray(site["value"])  # init_to_value: floats too
        if not support.is_discrete:
            value = value.astype(jnp.result_type(value, float))  # and ints
        family_name = self.families.get(name) or _default(support)
        if family_name is not None and not _fits(family_name, support):
            fitting = [f for f in FAMILIES if _fits(f, support)]
            raise ValueError(
                f"Family {family_name!r} does not fit site {name!r}: the site's support is "
                f"{support}. Families that fit it: {', '.join(fitting) or 'none'}."
            )
        event_dim = site["fn"].event_dim
        common = {"name": name, "param": f"{name}_{self.prefix}_natural", "dtype": value.dtype}
        common["frames"] = tuple(site["cond_indep_stack"])
        if support.is_discrete:
            return self._discrete_site(name, site, family_name, common)
        if family_name is None or (
            family_name == "normal" and _base(support) is not constraints.real
        ):
            transform = dist.biject_to(support)
            loc = transform.inv(value)
            init = FAMILIES["normal"].from_loc_scale(loc, jnp.full_like(loc, self._init_scale))
            event_dim = event_dim + jnp.ndim(loc) - jnp.ndim(value)
            family = FAMILIES["normal"]
            return Site(
                family=family, init=init, event_dim=event_dim, transform=transform, **common
            )
        family = FAMILIES[family_name]
        if family_name == "normal":
            init = family.from_loc_scale(value, jnp.full_like(value, self._init_scale))
        else:
            init = family.initial(jnp.asarray(value, jnp.result_type(float)), self._init_scale)
        if family_name == "dirichlet":
            event_dim -= 1  # the simplex axis is the Dirichlet's own event
        return Site(family=family, init=init, event_dim=event_dim, **common)

    def _discrete_site(self, name, site, family_name, common) -> Site:
        support = site["fn"].support
        num_values = _num_values(support)
        if num_values is None:
            raise ValueError(
                f"Latent site {name!r} is discrete with support {support}, which has no "
                "exponential family here (finite supports {0, …, K−1} only). Marginalise it out "
                "in the model, or recode it to start at 0."
            )
        if num_values > self.max_support and self.discrete == "enumerate":
            raise ValueError(
                f"Latent site {name!r} is discrete with {num_values} values (support "
                f"{support}), more than max_support={self.max_support} that AutoExpFamily sums "
                "over exactly. Options: AutoExpFamily(model, discrete='score') with numpyro's "
                "TraceGraph_ELBO (score-function gradients); a larger max_support (the exact sum "
                "costs one model evaluation per value); or marginalise the site in the model."
            )
        if site["fn"].event_dim != 0:
            raise ValueError(
                f"Latent site {name!r} is a discrete site with event_dim "
                f"{site['fn'].event_dim}; AutoExpFamily needs discrete sites with scalar events "
                "(declare the independent axes with numpyro.plate instead of .to_event)."
            )
        if family_name == "bernoulli":
            family = FAMILIES["bernoulli"]
            init = family.initial(site["value"], self._init_scale)
        else:
            family = FAMILIES["categorical"]
            one_hot = jax.nn.one_hot(site["value"], num_values)
            init = family.initial(one_hot, self._init_scale)
        return Site(family=family, init=init, event_dim=0, **common)

    # -- the guide ---------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.sites.items():
            natural = numpyro.param(site.param, site.init)
            with ExitStack() as stack:
                for frame in site.frames:
                    stack.enter_context(plates[frame.name])
                result[name] = numpyro.sample(name, site.distribution(natural))
        return result

    def init_params(self, *args, **kwargs) -> dict:
        """The initial natural parameters, `{f"{site}_{prefix}_natural": θ}` (sets up the guide)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {site.param: site.init for site in self.sites.values()}

    def naturals(self, params) -> dict:
        """`{site: θ}` from a params dict."""
        return {name: params[site.param] for name, site in self.sites.items()}

    @needs_setup
    def sample_posterior(self, rng_key, params, *args, sample_shape=(), **kwargs):
        """Draws of every latent site, and of the model's deterministic sites given them (as
        numpyro's `AutoNormal` returns them)."""
        keys = jax.random.split(rng_key, len(self.sites) + 1)
        latents = {
            name: site.value(site.family.sample(key, params[site.param], tuple(sample_shape)))
            for key, (name, site) in zip(keys, self.sites.items(), strict=False)
        }
        deterministic = [n for n, s in self.prototype_trace.items() if s["type"] == "deterministic"]
        if not deterministic:
            return latents
        predictive = Predictive(
            self.model, latents, return_sites=deterministic, batch_ndims=len(sample_shape)
        )
        try:
            return {**latents, **predictive(keys[-1], *args, **kwargs)}
        except TypeError as error:
            if args or kwargs or _takes_no_arguments(self.model):
                raise
            raise TypeError(
                f"AutoExpFamily.sample_posterior runs the model for its deterministic site(s) "
                f"{', '.join(map(repr, deterministic))}, and the model needs its arguments: "
                f"pass them, guide.sample_posterior(rng_key, params, *args, sample_shape=...). "
                f"(The model said: {error})"
            ) from error

    @needs_setup
    def median(self, params):
        """Elementwise posterior medians; the mean for a Dirichlet (a point of the simplex)."""
        out = {}
        for name, site in self.sites.items():
            natural = params[site.param]
            if isinstance(site.family, Dirichlet):
                out[name] = site.elementwise(natural).mean
            else:
                out[name] = self._quantiles(site, natural, jnp.asarray([0.5]))[0]
        return out

    @needs_setup
    def quantiles(self, params, quantiles):
        """Elementwise marginal quantiles, shape `(len(quantiles), *site_shape)`."""
        quantiles = jnp.asarray(quantiles)
        return {
            name: self._quantiles(site, params[site.param], quantiles)
            for name, site in self.sites.items()
        }

    @staticmethod
    def _quantiles(site, natural, quantiles):
        family = site.family
        if site.is_discrete:  # the least k with P(x ≤ k) ≥ level
            probs = jnp.moveaxis(family.atoms(family.natural_to_mean(natural))[1], 0, -1)
            cdf = jnp.cumsum(probs, -1)
            index = jnp.sum(cdf < quantiles.reshape((-1,) + (1,) * cdf.ndim), -1)
            return jnp.minimum(index, cdf.shape[-1] - 1).astype(site.dtype)
        if isinstance(family, Dirichlet):  # marginals x_k ~ Beta(α_k, α₀ − α_k)
            alpha = natural.eta + 1
            rest = jnp.sum(alpha, -1, keepdims=True) - alpha
            family, natural = FAMILIES["beta"], BetaNatural(alpha - 1, rest - 1)
        levels = quantiles.reshape((-1,) + (1,) * jnp.ndim(natural[0]))
        if hasattr(family, "icdf"):  # numpyro's Gamma/Beta icdf need tensorflow_probability
            return family.icdf(natural, levels)
        latent = site.elementwise(natural).icdf(levels)
        return latent if site.transform is None else site.transform(latent)


__all__ = ["FAMILIES", "AutoExpFamily", "Site"]
