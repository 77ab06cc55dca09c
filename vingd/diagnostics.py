"""ArviZ output and the PSIS diagnostic for a fitted guide; the only module that imports arviz.

Each draw z_s ~ q is run once through the model (`numpyro.infer.util.get_importance_trace`),
which gives log p(y, z_s), log q(z_s), the deterministic sites and a posterior-predictive draw
y_s ~ p(y | z_s). From these draws:

- `psis_diagnostic`: the Pareto k̂ of the importance ratios p(y, z_s) / q(z_s) (Yao, Vehtari,
  Simpson & Gelman 2018), Pareto-smoothed by `arviz_stats`. k̂ < 0.5: q is close to the
  posterior; < 0.7: usable, and importance resampling (`PSIS.resample`) corrects it; otherwise
  estimates from q are unreliable.
- `to_datatree`: an ArviZ `DataTree` built by ArviZ's own NumPyro converter, with one chain.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import arviz_base
import arviz_plots
import arviz_stats
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import xarray as xr
from arviz_stats.base import array_stats
from matplotlib import pyplot
from numpyro import handlers
from numpyro.infer.util import get_importance_trace
from numpyro.primitives import Messenger
from scipy.special import logsumexp

from vingd.guides import check_params
from vingd.log_joint import full_data
from vingd.validation import as_rng_key, inspect_model, is_integer

#: Yao et al. (2018), §2.3: k̂ below GOOD means q is close to the posterior; below OK the
#: importance-weighted estimates still converge at a usable rate; above, they are unreliable.
GOOD, OK = 0.5, 0.7
#: Log ratios that vary by less than this many float epsilons of |log p| + |log q| are constant
#: up to roundoff (q is the exact posterior); their tail is not fitted.
ROUNDOFF = 1e3
#: Draws evaluated at once (vectorised); more are taken in sequence.
BATCH = 256


def verdict(khat: float) -> str:
    """The verdict on k̂: "good" below 0.5, "ok" below 0.7, else "unreliable" (Yao et al. 2018)."""
    return "good" if khat < GOOD else "ok" if khat < OK else "unreliable"


class Draws(NamedTuple):
    """`num_samples` draws from q, each taken once through the model."""

    posterior: dict  # latent and deterministic sites, (S, *shape), constrained
    predictive: dict  # observed sites, y_s ~ p(y | z_s)
    log_p: np.ndarray  # log p(y, z_s), (S,)
    log_q: np.ndarray  # log q(z_s), (S,)

    @property
    def elbo(self) -> tuple[float, float]:
        """The ELBO, E_q[log p(y, z) − log q(z)], from these draws, and its standard error."""
        log_ratio = self.log_p - self.log_q
        return float(log_ratio.mean()), float(log_ratio.std() / np.sqrt(log_ratio.size))


#: the fewest draws `draw` takes: PSIS fits its Pareto tail to ≥ 5 of them (arviz: S ≥ 25)
MIN_DRAWS = 25


def draw(model, guide, params, *args, num_samples: int = 1000, rng_key=None, **kwargs) -> Draws:
    """`num_samples` draws z_s ~ q (guide with `params`), each with log p(y, z_s) and log q(z_s)
    on the whole data (subsampled plates at full size: `vingd.log_joint.full_data`)."""
    if not is_integer(num_samples) or num_samples < MIN_DRAWS:
        raise ValueError(
            f"num_samples must be an integer >= {MIN_DRAWS} (PSIS fits a Pareto tail of at least "
            f"5 draws), got {num_samples!r}."
        )
    num_samples, rng_key = int(num_samples), as_rng_key(rng_key)
    check_params(model, guide, params, args, kwargs)
    model = full_data(model)  # (subsampled plates at full size)

    def one(key):
        model_key, guide_key, predictive_key = jax.random.split(key, 3)
        model_trace, guide_trace = get_importance_trace(
            handlers.seed(model, model_key), handlers.seed(guide, guide_key), args, kwargs, params
        )
        samples = {k: s for k, s in model_trace.items() if s["type"] == "sample"}
        observed = [
            k for k, s in samples.items() if s["is_observed"] and not isinstance(s["fn"], dist.Unit)
        ]
        posterior = {
            name: site["value"]
            for name, site in model_trace.items()
            if site["type"] == "deterministic" or (name in samples and not site["is_observed"])
        }
        predictive = {
            name: samples[name]["fn"].sample(jax.random.fold_in(predictive_key, i))
            for i, name in enumerate(observed)
        }
        log_p = sum(jnp.sum(s["log_prob"]) for s in samples.values())
        log_q = sum(jnp.sum(s["log_prob"]) for s in guide_trace.values() if s["type"] == "sample")
        return posterior, predictive, log_p, log_q

    # whole batches of at most BATCH draws: one compiled body, bounded memory
    batch = min(num_samples, BATCH)
    keys = jax.random.split(rng_key, -(-num_samples // batch) * batch)
    draws = jax.lax.map(one, keys, batch_size=batch)
    return Draws(*jax.tree.map(lambda x: np.asarray(x)[:num_samples], jax.device_get(draws)))


def _smooth(log_p: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed normalised log weights and k̂ of the ratios p(y, z_s) / q(z_s)."""
    log_ratio = log_p - log_q
    if not np.all(np.isfinite(log_ratio)):  # a broken fit (NaN parameters, q outside p's support)
        return np.full(log_ratio.shape, np.nan), np.nan
    roundoff = ROUNDOFF * np.finfo(log_ratio.dtype).eps * np.max(np.abs(log_p) + np.abs(log_q))
    if np.ptp(log_ratio) > roundoff:
        log_weights, khat = array_stats.psislw(-log_ratio)  # arviz ≥ 1 takes −log ratios
        return np.asarray(log_weights), float(khat)
    # Constant ratios: q is p up to normalisation (exact weights, no tail at all), unless q has
    # collapsed to a point in floating point (log q constant too), which tells nothing about p.
    uniform = np.full(log_ratio.shape, -np.log(log_ratio.size))
    return uniform, np.inf if np.ptp(log_q) <= roundoff else -np.inf


