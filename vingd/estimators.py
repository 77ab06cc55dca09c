"""Estimators of ∇_μ E_q[f] for Gaussian q, with f the log joint in unconstrained space.

By Bonnet's and Price's theorems, for T(z) = (z, zzᵀ) and mean m,

    ∇_{μ₁} E_q[f] = E_q[∇f] − E_q[∇²f] m,      ∇_{μ₂} E_q[f] = ½ E_q[∇²f]

(Opper & Archambeau 2009; Khan et al. 2018, eq. 5), so an estimator needs E[∇f] and a curvature
estimate E[∇²f] (the diagonal for a mean-field q). They differ in how they get the curvature:

| name      | curvature from                               | cost per draw   | quadratic f |
|-----------|----------------------------------------------|-----------------|-------------|
| "hessian" | exact Hessian (Price; mean field: ¼ of draws)| d grad. passes  | exact       |
| "hvp"     | Hutchinson v ∘ (∇²f v), Rademacher v (diag)  | 2 grad. passes  | unbiased    |
| "stein"   | Σ⁻¹(z − m)∇f(z)ᵀ, symmetrised (IVON's)       | 1 grad. pass    | unbiased    |
| "gradsq"  | −Σₙ(∇ℓₙ)² (VOGN) + Hutchinson prior (diag)   | 2 grad. passes  | emp. Fisher |
| "ggn"     | −Σₙ Fₙ(∇ηₙ)² (Fisher of the likelihood)      | 2 grad. passes  | Gauss–Newton |
| "reparam" | autodiff in μ of a reparameterised E_q[f]    | 1 grad. pass    | unbiased    |

Draws come in antithetic pairs m ± δ, so E[∇f] is exact for quadratic f, and with "hessian"
one step with ρ = 1 lands on the exact Gaussian posterior of a conjugate model.

For the low-rank-precision family (`vingd.low_rank`, SLANG) "hessian", "stein" and "gradsq"
hand over E[∇f] and the curvature in factored form (`LowRankCurvature`), never a d×d matrix
except the exact Hessian itself.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vingd.families import DiagonalNormal, MultivariateNormal
from vingd.low_rank import LowRankCurvature, LowRankNormal
from vingd.validation import is_integer


class Estimate(NamedTuple):
    """∇_μ E_q[f] in the shape of the natural parameters, and f at each of the draws used."""

    grad_mean: object  # natural-parameter NamedTuple (`LowRankCurvature` for `LowRankNormal`)
    log_joints: jax.Array  # f(z_s), shape (num_samples,)
    # (−E[∇²f], E[∇f]) where the full Hessian is known (mean field + exact Hessians)
    newton: tuple[jax.Array, jax.Array] | None = None

    @property
    def expected_log_joint(self) -> jax.Array:
        """The Monte Carlo estimate of E_q[f]."""
        return self.log_joints.mean()


def validate_num_samples(num_samples) -> None:
    """Raise `ValueError` unless `num_samples` is 1 or an even integer >= 2 (antithetic pairs)."""
    if not is_integer(num_samples) or num_samples < 1 or (num_samples > 1 and num_samples % 2):
        raise ValueError(
            f"num_samples must be 1 or an even integer >= 2 (draws come in antithetic pairs), "
            f"got {num_samples!r}."
        )


def bit_generator_key(key):
    """`key` as a key of XLA's bit generator (`impl="rbg"`, seeded as `jax.random.key(seed,
    impl="rbg")` seeds it: the threefry key twice): its bits come from `RngBitGenerator`
    (Philox), and its splits and folds are still threefry's.

    On CPU a threefry draw of a step's noise is a rolled loop that XLA compiles into a kernel of
    its own, 0.15–0.35 s each; eight schools' fit program has three (the estimator's draws and
    the ELBO check's two). Only these Gaussian draws use it: the Rademacher signs and probes of
    "ggn", "gradsq" and "hvp" stay threefry, whose small per-draw calls ran slower through it
    (the 2,049-weight BNN's step with one antithetic pair: 2.3–2.8× Adam's, against 1.8–2.0×).
    """
    data = jax.random.key_data(key)
    if data.shape[-1] == 2:  # threefry
        data = jnp.concatenate([data, data])
    elif data.shape[-1] != 4:  # (an "rbg" key already has 4 words)
        data = jax.random.bits(key, (4,), jnp.uint32)
    return jax.random.wrap_key_data(data, impl="rbg")


def antithetic_draws(rng_key, family, natural, num_samples: int):
    """`num_samples` draws from q as pairs m ± (z − m), or one plain draw for `num_samples` = 1
    (the single-sample step of VOGN and IVON); the same key gives the same noise (from XLA's
    bit generator, `bit_generator_key`)."""
    rng_key = bit_generator_key(rng_key)
    if num_samples == 1:
        return family.sample(rng_key, natural, (1,))
    loc = family.loc(natural)
    half = family.sample(rng_key, natural, (num_samples // 2,))
    return jnp.concatenate([half, 2 * loc - half])


def _diagonal(family) -> bool:
    if isinstance(family, DiagonalNormal):
        return True
    if isinstance(family, MultivariateNormal | LowRankNormal):
        return False
    raise TypeError(f"vingd's estimators need a Gaussian family, got {family!r}.")


def _bonnet_price(family, natural, grad, hess) -> object:
    """(E[∇f] − E[∇²f] m, ½ E[∇²f]) from the two expectations (diagonal or full `hess`)."""
    loc = family.loc(natural)
    if jnp.ndim(hess) == 1:
        return family.natural_type(grad - hess * loc, 0.5 * hess)
    hess = 0.5 * (hess + hess.T)
    return family.natural_type(grad - hess @ loc, 0.5 * hess)


def _hessian_pairs(num_samples: int) -> int:
    """Antithetic pairs whose Hessians give a mean-field q's curvature: a quarter of the draws,
    at least one pair; 0 (no split: every draw) below two pairs."""
    return 0 if num_samples < 4 else max(1, num_samples // 8)


def _first_pairs(z, pairs: int):
    """The first `pairs` antithetic pairs of `z` (whole pairs: exact for quadratic f)."""
    half = z.shape[0] // 2
    return jnp.concatenate([z[:pairs], z[half : half + pairs]])


#: latent dimension above which the draws' Hessians are taken one draw at a time (memory)
SEQUENTIAL_HESSIANS = 200


def price_hessian(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Exact Hessians at the draws: d forward-over-reverse passes each, O(N·d) memory for N
    observations (one draw at a time above `SEQUENTIAL_HESSIANS` latents).

    For a mean-field q, the Hessians are taken at a quarter of the draws (whole antithetic
    pairs) and the precision's gradient term at all of them: subsampled Newton (Byrd, Chin,
    Neveitt & Nocedal 2011; Roosta-Khorasani & Mahoney 2019), still unbiased for E[∇²f] and
    exact for quadratic f; a quarter, not a fixed number, so that more draws still sharpen the
    curvature. Measured on mean-field fits with 16 draws: 1.8× (logistic, d = 31) and 3×
    (diamonds, d = 26) cheaper steps, the same steps to converge. The Newton step's E[∇f] is
    taken from the other draws, so that Ĥ⁻¹ and ĝ are independent and E[Ĥ⁻¹ĝ] = 0 exactly where
    E[ĝ] = 0: from the same draws, the settled iterates averaged to a point biased from the
    optimum (eight schools: 0.18–0.22 sd in the largest mean however long the average; logistic:
    0.064, where the split draws average down to 0.024 over 16 windows; medians of 10 seeds).
    Full covariance keeps every draw: its precision is the curvature itself, and the mean error
    doubled with fewer."""
    z = antithetic_draws(rng_key, family, natural, num_samples)
    values, grads = jax.vmap(jax.value_and_grad(log_joint))(z)
    grad = grads.mean(0)
    pairs = _hessian_pairs(num_samples) if isinstance(family, DiagonalNormal) else 0
    at = _first_pairs(z, pairs) if pairs else z
    if z.shape[-1] <= SEQUENTIAL_HESSIANS:
        hess = jax.vmap(jax.hessian(log_joint))(at).mean(0)
    else:  # one draw at a time: d tangents × N observations each, not num_samples× that
        hess = jax.lax.map(jax.hessian(log_joint), at).mean(0)
    if isinstance(family, LowRankNormal):
        prior = _prior_diagonal(log_joint, family, natural, jax.random.fold_in(rng_key, 1))
        eye = jnp.eye(grad.shape[-1], dtype=grad.dtype)
        rest = 0.5 * (hess + hess.T) - jnp.diag(prior)
        return Estimate(LowRankCurvature(grad, eye, rest, prior), values)
    if not _diagonal(family):
        return Estimate(_bonnet_price(family, natural, grad, hess), values)
    diagonal = _bonnet_price(family, natural, grad, jnp.diagonal(hess))
    if num_samples == 1:
        # the inverse of one draw's Hessian is heavy-tailed, and a fixed ρ (which one draw
        # needs) has no ELBO check to decline a wild step: the plain natural-gradient step
        return Estimate(diagonal, values)
    # The full Hessian is at hand: also give the Newton step of the ELBO in the mean, whose
    # Hessian is E[∇²f] exactly, with E[∇f] from the draws not in Ĥ (whole pairs)
    if pairs:
        half = z.shape[0] // 2
        grad = jnp.concatenate([grads[pairs:half], grads[half + pairs :]]).mean(0)
    return Estimate(diagonal, values, (-0.5 * (hess + hess.T), grad))


def damped_newton(curvature, grad, precision, trust):
    """((1 − τ) diag(`precision`) + τ `curvature`)⁻¹ `grad` (saddle-free where that is not
    positive definite; `trust` τ in (0, 1]): Newton's step at τ = 1, and towards the natural
    gradient Λ⁻¹∇ of a mean-field q with precision Λ as τ → 0 (Levenberg–Marquardt damping in
    q's own metric: the mean step of full-covariance NGD, Λ' = (1 − ρ)Λ + ρ E[−∇²f], at ρ = τ)."""
    return newton_or_saddle_free((1 - trust) * jnp.diag(precision) + trust * curvature, grad)


def newton_or_saddle_free(curvature, grad):
    """`curvature`⁻¹ `grad`, or |`curvature`|⁻¹ `grad` (its eigenvalues' absolute values) where
    `curvature` is not positive definite: saddle-free Newton (Dauphin et al. 2014), an ascent
    direction with the same fixed point, E[∇f] = 0.

    Far from the optimum of a location–scale model the ELBO is not concave in the mean: with
    the residuals r mostly in the span of the design X, −E[∇²f] over (β, log σ) has
    2 rᵀr − 4 rᵀX(XᵀX)⁻¹Xᵀr < 0 in its Schur complement. The diagonal step taken there before
    crawled (posteriordb earnings, mean field: ~900 steps to 1 nat; saddle-free: 19–21).
    Eigenvalues within rounding of 0 are floored at 10·d·eps·max|λ|. NaN where `curvature` is
    not finite."""
    newton = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(curvature), True), grad)

    def saddle_free():
        values, vectors = jnp.linalg.eigh(curvature)
        size = jnp.abs(values)
        floor = 10 * grad.shape[-1] * jnp.finfo(grad.dtype).eps * size.max()
        return vectors @ ((vectors.T @ grad) / jnp.maximum(size, floor))

    return jax.lax.cond(jnp.all(jnp.isfinite(newton)), lambda: newton, saddle_free)


def hutchinson_hvp(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Diagonal curvature E[v ∘ ∇²f v] from one Hessian–vector product per draw: O(d) memory."""
    check_family("hvp", family)
    draw_key, probe_key = jax.random.split(rng_key)
    z = antithetic_draws(draw_key, family, natural, num_samples)
    probes = jax.random.rademacher(probe_key, z.shape, z.dtype)

    def one(zi, v):
        value, grad = jax.value_and_grad(log_joint)(zi)
        _, hv = jax.jvp(jax.grad(log_joint), (zi,), (v,))
        return value, grad, v * hv

    values, grads, diags = jax.vmap(one)(z, probes)
    return Estimate(_bonnet_price(family, natural, grads.mean(0), diags.mean(0)), values)


def stein(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Gradient-only curvature E[Σ⁻¹(z − m)∇f(z)ᵀ] (Stein's lemma; IVON), symmetrised."""
    z = antithetic_draws(rng_key, family, natural, num_samples)
    values, grads = jax.vmap(jax.value_and_grad(log_joint))(z)
    if isinstance(family, LowRankNormal):
        return Estimate(_stein_low_rank(log_joint, family, natural, z, grads, rng_key), values)
    loc = family.loc(natural)
    if _diagonal(family):
        whitened = (z - loc) * (-2 * natural.eta2)
        hess = (whitened * grads).mean(0)
    else:
        whitened = (z - loc) @ family.precision(natural)
        hess = whitened.T @ grads / z.shape[0]
    return Estimate(_bonnet_price(family, natural, grads.mean(0), hess), values)


def _prior_diagonal(log_joint, family, natural, rng_key) -> jax.Array:
    """c = min(0, v ∘ ∇²f_prior(m) v), Rademacher v: the prior's Hessian diagonal at the mean,
    exact for independent priors (f_prior from `LogJoint.split`).

    The low-rank family takes c out of its factored curvature and into D, as SLANG puts the
    prior there, so D' ≥ (1−ρ)D − ρc stays away from 0 even when U could hold everything. Any c
    independent of the draws keeps the curvature estimates unbiased (see `_stein_low_rank`).
    """
    loc = family.loc(natural)
    probe = jax.random.rademacher(rng_key, loc.shape, loc.dtype)
    _, hv = jax.jvp(jax.grad(lambda x: log_joint.split(x, rng_key)[1]), (loc,), (probe,))
    return jnp.minimum(probe * hv, 0)


def _stein_low_rank(log_joint, family, natural, z, grads, rng_key) -> LowRankCurvature:
    """E[∇²f] ≈ ½(AG̃ᵀ + G̃Aᵀ)/S + diag(c), factored, with A = Λ(z − m) and the control variate
    G̃ = ∇f(z) − c∘(z − m) (E[Λδ(c∘δ)ᵀ] = diag(c), so any fixed c is unbiased; c = the prior's
    diagonal removes most of the noise of a strong prior). Antithetic pairs share a direction
    (A_{s'} = −A_s), so AG̃ᵀ = Σ_pairs A_s(G̃_s − G̃_{s'})ᵀ: B has S columns, not 2S."""
    prior = _prior_diagonal(log_joint, family, natural, jax.random.fold_in(rng_key, 1))
    delta = z - family.loc(natural)
    if z.shape[0] == 1:  # a single draw: A = Λδ, G̃ = ∇f(z) − c∘δ
        columns, paired = 1, grads - prior * delta
    else:
        columns = z.shape[0] // 2
        delta = delta[:columns]
        paired = grads[:columns] - grads[columns:] - 2 * prior * delta
    basis = jnp.concatenate([family.precision_matvec(natural, delta), paired]).T
    eye, zero = jnp.eye(columns, dtype=z.dtype), jnp.zeros((columns, columns), z.dtype)
    weights = jnp.block([[zero, eye], [eye, zero]]) / (2 * z.shape[0])
    return LowRankCurvature(grads.mean(0), basis, weights, prior)


def reparam(log_joint, family, natural, rng_key, num_samples: int = 8) -> Estimate:
    """Autodiff of the reparameterised E_q[f] with respect to μ (first order; the noisiest)."""
    check_family("reparam", family)

    def expected(mean):
        z = antithetic_draws(rng_key, family, family.mean_to_natural(mean), num_samples)
        values = jax.vmap(log_joint)(z)
        return values.mean(), values

    grad, values = jax.grad(expected, has_aux=True)(family.natural_to_mean(natural))
    return Estimate(family.natural_type(*grad), values)


def squared_gradients(
    log_joint, family, natural, rng_key, num_samples: int = 8, *, fisher: bool = False
) -> Estimate:
    """Diagonal Gauss–Newton curvature −Σₙ (∇ℓₙ)² of the observations (VOGN, Vadam), plus the
    Hutchinson diagonal of the rest of f (prior and Jacobians), which is exact where that part's
    Hessian is diagonal (independent priors).

    The per-observation sum comes from one randomly signed pass (`LogJoint.split`):
    E_s[(Σₙ sₙ∇ℓₙ)²] = Σₙ (∇ℓₙ)². The curvature is never positive, so precisions stay valid
    on non-convex likelihoods (e.g. neural networks) without corrections (Khan et al. 2018).
    It equals the expected Hessian of the log likelihood only at the optimum of a well-specified
    model (Kunstner et al. 2019), so the fixed point is near, not at, the mean-field optimum.
    With `fisher` ("ggn"), likelihoods with a known Fisher contribute Σₙ Fₙ(∇ηₙ)² instead: the
    generalised Gauss–Newton, the model's own Fisher (`LogJoint.split`). `log_joint` must be a
    `vingd.log_joint.LogJoint`.
    """
    check_family("ggn" if fisher else "gradsq", family)
    if isinstance(family, LowRankNormal):
        return _squared_gradients_low_rank(log_joint, family, natural, rng_key, num_samples, fisher)
    draw_key, sign_key, probe_key = jax.random.split(rng_key, 3)
    z = antithetic_draws(draw_key, family, natural, num_samples)
    sign_keys = jax.random.split(sign_key, num_samples)
    probes = jax.random.rademacher(probe_key, z.shape, z.dtype)

    def per_draw(zi, key, v):
        def prior(x):
            return log_joint.split(x, key)[1]

        (value, _, _), pullback = jax.vjp(lambda x: log_joint.split(x, key, fisher), zi)
        one, zero = jnp.ones_like(value), jnp.zeros_like(value)
        (grad,) = pullback((one, zero, zero))
        (signed_grad,) = pullback((zero, zero, one))
        _, prior_hv = jax.jvp(jax.grad(prior), (zi,), (v,))
        return value, grad, v * prior_hv - signed_grad**2

    values, grads, diags = jax.vmap(per_draw)(z, sign_keys, probes)
    return Estimate(_bonnet_price(family, natural, grads.mean(0), diags.mean(0)), values)


def _squared_gradients_low_rank(
    log_joint, family, natural, rng_key, num_samples, fisher
) -> Estimate:
    """SLANG's curvature: the empirical Fisher −Σₙ∇ℓₙ∇ℓₙᵀ ≈ −GGᵀ/S from one randomly signed
    gradient g_s = Σₙ sₙ∇ℓₙ(z_s) per draw (E_s[g gᵀ] = Σₙ∇ℓₙ∇ℓₙᵀ), plus the prior's diagonal
    (`_prior_diagonal`). Negative semi-definite, so D' ≥ (1−ρ)D − ρc > 0 needs no halving."""
    z = antithetic_draws(rng_key, family, natural, num_samples)
    sign_keys = jax.random.split(jax.random.fold_in(rng_key, 2), num_samples)

    def per_draw(zi, key):
        (value, _, _), pullback = jax.vjp(lambda x: log_joint.split(x, key, fisher), zi)
        one, zero = jnp.ones_like(value), jnp.zeros_like(value)
        return value, pullback((one, zero, zero))[0], pullback((zero, zero, one))[0]

    values, grads, signed = jax.vmap(per_draw)(z, sign_keys)
    prior = _prior_diagonal(log_joint, family, natural, jax.random.fold_in(rng_key, 1))
    weights = -jnp.eye(num_samples, dtype=z.dtype) / num_samples
    return Estimate(LowRankCurvature(grads.mean(0), signed.T, weights, prior), values)


ESTIMATORS = {
    "hessian": price_hessian,
    "hvp": hutchinson_hvp,
    "stein": stein,
    "gradsq": squared_gradients,
    "ggn": functools.partial(squared_gradients, fisher=True),
    "reparam": reparam,
}


def default_estimator(family, dim: int, num_observations: int = 0) -> str:
    """Exact Hessians while they are cheap (full covariance: always); then O(d)-memory
    curvature: for mean-field and low rank, the Gauss–Newton of the observations ("ggn", never
    indefinite; the empirical Fisher for likelihoods without a known Fisher) when the
    likelihood has more than one observation term, else Hutchinson's diagonal ("hvp") or
    Stein's ("stein")."""
    if _diagonal(family):
        if dim <= 100:
            return "hessian"
        return "ggn" if num_observations > 1 else "hvp"
    if isinstance(family, LowRankNormal) and dim > 200:
        # never indefinite, where Stein's needs halvings in high d
        return "ggn" if num_observations > 1 else "stein"
    # full covariance at any d: Stein's curvature has rank ≤ num_samples, and in the hundreds of
    # dimensions adaptive ρ from 0.5 let its noise wreck Λ (a d = 80–260 linear regression ended
    # 30–47 sd off). The Hessian costs d passes per draw, O(N·d²) for N observations (4 s for
    # a whole fit at d = 260, N = 2,000): for larger d, low rank
    return "hessian"


_EVERY_GAUSSIAN = (DiagonalNormal, MultivariateNormal, LowRankNormal)
_DIAGONAL_CURVATURE = ((DiagonalNormal, LowRankNormal), "gives a diagonal curvature")
#: estimator -> (the families it works with, why not the others)
FAMILIES = {
    "hessian": (_EVERY_GAUSSIAN, ""),
    "hvp": ((DiagonalNormal,), "gives a diagonal curvature"),
    "stein": (_EVERY_GAUSSIAN, ""),
    "gradsq": _DIAGONAL_CURVATURE,
    "ggn": _DIAGONAL_CURVATURE,
    "reparam": ((DiagonalNormal, MultivariateNormal), "needs mean parameters"),
}
#: the guide that holds each family
GUIDE_OF = {
    DiagonalNormal: "AutoNaturalNormal",
    MultivariateNormal: "AutoNaturalMVN",
    LowRankNormal: "AutoNaturalLowRankMVN",
}


def works_with(name: str | None, family) -> bool:
    """Whether the estimator called `name` (None: the default) works with `family`."""
    return name is None or isinstance(family, FAMILIES[name][0])


def check_family(name: str, family) -> None:
    """A `ValueError` naming the guides the estimator works with, where `family` is not one."""
    _diagonal(family)  # (a TypeError for a family that is no Gaussian)
    families, why = FAMILIES[name]
    if not works_with(name, family):
        raise ValueError(
            f'The "{name}" estimator {why}, so it does not work with {GUIDE_OF[type(family)]}: '
            "use it with " + " or ".join(GUIDE_OF[f] for f in families) + "."
        )


def get_estimator(name: str, family=None):
    """The estimator called `name` (a `ValueError` listing the choices), checked against
    `family` where given (`check_family`), so that a fit fails before it compiles."""
    try:
        estimator = ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {name!r}.") from None
    if family is not None:
        check_family(name, family)
    return estimator
