"""AutoNaturalLowRankMVN (SLANG): Woodbury algebra, the projected step, fits, domain safety."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import linear_regression
from numpyro.infer import SVI, Predictive, Trace_ELBO
from scipy import stats

import vingd
from vingd.estimators import get_estimator
from vingd.guides import flat_view_of
from vingd.log_joint import LogJoint
from vingd.low_rank import LowRankCurvature, LowRankNormal, LowRankNormalParams

FAMILY = LowRankNormal()
ORDER = [1, 2, 3, 0]  # AutoContinuous order (w, b) from the fixture's (b, w)


def random_params(dim=7, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    return LowRankNormalParams(
        jnp.asarray(rng.normal(size=dim)),
        jnp.asarray(rng.normal(size=(dim, rank))),
        jnp.asarray(rng.uniform(0.5, 2.0, size=dim)),
    )


def dense_precision(params):
    factor = np.asarray(params.factor)
    return factor @ factor.T + np.diag(np.asarray(params.diag))


def test_woodbury_solve_log_det_density_and_marginals_match_dense_algebra():
    params = random_params()
    precision = dense_precision(params)
    cov = np.linalg.inv(precision)
    v = np.random.default_rng(1).normal(size=(2, 5, 7))
    np.testing.assert_allclose(FAMILY.solve(params, jnp.asarray(v)), v @ cov, atol=1e-12)
    np.testing.assert_allclose(FAMILY.precision_matvec(params, v), v @ precision, atol=1e-12)
    np.testing.assert_allclose(
        FAMILY.log_det_precision(params), np.linalg.slogdet(precision)[1], atol=1e-12
    )
    np.testing.assert_allclose(FAMILY.marginal_variance(params), np.diag(cov), atol=1e-12)
    exact = stats.multivariate_normal(np.asarray(params.loc), cov)
    np.testing.assert_allclose(FAMILY.log_prob(params, v), exact.logpdf(v), atol=1e-10)
    np.testing.assert_allclose(FAMILY.entropy(params), exact.entropy(), atol=1e-12)


def test_draws_have_mean_m_and_covariance_inverse_precision(rng_key):
    params = random_params()
    n = 40_000
    draws = np.asarray(FAMILY.sample(rng_key, params, (n,)))
    cov = np.linalg.inv(dense_precision(params))
    # standard errors of the sample mean and of each sample covariance entry (Gaussian draws)
    mean_se = np.sqrt(np.diag(cov) / n)
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(draws.mean(0) - params.loc) < 5 * mean_se)
    assert np.all(np.abs(np.cov(draws.T) - cov) < 5 * cov_se)


def full_update(params, hess, grad, rho):
    """The dense VON step: Λ' = (1−ρ)Λ − ρH, m' = m + ρΛ'⁻¹g."""
    precision = (1 - rho) * dense_precision(params) - rho * hess
    return precision, np.asarray(params.loc) + rho * np.linalg.solve(precision, grad)


@pytest.mark.parametrize("rank", [2, 4])
def test_projected_step_keeps_the_full_steps_diagonal_and_is_exact_when_rank_suffices(rank):
    """H = −(BBᵀ + diag c) with B of 2 columns: M = (1−ρ)UUᵀ + ρBBᵀ has rank ≤ 4."""
    rng = np.random.default_rng(2)
    params = random_params(dim=8, rank=rank, seed=3)
    params = params._replace(factor=params.factor.at[:, 2:].set(0))  # U of rank ≤ 2
    basis, prior = rng.normal(size=(8, 2)), -rng.uniform(1, 2, size=8)
    hess, grad = -(basis @ basis.T) + np.diag(prior), rng.normal(size=8)
    curvature = LowRankCurvature(
        jnp.asarray(grad), jnp.asarray(basis), -jnp.eye(2), jnp.asarray(prior)
    )
    rho = 0.7
    new, info = FAMILY.ngd_step(params, curvature, rho)
    precision, loc = full_update(params, hess, grad, rho)
    assert int(info.num_backoffs) == 0 and int(info.num_rejected) == 0
    np.testing.assert_allclose(np.diag(dense_precision(new)), np.diag(precision), atol=1e-12)
    np.testing.assert_allclose(  # the mean step uses the projected Λ'
        new.loc, params.loc + rho * np.linalg.solve(dense_precision(new), grad), atol=1e-12
    )
    if rank == 4:
        np.testing.assert_allclose(dense_precision(new), precision, atol=1e-12)
        np.testing.assert_allclose(new.loc, loc, atol=1e-12)
    else:
        assert np.abs(dense_precision(new) - precision).max() > 1e-3  # truly truncated


