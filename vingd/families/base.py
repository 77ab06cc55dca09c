"""The exponential-family base: everything derivable from the log partition, derived once.

A family q(z|θ) = h(z) exp(⟨θ, T(z)⟩ − A(θ)) is a small stateless object; its parameters are
NamedTuples (pytrees) of arrays. Every family here has base measure h ≡ 1 (Lebesgue or
counting), with all constants kept in A, so that

    μ = ∇A(θ),   F(θ) = ∇²A(θ) = Cov_q[T],   H[q] = A(θ) − ⟨θ, μ⟩,
    KL(p‖q) = A(θ_q) − A(θ_p) − ⟨θ_q − θ_p, μ_p⟩,   ∇_μ H = −θ.

Each natural-parameter type belongs to exactly one family (`family_of`), which is how the
optimizer knows the geometry of a guide parameter without being told.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Params = Any  # a NamedTuple of arrays

_FAMILY_OF_TYPE: dict[type, ExponentialFamily] = {}


def tree_vdot(a: Params, b: Params) -> jax.Array:
    """⟨a, b⟩ summed over all leaves."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


class Stateless:
    """A family object holds no state: all instances of a class are equal (jit-static)."""

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return f"{type(self).__name__}()"


def one_parameter(params_type: type) -> type:
    """Give a parameter NamedTuple `np.shape(θ) == ()`: it is one parameter, not an array.
    numpyro's `scan` takes `np.shape` of every site's value in a guide trace it replays (param
    sites too), which for a tuple of arrays is an array conversion: it fails on fields of
    different shapes (a full-covariance θ) and on traced fields. Only `shape` is given
    (`np.ndim`, `np.size` still convert)."""
    assert "shape" not in params_type._fields, params_type  # (a field would be shadowed)
    params_type.shape = ()
    return params_type


class ExponentialFamily(Stateless, abc.ABC):
    """Base of vingd's exponential families.

    Subclasses name their parameter types (`natural_type`, `mean_type`) and implement
    `log_partition`, `sufficient_statistics`, `mean_to_natural`, `sample`, `is_valid` and
    `to_numpyro`. `natural_to_mean` and `entropy` may be overridden by closed forms (tests
    assert they equal ∇A and A − ⟨θ, μ⟩).
    """

    natural_type: ClassVar[type]
    mean_type: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None):
            _FAMILY_OF_TYPE[one_parameter(cls.natural_type)] = cls()

    # -- what a family must say ---------------------------------------------------------
    @abc.abstractmethod
    def log_partition(self, natural: Params) -> jax.Array:
        """A(θ), a scalar."""

    @abc.abstractmethod
    def sufficient_statistics(self, x: jax.Array) -> Params:
        """T(x), as a `mean_type`."""

    @abc.abstractmethod
    def mean_to_natural(self, mean: Params) -> Params:
        """θ(μ), the inverse of ∇A."""

    @abc.abstractmethod
    def sample(self, rng_key: jax.Array, natural: Params, sample_shape=()) -> jax.Array:
        """Reparameterised draws x ~ q(·|θ) of shape `sample_shape + event_shape`."""

    @abc.abstractmethod
    def is_valid(self, natural: Params) -> jax.Array:
        """True where θ lies in the natural parameter space (finite and in the open domain)."""

    @abc.abstractmethod
    def to_numpyro(self, natural: Params):
        """The equivalent `numpyro.distributions.Distribution`."""

    # -- derived once -------------------------------------------------------------------
    def natural_to_mean(self, natural: Params) -> Params:
        """μ = ∇A(θ)."""
        return self.mean_type(*jax.grad(self.log_partition)(natural))

    def log_prob(self, natural: Params, x: jax.Array) -> jax.Array:
        """log q(x|θ) = ⟨θ, T(x)⟩ − A(θ)."""
        return tree_vdot(natural, self.sufficient_statistics(x)) - self.log_partition(natural)

    def entropy(self, natural: Params) -> jax.Array:
        """H[q] = A(θ) − ⟨θ, μ⟩."""
        return self.log_partition(natural) - tree_vdot(natural, self.natural_to_mean(natural))

    def kl_divergence(self, natural_p: Params, natural_q: Params) -> jax.Array:
        """KL(p‖q) = A(θ_q) − A(θ_p) − ⟨θ_q − θ_p, μ_p⟩, the Bregman divergence of A."""
        diff = jax.tree.map(jnp.subtract, natural_q, natural_p)
        return (
            self.log_partition(natural_q)
            - self.log_partition(natural_p)
            - tree_vdot(diff, self.natural_to_mean(natural_p))
        )

    def corrected_step(self, natural: Params, direction: Params, step_size) -> Params:
        """A step along `direction` that stays in the domain where θ + ρ·direction would not.

        The base has no correction (θ + ρ·direction); Gaussians override it with the improved
        Bayesian learning rule.
        """
        return jax.tree.map(lambda t, d: t + step_size * d, natural, direction)

    def natural_gradient(self, natural: Params, grad_natural: Params) -> Params:
        """F(θ)⁻¹ ∇_θ L = ∇_μ L, as a vector–Jacobian product through θ(μ); no Fisher is formed.

        Since L(θ) = L(θ(μ)), ∇_μ L = (∂θ/∂μ)ᵀ ∇_θ L and ∂θ/∂μ = F⁻¹ (Khan & Lin 2017, §3).
        """
        _, vjp = jax.vjp(self.mean_to_natural, self.natural_to_mean(natural))
        (grad_mean,) = vjp(self.natural_type(*grad_natural))
        return self.natural_type(*grad_mean)


def family_of(natural: Any) -> ExponentialFamily | None:
    """The family whose natural-parameter type `natural` is, or None."""
    return _FAMILY_OF_TYPE.get(type(natural))


def is_natural(x: Any) -> bool:
    """Whether `x` is the natural parameter of a vingd family (a pytree leaf for the optimizer)."""
    return type(x) in _FAMILY_OF_TYPE
