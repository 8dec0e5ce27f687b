"""Shared test plumbing (no reference values): loading a benchmark script as a module, executing a notebook
against a recipe in a scratch folder with this interpreter's kernel, finding a reference's rows in a store,
and leaving what a killed client leaves next to a store."""

from __future__ import annotations

import importlib.util
import os
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


def one_pass_requests(records: list[dict], reader: str, puts_per_task: int) -> tuple[float, float]:
    """(GET-class, PUT-class) S3 requests of a run by docs/cost.md's request model, evaluated here on
    ledger records as plain dicts with the measured figures read as JSON: each granule the records report,
    with its rows; each task's segments (its granules read when not recorded) and reported records; the
    client's requests. Records that report no granule count each task's granules as read by the task itself,
    with 0 rows and no partition segments."""
    import json

    import polaragg

    figures = json.loads((Path(polaragg.__file__).parent / "data" / "onepass_measured.json").read_text())
    f = figures["readers"][reader]
    g, c, k = f["granule_stage"], f["cell_stage"], f["client"]
    reports = [x for r in records for x in r.get("granule_reports", [])]
    rows = [float(x["rows"]) for x in reports] or [0.0] * sum(int(r["granules_read"]) for r in records)
    per_granule = (g["granule_gets"]["per_granule"] + g["granule_heads_per_granule"]
                   + g["other_get_class_per_granule"])
    gets = sum(per_granule + g["granule_gets"]["per_row"] * n for n in rows)
    puts = len(rows) * g["put_class_per_granule"]
    for r in records:
        segments = r.get("segments")
        segments = (r["granules_read"] if reports else 0) if segments is None else segments
        gets += (segments * c["segment_gets_per_segment"]
                 + len(r.get("granule_reports", [])) * c["record_get_class_per_granule"] + c["other_get_class_per_task"])
        puts += puts_per_task + c["other_put_class_per_task"]
    gets += k["get_class_per_run"] + k["get_class_per_task"] * len(records)
    puts += k["put_class_per_run"] + k["put_class_per_task"] * len(records)
    return gets, puts


def killed_client_leftover(store: str) -> str:
    """Make the marked `<store>.cubed` a SIGKILLed client of an earlier run leaves, holding a stale Cubed
    folder (its name has "stale" in it); return the folder's path."""
    from polaragg.intermediate import Location
    from polaragg.runner import WORK_SUFFIX

    work = store + WORK_SUFFIX
    Location(work).create()
    stale = os.path.join(work, "cubed-20260101T000000-stale", "array-001")
    os.makedirs(stale)
    with open(os.path.join(stale, "zarr.json"), "w") as f:
        f.write("{}")
    return work
