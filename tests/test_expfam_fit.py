"""vingd.fit with AutoExpFamily: exact conjugate steps, CAVI optima, Monte Carlo sites against
SVI + NGD, score-function gradients with a baseline, jit hygiene and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.initialization import init_to_uniform, init_to_value
from test_conjugate import (
    INIT_LOCS,
    Y_BERNOULLI,
    Y_POISSON,
    beta_bernoulli,
    gamma_poisson,
    mixture,
    mixture_cavi,
    normal_gamma,
    normal_gamma_cavi_optimum,
)

import vingd
from vingd import families as fam
from vingd.expectation import elbo, particles, site_modes
from vingd.expfam_fit import estimators_by_site

NORMAL = fam.DiagonalNormal()
KEY = jax.random.PRNGKey(7)


def natural_of(family, seed):
    """A valid θ of `family` with three elements (categories for a categorical)."""
    rng = np.random.default_rng(seed)
    a, b = jnp.asarray(rng.uniform(0.5, 4, 3)), jnp.asarray(rng.uniform(0.5, 4, 3))
    return {
        fam.Gamma: lambda: fam.Gamma.from_shape_rate(a, b),
        fam.InverseGamma: lambda: fam.InverseGammaNatural(-a - 1, -b),
        fam.Beta: lambda: fam.BetaNatural(a - 1, b - 1),
        fam.Dirichlet: lambda: fam.DirichletNatural(a - 1),
        fam.LogNormal: lambda: fam.LogNormalNatural(a - 1, -b),
        fam.DiagonalNormal: lambda: fam.DiagonalNormalNatural(a, -b),
        fam.Bernoulli: lambda: fam.BernoulliNatural(a - 2),
        fam.Categorical: lambda: fam.CategoricalNatural(a),
    }[type(family)]()


@pytest.mark.parametrize("family", list(vingd.expfam.FAMILIES.values()), ids=repr)
def test_entropy_gradient_in_mean_parameters_is_minus_theta(family):
    """Every family has base measure h ≡ 1 in its parametrisation, so ∇_μ H = −θ and the step
    θ ← (1 − ρ)θ + ρ ∇_μ E_q[log p] is the natural-gradient step on the ELBO."""
    theta = natural_of(family, 0)
    grad = family.natural_gradient(theta, jax.grad(family.entropy)(theta))
    for g, t in zip(grad, theta, strict=True):
        if isinstance(family, fam.Categorical):  # logits: up to an additive constant
            g, t = g - g.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
        np.testing.assert_allclose(g, -t, rtol=1e-7, atol=1e-9)


def uniform_bernoulli(y):
    """A Beta(1, 1) prior written as Uniform(0, 1): its support is an `interval(0, 1)`."""
    p = numpyro.sample("p", dist.Uniform(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


# -- conjugate models: exact, in one step ---------------------------------------------------
@pytest.mark.parametrize(
    ("model", "y", "param", "exact"),
    [
        (beta_bernoulli, Y_BERNOULLI, "p_auto_natural", fam.BetaNatural(2 + 7 - 1, 3 + 3 - 1)),
        (uniform_bernoulli, Y_BERNOULLI, "p_auto_natural", fam.BetaNatural(7.0, 3.0)),
        (gamma_poisson, Y_POISSON, "rate_auto_natural", fam.GammaNatural(2 + 27 - 1, -7.5)),
    ],
)
def test_conjugate_model_is_exact_in_one_step_and_the_default_fit_ends_there(
    model, y, param, exact
):
    guide = vingd.AutoExpFamily(model, init_loc_fn=init_to_uniform)
    one = vingd.fit(model, y, guide=guide, num_steps=1, step_size=1.0)
    np.testing.assert_allclose(one.params[param], exact, rtol=1e-10)
    default = vingd.fit(model, y, guide=guide)
    assert default.converged and default.averaged and default.num_steps < 100
    assert default.step_sizes[0] == 1.0 and default.num_declined == 0
    np.testing.assert_allclose(default.params[param], exact, rtol=1e-10)
    assert one.estimator == default.estimator == "auto"


def test_normal_gamma_reaches_the_mean_field_cavi_optimum():
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 0.7, size=25))
    guide = vingd.AutoExpFamily(normal_gamma, init_loc_fn=init_to_uniform)
    assert estimators_by_site(normal_gamma, guide, guide.init_params(x), x) == {
        "tau": "exact",
        "mu": "exact",
    }
    result = vingd.fit(normal_gamma, x, guide=guide)
    assert result.converged and result.num_rejected == 0
    loc, scale = NORMAL.loc_scale(result.params["mu_auto_natural"])
    shape, rate = fam.Gamma.shape_rate(result.params["tau_auto_natural"])
    np.testing.assert_allclose(
        [loc, scale**-2, shape, rate], normal_gamma_cavi_optimum(x), rtol=1e-9
    )
    assert np.all(np.diff(result.losses[:10]) < 1e-9 * abs(result.losses[-1]))  # ascent


def test_mixture_with_enumerated_assignments_reaches_the_cavi_answer():
    rng = np.random.default_rng(0)  # three clusters, as in test_conjugate: a unique answer
    x = np.concatenate([rng.normal(-6, 1, 20), rng.normal(0, 1, 25), rng.normal(7, 1, 15)])
    x = jnp.asarray(x)
    guide = vingd.AutoExpFamily(mixture, init_loc_fn=init_to_value(values={"locs": INIT_LOCS}))
    result = vingd.fit(mixture, x, guide=guide)
    assert result.converged
    r, alpha, m, s2 = mixture_cavi(x, INIT_LOCS)
    loc, scale = NORMAL.loc_scale(result.params["locs_auto_natural"])
    probs = jax.nn.softmax(result.params["z_auto_natural"].logits, -1)
    np.testing.assert_allclose(result.params["w_auto_natural"].eta + 1, alpha, rtol=1e-6)
    np.testing.assert_allclose(loc, m, rtol=1e-6)
    np.testing.assert_allclose(scale**2, s2, rtol=1e-6)
    np.testing.assert_allclose(probs, r, atol=1e-6)


# -- Monte Carlo sites ------------------------------------------------------------------------
def normal_unknown_scale(y):
    """The location is conjugate given the scale; a Gamma *scale* (not precision) is not."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    s = numpyro.sample("s", dist.Gamma(2.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def test_non_conjugate_model_reaches_the_elbo_of_svi_ngd():
    y = jnp.asarray(np.random.default_rng(3).normal(1.0, 1.5, 12))
    guide = vingd.AutoExpFamily(normal_unknown_scale)
    assert estimators_by_site(normal_unknown_scale, guide, guide.init_params(y), y) == {
        "mu": "exact",
        "s": "draw",
    }
    result = vingd.fit(normal_unknown_scale, y, guide=guide)
    assert result.converged and result.num_rejected == 0
    svi = SVI(normal_unknown_scale, guide, vingd.NGD(0.05), Trace_ELBO(8))

    def step(state, _):
        state, _ = svi.update(state, y)
        return state, svi.get_params(state)

    _, trace = jax.lax.scan(step, svi.init(jax.random.PRNGKey(1), y), length=1000)
    theirs = jax.tree.map(lambda x: x[500:].mean(0), trace)  # Polyak average, as fit's

    @jax.jit
    def elbo_and_se(params):  # 4,000 independent draws, common to both fits
        naturals = guide.naturals(params)
        modes = site_modes(guide)
        terms = particles(normal_unknown_scale, guide, naturals, modes, KEY, 4000, (y,), {})
        entropy = sum(s.family.entropy(naturals[n]) for n, s in guide.sites.items())
        return terms.log_joints.mean() + entropy, terms.log_joints.std() / np.sqrt(4000)

    (ours, ours_se), (svi_elbo, svi_se) = elbo_and_se(result.params), elbo_and_se(theirs)
    assert abs(ours - svi_elbo) < 3 * np.hypot(ours_se, svi_se), (ours, svi_elbo, ours_se)