@dataclasses.dataclass(frozen=True)
class PSIS:
    """The PSIS diagnostic of a fitted guide (Yao et al. 2018)."""

    khat: float
    log_weights: np.ndarray  # Pareto-smoothed, normalised, one per draw
    draws: dict  # the draws from q they weight, site -> (S, *shape)

    @classmethod
    def from_draws(cls, draws: Draws) -> PSIS:
        log_weights, khat = _smooth(draws.log_p, draws.log_q)
        return cls(khat, log_weights, draws.posterior)

    @property
    def verdict(self) -> str:
        return verdict(self.khat)

    @property
    def ess(self) -> float:
        """Effective sample size of the smoothed weights, 1 / Σ w_s²."""
        return float(np.exp(-logsumexp(2 * self.log_weights)))

    def resample(self, rng_key, num_samples: int | None = None) -> dict:
        """Importance-resampled draws (with replacement): q's draws reweighted toward p."""
        if not np.all(np.isfinite(self.log_weights)):
            raise ValueError("Cannot resample: the fit's log density ratios are not finite.")
        size = len(self.log_weights) if num_samples is None else num_samples
        index = np.asarray(
            jax.random.choice(rng_key, len(self.log_weights), (size,), p=np.exp(self.log_weights))
        )
        return {name: value[index] for name, value in self.draws.items()}


def psis_diagnostic(
    model, guide, params, *args, num_samples: int = 1000, rng_key=None, **kwargs
) -> PSIS:
    """Pareto k̂ of log p(y, z) − log q(z) over `num_samples` draws z ~ q, and its weights.

    Unlike `numpyro.infer.psis_diagnostic`, which returns k̂ alone, the result keeps the draws and
    their smoothed weights, for `PSIS.ess` and `PSIS.resample`.

    Args:
        model, guide, params: a NumPyro model and any guide (vingd's or numpyro's) with its
            parameters, e.g. `fit.params`.
        num_samples: draws from q; k̂ is noisy below a few hundred.
        rng_key: a `jax.random` key (default `PRNGKey(0)`).
    """
    draws = draw(model, guide, params, *args, num_samples=num_samples, rng_key=rng_key, **kwargs)
    return PSIS.from_draws(draws)


def _one_chain(group: dict) -> dict:
    return {name: np.asarray(value)[None] for name, value in group.items()}


class _PointwiseLikelihood(Messenger):
    """Observed sites whose likelihood factorises over their event dims (`Independent`, as
    `.to_event(1)` makes) scored per element: the log likelihood of eight schools' one vector
    site, summed, gave `arviz.loo` a single observation. The log density is unchanged."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            while isinstance(msg["fn"], dist.Independent):
                msg["fn"] = msg["fn"].base_dist


class _GuideDraws(arviz_base.NumPyroInferenceAdapter):
    """Draws from a fitted guide as one chain, for ArviZ's NumPyro converter."""

    def __init__(self, model, args, kwargs, draws: Draws):
        super().__init__(None, model, args, kwargs, sample_shape=(1, draws.log_p.size))
        self._draws = draws

    @property
    def sample_dims(self):
        return ["chain", "draw"]

    def get_samples(self, seed=None, **kwargs):
        return _one_chain(self._draws.posterior)

    def get_sample_stats(self, **kwargs):
        return _one_chain({"log_p": self._draws.log_p, "log_q": self._draws.log_q})


def _is_scalar(value) -> bool:
    return isinstance(value, str | numbers.Number | np.number | np.bool_)


