"""The natural-gradient optimizer: the identity it implements, the domain safeguard, SVI use."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import linear_regression
from numpyro.infer import SVI, Trace_ELBO

import vingd
from vingd.families import DiagonalNormal, MultivariateNormal
from vingd.optim import damped_step, natural_gradient


@pytest.mark.parametrize(
    "family", [DiagonalNormal(), MultivariateNormal()], ids=["diagonal", "full"]
)
def test_step_equals_explicit_fisher_solve(family):
    """θ' = θ − ρ F(θ)⁻¹ ∇_θ loss, F = ∇²A formed and solved explicitly (the slow way)."""
    d, rho = 3, 0.3
    rng = np.random.default_rng(0)
    if isinstance(family, DiagonalNormal):
        theta = family.from_loc_scale(jnp.asarray(rng.normal(size=d)), jnp.asarray([0.5, 1.0, 2.0]))
    else:
        a = rng.normal(size=(d, d))
        theta = family.from_loc_precision(
            jnp.asarray(rng.normal(size=d)), jnp.asarray(a @ a.T + np.eye(d))
        )
    target = (
        family.from_loc_scale(jnp.ones(d), jnp.ones(d))
        if isinstance(family, DiagonalNormal)
        else (family.from_loc_precision(jnp.ones(d), jnp.eye(d)))
    )

    def loss(t):  # any smooth loss of θ
        return family.kl_divergence(t, target) + jnp.sum(jnp.sin(family.natural_to_mean(t)[0]))

    params = {"q": theta}
    grads = jax.grad(loss)(theta)
    tx = natural_gradient(rho)
    updates, _ = tx.update({"q": grads}, tx.init(params), params)
    new = optax.apply_updates(params, updates)["q"]

    flat, unravel = jax.flatten_util.ravel_pytree(theta)
    fisher = jax.hessian(lambda v: family.log_partition(unravel(v)))(flat)
    g = jax.flatten_util.ravel_pytree(grads)[0]
    slow = flat - rho * jnp.linalg.lstsq(fisher, g)[0]  # F is singular along antisymmetric η₂
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(new)[0], slow, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "family", [DiagonalNormal(), MultivariateNormal()], ids=["diagonal", "full"]
)
def test_invalid_step_is_corrected_by_iblr_and_nan_is_rejected(family):
    d = 2
    if isinstance(family, DiagonalNormal):
        theta = family.from_loc_scale(jnp.ones(d), jnp.ones(d))
        direction = family.natural_type(jnp.zeros(d), 1.5 * jnp.ones(d))  # ΔΛ = −3
        precision = lambda t: jnp.diag(-2 * t.eta2)  # noqa: E731
    else:
        theta = family.from_loc_precision(jnp.ones(d), jnp.eye(d))
        direction = family.natural_type(jnp.zeros(d), 1.5 * jnp.eye(d))
        precision = family.precision
    # The plain step gives Λ = −2I; iBLR gives S + G + ½GS⁻¹G = I − 3I + 4.5I = 2.5I.
    new, info = damped_step(family, theta, direction, 1.0)
    assert (int(info.num_corrected), int(info.num_backoffs), int(info.num_rejected)) == (1, 0, 0)
    np.testing.assert_allclose(precision(new), 2.5 * jnp.eye(d), rtol=1e-12)
    # ĝ = direction₁ − G·m = 3·m, so m' = m + S'⁻¹ĝ = m + 3m/2.5
    loc = family.natural_to_mean(new)[0]
    np.testing.assert_allclose(loc, jnp.ones(d) * (1 + 3 / 2.5), rtol=1e-12)
    # A valid plain step is taken as it is.
    small, info = damped_step(family, theta, direction, 0.1)
    assert int(info.num_corrected) == 0
    np.testing.assert_allclose(precision(small), 0.7 * jnp.eye(d), rtol=1e-12)
    # A non-finite direction cannot be repaired: halved to the limit, then rejected (θ kept).
    nan_direction = jax.tree.map(lambda x: x.at[0].set(jnp.nan), direction)
    kept, info = damped_step(family, theta, nan_direction, 1.0, max_backoffs=3)
    assert (int(info.num_backoffs), int(info.num_rejected)) == (3, 1)
    flat = jax.flatten_util.ravel_pytree
    np.testing.assert_array_equal(flat(kept)[0], flat(theta)[0])


