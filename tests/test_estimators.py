"""Each estimator of ∇_μ E_q[f], tested directly against quadrature and against exactness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vingd.estimators import ESTIMATORS, default_estimator, get_estimator
from vingd.families import DiagonalNormal, MultivariateNormal

DIAG, MVN = DiagonalNormal(), MultivariateNormal()
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(40)  # ∫ g(x) N(x|0,1) dx ≈ Σ w g(x) / √(2π)
WEIGHTS = WEIGHTS / np.sqrt(2 * np.pi)


def log_joint(z):
    """A smooth, non-quadratic log density in 2-D (a logistic likelihood and a Gaussian prior)."""
    prior = -0.5 * jnp.sum(z**2) + 0.4 * z[0] * z[1]
    return jax.nn.log_sigmoid(1.5 * z[0] - 0.7 * z[1] + 0.3) + prior


def expected_by_quadrature(family, mean):
    """E_q[f] by 40×40 Gauss–Hermite quadrature, as a differentiable function of μ."""
    natural = family.mean_to_natural(mean)
    loc = family.natural_to_mean(natural)[0]
    if family is DIAG:
        _, scale = family.loc_scale(natural)
        chol = jnp.diag(scale)
    else:
        chol = jnp.linalg.cholesky(family.to_numpyro(natural).covariance_matrix)
    x, y = np.meshgrid(NODES, NODES, indexing="ij")
    eps = jnp.stack([x.ravel(), y.ravel()], -1)
    w = np.outer(WEIGHTS, WEIGHTS).ravel()
    return jnp.sum(w * jax.vmap(log_joint)(loc + eps @ chol.T))


def natural_at(family):
    if family is DIAG:
        return DIAG.from_loc_scale(jnp.array([0.3, -0.5]), jnp.array([0.8, 0.6]))
    return MVN.from_loc_precision(jnp.array([0.3, -0.5]), jnp.array([[2.0, 0.6], [0.6, 1.5]]))


CASES = [(DIAG, name) for name in ESTIMATORS] + [(MVN, n) for n in ESTIMATORS if n != "hvp"]


@pytest.mark.parametrize(
    ("family", "name"), CASES, ids=[f"{type(f).__name__}-{n}" for f, n in CASES]
)
def test_estimator_is_unbiased_against_quadrature(family, name):
    natural = natural_at(family)
    truth = jax.grad(lambda m: expected_by_quadrature(family, m))(family.natural_to_mean(natural))
    truth = jax.flatten_util.ravel_pytree(truth)[0]
    estimator = get_estimator(name)

    def one(key):
        estimate = estimator(log_joint, family, natural, key, 64)
        return jax.flatten_util.ravel_pytree(estimate.grad_mean)[0], estimate.expected_log_joint

    grads, values = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(0), 400))
    se = grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(grads.mean(0) - truth) < 5 * se + 1e-6), (grads.mean(0), truth)
    value = expected_by_quadrature(family, family.natural_to_mean(natural))
    assert abs(values.mean() - value) < 5 * values.std() / np.sqrt(values.size) + 1e-6


@pytest.mark.parametrize("family", [DIAG, MVN], ids=["diagonal", "full"])
def test_hessian_estimator_is_exact_for_quadratic_log_density(family):
    precision = jnp.array([[3.0, 1.0], [1.0, 2.0]])
    centre = jnp.array([1.0, -2.0])

    def quadratic(z):
        return -0.5 * (z - centre) @ precision @ (z - centre)

    natural = natural_at(family)
    estimate = get_estimator("hessian")(quadratic, family, natural, jax.random.PRNGKey(3), 2)
    loc = family.natural_to_mean(natural)[0]
    hess = -precision if family is MVN else -jnp.diag(precision)
    grad = -precision @ (loc - centre)
    expected = (grad - (hess @ loc if family is MVN else hess * loc), 0.5 * hess)
    for a, b in zip(estimate.grad_mean, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_default_estimator_and_bad_names():
    assert default_estimator(DIAG, 10) == "hessian" and default_estimator(DIAG, 5000) == "hvp"
    assert default_estimator(MVN, 10) == "hessian" and default_estimator(MVN, 5000) == "stein"
    with pytest.raises(ValueError, match=r"estimator must be one of .*'hessian'.*got 'newton'"):
        get_estimator("newton")
    with pytest.raises(ValueError, match="diagonal curvature"):
        get_estimator("hvp")(log_joint, MVN, natural_at(MVN), jax.random.PRNGKey(0), 2)
