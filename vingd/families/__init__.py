"""Exponential families in natural and mean parameters."""

from vingd.families.base import ExponentialFamily, family_of, is_natural, tree_vdot
from vingd.families.diagonal_normal import DiagonalNormal, DiagonalNormalMean, DiagonalNormalNatural
from vingd.families.multivariate_normal import (
    MultivariateNormal,
    MultivariateNormalMean,
    MultivariateNormalNatural,
)

__all__ = [
    "DiagonalNormal",
    "DiagonalNormalMean",
    "DiagonalNormalNatural",
    "ExponentialFamily",
    "MultivariateNormal",
    "MultivariateNormalMean",
    "MultivariateNormalNatural",
    "family_of",
    "is_natural",
    "tree_vdot",
]
