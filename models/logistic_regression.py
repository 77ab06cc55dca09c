"""Bayesian logistic regression on the Wisconsin diagnostic breast cancer data.

y_n ~ Bernoulli(sigmoid(b + x_nᵀw)),  w ~ N(0, I),  b ~ N(0, 2.5²), with the 30 features
standardised (zero mean, unit sd), so the unit prior is weakly informative on every coefficient.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from .optima import GaussianELBO, gaussian_expectation, normal_prior

DATA = Path(__file__).parent / "data" / "breast_cancer.csv"


def model(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 2.5))
    numpyro.sample("y", dist.Bernoulli(logits=b + X @ w), obs=y)


def load_arrays():
    """Standardised features (569, 30), labels (1 = benign) and the feature names."""
    with DATA.open() as f:
        rows = list(csv.reader(f))
    names, values = rows[0], np.asarray(rows[1:], dtype=np.float64)
    X, y = values[:, :-1], values[:, -1]
    X = (X - X.mean(0)) / X.std(0)
    return X, y, names[:-1]


def load():
    """`(args, kwargs)` for `model`."""
    X, y, _ = load_arrays()
    dtype = jnp.result_type(float)
    return (jnp.asarray(X, dtype), jnp.asarray(y, dtype)), {}


def _expected_log_joint(mean, cov, X, y):
    """E_q[log p(y, z)] for q = N(mean, cov) over (w, b): Gaussian prior moments, and per
    observation E[y·a − log(1 + e^a)] for the Gaussian logit a = b + xᵀw (a 1-D quadrature)."""
    D = X.shape[1]
    mw, vw, mb, vb = mean[:D], jnp.diag(cov)[:D], mean[D], cov[D, D]
    prior = normal_prior(mw, vw, 1.0) + normal_prior(mb, vb, 2.5)
    design = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)
    logit_mean, logit_var = design @ mean, jnp.einsum("ni,ij,nj->n", design, cov, design)
    likelihood = jnp.sum(
        y * logit_mean - gaussian_expectation(jax.nn.softplus, logit_mean, logit_var)
    )
    return prior + likelihood


#: the Gaussian families' ELBO in closed form up to quadrature (`vingd_models.optima`)
GAUSSIAN_ELBO = GaussianELBO(("w", "b"), _expected_log_joint)