def test_second_fit_with_same_shapes_does_not_recompile():
    guide = vingd.AutoExpFamily(normal_unknown_scale)
    y = np.random.default_rng(4).normal(1.0, 1.5, (2, 12))
    first = vingd.fit(normal_unknown_scale, jnp.asarray(y[0]), guide=guide, num_steps=3)
    second = vingd.fit(normal_unknown_scale, jnp.asarray(y[1]), guide=guide, num_steps=3)
    assert first.compile_seconds > 0 and second.compile_seconds == 0.0
    assert second.num_steps == 3 and second.losses.shape == (3,)
    # a new guide for the same model and shapes reuses the program too (it was keyed by the
    # guide object, so each new guide compiled again: 5–20 s)
    fresh = vingd.AutoExpFamily(normal_unknown_scale)
    third = vingd.fit(normal_unknown_scale, jnp.asarray(y[1]), guide=fresh, num_steps=3)
    assert third.compile_seconds == 0.0
    np.testing.assert_array_equal(third.losses, second.losses)


def local_assignments(y):
    p = numpyro.sample("p", dist.Beta(1.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(p))
        numpyro.sample("y", dist.Normal(3.0 * z, 1.0), obs=y)


def test_a_guide_reused_on_data_with_other_latent_shapes_says_so():
    """Discrete latents included (they used to be held at their set-up values, of the old
    shape: "Incompatible shapes for broadcasting")."""
    guide = vingd.AutoExpFamily(local_assignments)
    y = jnp.asarray(np.random.default_rng(5).normal(0.0, 1.0, 10))
    result = vingd.fit(local_assignments, y[:6], guide=guide, num_steps=2)
    message = r"built for a model with latent sites \{'p': \(\), 'z': \(6,\)\}.* 'z': \(10,\)"
    with pytest.raises(ValueError, match=message):
        vingd.fit(local_assignments, y, guide=guide, num_steps=2)
    with pytest.raises(ValueError, match=message):
        vingd.elbo(local_assignments, guide, result.params, y)


# -- discrete sites too large to enumerate: score function with a baseline ---------------------
def pick(y):
    k = numpyro.sample("k", dist.Categorical(probs=jnp.array([0.2, 0.3, 0.5])))
    numpyro.sample("y", dist.Normal(k.astype(float), 0.7), obs=y)


def log_joint_of_pick(k):
    prior = dist.Categorical(probs=jnp.array([0.2, 0.3, 0.5])).log_prob(k)
    return prior + dist.Normal(k.astype(float), 0.7).log_prob(1.4)


def test_score_function_baseline_is_unbiased_and_reduces_variance():
    """∇_θ of the ELBO over 4,000 keys (4 particles each): the leave-one-out baseline keeps the
    mean on the exact gradient (from the enumerated sum) and shrinks the spread."""
    logits = jnp.array([0.3, -0.2, 0.1])
    exact_guide = vingd.AutoExpFamily(pick)
    exact_guide.init_params(1.4)
    score_guide = vingd.AutoExpFamily(pick, discrete="score")
    score_guide.init_params(1.4)

    def gradient(guide, key, baseline):
        def value(theta):
            params = {"k_auto_natural": fam.CategoricalNatural(theta)}
            return elbo(key, params, pick, guide, (1.4,), {}, 4, baseline=baseline)

        return jax.grad(value)(logits)

    exact = gradient(exact_guide, jax.random.PRNGKey(0), True)
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    spread = {}
    for baseline in (True, False):
        grads = jax.jit(jax.vmap(lambda k, b=baseline: gradient(score_guide, k, b)))(keys)
        se = grads.std(0) / np.sqrt(len(keys))
        assert np.all(np.abs(grads.mean(0) - exact) < 4 * se), (baseline, grads.mean(0), exact)
        spread[baseline] = grads.std(0)
    assert np.all(spread[True] < 0.7 * spread[False]), spread


def test_fit_with_score_function_sites_approaches_the_enumerated_answer():
    """The exact ELBO (enumerated) of the score-function fit is within 0.05 nats of the optimum,
    the log evidence (from 0.45 nats at the uniform start)."""
    enumerated = vingd.AutoExpFamily(pick)
    exact = vingd.fit(pick, 1.4, guide=enumerated)
    result = vingd.fit(pick, 1.4, guide=vingd.AutoExpFamily(pick, discrete="score"))
    assert result.num_rejected == 0 and result.estimator == "auto"
    optimum = vingd.conjugate_elbo(pick, enumerated, exact.params, 1.4)
    np.testing.assert_allclose(optimum, jax.nn.logsumexp(log_joint_of_pick(jnp.arange(3))))
    start = vingd.conjugate_elbo(pick, enumerated, enumerated.init_params(1.4), 1.4)
    assert optimum - start > 0.4
    assert optimum - vingd.conjugate_elbo(pick, enumerated, result.params, 1.4) < 0.05


# -- bad input: the same errors as for the Gaussian guides -------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"step_size": 0.0}, "step_size must be a number in"),
        ({"step_size": float("nan")}, "step_size must be a number in"),
        ({"num_samples": 3}, "num_samples must be 1 or an even integer"),
        ({"num_samples": 1}, "num_samples=1 needs a fixed step_size"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
        ({"window": 1}, "window must be an integer >= 2"),
        ({"estimator": "hessian"}, 'estimator for AutoExpFamily must be "auto"'),
    ],
)
def test_invalid_fit_settings(kwargs, message):
    guide = vingd.AutoExpFamily(beta_bernoulli)
    with pytest.raises(ValueError, match=message):
        vingd.fit(beta_bernoulli, Y_BERNOULLI, guide=guide, **kwargs)


