"""Exponential-family identities for the native-support families, and the digamma inversions.

The same identities as tests/test_families.py (∇A = μ, ∂μ/∂θ = ∇²A symmetric PSD, round trips,
log-density/entropy/KL against numpyro, Cov[T] = ∇²A by Monte Carlo), over random valid
parameters that include tiny and huge concentrations, plus what these families add: the
moment atoms (E_atoms[T] = μ exactly) and the accuracy of the Newton inversions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.special as sp
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from vingd.families import (
    Bernoulli,
    Beta,
    Categorical,
    Dirichlet,
    ExponentialFamily,
    Gamma,
    InverseGamma,
    LogNormal,
    dirichlet_concentration,
    family_of,
    gamma_shape,
    inverse_digamma,
    tree_vdot,
)

GAMMA, BETA, DIRICHLET = Gamma(), Beta(), Dirichlet()
BERNOULLI, CATEGORICAL = Bernoulli(), Categorical()
LOGNORMAL, INVERSE_GAMMA = LogNormal(), InverseGamma()
ALL = [GAMMA, BETA, DIRICHLET, BERNOULLI, CATEGORICAL, LOGNORMAL, INVERSE_GAMMA]
CONTINUOUS = [GAMMA, BETA, DIRICHLET, LOGNORMAL, INVERSE_GAMMA]
ids = [type(f).__name__ for f in ALL]
families = pytest.mark.parametrize("family", ALL, ids=ids)
seeds = st.integers(0, 2**31 - 1)
examples = settings(max_examples=10, deadline=None)


REGIMES = {"moderate": (-1.0, 2.0), "tiny": (-3.0, -1.0), "huge": (3.0, 5.0)}
regimes = st.sampled_from(sorted(REGIMES))


def random_natural(family, seed, d=3, regime="moderate"):
    """Valid θ with concentrations log-uniform in the regime's range (all tiny, all huge, ...).

    Discrete families take logits of scale 2 (moderate) or 6 (otherwise: near-certain events).
    """
    rng = np.random.default_rng(seed)
    low, high = REGIMES[regime]

    def conc(*shape):
        return jnp.asarray(10 ** rng.uniform(low, high, size=shape))

    logit_scale = 2.0 if regime == "moderate" else 6.0
    if family is GAMMA:
        return GAMMA.from_shape_rate(conc(d), conc(d))
    if family is INVERSE_GAMMA:
        return INVERSE_GAMMA.from_shape_scale(conc(d), conc(d))
    if family is BETA:
        return BETA.natural_type(conc(d) - 1, conc(d) - 1)
    if family is DIRICHLET:
        return DIRICHLET.natural_type(conc(2, d) - 1)
    if family is LOGNORMAL:
        scale = np.sqrt(1 / conc(d))  # the log-scale precision plays the concentration's part
        return LOGNORMAL.initial(jnp.asarray(np.exp(rng.normal(size=d))), scale)
    if family is BERNOULLI:
        return BERNOULLI.natural_type(jnp.asarray(rng.normal(size=d) * logit_scale))
    return CATEGORICAL.natural_type(jnp.asarray(rng.normal(size=(2, d)) * logit_scale))


def flat(tree):
    return ravel_pytree(tree)[0]


def unflat(like, v):
    return ravel_pytree(like)[1](v)


def centred(family, theta):
    """θ with the overcomplete Categorical's free constant removed."""
    if family is CATEGORICAL:
        return theta._replace(logits=theta.logits - jax.nn.logsumexp(theta.logits, -1)[..., None])
    return theta


@functools.cache
def identities(family):
    """A compiled map flat θ -> everything the identity tests compare (one compile per family)."""
    like = random_natural(family, 0)

    @jax.jit
    def run(v):
        theta = unflat(like, v)
        mean = family.natural_to_mean(theta)  # the closed form each family overrides
        back = family.mean_to_natural(mean)
        return {
            "grad_log_partition": flat(jax.grad(family.log_partition)(theta)),
            "mean": flat(mean),
            "jacobian": jax.jacfwd(lambda u: flat(family.natural_to_mean(unflat(like, u))))(v),
            "hessian": jax.hessian(lambda u: family.log_partition(unflat(like, u)))(v),
            "round_trip": flat(centred(family, back)),
            "centred": flat(centred(family, theta)),
            "mean_again": flat(family.natural_to_mean(back)),
            "valid": family.is_valid(theta),
        }

    return run


