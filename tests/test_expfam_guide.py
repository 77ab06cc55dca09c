"""AutoExpFamily: families by support, overrides, errors, and use inside numpyro.infer.SVI."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro.distributions import constraints
from numpyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO
from numpyro.infer.initialization import init_to_uniform, init_to_value

import vingd
from vingd import families as fam
from vingd.families import DiagonalNormal

NORMAL = DiagonalNormal()


def every_support(y=None):
    """One latent per support, in plates, plus an ordered vector (no family: the fallback)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    cuts = numpyro.sample(
        "cuts",
        dist.TransformedDistribution(
            dist.Normal(0.0, 1.0).expand([2]).to_event(1), dist.transforms.OrderedTransform()
        ),
    )
    with numpyro.plate("groups", 4):
        p = numpyro.sample("p", dist.Beta(2.0, 2.0))
        on = numpyro.sample("on", dist.Bernoulli(p))
        k = numpyro.sample("k", dist.Categorical(w))
    loc = mu + cuts.sum() + on.sum() + k.sum() + p.sum()
    numpyro.sample("y", dist.Normal(loc, sigma), obs=y)


def built(model, *args, **options):
    """A set-up guide; starting points drawn uniformly (cheaper than the default prior medians)."""
    guide = vingd.AutoExpFamily(model, init_loc_fn=init_to_uniform, **options)
    guide.init_params(*args)
    return guide


def test_each_support_gets_its_family_and_the_rest_a_gaussian_once():
    with pytest.warns(UserWarning, match=r"no exponential family.*'cuts'") as record:
        guide = built(every_support, 1.0)
    assert len(record) == 1
    kinds = {name: type(site.family).__name__ for name, site in guide.sites.items()}
    assert kinds == {
        "mu": "DiagonalNormal",
        "sigma": "Gamma",
        "w": "Dirichlet",
        "cuts": "DiagonalNormal",
        "p": "Beta",
        "on": "Bernoulli",
        "k": "Categorical",
    }
    assert guide.sites["cuts"].transform is not None and guide.sites["mu"].transform is None
    params = guide.init_params(1.0)
    assert isinstance(params["sigma_auto_natural"], fam.GammaNatural)
    assert params["k_auto_natural"].logits.shape == (4, 3)
    assert params["p_auto_natural"].eta1.shape == (4,)
    draws = guide.sample_posterior(jax.random.PRNGKey(0), params, sample_shape=(7,))
    shapes = {name: value.shape for name, value in draws.items()}
    assert shapes == {
        "mu": (7,),
        "sigma": (7,),
        "w": (7, 3),
        "cuts": (7, 2),
        "p": (7, 4),
        "on": (7, 4),
        "k": (7, 4),
    }
    assert np.all(np.diff(draws["cuts"], axis=-1) > 0) and np.all(draws["sigma"] > 0)
    assert np.allclose(draws["w"].sum(-1), 1) and set(np.unique(draws["k"])) <= {0, 1, 2}


