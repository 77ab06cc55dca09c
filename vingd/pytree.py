"""A pytree's array leaves apart from the rest, so that compiled programs trace the arrays and
take the rest (hashable) as static settings."""

from __future__ import annotations

from collections.abc import Hashable

import jax
import numpy as np


def split_arrays(tree):
    """(array leaves, static): the static part, hashable, holds the structure and other leaves
    (`ValueError` naming a leaf that is neither an array nor hashable, e.g. a DataFrame)."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
    for (path, leaf), array in zip(
        jax.tree_util.tree_leaves_with_path(tree), is_array, strict=True
    ):
        if not array and not isinstance(leaf, Hashable | None):
            raise ValueError(
                f"The argument {_argument(path)} is a {type(leaf).__name__}, neither "
                "an array nor hashable: vingd compiles its programs with array arguments traced "
                "and the others as constants, which must be hashable. Pass arrays instead (for a "
                "DataFrame, df.to_numpy() or a dict of column arrays)."
            )
    arrays = [x for x, a in zip(leaves, is_array, strict=True) if a]
    static = (treedef, tuple(None if a else x for x, a in zip(leaves, is_array, strict=True)))
    return arrays, static


def _argument(path) -> str:
    """A leaf's path in `(args, kwargs)` as "args[0]" or "name" (other trees: the key path)."""
    keys = list(path)
    if len(keys) < 2 or getattr(keys[0], "idx", None) not in (0, 1):
        return jax.tree_util.keystr(path)
    head = f"args[{keys[1].idx}]" if keys[0].idx == 0 else f"{keys[1].key}"
    return head + jax.tree_util.keystr(tuple(keys[2:]))


def merge_arrays(arrays, static):
    """The tree `split_arrays` took apart."""
    treedef, leaves = static
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if x is None else x for x in leaves])