@families
@examples
@given(seed=seeds, regime=regimes)
def test_grad_log_partition_is_mean(family, seed, regime):
    out = identities(family)(flat(random_natural(family, seed, regime=regime)))
    np.testing.assert_allclose(out["mean"], out["grad_log_partition"], rtol=1e-10, atol=1e-12)
    assert bool(out["valid"])


@families
@examples
@given(seed=seeds, regime=regimes)
def test_fisher_is_jacobian_of_mean_and_psd(family, seed, regime):
    out = identities(family)(flat(random_natural(family, seed, regime=regime)))
    hess = np.asarray(out["hessian"])
    scale = np.max(np.abs(hess))
    np.testing.assert_allclose(out["jacobian"], hess, rtol=1e-7, atol=1e-10 * scale)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12 * scale)
    assert np.linalg.eigvalsh(hess).min() > -1e-10 * scale - 1e-15


@families
@examples
@given(seed=seeds, regime=regimes)
def test_mean_natural_round_trip(family, seed, regime):
    """θ → μ → θ to 1e-8 relative, for concentrations from 1e-3 to 1e5."""
    out = identities(family)(flat(random_natural(family, seed, regime=regime)))
    np.testing.assert_allclose(out["round_trip"], out["centred"], rtol=1e-8, atol=1e-10)
    # (to 1e-12 of the largest component: a tiny one next to large ones is rounded on their scale)
    scale = np.max(np.abs(out["mean"]))
    np.testing.assert_allclose(out["mean_again"], out["mean"], rtol=1e-12, atol=1e-12 * scale)


@functools.cache
def against_numpyro(family):
    """A compiled map (θ, θ') -> (ours, numpyro's) log densities, entropies and KLs.

    The densities are compared at the atoms of θ' (points of the support, no sampler to compile).
    """

    @jax.jit
    def run(theta, other):
        q = family.to_numpyro(theta)
        x = family.atoms(family.natural_to_mean(other))[0]
        index = jnp.argmax(x, -1) if family is CATEGORICAL else x  # numpyro's: indices
        return {
            "log_prob": jax.vmap(lambda xi: family.log_prob(theta, xi))(x),
            "numpyro_log_prob": q.log_prob(index),
            "entropy": ExponentialFamily.entropy(family, theta),  # A(θ) − ⟨θ, μ⟩
            "kl": family.kl_divergence(theta, other),
        }

    return run


@families
@examples
@given(seed=seeds)
def test_log_prob_entropy_kl_match_numpyro(family, seed):
    theta, other = random_natural(family, seed), random_natural(family, seed + 1)
    out = against_numpyro(family)(theta, other)
    np.testing.assert_allclose(out["log_prob"], out["numpyro_log_prob"], rtol=1e-9, atol=1e-9)
    q, p = family.to_numpyro(theta), family.to_numpyro(other)
    reference = {LOGNORMAL: lognormal_entropy, BETA: beta_entropy}.get(family, dist_entropy)(q)
    np.testing.assert_allclose(out["entropy"], reference, rtol=1e-9, atol=1e-9)
    if family is CATEGORICAL:  # numpyro registers KL for the probs parametrisation only
        q, p = (dist.CategoricalProbs(d.base_dist.probs).to_event(1) for d in (q, p))
    reference = {
        BETA: beta_kl,
        LOGNORMAL: lambda q, p: dist.kl_divergence(*(d.base_dist.base_dist for d in (q, p))),
        INVERSE_GAMMA: lambda q, p: dist.kl_divergence(*(d.base_dist.base_dist for d in (q, p))),
        BERNOULLI: bernoulli_kl,
    }.get(family, dist.kl_divergence)(q, p)
    np.testing.assert_allclose(out["kl"], np.sum(reference), rtol=1e-8, atol=1e-9)


