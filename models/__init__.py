"""vingd's example models: real NumPyro models on real, bundled data.

`REGISTRY` maps a name to an `ExampleModel`: the model function, a loader returning
`(args, kwargs)` for it, and a one-line description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from models import logistic_regression


@dataclasses.dataclass(frozen=True)
class ExampleModel:
    name: str
    description: str
    model: Callable
    load: Callable[[], tuple[tuple, dict]]


REGISTRY = {
    m.name: m
    for m in [
        ExampleModel(
            "breast_cancer_logistic",
            "Logistic regression, Wisconsin diagnostic breast cancer (569 x 30, standardised)",
            logistic_regression.model,
            logistic_regression.load,
        ),
    ]
}


def get(name: str) -> ExampleModel:
    """The registered model `name`, or a `KeyError` listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}; known models: {sorted(REGISTRY)}.") from None
