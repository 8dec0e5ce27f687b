"""Shared test plumbing (no reference values): loading a benchmark script as a module, executing a notebook
against a recipe in a scratch folder with this interpreter's kernel, and finding a reference's rows in a store."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` imported as a module (registered, since its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"polaragg_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def execute_notebook(notebook: Path, recipe_file: Path, tmp_path: Path, monkeypatch, **env: str):
    """Run a copy of `notebook` (in tmp_path/notebooks) with POLARAGG_RECIPE = recipe_file, outputs under
    tmp_path/out, on a "python3" kernel of this interpreter; return the executed notebook."""
    import nbclient
    import nbformat
    from ipykernel import kernelspec

    work = tmp_path / "notebooks"
    work.mkdir()
    path = work / notebook.name
    shutil.copy(notebook, path)
    prefix = tmp_path / "jupyter"
    kernelspec.install(prefix=str(prefix), kernel_name="python3")
    kernel_json = prefix / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    assert sys.executable in kernel_json.read_text()
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))  # found first
    monkeypatch.setenv("POLARAGG_RECIPE", str(recipe_file))
    monkeypatch.setenv("POLARAGG_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def store_positions(ds, cycles, index):
    """(bin, cell) positions in a store's (time, cells) arrays of a reference indexed by (cycle, cell),
    bins in the order of `cycles`; every reference cell must be one of the store's."""
    import numpy as np

    ids = ds.cell_ids.values
    cyc = index.get_level_values("cycle").to_numpy()
    cells = index.get_level_values("cell").to_numpy()
    assert np.isin(cells, ids).all()
    return np.searchsorted(cycles, cyc), np.searchsorted(ids, cells)
