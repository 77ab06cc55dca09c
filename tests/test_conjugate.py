"""Exact conjugate steps against closed forms: one-step posteriors and mean-field CAVI optima."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.special as sp
from numpyro.infer import SVI
from numpyro.infer.initialization import init_to_uniform, init_to_value

import vingd
from vingd.conjugate import default_order, expected_log_joint, means_of
from vingd.families import DiagonalNormal

NORMAL = DiagonalNormal()


def beta_bernoulli(y):
    p = numpyro.sample("p", dist.Beta(2.0, 3.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


def gamma_poisson(y):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 0.5))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Poisson(rate), obs=y)


def dirichlet_categorical(y):
    w = numpyro.sample("w", dist.Dirichlet(jnp.array([1.0, 2.0, 0.5])))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Categorical(w), obs=y)


Y_BERNOULLI = jnp.array([1.0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
Y_POISSON = jnp.array([3.0, 5, 2, 7, 4, 0, 6])
Y_CATEGORICAL = jnp.array([0, 1, 1, 2, 2, 2, 0, 2, 2])


def one_step(model, y):
    guide = vingd.AutoExpFamily(model, init_loc_fn=init_to_uniform)
    params = jax.jit(lambda p: vingd.cavi_step(model, guide, p, y))(guide.init_params(y))
    return guide, params


def test_beta_bernoulli_is_exact_in_one_step():
    guide, params = one_step(beta_bernoulli, Y_BERNOULLI)
    a, b = guide.sites["p"].family.concentrations(params["p_auto_natural"])
    heads = float(Y_BERNOULLI.sum())
    np.testing.assert_allclose([a, b], [2 + heads, 3 + len(Y_BERNOULLI) - heads], rtol=1e-10)


def test_gamma_poisson_is_exact_in_one_step():
    guide, params = one_step(gamma_poisson, Y_POISSON)
    shape, rate = guide.sites["rate"].family.shape_rate(params["rate_auto_natural"])
    np.testing.assert_allclose([shape, rate], [2 + Y_POISSON.sum(), 0.5 + 7], rtol=1e-10)


def test_dirichlet_categorical_is_exact_in_one_step():
    _, params = one_step(dirichlet_categorical, Y_CATEGORICAL)
    counts = np.bincount(np.asarray(Y_CATEGORICAL), minlength=3)
    np.testing.assert_allclose(
        params["w_auto_natural"].eta + 1, np.array([1.0, 2.0, 0.5]) + counts, rtol=1e-10
    )


def test_prior_in_the_same_family_contributes_its_natural_parameter():
    """With no data, η̄ is the prior's natural parameter exactly, from any starting point."""
    guide = vingd.AutoExpFamily(gamma_poisson, init_loc_fn=init_to_uniform)
    params = guide.init_params(Y_POISSON)
    prior_only = numpyro.handlers.block(gamma_poisson, hide=["y"])
    naturals = vingd.expected_naturals(prior_only, guide, params, Y_POISSON)
    np.testing.assert_allclose(naturals["rate"], [2.0 - 1, -0.5], rtol=1e-12)


# -- Normal with unknown mean and precision: the mean-field CAVI optimum -----------------------
MU0, LAMBDA0, A0, B0 = 1.0, 2.0, 3.0, 2.0


def normal_gamma(x):
    tau = numpyro.sample("tau", dist.Gamma(A0, B0))
    mu = numpyro.sample("mu", dist.Normal(MU0, 1 / jnp.sqrt(LAMBDA0 * tau)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1 / jnp.sqrt(tau)), obs=x)


def normal_gamma_cavi_optimum(x, sweeps=500):
    """Bishop (2006) §10.1.3: q(μ) = N(μ_N, 1/λ_N), q(τ) = Gamma(a_N, b_N), iterated to the end."""
    x = np.asarray(x)
    n = len(x)
    mu_n = (LAMBDA0 * MU0 + x.sum()) / (LAMBDA0 + n)
    a_n = A0 + (n + 1) / 2
    b_n = B0
    for _ in range(sweeps):
        lambda_n = (LAMBDA0 + n) * a_n / b_n
        second = 1 / lambda_n + mu_n**2  # E[μ²]
        squares = np.sum(x**2) - 2 * mu_n * x.sum() + n * second
        b_n = B0 + 0.5 * (squares + LAMBDA0 * (second - 2 * mu_n * MU0 + MU0**2))
    return mu_n, lambda_n, a_n, b_n


def cavi_sweeps(model, guide, params, num_sweeps, *args):
    """`num_sweeps` CAVI sweeps from `params`: the last params and the ELBO after each sweep."""
    sweep = jax.jit(lambda p: vingd.cavi_step(model, guide, p, *args))
    elbo = jax.jit(lambda p: vingd.conjugate_elbo(model, guide, p, *args))
    elbos = []
    for _ in range(num_sweeps):
        params = sweep(params)
        elbos.append(float(elbo(params)))
    return params, elbos


