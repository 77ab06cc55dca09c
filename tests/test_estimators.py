"""Each estimator of ∇_μ E_q[f], tested directly against quadrature and against exactness."""

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import NOISE_SD, PRIOR_SD, linear_regression
from numpyro import handlers

import vingd
from vingd import AutoNaturalNormal
from vingd.estimators import ESTIMATORS, default_estimator, get_estimator, works_with
from vingd.families import DiagonalNormal, MultivariateNormal
from vingd.guides import flat_view_of
from vingd.infer import _batch_key, initial_params, mean_of_batches
from vingd.log_joint import LogJoint, fisher_terms, num_observations, observation_terms

DIAG, MVN = DiagonalNormal(), MultivariateNormal()
ALL_GUIDES = (vingd.AutoNaturalNormal, vingd.AutoNaturalMVN, vingd.AutoNaturalLowRankMVN)
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


# "gradsq" and "ggn" estimate other curvatures (empirical Fisher, Gauss–Newton), tested below
UNBIASED = [name for name in ESTIMATORS if name not in ("gradsq", "ggn")]
CASES = [(DIAG, name) for name in UNBIASED] + [(MVN, n) for n in UNBIASED if n != "hvp"]


@pytest.mark.parametrize("num_samples", [64, 1], ids=["pairs", "one-draw"])
@pytest.mark.parametrize(
    ("family", "name"), CASES, ids=[f"{type(f).__name__}-{n}" for f, n in CASES]
)
def test_estimator_is_unbiased_against_quadrature(family, name, num_samples):
    natural = natural_at(family)
    truth = jax.grad(lambda m: expected_by_quadrature(family, m))(family.natural_to_mean(natural))
    truth = jax.flatten_util.ravel_pytree(truth)[0]
    estimator = get_estimator(name)

    def one(key):
        estimate = estimator(log_joint, family, natural, key, num_samples)
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
    assert default_estimator(DIAG, 5000, num_observations=500) == "ggn"
    assert default_estimator(MVN, 10) == "hessian" and default_estimator(MVN, 5000) == "hessian"
    with pytest.raises(ValueError, match=r"estimator must be one of .*'hessian'.*got 'newton'"):
        get_estimator("newton")
    for name in ("hvp", "gradsq", "ggn"):
        with pytest.raises(ValueError, match="diagonal curvature"):
            get_estimator(name)(log_joint, MVN, natural_at(MVN), jax.random.PRNGKey(0), 2)


@pytest.mark.parametrize("guide_type", ALL_GUIDES[1:])  # (mean field takes every estimator)
def test_an_estimator_the_guide_cannot_use_fails_before_compiling(conjugate, guide_type):
    """One table (`FAMILIES`) says which estimator works with which guide; `fit` checks it
    before compiling, naming the guides that work (the others are fitted in their own tests)."""
    args = (conjugate.X, conjugate.y)
    refused = [name for name in ESTIMATORS if not works_with(name, guide_type.family)]
    assert refused
    for name in refused:
        guide = guide_type(
            linear_regression, **({"rank": 2} if "LowRank" in guide_type.__name__ else {})
        )
        names = [g.__name__ for g in ALL_GUIDES if works_with(name, g.family)]
        with pytest.raises(
            ValueError,
            match=f"does not work with {guide_type.__name__}: use it with {' or '.join(names)}",
        ):
            with mock.patch.object(
                vingd.infer, "_compiled", side_effect=AssertionError("compiled")
            ):
                vingd.fit(linear_regression, *args, guide=guide, estimator=name, num_steps=2)


