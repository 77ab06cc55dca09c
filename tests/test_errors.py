"""Bad input gets a clear error naming what was wrong and what to do."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import EVERY_GUIDE, linear_regression
from numpyro.infer import SVI, Trace_ELBO

import vingd
from vingd import Method

GUIDES = pytest.mark.parametrize("guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN])


def discrete_model(y=None):
    p = numpyro.sample("p", dist.Beta(1.0, 1.0))
    numpyro.sample("coin", dist.Bernoulli(p))
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def no_latent_model(y=None):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


@GUIDES
def test_discrete_latent_is_named(guide_class):
    with pytest.raises(ValueError, match=r"Latent site 'coin' is discrete.*vingd.AutoExpFamily"):
        vingd.fit(discrete_model, 0.5, guide=guide_class(discrete_model), num_steps=1)
    svi = SVI(discrete_model, guide_class(discrete_model), vingd.NGD(0.1), Trace_ELBO())
    with pytest.raises(ValueError, match="Latent site 'coin' is discrete"):
        svi.init(jax_key(), 0.5)


def test_an_enumerated_discrete_latent_is_named_with_advice_vingd_can_follow():
    def mixture(y):
        w = numpyro.sample("w", dist.Beta(1.0, 1.0))
        with numpyro.plate("n", y.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(w), infer={"enumerate": "parallel"})
            numpyro.sample("y", dist.Normal(2.0 * z, 1.0), obs=y)

    # (it named ExpandedDistribution, and advised numpyro.contrib.funsor's enumeration)
    with pytest.raises(
        ValueError,
        match=r"'z' is discrete \(BernoulliProbs.*does not enumerate.*MixtureSameFamily",
    ):
        vingd.fit(mixture, jnp.zeros(3), guide=vingd.AutoNaturalNormal(mixture), num_steps=1)


@GUIDES
def test_model_without_latents(guide_class):
    with pytest.raises(ValueError, match="no latent sample sites"):
        vingd.fit(no_latent_model, 0.5, guide=guide_class(no_latent_model), num_steps=1)


@GUIDES
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_observations_are_named(conjugate, guide_class, bad):
    y = conjugate.y.at[3].set(bad)
    with pytest.raises(ValueError, match=r"Observed site 'y' has 1 NaN or infinite"):
        vingd.fit(
            linear_regression, conjugate.X, y, guide=guide_class(linear_regression), num_steps=1
        )


def regression_on(x, y=None):
    slope = numpyro.sample("slope", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


@pytest.mark.parametrize(
    "guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN, vingd.AutoExpFamily]
)
def test_a_nan_covariate_is_named_with_the_site_it_made_invalid(guide_class):
    # numpyro's own message, "Normal distribution got invalid loc parameter.", names neither
    x = jnp.array([1.0, jnp.nan, 2.0])
    message = r"invalid loc parameter\. At site 'y' \(Normal: loc\).*hold NaN.*: x \(1 of 3\)"
    with pytest.raises(ValueError, match=message):
        vingd.fit(regression_on, guide=guide_class(regression_on), x=x, y=jnp.ones(3))
    with pytest.raises(ValueError, match=r"At site 'y'.*: args\[0\] \(1 of 3\)"):
        SVI(regression_on, guide_class(regression_on), vingd.NGD(0.5), Trace_ELBO()).init(
            jax_key(), x, jnp.ones(3)
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be an integer >= 1"),
        ({"num_steps": 2.5}, "num_steps must be an integer >= 1"),
        ({"step_size": 0.0}, "step_size must be a number in"),
        ({"step_size": -1.0}, "step_size must be a number in"),
        ({"step_size": float("nan")}, "step_size must be a number in"),
        ({"step_size": 1.5}, "step_size must be a number in"),
        ({"step_size": True}, "step_size must be a number in"),
        ({"num_samples": 3}, "num_samples must be 1 or an even integer"),
        ({"num_samples": 1}, "num_samples=1 needs a fixed step_size"),
        ({"max_num_samples": 8}, r"multiple of num_samples \(16\) and at least as large"),
        ({"max_num_samples": 32.0}, "max_num_samples must be a multiple of num_samples"),
    ],
)
def test_invalid_fit_settings(conjugate, kwargs, message):
    guide = vingd.AutoNaturalMVN(linear_regression)
    with pytest.raises(ValueError, match=message):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=guide, **kwargs)


@pytest.mark.parametrize(
    "guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN, vingd.AutoExpFamily]
)
@pytest.mark.parametrize("max_num_samples", ["abc", 0, 24])
def test_invalid_max_num_samples_for_every_guide(conjugate, guide_class, max_num_samples):
    # (AutoExpFamily, whose draws stay fixed, once took any value silently)
    message = (
        rf"max_num_samples must be a multiple of num_samples \(16\).*got {max_num_samples!r}\."
    )
    with pytest.raises(ValueError, match=message):
        vingd.fit(
            linear_regression, conjugate.X, conjugate.y, guide=guide_class(linear_regression),
            max_num_samples=max_num_samples,
        )  # fmt: skip


@pytest.mark.parametrize("num_samples", [3, 0, True, 2.0])
def test_invalid_natural_elbo_settings(num_samples):
    with pytest.raises(ValueError, match="num_samples must be 1 or an even integer >= 2"):
        vingd.NaturalELBO(num_samples=num_samples)
    with pytest.raises(ValueError, match="estimator must be one of"):
        vingd.NaturalELBO(estimator="newton")


def test_fit_needs_a_vingd_guide(conjugate):
    from numpyro.infer.autoguide import AutoNormal

    with pytest.raises(ValueError, match=r"needs a vingd guide.*got AutoNormal"):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=AutoNormal(linear_regression))


@EVERY_GUIDE
@pytest.mark.parametrize(
    "init_scale", [0.0, float("inf"), float("nan"), "0.1", 1e-200, 1e200, 10**400]
)
def test_invalid_init_scale(guide_class, init_scale):
    # (1e-200 and 1e200 give a precision of inf and 0 in float64; AutoExpFamily took inf, and
    # extreme values gave NaN params blamed on the model)
    with pytest.raises(ValueError, match=r"init_scale must be a number between .* got"):
        guide_class(linear_regression, init_scale=init_scale)


def jax_key():
    import jax

    return jax.random.PRNGKey(0)


def test_numpy_scalars_are_numbers(conjugate):
    """NumPy and 0-d JAX scalars are accepted where Python numbers are, and so is a seed."""
    import numpy as np

    guide = vingd.AutoNaturalMVN(linear_regression)
    args = (conjugate.X, conjugate.y)
    for step_size in [np.float32(1.0), jnp.array(1.0)]:
        result = vingd.fit(
            linear_regression, *args, guide=guide, step_size=step_size, num_steps=np.int64(1),
            rng_key=3,
        )  # fmt: skip
        assert result.num_steps == 1 and result.step_sizes[0] == 1.0
    vingd.NGD(np.float32(0.1))
    mean_field = vingd.AutoNaturalNormal(linear_regression, init_scale=np.float32(0.1))
    result = vingd.fit(
        linear_regression, *args, guide=mean_field, num_samples=np.int64(4),
        momentum=np.float32(0.5), tol=np.float64(1e-3), num_steps=4, window=np.int32(2),
    )  # fmt: skip
    assert result.num_steps == 4
    assert vingd.AutoNaturalLowRankMVN(linear_regression, rank=np.int64(2)).rank == 2
    Method("vingd", "mvn", num_steps=np.int64(5), step_size=np.float32(0.5))
    Method("adam", "mvn", num_steps=np.int64(5), step_size=np.float32(0.01))


def test_evaluating_a_fit_checks_its_params_data_and_settings(conjugate):
    """`elbo`, `psis_diagnostic` and `to_datatree` used to draw silently from the guide's
    initial values given another guide's params, and to treat an observation whose data were
    left out as a latent."""
    args = (conjugate.X, conjugate.y)
    guide = vingd.AutoNaturalMVN(linear_regression)
    fit = vingd.fit(linear_regression, *args, guide=guide, num_steps=2)
    other = vingd.fit(
        linear_regression, *args, guide=vingd.AutoNaturalNormal(linear_regression), num_steps=2
    ).params
    for evaluate in (vingd.elbo, vingd.psis_diagnostic, vingd.to_datatree):
        with pytest.raises(ValueError, match=r"params lack AutoNaturalMVN's parameter"):
            evaluate(linear_regression, guide, other, *args)
        with pytest.raises(ValueError, match=r"Is \['y'\] an observation whose data"):
            evaluate(linear_regression, guide, fit.params, conjugate.X)
    for bad in (0, 1, 2.5):
        with pytest.raises(ValueError, match="num_particles must be an integer >= 2"):
            vingd.elbo(linear_regression, guide, fit.params, *args, num_particles=bad)
    for bad in ("a", 1.5):
        with pytest.raises(ValueError, match=r"rng_key must be a jax\.random key"):
            vingd.elbo(linear_regression, guide, fit.params, *args, rng_key=bad)
    seeded = vingd.elbo(linear_regression, guide, fit.params, *args, rng_key=1)
    assert seeded == vingd.elbo(linear_regression, guide, fit.params, *args)
    assert np.isfinite(
        vingd.psis_diagnostic(linear_regression, guide, fit.params, *args, rng_key=3).khat
    )


def test_guide_of_another_model_is_refused(conjugate):
    def other(X, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(a, 1.0).expand([X.shape[0]]).to_event(1), obs=y)

    with pytest.raises(ValueError, match=r"guide was built for a model with latent sites \{'a'"):
        vingd.fit(linear_regression, conjugate.X, conjugate.y, guide=vingd.AutoNaturalMVN(other))


def test_natural_elbo_refuses_a_guide_of_another_model(conjugate):
    """The guide set up for `other`, run by SVI on `linear_regression`: the log joint ignored
    the guide's latent, and the loss fell as q widened (no error, no warning)."""

    def other(X, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(a, 1.0).expand([X.shape[0]]).to_event(1), obs=y)

    guide = vingd.AutoNaturalMVN(other)
    SVI(other, guide, vingd.NGD(0.5), vingd.NaturalELBO()).init(jax_key(), conjugate.X)
    svi = SVI(linear_regression, guide, vingd.NGD(0.5), vingd.NaturalELBO())
    with pytest.raises(ValueError, match=r"guide was built for a model with latent sites \{'a'"):
        svi.run(jax_key(), 2, conjugate.X, conjugate.y, progress_bar=False)


