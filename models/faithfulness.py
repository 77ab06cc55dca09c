"""Is a translation faithful? A short NUTS run on the NumPyro model against reference draws.

For each scalar parameter, with the NUTS draws' effective sample size n_eff and the reference's
n_ref (its own ESS), the Monte Carlo standard error of the difference of means is

    se = sd_ref √(1/n_eff + 1/n_ref),   z = |mean_nuts − mean_ref| / se,

and that of the ratio of sds, by the delta method on the variance, is

    se_ratio = √(Var_ref[(x − m)²] / n_eff²) / (2 sd_ref²),

with n_eff² the ESS of the squared deviations. A faithful translation has every z and every
|sd_nuts / sd_ref − 1| / se_ratio below `THRESHOLD` standard errors (for a normal marginal with
n_eff ≈ 400, sds within about 20%; wider for heavy tails), and n_eff >= `MIN_ESS` for every
parameter, so that a poorly mixing chain cannot pass on wide error bars.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import MCMC, NUTS

from .posteriordb import reference_chains

THRESHOLD = 5.0
MIN_ESS = 100


class ParameterCheck(NamedTuple):
    """One scalar parameter, e.g. `theta[3]` (printed with Stan's 1-based index)."""

    name: str
    mean_ref: float
    sd_ref: float
    mean_nuts: float
    sd_nuts: float
    ess: float
    z: float  # standardised mean error, in Monte Carlo standard errors
    sd_ratio: float  # sd_nuts / sd_ref
    sd_z: float  # |sd_ratio − 1| in Monte Carlo standard errors

    @property
    def faithful(self) -> bool:
        return self.ess >= MIN_ESS and self.z < THRESHOLD and self.sd_z < THRESHOLD


class Faithfulness(NamedTuple):
    posterior: str
    checks: list[ParameterCheck]
    num_divergences: int
    seconds: float

    @property
    def faithful(self) -> bool:
        return all(c.faithful for c in self.checks)


def nuts_draws(example, rng_key, num_warmup: int, num_samples: int):
    """Draws of every sample and deterministic site from one NUTS chain, and the divergences."""
    args, kwargs = example.load()
    mcmc = MCMC(
        NUTS(example.model, dense_mass=True, target_accept_prob=0.9),
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress_bar=False,
    )
    mcmc.run(rng_key, *args, extra_fields=("diverging",), **kwargs)
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    return draws, int(np.sum(mcmc.get_extra_fields()["diverging"]))


def _ess(draws_per_chain):
    """ESS of each column of `(num_chains, num_draws, k)` draws."""
    return np.asarray(effective_sample_size(draws_per_chain))


def compare(draws: dict, reference: dict) -> list[ParameterCheck]:
    """Checks of NUTS `draws` (site -> `(num_draws, *shape)`) against reference chains
    (site -> `(num_chains, num_draws, *shape)`), for every site of the reference."""
    checks = []
    for site, ref in reference.items():
        shape = ref.shape[2:]
        ref = ref.reshape(*ref.shape[:2], -1)
        ours = draws[site].reshape(1, draws[site].shape[0], -1)
        mean_ref, sd_ref = ref.mean((0, 1)), ref.std((0, 1))
        mean_nuts, sd_nuts = ours.mean((0, 1)), ours.std((0, 1))
        ess, ess_ref = _ess(ours), _ess(ref)
        z = np.abs(mean_nuts - mean_ref) / (sd_ref * np.sqrt(1 / ess + 1 / ess_ref))
        sq_dev = (ours - mean_nuts) ** 2
        var_sq_dev_ref = ((ref - mean_ref) ** 2).var((0, 1))
        se_ratio = np.sqrt(var_sq_dev_ref / _ess(sq_dev)) / (2 * sd_ref**2)
        sd_ratio = sd_nuts / sd_ref
        for i, index in enumerate(np.ndindex(shape)):
            name = site + (f"[{','.join(str(j + 1) for j in index)}]" if index else "")
            checks.append(
                ParameterCheck(
                    name,
                    float(mean_ref[i]),
                    float(sd_ref[i]),
                    float(mean_nuts[i]),
                    float(sd_nuts[i]),
                    float(ess[i]),
                    float(z[i]),
                    float(sd_ratio[i]),
                    float(abs(sd_ratio[i] - 1) / se_ratio[i]),
                )
            )
    return checks


def check(example, *, seed: int = 0, num_warmup: int = 1000, num_samples: int = 1000):
    """`Faithfulness` of a posteriordb example: NUTS on its model against its reference."""
    start = time.perf_counter()
    draws, num_divergences = nuts_draws(example, jax.random.PRNGKey(seed), num_warmup, num_samples)
    seconds = time.perf_counter() - start
    checks = compare(draws, reference_chains(example.name))
    return Faithfulness(example.name, checks, num_divergences, seconds)