def dist_entropy(q):
    return q.entropy()


def beta_entropy(q):  # scipy: numpyro's Beta entropy goes through jax's betaln (~1e-8 accurate)
    return np.sum(
        scipy.stats.beta(q.base_dist.concentration1, q.base_dist.concentration0).entropy()
    )


def beta_kl(q, p):  # numpyro's formula with scipy's betaln, for the same reason
    a, b = (np.asarray(x) for x in (q.base_dist.concentration1, q.base_dist.concentration0))
    c, d = (np.asarray(x) for x in (p.base_dist.concentration1, p.base_dist.concentration0))
    digamma_total = sp.digamma(a + b)
    return np.sum(
        sp.betaln(c, d)
        - sp.betaln(a, b)
        - (c - a) * sp.digamma(a)
        - (d - b) * sp.digamma(b)
        + (c - a + d - b) * digamma_total
    )


def bernoulli_kl(q, p):
    a, b = q.base_dist.probs, p.base_dist.probs
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def lognormal_entropy(q):
    base = q.base_dist.base_dist  # Independent(LogNormal) -> LogNormal -> Normal
    return jnp.sum(base.entropy() + base.loc)


@families
def test_monte_carlo_covariance_of_statistics_is_fisher(family):
    n = 20_000
    theta = random_natural(family, 3)
    if family in (BERNOULLI, CATEGORICAL):  # no rare events: their sample moments are unreliable
        theta = type(theta)(jnp.clip(theta[0], -2.0, 2.0))

    @jax.jit
    def moments(theta):
        x = family.sample(jax.random.PRNGKey(7), theta, (n,))
        stats = jax.vmap(lambda xi: flat(family.sufficient_statistics(xi)))(x)
        centred_stats = stats - stats.mean(0)
        products = centred_stats[:, :, None] * centred_stats[:, None, :]
        # estimates and their Monte Carlo standard errors
        return stats.mean(0), jnp.std(stats, 0), products.mean(0), jnp.std(products, 0)

    mean, sd, cov, sd_products = moments(theta)
    exact = identities(family)(flat(theta))  # μ = ∇A and F = ∇²A
    assert np.all(np.abs(cov - exact["hessian"]) < 5 * sd_products / np.sqrt(n) + 1e-9)
    assert np.all(np.abs(mean - exact["mean"]) < 5 * sd / np.sqrt(n) + 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", CONTINUOUS, ids=[type(f).__name__ for f in CONTINUOUS])
def test_reparameterised_draws_carry_gradients(family):
    """∇_θ E[Σx] by implicit reparameterisation, per draw, averages to the closed form's."""
    theta = random_natural(family, 11, d=2)
    if family is INVERSE_GAMMA:  # E[x] needs α > 1, a finite-variance estimate α > 2
        theta = INVERSE_GAMMA.from_shape_scale(jnp.array([6.0, 9.0]), jnp.array([2.0, 0.5]))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    per_draw = jax.vmap(jax.grad(lambda t, k: jnp.sum(family.sample(k, t))), (None, 0))(theta, keys)
    draws = jax.vmap(flat)(per_draw)
    exact = flat(jax.grad(lambda t: jnp.sum(family.to_numpyro(t).base_dist.mean))(theta))
    se = draws.std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(draws.mean(0) - exact) < 5 * se + 1e-12)