def test_average_keeps_the_mean_precisions_diagonal():
    states = [random_params(seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    weights = jnp.array([0.2, 0.3, 0.5])
    average = FAMILY.average(stacked, weights)
    mean_precision = sum(w * dense_precision(p) for w, p in zip(weights, states, strict=True))
    np.testing.assert_allclose(
        np.diag(dense_precision(average)), np.diag(mean_precision), atol=1e-12
    )
    np.testing.assert_allclose(average.loc, weights @ stacked.loc, atol=1e-12)
    same = FAMILY.average(jax.tree.map(lambda x: jnp.stack([x, x]), states[0]), jnp.full(2, 0.5))
    np.testing.assert_allclose(dense_precision(same), dense_precision(states[0]), atol=1e-12)


def test_one_exact_step_at_full_rank_is_the_exact_posterior(conjugate, rng_key):
    """With exact Hessians and rank = d, ρ = 1 lands on the conjugate posterior (the prior's
    diagonal goes to D, the likelihood's curvature to U)."""
    guide = vingd.AutoNaturalLowRankMVN(linear_regression, rank=4)
    args = (conjugate.X, conjugate.y)
    result = vingd.fit(
        linear_regression,
        *args,
        guide=guide,
        estimator="hessian",
        num_steps=1,
        step_size=1.0,
        rng_key=rng_key,
    )
    params = guide.flatten(result.params)
    assert result.num_backoffs == 0
    np.testing.assert_allclose(params.loc, conjugate.mean[ORDER], atol=1e-8)
    np.testing.assert_allclose(
        dense_precision(params), conjugate.precision[np.ix_(ORDER, ORDER)], rtol=1e-10
    )


def test_one_exact_step_below_full_rank_matches_the_full_steps_diagonal(conjugate, rng_key):
    guide = vingd.AutoNaturalLowRankMVN(linear_regression, rank=2)
    args = (conjugate.X, conjugate.y)
    common = dict(guide=guide, estimator="hessian", num_steps=1, step_size=0.5, rng_key=rng_key)
    init = vingd.infer.initial_params(guide, jax.random.split(rng_key)[0], *args)
    params = guide.flatten(vingd.fit(linear_regression, *args, **common).params)
    start = guide.flatten(init)
    target = 0.5 * dense_precision(start) + 0.5 * conjugate.precision[np.ix_(ORDER, ORDER)]
    np.testing.assert_allclose(np.diag(dense_precision(params)), np.diag(target), rtol=1e-10)
    assert params.factor.shape == (4, 2)


@pytest.mark.parametrize("num_samples", [1, 2])
def test_stein_curvature_is_unbiased_for_one_draw_and_for_a_pair(conjugate, num_samples):
    """E[B W Bᵀ + diag(c)] = ∇²f exactly on the conjugate (quadratic) log joint, both for one
    plain draw and for an antithetic pair (the paired form of `_stein_low_rank`)."""
    guide = flat_view_of(vingd.AutoNaturalLowRankMVN(linear_regression, rank=2))
    args = (conjugate.X, conjugate.y)
    natural = guide.flatten(vingd.infer.initial_params(guide, jax.random.PRNGKey(1), *args))
    log_joint = LogJoint(linear_regression, args, {}, guide.unpack_latent)

    def dense(key):
        curvature = get_estimator("stein")(log_joint, FAMILY, natural, key, num_samples).grad_mean
        b = curvature.basis
        return b @ curvature.weights @ b.T + jnp.diag(curvature.diag)

    draws = jax.vmap(dense)(jax.random.split(jax.random.PRNGKey(2), 4000))
    hessian = -conjugate.precision[np.ix_(ORDER, ORDER)]
    se = draws.std(0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - hessian) < 5 * se + 1e-8), (draws.mean(0), hessian)


def test_fit_with_stein_curvature_reaches_the_conjugate_posterior(conjugate, rng_key):
    guide = vingd.AutoNaturalLowRankMVN(linear_regression, rank=4)
    args = (conjugate.X, conjugate.y)
    result = vingd.fit(linear_regression, *args, guide=guide, estimator="stein", rng_key=rng_key)
    assert result.converged and result.averaged
    posterior = guide.get_posterior(result.params)
    sd = np.sqrt(np.diag(conjugate.cov))[ORDER]
    assert np.all(np.abs(posterior.mean - conjugate.mean[ORDER]) < 3 * sd)
    np.testing.assert_allclose(np.sqrt(posterior.variance), sd, rtol=0.2)
    phi = np.concatenate([np.ones((len(conjugate.y), 1)), np.asarray(conjugate.X)], 1)
    prior_cov = np.diag([4.0, 1.0, 1.0, 1.0])
    log_evidence = stats.multivariate_normal(
        np.zeros(len(conjugate.y)), phi @ prior_cov @ phi.T + 0.25 * np.eye(len(conjugate.y))
    ).logpdf(np.asarray(conjugate.y))
    value, se = vingd.elbo(linear_regression, guide, result.params, *args, num_particles=2000)
    assert log_evidence - 1 < value <= log_evidence + 3 * se


def test_default_estimator_is_exact_for_small_d_then_gauss_newton():
    assert vingd.estimators.default_estimator(FAMILY, 200, 569) == "hessian"
    assert vingd.estimators.default_estimator(FAMILY, 2049, 569) == "ggn"
    assert vingd.estimators.default_estimator(FAMILY, 2049, 1) == "stein"  # nothing to split


def logistic(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


@pytest.mark.parametrize("estimator", ["stein", "gradsq", "ggn"])
def test_fit_in_150_dimensions_is_finite_with_o_dk_parameters(estimator, rng_key):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 150)) / np.sqrt(150)
    y = (rng.uniform(size=300) < 1 / (1 + np.exp(-X @ rng.normal(size=150)))).astype(float)
    guide = vingd.AutoNaturalLowRankMVN(logistic, rank=5)
    result = vingd.fit(
        logistic, X, y, guide=guide, estimator=estimator, num_steps=30, rng_key=rng_key
    )
    params = result.params["auto_low_rank"]
    assert [x.shape for x in params] == [(150,), (150, 5), (150,)]
    assert np.all(np.isfinite(result.losses)) and result.losses[-10:].mean() < result.losses[0]
    assert bool(FAMILY.is_valid(params))
    if estimator != "stein":  # the (empirical) Fisher is PSD: D stays positive unaided
        assert result.num_backoffs == 0