def test_gradsq_is_the_expected_per_observation_gauss_newton(conjugate):
    """On linear regression, ∂ℓₙ = rₙφₙ/σ² with E_q[rₙ²] = (yₙ − φₙᵀm)² + Σⱼ φₙⱼ²sⱼ², so the
    curvature −Σₙ E_q[(∂ⱼℓₙ)²] − 1/τⱼ² and ∇_μ E_q[f] are known in closed form."""
    guide = flat_view_of(AutoNaturalNormal(linear_regression))
    initial_params(guide, jax.random.PRNGKey(0), conjugate.X, y=conjugate.y)
    f = LogJoint(linear_regression, (conjugate.X,), {"y": conjugate.y}, guide.unpack_latent)
    loc, scale = jnp.array([0.2, 0.5, -1.0, 0.1]), jnp.array([0.3, 0.2, 0.4, 0.25])
    natural = DIAG.from_loc_scale(loc, scale)
    phi = jnp.concatenate([jnp.ones((conjugate.X.shape[0], 1)), conjugate.X], 1)  # (b, w) order
    residual_sq = (conjugate.y - phi @ loc) ** 2 + phi**2 @ scale**2
    prior_precision = 1 / jnp.roll(jnp.asarray(PRIOR_SD), 1) ** 2
    curvature = -(phi**2).T @ residual_sq / NOISE_SD**4 - prior_precision
    grad = phi.T @ (conjugate.y - phi @ loc) / NOISE_SD**2 - prior_precision * loc
    expected = np.concatenate([grad - curvature * loc, 0.5 * curvature])

    def one(key):
        estimate = get_estimator("gradsq")(f, DIAG, natural, key, 8)
        return jnp.concatenate(estimate.grad_mean)

    draws = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(1), 2000))
    se = draws.std(0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - expected) < 5 * se + 1e-9), (draws.mean(0), expected)


def test_ggn_is_the_exact_hessian_for_a_gaussian_likelihood(conjugate):
    """Normal likelihood, known σ: the Gauss–Newton Σₙ φₙ²/σ² is the Hessian, so "ggn" is
    unbiased for the Price/Bonnet ∇_μ E_q[f] (here E[∇²f] does not depend on z)."""
    guide = flat_view_of(AutoNaturalNormal(linear_regression))
    initial_params(guide, jax.random.PRNGKey(0), conjugate.X, y=conjugate.y)
    f = LogJoint(linear_regression, (conjugate.X,), {"y": conjugate.y}, guide.unpack_latent)
    natural = DIAG.from_loc_scale(jnp.array([0.2, 0.5, -1.0, 0.1]), jnp.full(4, 0.3))
    exact = get_estimator("hessian")(f, DIAG, natural, jax.random.PRNGKey(0), 2).grad_mean

    def one(key):
        return jnp.concatenate(get_estimator("ggn")(f, DIAG, natural, key, 8).grad_mean)

    draws = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(1), 2000))
    se = draws.std(0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - jnp.concatenate(exact)) < 5 * se + 1e-9)


def test_fisher_terms_give_the_logistic_fisher():
    """Bernoulli logits: E_s[(∇ Σₙ sₙ√Fₙ ηₙ)²] = Σₙ pₙ(1 − pₙ) xₙ², the GGN diagonal."""
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(50, 3)))
    y = jnp.asarray(rng.integers(0, 2, size=50), dtype=jnp.float64)

    def logistic(X, y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=X @ w).to_event(1), obs=y)

    f = LogJoint(logistic, (X, y), {}, lambda z: {"w": z})
    w = jnp.array([0.5, -1.0, 0.3])
    grads = jax.vmap(jax.grad(lambda z, k: f.split(z, k, fisher=True)[2]), (None, 0))(
        w, jax.random.split(jax.random.PRNGKey(0), 4000)
    )
    p = jax.nn.sigmoid(X @ w)
    expected = (p * (1 - p)) @ X**2
    se = (grads**2).std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs((grads**2).mean(0) - expected) < 5 * se), ((grads**2).mean(0), expected)


def test_fisher_terms_leave_out_masked_observations():
    """A masked-out observation has no term, so no Fisher: "ggn" used to fall back to the
    empirical Fisher on any masked likelihood (e.g. `obs_mask`), and now weights it by 0."""
    logits, mask = jnp.linspace(-2.0, 2.0, 6), jnp.array([1, 0, 1, 1, 0, 1], bool)
    fisher = jnp.sqrt(jax.nn.sigmoid(logits) * jax.nn.sigmoid(-logits))

    def inside(y):  # a mask inside an event, and numpyro's `mask` handler over a plate
        numpyro.sample("a", dist.Bernoulli(logits=logits).mask(mask).to_event(1), obs=y)
        with numpyro.plate("n", 6), handlers.mask(mask=mask):
            numpyro.sample("b", dist.Bernoulli(logits=logits), obs=y)
        numpyro.sample("c", dist.Normal(logits, 2.0).to_event(1).mask(False), obs=y)

    trace = handlers.trace(inside).get_trace(jnp.ones(6))
    for name in "ab":
        ((eta, root),) = fisher_terms(trace[name])
        np.testing.assert_allclose(eta, logits)
        np.testing.assert_allclose(root, jnp.where(mask, fisher, 0.0), rtol=1e-6)
    (loc, loc_root), (_, log_scale_root) = fisher_terms(trace["c"])
    assert (
        loc.shape == loc_root.shape == (6,) and not np.any(loc_root) and not np.any(log_scale_root)
    )