def _unpack_fit(fit) -> tuple[dict, dict, dict]:
    """Params, per-step traces and scalar settings of a fit result (or of a params dict)."""
    if isinstance(fit, Mapping):
        return dict(fit), {}, {}
    if dataclasses.is_dataclass(fit):
        fields = {f.name: getattr(fit, f.name) for f in dataclasses.fields(fit)}
    elif hasattr(fit, "_asdict"):
        fields = fit._asdict()
    else:
        fields = {}
    if "params" not in fields:
        raise ValueError(
            f"fit must be a params dict or a result with `.params` (vingd.FitResult, numpyro's "
            f"SVIRunResult), got {type(fit).__name__}."
        )
    losses = fields.get("losses")
    steps = {}
    if losses is not None:
        steps["elbo"] = -np.asarray(losses)
        steps |= {
            name: value
            for name, value in fields.items()
            if isinstance(value, np.ndarray)
            and value.shape == steps["elbo"].shape
            and name != "losses"
        }
    settings = {  # netCDF has no booleans
        name: int(value) if isinstance(value, bool | np.bool_) else value
        for name, value in fields.items()
        if _is_scalar(value)
    }
    return fields["params"], steps, settings


def to_datatree(
    model,
    guide,
    fit,
    *args,
    num_samples: int = 1000,
    rng_key=None,
    coords: Mapping | None = None,
    event_dims: Mapping | None = None,
    attrs: Mapping | None = None,
    **kwargs,
) -> xr.DataTree:
    """An ArviZ `DataTree` of `num_samples` draws from a fitted guide.

    Groups: `posterior` (latent and deterministic sites, dims chain = 1 and draw, then the
    model's plate names), `posterior_predictive`, `log_likelihood` (pointwise, so `arviz.loo`
    works), `observed_data`, and `sample_stats`: `log_p` = log p(y, z) and `log_q` = log q(z)
    per draw (for `arviz.loo_approximate_posterior`) and, along dim `step`, the fit's ELBO trace
    `elbo` = −losses and its other per-step arrays (e.g. `step_sizes`). The root attrs hold the
    guide, the fit's scalar settings, `attrs` (None values left out), and from the draws the
    ELBO ± se, the PSIS k̂ with its verdict, and the smoothed weights' effective sample size.

    Args:
        model, guide: the NumPyro model and the fitted guide (vingd's or numpyro's).
        fit: a `vingd.FitResult`, a numpyro `SVIRunResult`, or a params dict.
        num_samples: posterior draws.
        rng_key: a `jax.random` key (default `PRNGKey(0)`).
        coords: coordinate values per dim name, e.g. `{"feature": names}`.
        event_dims: names for event dims, e.g. `{"w": ["feature"]}` for a `to_event(1)` site;
            plate dims are named from the model's plates.
        attrs: extra settings to record in the root attrs (numbers or strings).
    """
    params, steps, settings = _unpack_fit(fit)
    draws = draw(model, guide, params, *args, num_samples=num_samples, rng_key=rng_key, **kwargs)
    psis = PSIS.from_draws(draws)
    elbo, elbo_se = draws.elbo

    tree = arviz_base.from_numpyro(
        _GuideDraws(_PointwiseLikelihood(full_data(model)), args, kwargs, draws),
        posterior_predictive=_one_chain(draws.predictive),
        log_likelihood=True,
        coords=coords,
        extra_event_dims=event_dims,
    )
    tree["sample_stats"] = (
        tree["sample_stats"]
        .to_dataset()
        .assign({name: ("step", np.asarray(value)) for name, value in steps.items()})
    )
    # a numpyro.factor is an observed Unit site, not data: out of log_likelihood (or `loo`
    # finds several arrays and asks which) and out of the data (a 0-size array there breaks
    # arviz's predictive plots)
    factors = inspect_model(
        model,
        args,
        kwargs,
        lambda t: [n for n, s in t.items() if isinstance(s.get("fn"), dist.Unit)],
    )
    for group in ("log_likelihood", "observed_data", "posterior_predictive"):
        if group in tree.children and factors:
            tree[group] = tree[group].to_dataset().drop_vars(factors, errors="ignore")
    tree.attrs = {
        "guide": type(guide).__name__,
        **settings,
        **{name: value for name, value in (attrs or {}).items() if value is not None},
        "num_draws": num_samples,
        "elbo": elbo,
        "elbo_se": elbo_se,
        "psis_khat": psis.khat,
        "psis_verdict": psis.verdict,
        # (k̂ is the shape of the weights' tail; for nearly constant weights, where q is nearly
        # p, it can read "unreliable" while the effective sample size is all the draws)
        "psis_ess": psis.ess,
    }
    return tree


def summary(tree: xr.DataTree):
    """`arviz.summary` of the posterior: mean, sd and equal-tailed interval per latent."""
    return arviz_stats.summary(tree, kind="stats")


def save_forest(tree: xr.DataTree, path) -> None:
    """`arviz.plot_forest` of the posterior, saved to `path` (matplotlib, headless)."""
    plot = arviz_plots.plot_forest(tree, backend="matplotlib")
    plot.savefig(path)
    pyplot.close(plot.get_viz("figure"))
