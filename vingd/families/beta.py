"""Beta on the unit interval: T(x) = (log x, log(1 − x))."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln
from numpyro.distributions import constraints

from vingd.families.base import ExponentialFamily
from vingd.families.digamma import dirichlet_concentration
from vingd.families.dirichlet import simplex_atoms
from vingd.families.quantiles import beta_icdf


class BetaNatural(NamedTuple):
    """θ = (α − 1, β − 1), elementwise."""

    eta1: jax.Array
    eta2: jax.Array


class BetaMean(NamedTuple):
    """μ = E[(log x, log(1 − x))] = (ψ(α) − ψ(α + β), ψ(β) − ψ(α + β)), elementwise."""

    mu1: jax.Array
    mu2: jax.Array


class Beta(ExponentialFamily):
    """Beta(α, β) over every element of an array: A(θ) = Σ log B(α, β).

    The two-coordinate Dirichlet: μ → θ and the moment atoms reuse `dirichlet_concentration`
    and `simplex_atoms` on (x, 1 − x). Draws are implicitly reparameterised (numpyro's Beta).
    """

    natural_type = BetaNatural
    mean_type = BetaMean
    support = constraints.unit_interval

    def log_partition(self, natural):
        a, b = self.concentrations(natural)  # log B(α, β), differentiable to full precision
        return jnp.sum(gammaln(a) + gammaln(b) - gammaln(a + b))

    def sufficient_statistics(self, x):
        return BetaMean(jnp.log(x), jnp.log1p(-x))

    def natural_to_mean(self, natural):
        a, b = self.concentrations(natural)
        total = digamma(a + b)
        return BetaMean(digamma(a) - total, digamma(b) - total)

    def mean_to_natural(self, mean):
        alpha = dirichlet_concentration(jnp.stack([mean.mu1, mean.mu2], -1))
        return BetaNatural(alpha[..., 0] - 1, alpha[..., 1] - 1)

    def sample(self, rng_key, natural, sample_shape=()):
        return self.elementwise(natural).sample(rng_key, tuple(sample_shape))

    def is_valid(self, natural):
        finite = jnp.all(jnp.isfinite(natural.eta1)) & jnp.all(jnp.isfinite(natural.eta2))
        return finite & jnp.all(natural.eta1 > -1) & jnp.all(natural.eta2 > -1)

    def to_numpyro(self, natural):
        return self.elementwise(natural).to_event(jnp.ndim(natural.eta1))

    def elementwise(self, natural):
        """numpyro's Beta with one batch element per array element."""
        return dist.Beta(*self.concentrations(natural))

    def atoms(self, mean):
        """Two equally weighted points with E[T] = μ: the first coordinate of `simplex_atoms`."""
        points = simplex_atoms(jnp.stack([mean.mu1, mean.mu2], -1))[..., 0]
        return points, jnp.full(2, 0.5, points.dtype)

    def icdf(self, natural, q):
        """Elementwise quantiles: x with P(X ≤ x) = q (bisection on the CDF, `beta_icdf`)."""
        return beta_icdf(*self.concentrations(natural), q)

    def initial(self, value, scale):
        """θ with mean `value` and Var[logit x] ≈ scale² (α + β = 1/(scale² x(1 − x)))."""
        total = 1 / (scale**2 * value * (1 - value))
        return BetaNatural(total * value - 1, total * (1 - value) - 1)

    @staticmethod
    def concentrations(natural):
        """(α, β) from θ."""
        return natural.eta1 + 1, natural.eta2 + 1