def test_log_joint_split_and_observation_terms(conjugate):
    guide = flat_view_of(AutoNaturalNormal(linear_regression))
    initial_params(guide, jax.random.PRNGKey(0), conjugate.X, y=conjugate.y)
    f = LogJoint(linear_regression, (conjugate.X,), {"y": conjugate.y}, guide.unpack_latent)
    z = jnp.array([0.3, 1.0, -2.0, 0.5])
    total, prior, _ = f.split(z, jax.random.PRNGKey(0))
    expected_prior = jax.scipy.stats.norm.logpdf(z, 0.0, jnp.roll(jnp.asarray(PRIOR_SD), 1)).sum()
    np.testing.assert_allclose([total, prior], [f(z), expected_prior], rtol=1e-12)

    def labels(logits, y):  # one event of n labels: n observation terms, not one
        numpyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y)

    trace = handlers.trace(labels).get_trace(jnp.zeros(7), jnp.ones(7))
    assert observation_terms(trace["y"]).shape == (7,)
    assert num_observations(linear_regression, (conjugate.X,), {"y": conjugate.y}) == 40


def test_the_empirical_fisher_is_scaled_as_the_site_is():
    """The signed pass's squared gradient is Σₙ cₙ(∇ℓₙ)² for a site of scale cₙ: c× under
    `handlers.scale(c)` (and for "ggn", where a likelihood has no Fisher form), and on a
    minibatch (c = N/B) unbiased for the whole data's. It was cₙ², 10× too large at B = N/10."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=200))
    y = jnp.asarray(2 * np.asarray(x) + rng.normal(size=200))

    def model(likelihood=dist.Normal, scale=1.0, batch=None):
        w = numpyro.sample("w", dist.Normal(0.0, 10.0))
        with numpyro.plate("n", 200, subsample_size=batch) as i, handlers.scale(scale=scale):
            numpyro.sample("y", likelihood(w * x[i], 1.0), obs=y[i])

    z = jnp.array([1.9])

    def squared(key, fisher=False, **settings):
        f = LogJoint(handlers.seed(model, key), (), settings, lambda v: {"w": v[0]})
        return jax.grad(lambda v: f.split(v, key, fisher)[2])(z)[0] ** 2

    key = jax.random.PRNGKey(0)
    for likelihood, fisher in [(dist.Normal, False), (functools.partial(dist.StudentT, 4.0), True)]:
        np.testing.assert_allclose(
            squared(key, fisher, likelihood=likelihood, scale=0.1),
            0.1 * squared(key, fisher, likelihood=likelihood),
            rtol=1e-5,
        )
    whole = float(np.sum((np.asarray(x) * (np.asarray(y) - 1.9 * np.asarray(x))) ** 2))
    keys = jax.random.split(key, 2000)
    minibatch = jax.vmap(lambda k: squared(k, batch=20))(keys)
    assert abs(float(minibatch.mean()) - whole) < 4 * float(minibatch.std()) / np.sqrt(2000)
    assert float(minibatch.mean()) < 2 * whole  # (it came out 10× the whole data's)


def test_single_draw_fit_reaches_the_mean_field_optimum(conjugate, rng_key):
    """One plain draw per step (IVON's setting): Stein's curvature, a fixed ρ, and the Polyak
    average over the settled windows land on the conjugate mean-field optimum (exact mean,
    sd = diag(Λ)^-1/2)."""
    guide = AutoNaturalNormal(linear_regression)
    args = (conjugate.X, conjugate.y)
    result = vingd.fit(
        linear_regression,
        *args,
        guide=guide,
        estimator="stein",
        num_samples=1,
        step_size=0.05,
        num_steps=3000,
        window=200,
        rng_key=rng_key,
    )
    assert result.converged and result.averaged and result.num_rejected == 0
    q = guide.quantiles(result.params, [0.5, 0.8413447460685429])
    mean, sd = conjugate.split(conjugate.mean), conjugate.split(conjugate.mean_field_sd)
    for site in ("b", "w"):
        median, upper = q[site]
        # iterate noise at ρ = 0.05 leaves ~0.1 sd in one fit (seen over seeds); a curvature off by
        # 2× would put the sd 40% off
        assert np.all(np.abs(median - mean[site]) < 0.25 * sd[site]), (site, median, mean[site])
        np.testing.assert_allclose(upper - median, sd[site], rtol=0.3)


def test_newton_step_is_saddle_free_where_the_curvature_is_indefinite():
    """A Newton solve where −E[∇²f] is positive definite; else |·| of its eigenvalues: an
    ascent direction (gᵀd > 0) with the same fixed point (d = 0 exactly where g = 0)."""
    from vingd.estimators import newton_or_saddle_free

    grad = jnp.array([1.0, -2.0, 0.5])
    pd = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    np.testing.assert_allclose(newton_or_saddle_free(pd, grad), np.linalg.solve(pd, grad))
    values, vectors = np.linalg.eigh(pd)
    indefinite = vectors @ np.diag(values * np.array([-1.0, 1.0, 1.0])) @ vectors.T
    step = newton_or_saddle_free(jnp.asarray(indefinite), grad)
    np.testing.assert_allclose(step, np.linalg.solve(pd, grad), rtol=1e-10)  # |indefinite| = pd
    assert float(grad @ step) > 0 and float(grad @ np.linalg.solve(indefinite, grad)) < 0
    np.testing.assert_array_equal(newton_or_saddle_free(jnp.asarray(indefinite), 0 * grad), 0)


def test_damped_newton_blends_newton_and_the_natural_gradient():
    """τ = 1: Newton's step; τ → 0: the natural gradient Λ⁻¹g of a mean-field q; between: the
    solve with (1 − τ) diag(Λ) + τ C, which is positive definite (a plain solve) even where a
    mildly indefinite C alone would need the saddle-free step."""
    from vingd.estimators import damped_newton

    grad = jnp.array([1.0, -2.0, 0.5])
    curvature = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    precision = jnp.array([10.0, 20.0, 5.0])
    np.testing.assert_allclose(
        damped_newton(curvature, grad, precision, 1.0), np.linalg.solve(curvature, grad), rtol=1e-6
    )
    np.testing.assert_allclose(
        damped_newton(curvature, grad, precision, 1e-6), grad / precision, rtol=1e-4
    )
    blend = 0.7 * np.diag(precision) + 0.3 * curvature
    np.testing.assert_allclose(
        damped_newton(curvature, grad, precision, 0.3), np.linalg.solve(blend, grad), rtol=1e-6
    )
    indefinite = curvature - 2.5 * jnp.eye(3)  # eigenvalues of mixed sign
    assert np.linalg.eigvalsh(indefinite).min() < 0
    blend = 0.5 * np.diag(precision) + 0.5 * indefinite
    np.testing.assert_allclose(
        damped_newton(indefinite, grad, precision, 0.5), np.linalg.solve(blend, grad), rtol=1e-5
    )


def test_batches_of_draws_average_to_one_estimate_from_all_of_them():
    """`mean_of_batches` (a settled fit's growing draws): one batch is the plain estimate, K
    batches the mean of K estimates from independent keys, the Newton terms included, so it is
    as unbiased as one batch with 1/K of its variance."""
    natural = natural_at(DIAG)
    truth = jax.grad(lambda m: expected_by_quadrature(DIAG, m))(DIAG.natural_to_mean(natural))
    truth = jax.flatten_util.ravel_pytree(truth)[0]
    estimate = functools.partial(get_estimator("hessian"), log_joint, DIAG, natural, num_samples=8)
    key = jax.random.PRNGKey(3)

    def flat(e):
        return jax.flatten_util.ravel_pytree((e.grad_mean, e.newton, e.log_joints))[0]

    one = jax.jit(lambda k, n: flat(mean_of_batches(estimate, k, n)))
    np.testing.assert_allclose(one(key, 1), flat(estimate(key)), rtol=1e-6, atol=1e-7)
    parts = np.stack([flat(estimate(_batch_key(key, k))) for k in range(4)])
    np.testing.assert_allclose(one(key, 4), parts.mean(0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(parts[0], parts[1])  # (independent batches)

    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    size = truth.size  # (grad_mean's entries first)
    single, four = (jax.lax.map(lambda k, n=n: one(k, n)[:size], keys) for n in (1, 4))
    se = four.std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(four.mean(0) - truth) < 5 * se + 1e-6), (four.mean(0), truth)
    ratio = four.var(0) / single.var(0)  # 1/4 (within ±30% at 400 keys)
    assert np.all((0.17 < ratio) & (ratio < 0.35)), ratio
