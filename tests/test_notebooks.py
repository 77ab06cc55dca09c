"""The notebooks: committed executed, in step with `notebooks/build.py`, and they still run.

Each notebook is re-executed by `notebooks/build.py --out` in a fresh IPython kernel run by this
interpreter (so the fresh venv of `make test` needs no Jupyter set-up); any cell error, or a
cell running past `build.CELL_TIMEOUT`, fails its test. Two notebooks run at a time (kernels
spend most of their time compiling, one core each). The re-executed outputs must be of the same
kinds as the committed ones: timings and draws may differ, tables and figures may not vanish.
"""

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Seconds a whole notebook may take (each cell is also limited by `build.CELL_TIMEOUT`).
NOTEBOOK_TIMEOUT = 600


def _load_build():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
NAMES = list(build.NOTEBOOKS)


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def rich_outputs(cell) -> list[tuple[str, ...]]:
    """What a cell displays, by MIME type: tables and figures, not the text that varies."""
    return [
        tuple(sorted(output.data))
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result")
    ]


def _build(name: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(NOTEBOOKS / "build.py"), "--out", str(out), name],
        capture_output=True,
        text=True,
        timeout=NOTEBOOK_TIMEOUT,
    )


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """name -> future of (build's completed process, path of the re-executed notebook)."""
    out = tmp_path_factory.mktemp("notebooks")
    workers = max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield {name: pool.submit(_build, name, out) for name in NAMES}, out


def test_every_notebook_is_built():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_build_and_is_executed(name):
    committed = nbformat.read(build.path(name), as_version=4)
    nbformat.validate(committed)
    source = build.notebook(name)
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], f"{name}.ipynb is out of date: run `python notebooks/build.py {name}`."
    cells = code_cells(committed)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert sum(len(c.outputs) for c in cells) >= len(cells) // 2


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, fresh):
    futures, out = fresh
    run = futures[name].result()
    assert run.returncode == 0, f"{name} failed to execute:\n{run.stdout}\n{run.stderr[-5000:]}"
    committed = nbformat.read(build.path(name), as_version=4)
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    assert not [o for c in code_cells(executed) for o in c.outputs if o.output_type == "error"]
    for old, new in zip(code_cells(committed), code_cells(executed), strict=True):
        assert rich_outputs(new) == rich_outputs(old), f"{name}: cell\n{new.source}"