def test_invalid_data_and_init_params_are_named():
    guide = vingd.AutoExpFamily(beta_bernoulli)
    with pytest.raises(ValueError, match=r"Observed site 'y' has 1 NaN"):
        vingd.fit(beta_bernoulli, Y_BERNOULLI.at[2].set(jnp.nan), guide=guide, num_steps=1)
    bad = {"p_auto_natural": fam.BetaNatural(jnp.asarray(-2.0), jnp.asarray(1.0))}
    with pytest.raises(ValueError, match=r"'p_auto_natural'.*site 'p'.*Beta"):
        vingd.fit(beta_bernoulli, Y_BERNOULLI, guide=guide, init_params=bad, num_steps=1)


def test_gamma_sites_are_drawn_by_one_sampler_with_each_sites_own_law():
    """The drawn Gamma factors share one sampler call (compiled once, not once per site and
    per ELBO evaluation); each site's draws still follow its own Gamma(α, β), in its shape."""

    def rates(y):
        a = numpyro.sample("a", dist.Gamma(2.0, 1.0))
        b = numpyro.sample("b", dist.Gamma(1.0, 1.0).expand([3]).to_event(1))
        numpyro.sample("y", dist.Poisson(a + b.sum()), obs=y)

    guide = vingd.AutoExpFamily(rates)
    params = guide.init_params(jnp.array(3.0))
    naturals = guide.naturals(params)
    naturals["a"] = fam.Gamma().from_shape_rate(jnp.asarray(5.0), jnp.asarray(2.0))
    naturals["b"] = fam.Gamma().from_shape_rate(jnp.array([1.0, 3.0, 9.0]), jnp.array(3.0))
    modes = dict.fromkeys(guide.sites, "draw")
    draws = vingd.expectation._grouped_draws(guide, naturals, modes, jax.random.PRNGKey(0), 4000)
    assert draws["a"].shape == (4000,) and draws["b"].shape == (4000, 3)
    for name, mean in [("a", [2.5]), ("b", [1 / 3, 1.0, 3.0])]:
        x = np.asarray(draws[name]).reshape(4000, -1)
        se = x.std(0) / np.sqrt(4000)
        assert np.all(np.abs(x.mean(0) - mean) < 5 * se), (name, x.mean(0))