@GUIDES
def test_params_of_other_latent_shapes_are_refused(conjugate, guide_class):
    """Params of the same guide type from data with another latent dimension failed deep in JAX
    (a ravel size mismatch, a bare AssertionError)."""
    fit = vingd.fit(
        linear_regression, conjugate.X, conjugate.y, guide=guide_class(linear_regression)
    )
    X = conjugate.X[:, :2]
    with pytest.raises(
        ValueError, match=r"has shapes \[\((3|4),\).* has \[\((2|3),\).*no init_params"
    ):
        vingd.fit(
            linear_regression, X, conjugate.y, guide=guide_class(linear_regression),
            init_params=fit.params,
        )  # fmt: skip
    with pytest.raises(ValueError, match="has shapes"):
        vingd.elbo(linear_regression, guide_class(linear_regression), fit.params, X, conjugate.y)


@pytest.mark.parametrize("schedule", [lambda t: 5.0, lambda t: 0.5 - t / 10, lambda t: jnp.nan])
def test_step_size_schedules_outside_zero_one_are_refused(conjugate, schedule):
    """A schedule's ρ_t > 1 overshot and one < 0 stepped backwards, silently or with a warning
    that blamed the model; the schedule is now evaluated ahead and the first bad step named."""
    args = (conjugate.X, conjugate.y)
    guide = vingd.AutoNaturalMVN(linear_regression)
    with pytest.raises(ValueError, match=r"schedule gives ρ = .* at step \d+"):
        vingd.fit(linear_regression, *args, guide=guide, step_size=schedule, num_steps=50)
    with pytest.raises(ValueError, match=r"schedule gives ρ"):
        vingd.NGD(schedule)
    # annealed to 0 at its end: no step there, not a wrong one
    fit = vingd.fit(
        linear_regression, *args, guide=guide, step_size=lambda t: 1 - t / 9, num_steps=10,
        tol=None,
    )  # fmt: skip
    assert fit.num_steps == 10


