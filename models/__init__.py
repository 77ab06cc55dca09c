"""vingd's example models: real NumPyro models on real, bundled data.

`REGISTRY` maps a name to an `ExampleModel`: the model function, a loader returning
`(args, kwargs)` for it, a one-line description and, where one exists, its reference posterior.
`POSTERIORDB` names the twelve NumPyro translations of posteriordb posteriors, registered under
posteriordb's posterior names, whose references are gold-standard Stan runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from . import (
    bnn,
    eight_schools,
    gaussian_mixture,
    gp_poisson,
    linear_regression,
    logistic_regression,
    negative_binomial,
    radon,
    stan_regressions,
    time_series,
)
from .optima import GaussianELBO
from .posteriordb import reference_draws
from .references import GaussianPosterior


@dataclasses.dataclass(frozen=True)
class ExampleModel:
    """A model to fit: `model(*args, **kwargs)` with `args, kwargs = load()`.

    `reference()`, when not None, returns the posterior to judge a fit against (see
    `vingd_models.references`): draws, a dict site -> array `(num_draws, *site_shape)` in
    constrained space, or an exact `GaussianPosterior`. `gaussian_elbo`, when not None, is the
    ELBO of Gaussian q in closed form (up to 1-D quadrature): the Gaussian families' exact
    optimum (`vingd_models.optima`).
    """

    name: str
    description: str
    model: Callable
    load: Callable[[], tuple[tuple, dict]]
    reference: Callable[[], dict | GaussianPosterior] | None = None
    gaussian_elbo: GaussianELBO | None = None


def _posteriordb(name, description, model, load, gaussian_elbo=None):
    reference = functools.partial(reference_draws, name)
    return ExampleModel(name, description, model, load, reference, gaussian_elbo)


_OWN = [
    ExampleModel(
        "statecrime_linear",
        "Conjugate linear regression, known noise, US state murder rates 2009 (51 x 5); exact",
        linear_regression.model,
        linear_regression.load,
        linear_regression.reference,
    ),
    ExampleModel(
        "breast_cancer_logistic",
        "Logistic regression, Wisconsin diagnostic breast cancer (569 x 30, standardised)",
        logistic_regression.model,
        logistic_regression.load,
        gaussian_elbo=logistic_regression.GAUSSIAN_ELBO,
    ),
    ExampleModel(
        "randhie_negative_binomial",
        "Negative-binomial GLM, doctor visits, RAND Health Insurance Experiment (20190 x 9)",
        negative_binomial.model,
        negative_binomial.load,
    ),
    ExampleModel(
        "radon_varying_intercept",
        "Varying-intercept radon model, Minnesota (919 houses, 85 counties), non-centred",
        radon.model,
        radon.load,
    ),
    ExampleModel(
        "breast_cancer_bnn",
        "Bayesian neural network classifier 30-64-1 tanh, breast cancer (2,049 weights)",
        bnn.model,
        bnn.load,
    ),
]

_POSTERIORDB = [
    _posteriordb(
        eight_schools.POSTERIOR,
        "Eight schools, hierarchical normal, non-centred (posteriordb)",
        eight_schools.model,
        eight_schools.load,
        eight_schools.GAUSSIAN_ELBO,
    ),
    _posteriordb(
        "diamonds-diamonds",
        "Log-price regression, 24 highly correlated predictors, 5,000 diamonds (posteriordb)",
        stan_regressions.diamonds,
        stan_regressions.load_diamonds,
        stan_regressions.DIAMONDS_ELBO,
    ),
    _posteriordb(
        "kidiq-kidscore_momiq",
        "Kid's test score on mother's IQ, flat priors (posteriordb)",
        stan_regressions.kidscore_momiq,
        stan_regressions.load_kidiq,
    ),
    _posteriordb(
        "mesquite-logmesquite_logvas",
        "Log-log regression of mesquite leaf weight, flat priors (posteriordb)",
        stan_regressions.flat_regression,
        stan_regressions.load_mesquite,
    ),
    _posteriordb(
        "earnings-logearn_interaction_z",
        "Log earnings on standardised height x sex, flat priors (posteriordb)",
        stan_regressions.flat_regression,
        stan_regressions.load_earnings,
    ),
    _posteriordb(
        "nes2000-nes",
        "Party identification on 8 predictors, NES 2000, flat priors (posteriordb)",
        stan_regressions.flat_regression,
        stan_regressions.load_nes2000,
    ),
    _posteriordb(
        "sblrc-blr",
        "Bayesian linear regression, 5 correlated predictors, simulated (posteriordb)",
        stan_regressions.blr,
        stan_regressions.load_sblrc,
    ),
    _posteriordb(
        "arK-arK",
        "AR(5) time series, simulated (posteriordb)",
        time_series.ar,
        time_series.load_ar,
    ),
    _posteriordb(
        gp_poisson.POSTERIOR,
        "Poisson counts on a latent Gaussian process, simulated (posteriordb)",
        gp_poisson.model,
        gp_poisson.load,
    ),
    _posteriordb(
        gaussian_mixture.POSTERIOR,
        "Two-component normal mixture, ordered means, simulated (posteriordb)",
        gaussian_mixture.model,
        gaussian_mixture.load,
    ),
    _posteriordb(
        "garch-garch11",
        "GARCH(1,1) volatility, simulated (posteriordb)",
        time_series.garch11,
        time_series.load_garch11,
    ),
    _posteriordb(
        "kilpisjarvi_mod-kilpisjarvi",
        "Summer temperature trend, Kilpisjärvi 1952-2013, weakly identified (posteriordb)",
        stan_regressions.kilpisjarvi,
        stan_regressions.load_kilpisjarvi,
    ),
]
POSTERIORDB = tuple(m.name for m in _POSTERIORDB)
REGISTRY = {m.name: m for m in _OWN + _POSTERIORDB}


def get(name: str) -> ExampleModel:
    """The registered model `name`, or a `KeyError` listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}; known models: {sorted(REGISTRY)}.") from None