def with_deterministic(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    numpyro.deterministic("twice", 2 * mu)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_sample_posterior_gives_deterministic_sites_as_numpyros_guides_do():
    y = jnp.array([0.5, 1.2, 0.1])
    guide = vingd.AutoExpFamily(with_deterministic)
    params = guide.init_params(y)
    draws = guide.sample_posterior(jax.random.PRNGKey(0), params, y, sample_shape=(5,))
    assert set(draws) == {"mu", "twice"}  # as numpyro's AutoNormal
    np.testing.assert_allclose(draws["twice"], 2 * draws["mu"], rtol=1e-6)
    with pytest.raises(TypeError, match=r"site\(s\) 'twice'.*needs its arguments: pass them"):
        guide.sample_posterior(jax.random.PRNGKey(0), params, sample_shape=(5,))


def test_the_default_start_is_the_exact_prior_median():
    """As the Gaussian guides' (`vingd.initialization.init_to_median`): numpyro's takes the
    median of 15 prior draws (a Normal(0, 2) latent started at -1.5)."""
    guide = vingd.AutoExpFamily(with_deterministic)
    params = guide.init_params(jnp.array([0.5, 1.2, 0.1]))
    prior = vingd.initialization.prior_median(dist.Normal(0.0, 3.0))
    np.testing.assert_allclose(guide.sites["mu"].family.loc(params["mu_auto_natural"]), prior)


@pytest.mark.parametrize(
    ("support", "own", "same"),
    [
        (constraints.interval(0.0, 1.0), constraints.unit_interval, True),  # Uniform(0, 1)
        (constraints.open_interval(0.0, 1.0), constraints.unit_interval, True),
        (constraints.interval(jnp.zeros(2), jnp.ones(2)), constraints.unit_interval, True),
        (constraints.interval(0.0, 2.0), constraints.unit_interval, False),
        (constraints.greater_than(0.0), constraints.positive, True),
        (constraints.softplus_positive, constraints.positive, True),
        (constraints.nonnegative, constraints.positive, False),
        (constraints.greater_than(1.0), constraints.positive, False),
        (constraints.real, constraints.positive, False),
    ],
)
def test_a_support_is_matched_as_a_set_not_by_identity(support, own, same):
    assert vingd.expfam._same_set(support, own) is same


def test_overrides_choose_families_and_mismatches_are_refused():
    with pytest.warns(UserWarning):
        guide = built(every_support, 1.0, families={"sigma": "lognormal", "p": "normal"})
    assert isinstance(guide.sites["sigma"].family, fam.LogNormal)
    assert guide.sites["p"].transform is not None  # a Gaussian in logit space
    with pytest.raises(ValueError) as error:
        built(every_support, 1.0, families={"sigma": "beta"})
    message = str(error.value)
    assert "'beta'" in message and "'sigma'" in message and "Positive" in message
    assert "gamma" in message  # names the families that fit
    with pytest.raises(ValueError, match="Unknown family 'weibull'"):
        vingd.AutoExpFamily(every_support, families={"sigma": "weibull"})
    with pytest.raises(ValueError, match=r"\['y'\] that are not latent sample sites"):
        built(every_support, 1.0, families={"y": "normal"})


def test_discrete_support_too_large_to_enumerate_needs_the_score_option():
    def many(y):
        n = numpyro.sample("n", dist.Categorical(logits=jnp.zeros(1000)))
        numpyro.sample("y", dist.Normal(n / 100.0, 1.0), obs=y)

    with pytest.raises(ValueError) as error:
        built(many, 1.0)
    message = str(error.value)
    assert "'n'" in message and "1000 values" in message
    assert "discrete='score'" in message and "TraceGraph_ELBO" in message
    guide = built(many, 1.0, discrete="score")
    assert guide.sites["n"].init.logits.shape == (1000,)

    def unbounded(y):
        n = numpyro.sample("n", dist.Poisson(3.0))
        numpyro.sample("y", dist.Normal(n, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"'n' is discrete.*no exponential family"):
        built(unbounded, 1.0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="init_scale"):
        vingd.AutoExpFamily(every_support, init_scale=0.0)
    with pytest.raises(ValueError, match='"enumerate" or "score"'):
        vingd.AutoExpFamily(every_support, discrete="sample")
    with pytest.raises(ValueError, match=r"needs a vingd\.AutoExpFamily"):
        vingd.ExpFamELBO().loss(jax.random.PRNGKey(0), {}, every_support, lambda y: None, 1.0)


@pytest.mark.parametrize("mu, sigma", [(5.0, 2), (np.float64(5.0), np.int64(2))])
def test_init_to_value_takes_python_and_numpy_numbers(mu, sigma):
    """Not only arrays: the factors start at the values given, in the default float dtype."""

    def model():
        numpyro.sample("mu", dist.Normal(0.0, 10.0))
        numpyro.sample("sigma", dist.HalfNormal(2.0))

    init = init_to_value(values={"mu": mu, "sigma": sigma})
    params = vingd.AutoExpFamily(model, init_loc_fn=init).init_params()
    loc, _ = NORMAL.loc_scale(params["mu_auto_natural"])
    mean = fam.Gamma().natural_to_mean(params["sigma_auto_natural"]).mu2
    np.testing.assert_allclose([loc, mean], [5.0, 2.0], rtol=1e-12)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.result_type(float)}


# -- SVI with NGD ---------------------------------------------------------------------------
def beta_bernoulli(y):
    p = numpyro.sample("p", dist.Beta(2.0, 3.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


Y = jnp.array([1.0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
EXACT = np.array([2 + 7, 3 + 3])  # Beta(α, β) posterior


def svi_trace(model, guide, loss, step_size, num_steps, *args, record):
    """Run SVI + NGD under lax.scan, recording `record(params)` at every step."""
    svi = SVI(model, guide, vingd.NGD(step_size), loss)
    state = svi.init(jax.random.PRNGKey(0), *args)

    def body(state, _):
        state, loss_value = svi.update(state, *args)
        return state, (record(svi.get_params(state)), loss_value)

    state, (trace, losses) = jax.lax.scan(body, state, None, length=num_steps)
    return state, trace, losses


def batch_means(x, num_batches=20):
    """Mean and standard error of an autocorrelated trace, from the means of its batches."""
    batches = np.asarray(x)[: len(x) // num_batches * num_batches]
    means = batches.reshape(num_batches, -1, *batches.shape[1:]).mean(1)
    return means.mean(0), means.std(0, ddof=1) / np.sqrt(num_batches)


def test_svi_ngd_reaches_the_exact_beta_bernoulli_posterior():
    """The NGD iterates of θ = (α − 1, β − 1) average to the exact posterior's, within their
    Monte Carlo standard error (the stationary mean of θ ← (1−ρ)θ + ρ ĝ with E ĝ = θ* is θ*)."""
    guide = vingd.AutoExpFamily(beta_bernoulli)
    _, trace, losses = svi_trace(
        beta_bernoulli,
        guide,
        Trace_ELBO(num_particles=8),
        0.1,
        1500,
        Y,
        record=lambda p: jnp.stack(fam.Beta.concentrations(p["p_auto_natural"])),
    )
    mean, se = batch_means(trace[300:])
    assert np.all(np.abs(mean - EXACT) < 4 * se), (mean, se)
    assert np.all(se < 0.05 * EXACT)  # and the tolerance is a tight one
    assert np.all(np.isfinite(losses))


def test_predictive_posterior_draws_and_quantiles_agree():
    guide = vingd.AutoExpFamily(beta_bernoulli)
    params = {"p_auto_natural": fam.BetaNatural(jnp.asarray(8.0), jnp.asarray(5.0))}
    guide.init_params(Y)
    predictive = Predictive(
        beta_bernoulli, guide=guide, params=params, num_samples=50, return_sites=["p", "y"]
    )
    pred = predictive(jax.random.PRNGKey(1), Y)
    assert pred["y"].shape == (50, 10) and pred["p"].shape == (50,)
    draws = guide.sample_posterior(jax.random.PRNGKey(2), params, sample_shape=(20_000,))["p"]
    levels = [0.1, 0.5, 0.9]
    quantiles = guide.quantiles(params, levels)["p"]
    exact = [0.4368923055599, 0.6045567443921, 0.7568430305803]  # scipy.stats.beta(9, 6).ppf
    np.testing.assert_allclose(quantiles, exact, rtol=1e-11)
    np.testing.assert_allclose(np.quantile(draws, levels), exact, atol=0.01)
    np.testing.assert_allclose(guide.median(params)["p"], quantiles[1], rtol=1e-12)


def plated(x, y=None):
    """Positive, unit-interval and simplex latents, local ones in a plate."""
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    with numpyro.plate("groups", x.shape[0]):
        theta = numpyro.sample("theta", dist.Beta(2.0 * tau, 2.0))
        numpyro.sample("y", dist.Binomial(10, theta * w[0] + 0.1), obs=y)


def test_median_and_quantiles_in_plates_are_the_exact_marginal_quantiles():
    x = jnp.arange(5.0)
    guide = built(plated, x, jnp.array([3, 4, 5, 2, 1]))
    params = guide.init_params(x, None)
    params["tau_auto_natural"] = fam.Gamma.from_shape_rate(3.0, 2.0)
    params["theta_auto_natural"] = fam.BetaNatural(jnp.arange(5.0), jnp.full(5, 2.0))
    params["w_auto_natural"] = fam.DirichletNatural(jnp.array([0.5, 2.0, 5.0]))
    levels = np.array([0.05, 0.5, 0.95])
    quantiles = guide.quantiles(params, levels)
    alpha = np.array([1.5, 3.0, 6.0])  # Dirichlet marginals: Beta(α_k, α₀ − α_k)
    exact = {
        "tau": scipy.stats.gamma(3.0, scale=0.5).ppf(levels),
        "theta": scipy.stats.beta(np.arange(1.0, 6.0), 3.0).ppf(levels[:, None]),
        "w": scipy.stats.beta(alpha, alpha.sum() - alpha).ppf(levels[:, None]),
    }
    for name, value in exact.items():
        np.testing.assert_allclose(quantiles[name], value, rtol=1e-10)
    median = guide.median(params)
    np.testing.assert_allclose(median["tau"], exact["tau"][1], rtol=1e-10)
    np.testing.assert_allclose(median["theta"], exact["theta"][1], rtol=1e-10)
    np.testing.assert_allclose(median["w"], alpha / alpha.sum())  # a Dirichlet's point: its mean


def mixture(x):
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    with numpyro.plate("components", 3):
        locs = numpyro.sample("locs", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(w))
        numpyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


@pytest.mark.slow
def test_score_function_option_runs_with_tracegraph_elbo():
    x = jnp.asarray(np.random.default_rng(0).normal([-6.0, 0.0, 7.0], 1.0, (20, 3)).ravel())
    init = init_to_value(values={"locs": jnp.array([-3.0, 1.0, 3.0])})
    guide = vingd.AutoExpFamily(mixture, init_loc_fn=init, discrete="score")
    _, _, losses = svi_trace(
        mixture,
        guide,
        TraceGraph_ELBO(num_particles=4),
        0.02,
        300,
        x,
        record=lambda p: p["locs_auto_natural"].eta1,
    )
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-50:]) < np.mean(losses[:50])


def test_expfam_elbo_estimates_the_same_elbo_as_trace_elbo():
    """Same expectation, lower variance: the discrete site summed exactly, the Jacobian of a
    Gaussian in unconstrained space included."""

    def model(y):
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        on = numpyro.sample("on", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(on, s), obs=y)

    guide = built(model, 0.7, families={"s": "normal"})
    params = guide.init_params(0.7)
    params["s_auto_natural"] = NORMAL.from_loc_scale(jnp.asarray(0.2), jnp.asarray(0.4))
    params["on_auto_natural"] = fam.BernoulliNatural(jnp.asarray(0.8))
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    ours = jax.vmap(lambda k: vingd.ExpFamELBO().loss(k, params, model, guide, 0.7))(keys)
    theirs = jax.vmap(lambda k: Trace_ELBO().loss(k, params, model, guide, 0.7))(keys)
    se = np.hypot(ours.std(), theirs.std()) / np.sqrt(len(keys))
    assert abs(ours.mean() - theirs.mean()) < 4 * se
    assert ours.std() < theirs.std()