def improper_convex(x=None):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    numpyro.factor("convex", 0.6 * jnp.sum(z**2))  # log joint +0.1 z²: E[−∇²f] = −0.2·I


def test_indefinite_curvature_is_halved_or_rejected_and_counted(rng_key):
    guide = vingd.AutoNaturalLowRankMVN(improper_convex, rank=2)
    common = dict(guide=guide, estimator="hessian", num_steps=3, step_size=1.0, rng_key=rng_key)
    halved = vingd.fit(improper_convex, **common)
    assert halved.num_backoffs >= 3 and halved.num_rejected == 0  # ρ = 1 would make D < 0
    assert bool(FAMILY.is_valid(guide.flatten(halved.params)))
    # with no halving allowed the precision step is refused, and only the mean moves (here,
    # from the prior median 0 where E[∇f] = 0, not at all)
    mean_only = vingd.fit(improper_convex, max_backoffs=0, **common)
    assert mean_only.num_corrected == 3 and mean_only.num_rejected == 0
    start = vingd.infer.initial_params(guide, jax.random.split(rng_key)[0])
    kept, initial = mean_only.params["auto_low_rank"], start["auto_low_rank"]
    np.testing.assert_array_equal(kept.factor, initial.factor)
    np.testing.assert_array_equal(kept.diag, initial.diag)
    np.testing.assert_allclose(kept.loc, initial.loc, atol=1e-12)


def scaled_regression(X, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ b, s), obs=y)


