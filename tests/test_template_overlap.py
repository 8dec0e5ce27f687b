"""Where tasks run in other processes the store's template is written while the granule stage runs:
the cell stage waits for it, the store comes out as a single-threaded run writes it, and an error
writing the template is the run's error, with no cell task run."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import polaragg
from polaragg import runner
from polaragg.ledger import read_records
from polaragg.runner import plan_recipe
from polaragg.store import StoreError

SMALL_BBOX = [85.0, -86.0, 95.0, -85.0]


def _small(recipe):
    doc = recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SMALL_BBOX}
    return polaragg.load_recipe(doc)


def _partitions(store: str) -> int:
    folder = Path(store + ".partitions")
    if not folder.is_dir():
        return 0
    return sum(p.suffix == ".json" and not p.name.startswith("_") for p in folder.iterdir())


def _held_template(monkeypatch, granules: int, then=None):
    """Hold the run's template until every granule is partitioned and a moment more (a cell task
    not held back would start meanwhile), then write it (or raise `then`)."""
    real, seen = runner.create_store, {}

    def template(url, *args, **kwargs):
        deadline = time.monotonic() + 120
        while _partitions(url) < granules and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["partitioned_first"] = _partitions(url) == granules
        time.sleep(1.0)
        if then is not None:
            raise then
        real(url, *args, **kwargs)

    monkeypatch.setattr(runner, "create_store", template)
    return seen


def test_processes_writes_the_template_during_the_granule_stage_and_cells_after_it(demo_recipe, tmp_path,
                                                                                monkeypatch):
    recipe = _small(demo_recipe)
    ref = str(tmp_path / "ref.zarr")
    polaragg.run(recipe, store=ref, executor="single-threaded", progress=False)
    seen = _held_template(monkeypatch, len(plan_recipe(recipe).granules))
    store = str(tmp_path / "p.zarr")
    polaragg.run(recipe, store=store, executor="processes", progress=False)
    assert seen["partitioned_first"]  # the granule stage ran before the template existed
    written = os.stat(Path(store) / "count" / "zarr.json").st_mtime_ns
    ledger = [p for p in Path(store + ".ledger").glob("*.json")]
    assert len(ledger) == len(read_records(store)) > 0
    assert all(os.stat(p).st_mtime_ns >= written for p in ledger)  # every cell task after the template
    a, b = xr.open_zarr(ref), xr.open_zarr(store)
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_an_error_writing_the_template_is_the_runs_error_and_no_cell_task_runs(demo_recipe, tmp_path,
                                                                               monkeypatch):
    recipe = _small(demo_recipe)
    seen = _held_template(monkeypatch, len(plan_recipe(recipe).granules),
                          then=StoreError("the template could not be written (test)"))
    store = str(tmp_path / "p.zarr")
    with pytest.raises(StoreError, match="template could not be written"):
        polaragg.run(recipe, store=store, executor="processes", progress=False)
    assert seen["partitioned_first"]
    assert read_records(store) == []
    monkeypatch.undo()  # the lock was released: the next run into the path goes ahead
    polaragg.run(recipe, store=store, executor="single-threaded", progress=False, overwrite=True)
    assert len(read_records(store)) > 0
