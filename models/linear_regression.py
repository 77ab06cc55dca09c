"""Conjugate Bayesian linear regression with known noise: 2009 US state murder rates.

    y_n ~ N(b + x_nᵀw, σ²),  w ~ N(0, I),  b ~ N(0, 1),  σ = 0.5 known,

with y the murder rate per 100,000 and x five covariates (urban, poverty, high-school
graduates, single-parent households, white), all standardised over the 50 states and DC.
σ is fixed near the least-squares residual sd (0.45), so the posterior is Gaussian in closed
form: with Φ = [X, 1] and prior precision Λ₀ = I,

    Λ = Λ₀ + ΦᵀΦ / σ²,   mean = Λ⁻¹ Φᵀy / σ².
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .references import GaussianPosterior

DATA = Path(__file__).parent / "data" / "statecrime.csv"
COVARIATES = ("urban", "poverty", "hs_grad", "single", "white")
NOISE_SD = 0.5


def model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(b + X @ w, NOISE_SD).to_event(1), obs=y)


def load_arrays():
    """Standardised covariates (51, 5) and standardised murder rates (51,)."""
    with DATA.open() as f:
        rows = list(csv.DictReader(f))
    X = np.array([[float(r[c]) for c in COVARIATES] for r in rows])
    y = np.array([float(r["murder"]) for r in rows])
    return (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()


def load():
    """`(args, kwargs)` for `model`."""
    X, y = load_arrays()
    dtype = jnp.result_type(float)
    return (jnp.asarray(X, dtype), jnp.asarray(y, dtype)), {}


def reference() -> GaussianPosterior:
    """The exact posterior over (w, b), the model's site order."""
    X, y = load_arrays()
    phi = np.column_stack([X, np.ones(len(y))])
    precision = np.eye(phi.shape[1]) + phi.T @ phi / NOISE_SD**2
    cov = np.linalg.inv(precision)
    mean = cov @ phi.T @ y / NOISE_SD**2
    return GaussianPosterior(mean={"w": mean[:-1], "b": mean[-1]}, cov=cov)