@families
@examples
@given(seed=seeds, regime=st.sampled_from(["moderate", "huge"]))
def test_atoms_reproduce_the_mean_parameters(family, seed, regime):
    """E_atoms[T] = μ: so E_atoms[f] = E_q[f] exactly for every f affine in T.

    Not for tiny concentrations, where an atom lies closer to the boundary than float64 resolves.
    """
    theta = random_natural(family, seed, regime=regime)
    mean = family.natural_to_mean(theta)
    values, weights = family.atoms(mean)
    stats = jax.vmap(family.sufficient_statistics)(values)
    # float64 resolves an atom x near 1 only to ε, so log(1 − x) to ε/(1 − x): Beta's tails
    atol = 1e-7 if family is BETA else 1e-9
    for stat, mu in zip(stats, mean, strict=True):
        w = weights.reshape(weights.shape + (1,) * (stat.ndim - weights.ndim))
        np.testing.assert_allclose(jnp.sum(w * stat, 0), mu, rtol=1e-9, atol=atol)
    assert np.allclose(jnp.sum(weights, 0), 1.0)
    support = family.to_numpyro(theta).base_dist.support
    if family not in (BERNOULLI, CATEGORICAL):
        assert bool(jnp.all(support(values)))


@families
def test_natural_gradient_is_inverse_fisher_times_gradient(family):
    theta = random_natural(family, 5, d=2)
    grad = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape) + 1.0), theta)
    ours = family.natural_gradient(theta, grad)
    fisher = jax.hessian(lambda u: family.log_partition(unflat(theta, u)))(flat(theta))
    if family is CATEGORICAL:  # singular F = diag p − ppᵀ: ∇_μ is defined up to constants
        probs = jax.nn.softmax(theta.logits, -1)
        projected = grad.logits - probs * jnp.sum(grad.logits, -1, keepdims=True)
        np.testing.assert_allclose(fisher @ flat(ours), flat(projected), atol=1e-12)
        return
    np.testing.assert_allclose(flat(ours), np.linalg.solve(fisher, flat(grad)), rtol=1e-8)


def test_invalid_natural_parameters_are_detected():
    assert not bool(GAMMA.is_valid(GAMMA.natural_type(jnp.array([-1.5]), jnp.array([-1.0]))))
    assert not bool(GAMMA.is_valid(GAMMA.natural_type(jnp.array([1.0]), jnp.array([0.5]))))
    assert not bool(BETA.is_valid(BETA.natural_type(jnp.array([0.0]), jnp.array([-1.0]))))
    assert not bool(DIRICHLET.is_valid(DIRICHLET.natural_type(jnp.array([0.0, -2.0]))))
    assert not bool(BERNOULLI.is_valid(BERNOULLI.natural_type(jnp.array([jnp.nan]))))
    assert not bool(CATEGORICAL.is_valid(CATEGORICAL.natural_type(jnp.array([0.0, jnp.inf]))))
    assert not bool(INVERSE_GAMMA.is_valid(INVERSE_GAMMA.natural_type(jnp.array([-0.5]), -1.0)))
    assert not bool(LOGNORMAL.is_valid(LOGNORMAL.natural_type(jnp.array([0.0]), jnp.array([1.0]))))


def test_family_registry_knows_every_family():
    for family in ALL:
        theta = random_natural(family, 0)
        assert family_of(theta) == family
        np.testing.assert_allclose(tree_vdot(theta, theta), jnp.sum(flat(theta) ** 2))


@pytest.mark.parametrize("family", [BETA, DIRICHLET], ids=["Beta", "Dirichlet"])
def test_mean_natural_round_trip_in_float32(family):
    """θ → μ → θ in float32 (the default dtype; this suite runs in x64), α₀ from 1e-2 to 1e4.

    μ carries ~ε·α₀ relative information about α (ε = 1.2e-7), so α comes back to 100·ε·max(1, α₀).
    A bisection bracket of 1e±300 (0 and ∞ in float32) once gave NaN from α₀ ≈ 20 on.
    """
    shares = [[0.5, 0.5], [0.1, 0.9], [0.8, 0.2]]
    if family is DIRICHLET:
        shares = [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]
    alpha = (np.logspace(-2, 4, 25)[:, None, None] * np.array(shares)).reshape(-1, len(shares[0]))
    eta = jnp.asarray(alpha - 1, jnp.float32)
    theta = (
        BETA.natural_type(eta[:, 0], eta[:, 1]) if family is BETA else DIRICHLET.natural_type(eta)
    )
    back = family.mean_to_natural(family.natural_to_mean(theta))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(back))
    assert family.is_valid(back)
    exact, found = (np.column_stack(t).astype(np.float64) + 1 for t in (theta, back))  # α = θ + 1
    tol = 100 * np.finfo(np.float32).eps * np.maximum(1, exact.sum(-1, keepdims=True))
    assert np.all(np.abs(found / exact - 1) < tol)


