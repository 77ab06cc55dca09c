"""Exponential families in natural and mean parameters."""

from vingd.families.base import ExponentialFamily, family_of, is_natural, tree_vdot
from vingd.families.bernoulli import Bernoulli, BernoulliMean, BernoulliNatural
from vingd.families.beta import Beta, BetaMean, BetaNatural
from vingd.families.categorical import Categorical, CategoricalMean, CategoricalNatural
from vingd.families.diagonal_normal import DiagonalNormal, DiagonalNormalMean, DiagonalNormalNatural
from vingd.families.digamma import dirichlet_concentration, gamma_shape, inverse_digamma
from vingd.families.dirichlet import Dirichlet, DirichletMean, DirichletNatural
from vingd.families.gamma import Gamma, GammaMean, GammaNatural
from vingd.families.inverse_gamma import InverseGamma, InverseGammaMean, InverseGammaNatural
from vingd.families.lognormal import LogNormal, LogNormalMean, LogNormalNatural
from vingd.families.multivariate_normal import (
    MultivariateNormal,
    MultivariateNormalMean,
    MultivariateNormalNatural,
)

__all__ = [
    "Bernoulli",
    "BernoulliMean",
    "BernoulliNatural",
    "Beta",
    "BetaMean",
    "BetaNatural",
    "Categorical",
    "CategoricalMean",
    "CategoricalNatural",
    "DiagonalNormal",
    "DiagonalNormalMean",
    "DiagonalNormalNatural",
    "Dirichlet",
    "DirichletMean",
    "DirichletNatural",
    "ExponentialFamily",
    "Gamma",
    "GammaMean",
    "GammaNatural",
    "InverseGamma",
    "InverseGammaMean",
    "InverseGammaNatural",
    "LogNormal",
    "LogNormalMean",
    "LogNormalNatural",
    "MultivariateNormal",
    "MultivariateNormalMean",
    "MultivariateNormalNatural",
    "dirichlet_concentration",
    "family_of",
    "gamma_shape",
    "inverse_digamma",
    "is_natural",
    "tree_vdot",
]
