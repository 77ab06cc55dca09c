"""Negative-binomial regression of doctor visits, RAND Health Insurance Experiment.

    y_n ~ NegBinomial(mean = exp(b + x_nᵀw), concentration = φ),
    w ~ N(0, I),  b ~ N(0, 2.5²),  φ ~ Exponential(1),

with y_n the number of outpatient visits to a doctor in a year and x_n nine covariates of
insurance plan and health (standardised). Var y = m + m²/φ: the overdispersion a Poisson GLM
misses (Cameron & Trivedi 2005, ch. 20).
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA = Path(__file__).parent / "data" / "randhie.csv"


def model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 2.5))
    concentration = numpyro.sample("concentration", dist.Exponential(1.0))
    mean = jnp.exp(b + X @ w)
    numpyro.sample("y", dist.NegativeBinomial2(mean, concentration).to_event(1), obs=y)


def load_arrays():
    """Standardised covariates (20190, 9), visit counts (20190,) and the covariate names."""
    with DATA.open() as f:
        rows = list(csv.reader(f))
    names, values = rows[0], np.asarray(rows[1:], dtype=np.float64)
    X, y = values[:, 1:], values[:, 0].astype(np.int64)
    return (X - X.mean(0)) / X.std(0), y, names[1:]


def load():
    """`(args, kwargs)` for `model`."""
    X, y, _ = load_arrays()
    return (jnp.asarray(X, jnp.result_type(float)), jnp.asarray(y)), {}