@pytest.fixture(scope="module")
def normal_data():
    return jnp.asarray(np.random.default_rng(1).normal(2.0, 0.7, size=25))


def test_normal_gamma_reaches_the_mean_field_cavi_optimum(normal_data):
    guide = vingd.AutoExpFamily(normal_gamma, init_loc_fn=init_to_uniform)
    params = guide.init_params(normal_data)
    params, elbos = cavi_sweeps(normal_gamma, guide, params, 40, normal_data)
    mu_n, lambda_n, a_n, b_n = normal_gamma_cavi_optimum(normal_data)
    loc, scale = NORMAL.loc_scale(params["mu_auto_natural"])
    shape, rate = guide.sites["tau"].family.shape_rate(params["tau_auto_natural"])
    np.testing.assert_allclose([loc, scale**-2, shape, rate], [mu_n, lambda_n, a_n, b_n], rtol=1e-9)
    assert np.all(np.diff(elbos) > -1e-9 * abs(elbos[-1]))  # coordinate ascent never descends
    assert vingd.conjugate_sites(normal_gamma, guide, params, normal_data) == {
        "tau": True,
        "mu": True,
    }


def test_expected_log_joint_is_the_closed_form(normal_data):
    """E_q[log p] from the atoms equals the analytic expectation for the Normal–Gamma model."""
    guide = vingd.AutoExpFamily(normal_gamma, init_loc_fn=init_to_uniform)
    params = guide.init_params(normal_data)
    params["mu_auto_natural"] = NORMAL.from_loc_scale(jnp.asarray(1.7), jnp.asarray(0.3))
    params["tau_auto_natural"] = guide.sites["tau"].family.from_shape_rate(4.0, 2.5)
    x, n = np.asarray(normal_data), len(normal_data)
    e_log_tau, e_tau = sp.digamma(4.0) - np.log(2.5), 4.0 / 2.5
    e_mu, e_mu2 = 1.7, 1.7**2 + 0.09
    log_2pi = np.log(2 * np.pi)
    prior_tau = A0 * np.log(B0) - sp.gammaln(A0) + (A0 - 1) * e_log_tau - B0 * e_tau
    prior_mu = 0.5 * (np.log(LAMBDA0) + e_log_tau - log_2pi) - 0.5 * LAMBDA0 * e_tau * (
        e_mu2 - 2 * e_mu * MU0 + MU0**2
    )
    squares = np.sum(x**2) - 2 * e_mu * x.sum() + n * e_mu2
    likelihood = 0.5 * n * (e_log_tau - log_2pi) - 0.5 * e_tau * squares
    ours = expected_log_joint(normal_gamma, guide, means_of(guide, params), normal_data)
    np.testing.assert_allclose(ours, prior_tau + prior_mu + likelihood, rtol=1e-12)


def test_non_conjugate_sites_are_detected():
    def logistic(x, y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        s = numpyro.sample("s", dist.Gamma(2.0, 2.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        numpyro.sample("z", dist.Normal(0.0, s), obs=0.3)  # Normal scale s: not Gamma-conjugate

    x = jnp.linspace(-2, 2, 8)
    y = (x > 0).astype(float)
    guide = vingd.AutoExpFamily(logistic, init_loc_fn=init_to_uniform)
    params = guide.init_params(x, y)
    assert vingd.conjugate_sites(logistic, guide, params, x, y) == {"w": False, "s": False}


# -- Gaussian mixture: categorical assignments, Dirichlet weights ------------------------------
K, SIGMA, PRIOR_SD, ALPHA0 = 3, 1.0, 10.0, 1.0


def mixture(x):
    w = numpyro.sample("w", dist.Dirichlet(jnp.full(K, ALPHA0)))
    with numpyro.plate("components", K):
        locs = numpyro.sample("locs", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(w))
        numpyro.sample("x", dist.Normal(locs[z], SIGMA), obs=x)


def mixture_cavi(x, init_locs, sweeps=200):
    """Blei, Kucukelbir & McAuliffe (2017) §3: assignments, then weights, then locations."""
    x = np.asarray(x)
    m, s2 = np.asarray(init_locs, float), np.full(K, 0.1**2)
    alpha = np.full(K, ALPHA0)
    for _ in range(sweeps):
        log_r = (
            sp.digamma(alpha)
            - sp.digamma(alpha.sum())
            - (-2 * np.outer(x, m) + (m**2 + s2)) / (2 * SIGMA**2)
        )
        r = np.exp(log_r - sp.logsumexp(log_r, axis=1, keepdims=True))
        alpha = ALPHA0 + r.sum(0)
        precision = 1 / PRIOR_SD**2 + r.sum(0) / SIGMA**2
        m, s2 = (r * x[:, None]).sum(0) / SIGMA**2 / precision, 1 / precision
    return r, alpha, m, s2


@pytest.fixture(scope="module")
def mixture_data():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-6, 1, 20), rng.normal(0, 1, 25), rng.normal(7, 1, 15)])
    return jnp.asarray(x)