@pytest.mark.parametrize("guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN])
def test_svi_with_ngd_reaches_exact_posterior(conjugate, guide_class):
    """Plain numpyro SVI + Trace_ELBO + vingd.NGD: within Monte Carlo error of the exact answer."""
    guide = guide_class(linear_regression)
    svi = SVI(linear_regression, guide, vingd.NGD(0.05), Trace_ELBO(num_particles=8))
    state = svi.init(jax.random.PRNGKey(1), conjugate.X, conjugate.y)

    def step(state, _):
        state, _ = svi.update(state, conjugate.X, conjugate.y)
        q = guide.quantiles(svi.get_params(state), [0.5, 0.8413447460685429])  # median, +1 sd
        median = jnp.concatenate([q["b"][:1], q["w"][0]])
        return state, (median, jnp.concatenate([q["b"][1:] - q["b"][:1], q["w"][1] - q["w"][0]]))

    state, (means, sds) = jax.jit(lambda s: jax.lax.scan(step, s, length=1500))(state)
    means, sds = np.asarray(means[1000:]), np.asarray(sds[1000:])  # the stationary regime
    exact_sd = (
        conjugate.mean_field_sd
        if guide_class is vingd.AutoNaturalNormal
        else np.sqrt(np.diag(conjugate.cov))
    )
    # The iterates fluctuate around the optimum; their spread is the Monte Carlo error of one
    # iterate. It must be small against the posterior, and the last iterate within 4 spreads.
    spread_mean, spread_sd = means.std(0), sds.std(0)
    assert np.all(spread_mean < 0.25 * exact_sd) and np.all(spread_sd < 0.25 * exact_sd)
    assert np.all(np.abs(means[-1] - conjugate.mean) < 4 * spread_mean + 1e-3 * exact_sd)
    assert np.all(np.abs(sds[-1] - exact_sd) < 4 * spread_sd + 1e-3 * exact_sd)
    # averaged iterates are much closer than one
    assert np.all(np.abs(means.mean(0) - conjugate.mean) < 0.1 * exact_sd)
    assert np.all(np.abs(sds.mean(0) / exact_sd - 1) < 0.1)
    info = vingd.NGD.diagnostics(state.optim_state)
    assert int(info.num_rejected) == 0


def test_ngd_refuses_parameters_that_are_not_natural(conjugate):
    def model_with_param(X, y=None):
        s = numpyro.param("noise", 1.0, constraint=dist.constraints.positive)
        w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
        numpyro.sample("y", dist.Normal(X @ w, s), obs=y)

    svi = SVI(
        model_with_param, vingd.AutoNaturalNormal(model_with_param), vingd.NGD(0.1), Trace_ELBO()
    )
    with pytest.raises(ValueError, match=r"other parameters \['noise'\].*multi_transform"):
        svi.init(jax.random.PRNGKey(0), conjugate.X, conjugate.y)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_invalid_step_size(bad):
    with pytest.raises(ValueError, match="step_size must be a number in"):
        vingd.NGD(bad)


def test_natural_elbo_makes_svi_take_fits_exact_newton_step(conjugate):
    """SVI + NGD(1.0) + NaturalELBO: the curvature estimator's step, exact in one step."""
    guide = vingd.AutoNaturalMVN(linear_regression)
    svi = SVI(linear_regression, guide, vingd.NGD(1.0), vingd.NaturalELBO())
    run = svi.run(jax.random.PRNGKey(0), 1, conjugate.X, conjugate.y, progress_bar=False)
    posterior = guide.get_posterior(run.params)
    order = [1, 2, 3, 0]
    np.testing.assert_allclose(posterior.loc, conjugate.mean[order], atol=1e-6)
    np.testing.assert_allclose(
        posterior.covariance_matrix, conjugate.cov[np.ix_(order, order)], atol=1e-6
    )


def test_natural_elbo_mean_field_converges_to_mean_field_optimum(conjugate):
    guide = vingd.AutoNaturalNormal(linear_regression)
    svi = SVI(linear_regression, guide, vingd.NGD(0.5), vingd.NaturalELBO())
    run = svi.run(jax.random.PRNGKey(0), 300, conjugate.X, conjugate.y, progress_bar=False)
    q = guide.quantiles(run.params, [0.5, 0.8413447460685429])
    mean, sd = conjugate.split(conjugate.mean), conjugate.split(conjugate.mean_field_sd)
    for site in ["w", "b"]:
        np.testing.assert_allclose(q[site][0], mean[site], atol=1e-6)
        np.testing.assert_allclose(q[site][1] - q[site][0], sd[site], rtol=1e-6)