@GUIDES
def test_a_latent_local_to_a_subsampled_plate_is_named(guide_class):
    def local(y):
        with numpyro.plate("groups", 50, subsample_size=10):
            theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    match = r"'theta' is local to the subsampled plate 'groups' \(subsample_size=10 of 50\)"
    with pytest.raises(ValueError, match=match + ".*Drop subsample_size"):
        vingd.fit(local, jnp.zeros(50), guide=guide_class(local), num_steps=1)


def test_model_params_are_refused_by_fit(conjugate):
    def with_param(X, y=None):
        sd = numpyro.param("sd", 1.0, constraint=dist.constraints.positive)
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        numpyro.sample("y", dist.Normal(X @ w, sd), obs=y)

    with pytest.raises(ValueError, match=r"numpyro.param site 'sd'.*hold it at its initial"):
        vingd.fit(with_param, conjugate.X, conjugate.y, guide=vingd.AutoNaturalNormal(with_param))


@pytest.mark.parametrize(
    "guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN, vingd.AutoNaturalLowRankMVN]
)
def test_init_params_start_a_fresh_guide_and_must_be_its_own(conjugate, guide_class):
    args = (conjugate.X, conjugate.y)
    guide, fresh = guide_class(linear_regression), guide_class(linear_regression)
    first = vingd.fit(linear_regression, *args, guide=guide)
    again = vingd.fit(
        linear_regression, *args, guide=fresh, init_params=first.params, num_steps=1,
        step_size=1e-4,
    )  # fmt: skip
    start, end = guide.median(first.params), fresh.median(again.params)
    for site in start:
        assert jnp.allclose(start[site], end[site], rtol=1e-3, atol=1e-4), site
    other = vingd.AutoNaturalNormal
    if guide_class is vingd.AutoNaturalNormal:
        other = vingd.AutoNaturalMVN
    with pytest.raises(ValueError, match=r"init_params must be .* params, with keys"):
        vingd.fit(
            linear_regression, *args, guide=other(linear_regression), init_params=first.params
        )


