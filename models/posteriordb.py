"""Reading the bundled posteriordb subset: Stan data and gold-standard reference draws.

`models/data/posteriordb/` is a copy of twelve posteriors from posteriordb (stan-dev/posteriordb,
BSD-3-Clause, see its LICENCE.md and README.md): `data/<data>.json.zip` holds the Stan data block
as one JSON object, `reference/<posterior>.json.zip` 10 chains x 1,000 draws of Stan NUTS in
the constrained parametrisation, keyed by Stan's 1-based names (`theta[1]`, `beta[2]`, ...).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent / "data" / "posteriordb"
_STAN_NAME = re.compile(r"^(?P<site>[^\[]+)(?:\[(?P<index>[\d,]+)\])?$")


def _read_json_zip(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the posteriordb subset ships in {ROOT}.")
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.namelist()
        return json.loads(archive.read(member))


def posterior_info(posterior: str) -> dict:
    """posteriordb's description of `posterior`: model and data names, parameter dimensions."""
    return json.loads((ROOT / "posteriors" / f"{posterior}.json").read_text())


def stan_data(posterior: str) -> dict:
    """The Stan data of `posterior` (a dict of the data block's names), lists as numpy arrays."""
    data = _read_json_zip(ROOT / "data" / f"{posterior_info(posterior)['data_name']}.json.zip")
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items()}


def reference_chains(posterior: str) -> dict[str, np.ndarray]:
    """Reference draws per chain: site -> array `(num_chains, num_draws, *site_shape)`.

    Stan's scalar names `theta[i]` (1-based, `[i,j]` for matrices) are gathered into one array
    per site with 0-based indices, e.g. `theta[1..8]` -> `theta[..., 0:8]`.
    """
    chains = _read_json_zip(ROOT / "reference" / f"{posterior}.json.zip")
    columns: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for name in chains[0]:
        match = _STAN_NAME.match(name)
        if match is None:
            raise ValueError(f"Unexpected parameter name {name!r} in the {posterior} reference.")
        index = match["index"]
        index = () if index is None else tuple(int(i) - 1 for i in index.split(","))
        columns.setdefault(match["site"], {})[index] = np.asarray([c[name] for c in chains])
    draws = {}
    for site, by_index in columns.items():
        shape = tuple(max(i[d] for i in by_index) + 1 for d in range(len(next(iter(by_index)))))
        num_chains, num_draws = next(iter(by_index.values())).shape
        array = np.empty((num_chains, num_draws, *shape))
        for index, column in by_index.items():
            array[(slice(None), slice(None), *index)] = column
        draws[site] = array
    return draws


def reference_draws(posterior: str) -> dict[str, np.ndarray]:
    """Reference draws with the chains concatenated: site -> `(num_draws, *site_shape)`."""
    return {site: a.reshape(-1, *a.shape[2:]) for site, a in reference_chains(posterior).items()}
