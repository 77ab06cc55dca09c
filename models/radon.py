"""Varying-intercept model of household radon in Minnesota (Gelman & Hill 2007, ch. 12).

    y_i ~ N(a_{j[i]} + β floor_i, σ_y²),  a_j = μ_a + σ_a z_j,  z_j ~ N(0, 1),
    μ_a ~ N(0, 10²),  β ~ N(0, 10²),  σ_a ~ half-N(0, 1),  σ_y ~ half-N(0, 1),

with y_i the log radon level (pCi/L; readings of 0 set to 0.1, as Gelman & Hill do) of house i
in county j[i] (919 houses, 85 counties) and floor_i = 1 when measured on the first floor,
0 in the basement. Non-centred (a through z), the parametrisation that samples well when a
county has few houses.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DATA = Path(__file__).parent / "data" / "radon_mn.csv"


def model(county, floor, num_counties: int, log_radon=None):
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 10.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1.0))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([num_counties]).to_event(1))
    a = numpyro.deterministic("a", mu_a + sigma_a * z)
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1.0))
    mean = a[county] + beta * floor
    numpyro.sample("log_radon", dist.Normal(mean, sigma_y).to_event(1), obs=log_radon)


def load_arrays():
    """County index (919,), floor (919,), log radon (919,) and the county names (85)."""
    with DATA.open() as f:
        rows = list(csv.DictReader(f))
    counties = sorted({r["county"] for r in rows})
    county = np.array([counties.index(r["county"]) for r in rows])
    floor = np.array([float(r["floor"]) for r in rows])
    activity = np.array([float(r["activity"]) for r in rows])
    return county, floor, np.log(np.where(activity == 0.0, 0.1, activity)), counties


def load():
    """`(args, kwargs)` for `model`."""
    county, floor, log_radon, counties = load_arrays()
    dtype = jnp.result_type(float)
    args = (jnp.asarray(county), jnp.asarray(floor, dtype), len(counties))
    return (*args, jnp.asarray(log_radon, dtype)), {}
