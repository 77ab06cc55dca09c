"""vingd: natural-gradient variational inference for NumPyro.

Guides hold natural parameters θ of exponential families; `NGD` (inside `numpyro.infer.SVI`) and
`fit` (vingd's own engine) update them by θ ← θ + ρ ∇_μ ELBO.
"""

# numpyro first, whole: after `import arviz` it is a lazy module (arviz_base's lazy_loader), and a
# first `import numpyro.distributions` into it leaves `numpyro.distributions.distribution`
# unset, which breaks `numpyro.factor` (and any constrained site) for the whole session
import numpyro  # noqa: F401

from vingd import estimators, families
from vingd.compare import Method, compare
from vingd.compilation_cache import enable_compilation_cache
from vingd.conjugate import cavi_step, conjugate_elbo, conjugate_sites, expected_naturals
from vingd.diagnostics import psis_diagnostic, to_datatree
from vingd.elbo import NaturalELBO
from vingd.expectation import ExpFamELBO
from vingd.expfam import AutoExpFamily
from vingd.guides import AutoNaturalLowRankMVN, AutoNaturalMVN, AutoNaturalNormal
from vingd.infer import FitResult, clear_cache, elbo, fit
from vingd.optim import NGD, natural_gradient

__all__ = [
    "NGD",
    "AutoExpFamily",
    "AutoNaturalLowRankMVN",
    "AutoNaturalMVN",
    "AutoNaturalNormal",
    "ExpFamELBO",
    "FitResult",
    "Method",
    "NaturalELBO",
    "cavi_step",
    "clear_cache",
    "compare",
    "conjugate_elbo",
    "conjugate_sites",
    "elbo",
    "enable_compilation_cache",
    "estimators",
    "expected_naturals",
    "families",
    "fit",
    "natural_gradient",
    "psis_diagnostic",
    "to_datatree",
]
__version__ = "0.1.0"
