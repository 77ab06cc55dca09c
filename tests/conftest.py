"""Shared test problems with known answers. Tests run in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vingd

numpyro.enable_x64()

NOISE_SD = 0.5
PRIOR_SD = np.array([1.0, 1.0, 1.0, 2.0])  # w (3), b
#: every vingd guide, for tests that hold for each
EVERY_GUIDE = pytest.mark.parametrize(
    "guide_class",
    [
        vingd.AutoNaturalNormal,
        vingd.AutoNaturalMVN,
        vingd.AutoNaturalLowRankMVN,
        vingd.AutoExpFamily,
    ],
)


def linear_regression(X, y=None):
    """Bayesian linear regression with known noise: conjugate, exact posterior in closed form."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    numpyro.sample("y", dist.Normal(X @ w + b, NOISE_SD), obs=y)


class Conjugate:
    """Data and the exact posterior N(mean, cov) of `linear_regression`, in (b, w) order."""

    def __init__(self, n=40, seed=0, correlation=0.5):
        rng = np.random.default_rng(seed)
        cov_x = correlation + (1 - correlation) * np.eye(3)
        X = rng.multivariate_normal(np.zeros(3), cov_x, size=n)
        y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + NOISE_SD * rng.normal(size=n)
        self.X, self.y = jnp.asarray(X), jnp.asarray(y)
        phi = np.concatenate([np.ones((n, 1)), X], 1)
        prior_precision = np.diag(1 / np.roll(PRIOR_SD, 1) ** 2)
        self.precision = prior_precision + phi.T @ phi / NOISE_SD**2
        self.cov = np.linalg.inv(self.precision)
        self.mean = self.cov @ phi.T @ np.asarray(y) / NOISE_SD**2
        # Mean-field optimum for a Gaussian target: precision diag(Λ), mean = the exact mean.
        self.mean_field_sd = 1 / np.sqrt(np.diag(self.precision))

    def jacobi_spectral_radius(self, step_size):
        """Spectral radius of the damped Jacobi iteration m ← m + ρ D⁻¹(b − Λm), D = diag Λ."""
        d = np.sqrt(np.diag(self.precision))
        eigenvalues = np.linalg.eigvalsh(self.precision / np.outer(d, d))
        return np.max(np.abs(1 - step_size * eigenvalues))

    def split(self, v):
        """(b, w) order -> {"b": .., "w": ..}."""
        return {"b": v[0], "w": v[1:]}


@pytest.fixture(scope="session")
def conjugate():
    return Conjugate()


@pytest.fixture
def rng_key():
    return jax.random.PRNGKey(0)