# -- the Newton inversions -----------------------------------------------------------------
def test_inverse_digamma_is_accurate_from_tiny_to_huge():
    x = np.logspace(-6, 9, 400)
    np.testing.assert_allclose(inverse_digamma(jnp.asarray(sp.digamma(x))), x, rtol=1e-12)
    y = jnp.linspace(-50.0, 20.0, 9)  # the derivative is the implicit one, 1/ψ'(x)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(inverse_digamma))(y), 1 / sp.polygamma(1, inverse_digamma(y)), rtol=1e-12
    )


def test_gamma_shape_is_accurate_from_tiny_to_huge():
    alpha = np.logspace(-6, 6, 300)
    s = np.log(alpha) - sp.digamma(alpha)
    np.testing.assert_allclose(gamma_shape(jnp.asarray(s)), alpha, rtol=1e-8)
    a = gamma_shape(jnp.asarray(s[::50]))
    np.testing.assert_allclose(
        jax.vmap(jax.grad(gamma_shape))(jnp.asarray(s[::50])), 1 / (1 / a - sp.polygamma(1, a))
    )


@pytest.mark.parametrize(
    "low, high",
    [(-4, -1), (3, 5.5), (-2, 4), (-4, 6)],
    ids=["tiny", "huge", "mixed", "tiny-and-huge"],
)
def test_dirichlet_concentration_over_the_whole_range(low, high):
    """Forward error 1e-8 where the map is that well conditioned; residual ~1e-13 everywhere.

    With α_k ≪ 1 ≪ α_j together, μ_j = ψ(α_j) − ψ(α₀) ≈ −α_k/α₀ is tiny and its rounding
    error alone moves α by more than 1e-8: there only the residual is asserted.
    """
    rng = np.random.default_rng(0)
    for k in [2, 3, 5]:
        alpha = 10 ** rng.uniform(low, high, size=(40, k))
        alpha[:10] = alpha[:10, :1]  # symmetric rows too
        mu = jnp.asarray(sp.digamma(alpha) - sp.digamma(alpha.sum(-1, keepdims=True)))
        found = dirichlet_concentration(mu)
        residual = sp.digamma(found) - sp.digamma(found.sum(-1, keepdims=True)) - mu
        assert np.max(np.abs(residual) / np.maximum(1, np.abs(mu))) < 1e-12
        if (low, high) != (-4, 6):
            np.testing.assert_allclose(found, alpha, rtol=1e-8)


def test_dirichlet_concentration_derivative_is_the_inverse_jacobian():
    alpha = jnp.array([0.3, 2.0, 40.0])
    mu = DIRICHLET.natural_to_mean(DIRICHLET.natural_type(alpha - 1)).mu
    jac = jax.jacfwd(dirichlet_concentration)(mu)
    forward = jax.jacfwd(lambda a: DIRICHLET.natural_to_mean(DIRICHLET.natural_type(a - 1)).mu)
    np.testing.assert_allclose(jac @ forward(alpha), np.eye(3), atol=1e-10)
    np.testing.assert_allclose(jax.jacrev(dirichlet_concentration)(mu), jac, rtol=1e-12)


def test_inversions_are_jit_and_vmap_clean():
    mu = jnp.log(jnp.array([[0.2, 0.3, 0.4], [0.1, 0.1, 0.7]]))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(dirichlet_concentration))(mu), dirichlet_concentration(mu), rtol=1e-13
    )
    np.testing.assert_allclose(jax.jit(gamma_shape)(jnp.array([0.5])), gamma_shape(0.5))
