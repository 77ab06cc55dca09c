"""A pytree's array leaves apart from the rest, so that compiled programs trace the arrays and
take the rest (hashable) as static settings."""

from __future__ import annotations

import jax
import numpy as np


def split_arrays(tree):
    """(array leaves, static): the static part, hashable, holds the structure and other leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]
    static = (treedef, tuple(None if a else x for x, a in zip(leaves, is_array, strict=True)))
    return arrays, static


def merge_arrays(arrays, static):
    """The tree `split_arrays` took apart."""
    treedef, leaves = static
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if x is None else x for x in leaves])