def test_an_argument_neither_array_nor_hashable_is_named(conjugate):
    """vingd's programs take non-array arguments as hashable constants; a DataFrame used to
    fail deep in jax ("Non-hashable static arguments are not supported")."""

    class Table(dict):  # (unhashable, and not a pytree: like a DataFrame)
        __hash__ = None

    def regression(table, y=None):
        return linear_regression(conjugate.X, y)

    guide = vingd.AutoNaturalMVN(regression)
    with pytest.raises(ValueError, match=r"argument args\[0\] is a Table, neither an array"):
        vingd.fit(regression, Table(), conjugate.y, guide=guide, num_steps=1)


@pytest.mark.parametrize("guide_class", [vingd.AutoNaturalNormal, vingd.AutoNaturalMVN])
def test_a_support_set_by_another_latent_is_refused(guide_class):
    """The guides map a latent through the bijection of its support at set-up; a support
    computed from another latent then moves under the draws (c's sd came out 0.07 by
    sample_posterior and 0.35 by Predictive, with ELBO −inf). One computed from data is fine."""

    def shifted(y):
        lo = numpyro.sample("lo", dist.Normal(0.0, 1.0))
        c = numpyro.sample("c", dist.Uniform(lo, lo + 2.0))
        numpyro.sample("y", dist.Normal(c, 1.0), obs=y)

    def data_bounded(y):
        # (a jitted helper mixing data and a latent: only its data output bounds c)
        lo, two_mu = jax.jit(lambda data, m: (data.min(), 2 * m))(
            y, numpyro.sample("mu", dist.Normal())
        )
        c = numpyro.sample("c", dist.Uniform(lo - 1.0, 2 * jnp.max(jnp.abs(y))))
        numpyro.sample("y", dist.Normal(c + two_mu, 1.0), obs=y)

    y = jnp.array([0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match=r"Latent site\(s\) 'c' have a support that depends on"):
        vingd.fit(shifted, y, guide=guide_class(shifted), num_steps=1)
    result = vingd.fit(data_bounded, y, guide=guide_class(data_bounded), num_steps=1)
    assert np.isfinite(result.losses).all()
