"""Exponential-family identities for both Gaussians, over random valid parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vingd.families import (
    DiagonalNormal,
    DiagonalNormalNatural,
    ExponentialFamily,
    MultivariateNormal,
    MultivariateNormalNatural,
    family_of,
    tree_vdot,
)

DIAG, MVN = DiagonalNormal(), MultivariateNormal()
seeds = st.integers(0, 2**31 - 1)
dims = st.integers(1, 4)


def random_natural(family, seed, d):
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=d) * 2
    if family is DIAG:
        return family.from_loc_scale(jnp.asarray(loc), jnp.asarray(rng.uniform(0.3, 3, size=d)))
    a = rng.normal(size=(d, d))
    return family.from_loc_precision(jnp.asarray(loc), jnp.asarray(a @ a.T + 0.5 * np.eye(d)))


def flat(theta):
    return jnp.concatenate([jnp.ravel(x) for x in theta])


def unflat(like, v):
    return jax.flatten_util.ravel_pytree(like)[1](v)


def loc_cov(family, theta):
    if family is DIAG:
        loc, scale = family.loc_scale(theta)
        return loc, jnp.diag(scale**2)
    q = family.to_numpyro(theta)
    return q.loc, q.covariance_matrix


families = pytest.mark.parametrize("family", [DIAG, MVN], ids=["diagonal", "full"])
examples = settings(max_examples=15, deadline=None)


@families
@examples
@given(seed=seeds, d=dims)
def test_grad_log_partition_is_mean(family, seed, d):
    theta = random_natural(family, seed, d)
    loc, cov = loc_cov(family, theta)
    grad = jax.grad(family.log_partition)(theta)
    mean = family.natural_to_mean(theta)  # closed form where a family overrides it
    np.testing.assert_allclose(grad[0], loc, rtol=1e-9, atol=1e-9)
    expected_mu2 = jnp.diag(cov) + loc**2 if family is DIAG else cov + jnp.outer(loc, loc)
    np.testing.assert_allclose(grad[1], expected_mu2, rtol=1e-9, atol=1e-9)
    for a, b in zip(mean, grad, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@families
@examples
@given(seed=seeds, d=dims)
def test_fisher_is_jacobian_of_mean_and_psd(family, seed, d):
    theta = random_natural(family, seed, d)

    def to_mean(v):
        return flat(family.natural_to_mean(unflat(theta, v)))

    jac = jax.jacfwd(to_mean)(flat(theta))
    hess = jax.hessian(lambda v: family.log_partition(unflat(theta, v)))(flat(theta))
    np.testing.assert_allclose(jac, hess, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(hess, hess.T, atol=1e-9)
    assert np.linalg.eigvalsh(np.asarray(hess)).min() > -1e-8


@families
@examples
@given(seed=seeds, d=dims)
def test_mean_natural_round_trip(family, seed, d):
    theta = random_natural(family, seed, d)
    back = family.mean_to_natural(family.natural_to_mean(theta))
    np.testing.assert_allclose(flat(back), flat(theta), rtol=1e-7, atol=1e-8)
    assert bool(family.is_valid(theta))


@families
@examples
@given(seed=seeds, d=dims)
def test_log_prob_entropy_kl_match_numpyro(family, seed, d):
    theta, other = random_natural(family, seed, d), random_natural(family, seed + 1, d)
    q, p = family.to_numpyro(theta), family.to_numpyro(other)
    x = family.sample(jax.random.PRNGKey(seed % 1000), theta, (5,))
    ours = jax.vmap(lambda xi: family.log_prob(theta, xi))(x)
    np.testing.assert_allclose(ours, q.log_prob(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(family.entropy(theta), q.entropy(), rtol=1e-9, atol=1e-9)
    derived = ExponentialFamily.entropy(family, theta)  # A(θ) − ⟨θ, μ⟩, the base's derivation
    np.testing.assert_allclose(family.entropy(theta), derived, rtol=1e-9, atol=1e-9)
    kl = dist.kl_divergence(q, p)
    np.testing.assert_allclose(family.kl_divergence(theta, other), kl, rtol=1e-8, atol=1e-9)
    means, variances = family.marginals(theta)  # (fit's Monte Carlo error is in these units)
    np.testing.assert_allclose(means, jnp.broadcast_to(q.mean, (d,)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(variances, q.variance, rtol=1e-9, atol=1e-9)


def test_mean_field_average_is_of_means_and_precisions_apart():
    loc, precision = jnp.array([[0.0, 2.0], [1.0, -2.0]]), jnp.array([[1.0, 4.0], [3.0, 4.0]])
    stacked = DiagonalNormalNatural(precision * loc, -0.5 * precision)
    weights = jnp.array([0.25, 0.75])
    means, variances = DIAG.marginals(DIAG.average(stacked, weights))
    np.testing.assert_allclose(means, weights @ loc, rtol=1e-12)
    np.testing.assert_allclose(1 / variances, weights @ precision, rtol=1e-12)
    # (the average of θ itself weights each mean by its precision)
    natural = jax.tree.map(lambda x: weights @ x, stacked)
    assert not np.allclose(DIAG.loc(natural), weights @ loc)


@families
def test_monte_carlo_covariance_of_statistics_is_fisher(family):
    d, n = 2, 400_000
    theta = random_natural(family, 3, d)
    x = family.sample(jax.random.PRNGKey(7), theta, (n,))
    stats = jax.vmap(lambda xi: flat(family.sufficient_statistics(xi)))(x)
    centred = stats - stats.mean(0)
    cov = centred.T @ centred / (n - 1)
    fisher = jax.hessian(lambda v: family.log_partition(unflat(theta, v)))(flat(theta))
    # Monte Carlo error of each covariance entry: sd of the product of centred statistics / √n.
    se = jnp.sqrt(jnp.var(centred[:, :, None] * centred[:, None, :], axis=0) / n)
    assert np.all(np.abs(cov - fisher) < 5 * se + 1e-9)
    # and the sample mean of T estimates ∇A
    se_mean = jnp.std(stats, 0) / np.sqrt(n)
    assert np.all(np.abs(stats.mean(0) - flat(family.natural_to_mean(theta))) < 5 * se_mean)


def test_invalid_natural_parameters_are_detected():
    bad_precision = MultivariateNormalNatural(
        jnp.zeros(2), -0.5 * jnp.array([[1.0, 2.0], [2.0, 1.0]])
    )
    assert not bool(MVN.is_valid(bad_precision))
    assert not bool(
        MVN.is_valid(MultivariateNormalNatural(jnp.array([jnp.nan, 0.0]), -0.5 * jnp.eye(2)))
    )
    assert not bool(DIAG.is_valid(DIAG.natural_type(jnp.zeros(2), jnp.array([-1.0, 0.5]))))


def test_family_of_and_inner_product():
    theta = random_natural(MVN, 0, 3)
    assert family_of(theta) is not None and family_of(theta) == MVN
    assert family_of(jnp.zeros(3)) is None
    np.testing.assert_allclose(tree_vdot(theta, theta), jnp.sum(flat(theta) ** 2))
