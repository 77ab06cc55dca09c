"""What an example model's `reference` returns: the posterior to judge an approximation against.

Two forms, both over the model's sample (and deterministic) sites, in constrained space:

- draws, a `dict` mapping each site name to an array of shape `(num_draws, *site_shape)`
  (posteriordb's gold-standard Stan runs);
- a `GaussianPosterior`, the exact posterior of a conjugate Gaussian model.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianPosterior:
    """The exact posterior N(mean, cov) of a model whose latent sites are all real-valued.

    `mean` maps each site to its posterior mean, in the model's site order; `cov` is the
    covariance of the sites raveled in that order (each row-major), which is how `AutoContinuous`
    guides such as `vingd.AutoNaturalMVN` lay out their flat latent vector.
    """

    mean: dict[str, np.ndarray]
    cov: np.ndarray

    def unravel(self, flat) -> dict[str, np.ndarray]:
        """A flat vector (or a batch of them, last axis flat) as a dict of sites."""
        flat = np.asarray(flat)
        out, start = {}, 0
        for name in self.mean:
            shape = np.shape(self.mean[name])
            size = int(np.prod(shape))
            out[name] = flat[..., start : start + size].reshape(flat.shape[:-1] + shape)
            start += size
        return out

    @property
    def flat_mean(self) -> np.ndarray:
        return np.concatenate([np.ravel(m) for m in self.mean.values()])

    @property
    def sd(self) -> dict[str, np.ndarray]:
        """Marginal posterior standard deviations, per site."""
        return self.unravel(np.sqrt(np.diag(self.cov)))

    def sample(self, seed: int, num_draws: int) -> dict[str, np.ndarray]:
        """`num_draws` exact posterior draws, in the draws form (site -> (num_draws, *shape))."""
        rng = np.random.default_rng(seed)
        return self.unravel(rng.multivariate_normal(self.flat_mean, self.cov, size=num_draws))