def test_a_precision_step_that_cannot_stay_valid_still_moves_the_mean():
    """Exact Hessians of a location–scale model are indefinite far from the optimum, and the
    projection's dropped part then takes D to its floor, where D' fails at every halving (as
    the empirical Fisher's UUᵀ outgrowing D does in float32). Refusing the whole step froze the
    mean there: a user's regression ended at ELBO −140 against full covariance's −51, reported
    converged. The mean now steps at the old precision."""
    key = jax.random.PRNGKey(0)
    X = jax.random.normal(key, (50, 3))
    y = X @ jnp.array([1.0, 2, 3]) + 0.5 * jax.random.normal(key, (50,))
    args = (X, y)
    full = vingd.AutoNaturalMVN(scaled_regression)
    reference = vingd.fit(scaled_regression, *args, guide=full, rng_key=key, progress_bar=False)
    guide = vingd.AutoNaturalLowRankMVN(scaled_regression, rank=2)
    result = vingd.fit(
        scaled_regression, *args, guide=guide, estimator="hessian", rng_key=key, progress_bar=False
    )
    elbo = vingd.elbo(scaled_regression, guide, result.params, *args)[0]
    assert elbo > vingd.elbo(scaled_regression, full, reference.params, *args)[0] - 1.0
    assert result.num_corrected > 0 and result.num_rejected == 0 and result.converged


@pytest.mark.parametrize("rank", [0, -1, 2.0, True, "3"])
def test_bad_rank_is_a_value_error_naming_it(rank):
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        vingd.AutoNaturalLowRankMVN(linear_regression, rank=rank)


def test_rank_above_the_latent_dimension_is_a_value_error(conjugate):
    guide = vingd.AutoNaturalLowRankMVN(linear_regression, rank=5)
    with pytest.raises(ValueError, match="rank must be at most the latent dimension 4"):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=guide)
    with pytest.raises(ValueError, match="momentum must be 0"):
        vingd.fit(
            linear_regression,
            conjugate.X,
            conjugate.y,
            guide=vingd.AutoNaturalLowRankMVN(linear_regression, rank=2),
            momentum=0.5,
        )


def test_posterior_helpers_predictive_and_svi(conjugate, rng_key):
    guide = vingd.AutoNaturalLowRankMVN(linear_regression, rank=2)
    args = (conjugate.X, conjugate.y)
    result = vingd.fit(linear_regression, *args, guide=guide, num_steps=5, rng_key=rng_key)
    draws = guide.sample_posterior(rng_key, result.params, sample_shape=(4000,))
    assert draws["w"].shape == (4000, 3) and draws["b"].shape == (4000,)
    q = guide.quantiles(result.params, [0.25, 0.5, 0.75])
    for name in ["w", "b"]:
        emp = np.quantile(np.asarray(draws[name]), [0.25, 0.5, 0.75], axis=0)
        assert np.all(np.abs(emp - np.asarray(q[name])) < 0.1 * (q[name][2] - q[name][0]))
        np.testing.assert_allclose(guide.median(result.params)[name], q[name][1], rtol=1e-10)
    pred = Predictive(linear_regression, guide=guide, params=result.params, num_samples=10)
    assert pred(rng_key, conjugate.X)["y"].shape == (10, len(conjugate.y))
    posterior = guide.get_posterior(result.params)  # dense matrices, as numpyro's MVN has them
    latent = np.asarray(guide.sample_posterior(rng_key, result.params, sample_shape=(20_000,))["w"])
    np.testing.assert_allclose(
        posterior.covariance_matrix @ posterior.precision_matrix, np.eye(4), atol=1e-8
    )
    np.testing.assert_allclose(  # (the flat latent is (w, b))
        np.cov(latent.T), posterior.covariance_matrix[:3, :3], rtol=0.05, atol=1e-4
    )
    with pytest.raises(ValueError, match=r"fit it with vingd\.fit"):
        SVI(linear_regression, guide, vingd.NGD(0.1), Trace_ELBO()).init(rng_key, *args)
    with pytest.raises(ValueError, match=r"NaturalELBO works with .* with vingd\.fit"):
        vingd.NaturalELBO().loss(rng_key, result.params, linear_regression, guide, *args)