INIT_LOCS = jnp.array([-3.0, 1.0, 3.0])


def test_gaussian_mixture_converges_to_the_cavi_answer(mixture_data):
    guide = vingd.AutoExpFamily(mixture, init_loc_fn=init_to_value(values={"locs": INIT_LOCS}))
    params = guide.init_params(mixture_data)
    assert default_order(guide) == ("z", "w", "locs")
    params, elbos = cavi_sweeps(mixture, guide, params, 60, mixture_data)
    r, alpha, m, s2 = mixture_cavi(mixture_data, INIT_LOCS)
    probs = jax.nn.softmax(params["z_auto_natural"].logits, -1)
    loc, scale = NORMAL.loc_scale(params["locs_auto_natural"])
    np.testing.assert_allclose(probs, r, atol=1e-8)
    np.testing.assert_allclose(params["w_auto_natural"].eta + 1, alpha, rtol=1e-8)
    np.testing.assert_allclose(loc, m, rtol=1e-8)
    np.testing.assert_allclose(scale**2, s2, rtol=1e-8)
    assert np.all(np.diff(elbos) > -1e-9 * abs(elbos[-1]))
    assert np.sort(np.asarray(loc)) == pytest.approx([-6, 0, 7], abs=0.7)  # the true centres


def test_partial_steps_stay_valid_and_converge(mixture_data):
    """ρ < 1 is a damped natural-gradient step; it reaches the same fixed point."""
    guide = vingd.AutoExpFamily(mixture, init_loc_fn=init_to_value(values={"locs": INIT_LOCS}))
    params = guide.init_params(mixture_data)
    sweep = jax.jit(lambda p: vingd.cavi_step(mixture, guide, p, mixture_data, step_size=0.5))
    for _ in range(120):
        params = sweep(params)
    _, alpha, m, _ = mixture_cavi(mixture_data, INIT_LOCS)
    np.testing.assert_allclose(params["w_auto_natural"].eta + 1, alpha, rtol=1e-6)
    np.testing.assert_allclose(NORMAL.loc_scale(params["locs_auto_natural"])[0], m, rtol=1e-6)


def test_svi_ngd_with_enumerated_assignments_reaches_the_cavi_answer(mixture_data):
    """`ExpFamELBO` sums the assignments exactly and draws the rest; the NGD iterates in SVI
    average to CAVI's fixed point within their Monte Carlo standard error (batch means)."""
    r, _, m, _ = mixture_cavi(mixture_data, INIT_LOCS)
    guide = vingd.AutoExpFamily(mixture, init_loc_fn=init_to_value(values={"locs": INIT_LOCS}))
    svi = SVI(mixture, guide, vingd.NGD(0.2), vingd.ExpFamELBO(num_particles=4))
    state = svi.init(jax.random.PRNGKey(0), mixture_data)

    def step(state, _):
        state, _ = svi.update(state, mixture_data)
        params = svi.get_params(state)
        probs = jax.nn.softmax(params["z_auto_natural"].logits, -1)
        return state, (NORMAL.loc_scale(params["locs_auto_natural"])[0], probs)

    state, (locs, probs) = jax.lax.scan(step, state, None, length=500)
    batches = np.asarray(locs[100:]).reshape(20, -1, K).mean(1)
    se = batches.std(0, ddof=1) / np.sqrt(20)
    assert np.all(np.abs(batches.mean(0) - m) < 4 * se + 1e-3), (batches.mean(0), m, se)
    assert np.max(np.abs(np.asarray(probs[100:]).mean(0) - r)) < 0.02
    assert vingd.NGD.diagnostics(state.optim_state).num_rejected == 0


def test_conjugate_sites_are_found_in_float32():
    """Five Gamma precisions, each conjugate to its Normal likelihood given the mean: in float32
    the old fixed tolerance (1e-6, below rounding) called four of them not affine, so they were
    drawn (noisier steps, and the compile grew with each drawn Gamma site)."""

    def precisions(y):
        taus = [numpyro.sample(f"tau{k}", dist.Gamma(2.0, 1.0)) for k in range(5)]
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        for k, tau in enumerate(taus):
            numpyro.sample(f"y{k}", dist.Normal(mu, 1 / jnp.sqrt(tau)), obs=y[k])

    y = jnp.ones((5, 20), jnp.float32) * jnp.arange(1, 21, dtype=jnp.float32) / 10
    guide = vingd.AutoExpFamily(precisions)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), guide.init_params(y))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert all(vingd.conjugate_sites(precisions, guide, params, y).values())
