"""Compiled programs kept on disk, so that a fresh process does not compile a fit again.

In a fresh process every fit compiles its step chunk (seconds on a small model, longer than
its run) and its set-up's small programs (each operation run outside a compiled program is
compiled on first use). JAX's persistent compilation cache keeps them on disk, keyed by the
program and the compiler, so the second run of a script or notebook loads them instead.
`enable_compilation_cache` turns it on for every program, the small ones too (JAX keeps
only those that took a second to compile by default). Measured in benchmarks/wall.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vingd/jax`, or `~/.cache/vingd/jax` where that is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vingd" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep every program JAX compiles from here on in the directory `path`, and load it from
    there in later processes (JAX's `jax_compilation_cache_dir`, with
    `jax_persistent_cache_min_compile_time_secs` 0). Call it before the first fit: JAX opens
    its cache on first use. `path` defaults to the directory JAX is already set to, else
    `default_cache_dir()`. JAX trusts what it loads from there: only you should be able to
    write to it. Returns the directory.
    """
    if path is None:
        path = jax.config.jax_compilation_cache_dir or default_cache_dir()
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a directory path (str or os.PathLike), got {path!r}.")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {str(path)!r} is a file, not a directory; pass a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot make the cache directory {str(path)!r}: {error}.") from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
