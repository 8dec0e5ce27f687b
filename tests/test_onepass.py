"""The two-stage plan's own guarantees: separate plans never share results, partitions of a changed
file are not reused, store paths are spelled once, and oversize segments fail loudly."""

import os
import shutil

import dask
import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

import polaragg
from polaragg import aggregate
from polaragg.aggregate import PartitionJob, TaskLayout, partition_granule
from polaragg.domain import GranuleRef
from polaragg.grid import Grid
from polaragg.intermediate import Location
from polaragg.runner import GRANULE_TASKS_PER_WORKER, plan_recipe
from polaragg.sources import load_catalog

SMALL_BBOX = [85.0, -86.0, 95.0, -85.0]


def _small(recipe, **changes):
    doc = recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SMALL_BBOX}
    doc.update(changes)
    return polaragg.load_recipe(doc)


def test_two_plans_computed_together_on_dask_keep_their_own_results(demo_recipe):
    strict = _small(demo_recipe)
    loose = _small(demo_recipe, filters={"quality_max": None})
    a = polaragg.open_dataset(strict, chunk_manager="dask")["count"].sum()
    b = polaragg.open_dataset(loose, chunk_manager="dask")["count"].sum()
    alone = (int(a.compute()), int(b.compute()))
    together = tuple(int(x) for x in dask.compute(a, b))
    assert alone[0] < alone[1]  # the loose filter keeps flagged rows
    assert together == alone


def test_a_changed_granule_file_is_partitioned_again(demo_recipe, demo_cache, tmp_path):
    """Partitions kept in a work folder are reused only for the same file: edit one, and the next
    Dataset over that folder reads it again (its heights shifted by +10 m show up in h_mean)."""
    folder = demo_cache[0]
    work = tmp_path / "granules"
    shutil.copytree(folder, work)
    recipe = _small(demo_recipe, source={"kind": "directory", "path": str(work)})
    parts = str(tmp_path / "parts")
    before = polaragg.open_dataset(recipe, work_dir=parts).compute()
    plan = plan_recipe(recipe)
    target = max(plan.granules, key=lambda g: sum(g in t.granules for t in plan.tasks))
    with h5py.File(target.url, "r+") as f:
        for beam in ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r"):
            if f"{beam}/land_ice_segments" in f:
                h = f[f"{beam}/land_ice_segments/h_li"]
                values = h[:]
                ok = np.abs(values) < 3.4e38
                values[ok] += np.float32(10.0)
                h[:] = values
    after = polaragg.open_dataset(recipe, work_dir=parts).compute()
    fresh = polaragg.open_dataset(recipe).compute()
    xr.testing.assert_identical(after["h_mean"], fresh["h_mean"])
    assert not np.allclose(after["h_mean"].values, before["h_mean"].values, equal_nan=True)


def test_a_store_under_the_home_folder_keeps_store_ledger_and_partitions_together(demo_recipe, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    summary = polaragg.run(_small(demo_recipe), store="~/t.zarr", executor="single-threaded", progress=False)
    assert summary.observations > 0
    assert (tmp_path / "t.zarr" / "zarr.json").is_file()
    assert (tmp_path / "t.zarr.ledger").is_dir()
    assert not (tmp_path / "t.zarr.partitions").exists()  # removed after success
    assert not (tmp_path / "~").exists()  # nothing under a literal "~" folder


def test_a_segment_too_large_for_an_index_entry_fails_the_granule_with_its_reason(demo_cache, tmp_path,
                                                                                 monkeypatch):
    """A (granule, task) segment above the index entry's row field is a recorded failure, not a wrap-around."""
    monkeypatch.setattr(aggregate, "MAX_SEGMENT_ROWS", 100)
    path = sorted(demo_cache[0].glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        lat = f["gt2l/land_ice_segments/latitude"][:] if "gt2l/land_ice_segments" in f else None
        lon = f["gt2l/land_ice_segments/longitude"][:] if lat is not None else None
    if lat is None:
        pytest.skip("granule without gt2l")
    grid = Grid(6, 12)
    parents = np.unique(grid.parent_of(grid.child_cells(lon, lat)))
    job = PartitionJob(TaskLayout(parents, 1, grid), Location(str(tmp_path / "parts")), "k")
    record = partition_granule(GranuleRef("g", str(path)), job)
    assert record.status == "failed" and "index entry" in record.reason


def test_grouped_granule_tasks_hold_every_granule_once_in_regular_balanced_blocks(demo_recipe):
    single = plan_recipe(demo_recipe, executor="lambda")
    grouped = plan_recipe(demo_recipe, executor="processes", workers=2)
    assert single.granules_per_task == 1 and grouped.granules_per_task > 1
    assert sorted(g.granule_id for g in grouped.granules) == sorted(g.granule_id for g in single.granules)
    assert len(set(grouped.granules)) == len(grouped.granules)
    k, n = grouped.granules_per_task, len(grouped.granules)
    blocks = [grouped.granules[i:i + k] for i in range(0, n, k)]
    assert len(blocks) <= GRANULE_TASKS_PER_WORKER * 2 and all(len(b) == k for b in blocks[:-1])
    # local granules: a read costs the whole file, so the blocks' bytes per granule are alike
    loads = [sum(os.path.getsize(g.url) for g in b) for b in blocks if len(b) == k]
    assert len(loads) >= 2 and max(loads) <= 1.25 * min(loads)
    sizes = [os.path.getsize(g.url) for g in single.granules]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]  # one per task: largest first


def test_groups_stay_within_their_caps_however_few_the_workers_ask_for(demo_recipe, monkeypatch, tmp_path):
    """One worker asking for one granule task and one cell block still gets groups of at most
    MAX_GRANULES_PER_TASK granules and MAX_TASKS_PER_BLOCK tasks, every granule and task once."""
    from polaragg import plan as plan_module
    from polaragg import runner

    uncapped = plan_recipe(demo_recipe, executor="processes", workers=2)
    assert uncapped.granules_per_task == -(-len(uncapped.granules) // (2 * GRANULE_TASKS_PER_WORKER))
    monkeypatch.setattr(runner, "GRANULE_TASKS_PER_WORKER", 1)
    monkeypatch.setattr(runner, "CELL_BLOCKS_PER_WORKER", 1)
    monkeypatch.setattr(plan_module, "MAX_TASKS_PER_BLOCK", 5)
    plan = plan_recipe(demo_recipe, executor="processes", workers=1)
    n, k = len(plan.granules), plan.granules_per_task
    assert n > plan_module.MAX_GRANULES_PER_TASK and k == plan_module.MAX_GRANULES_PER_TASK
    assert len({g.granule_id for g in plan.granules}) == n  # ceil(n / k) tasks hold every granule once
    assert len(plan.tasks) > 5 and plan.tasks_per_block == 5
    from polaragg.plan import RunTarget, run_array

    target = RunTarget(str(tmp_path / "x.zarr"), "processes", "")
    blocks = run_array(plan, Location(str(tmp_path / "unused")), target)
    assert sum(blocks.chunks[0]) == len(plan.tasks) and max(blocks.chunks[0]) == 5  # every task once


@pytest.mark.parametrize("chunk_manager", ["cubed", "dask"])
def test_a_datasets_temporary_partitions_go_when_the_last_dataset_using_them_does(
        chunk_manager, demo_recipe, demo_store, tmp_path, monkeypatch):
    """Without a work_dir the partitions live in a temporary folder: a Dataset derived from the opened
    one keeps it (and computes from it) after the original is dropped; once neither is left, the
    folder is gone, not kept until the interpreter exits."""
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    recipe = _small(demo_recipe)
    ds = polaragg.open_dataset(recipe, chunk_manager=chunk_manager)
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("polaragg-partitions-")]
    derived = ds[["count", "h_max"]].isel(cells=slice(0, None, 2))
    del ds
    gc.collect()
    assert folder.is_dir()
    got = derived.compute()
    assert len([p for p in folder.rglob("*") if p.is_file()]) > 1  # the granule stage wrote here, not only the marker
    ref = xr.open_zarr(demo_store[0]).load()
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, got.cell_ids.values)))
    np.testing.assert_array_equal(got.cell_ids.values, ref.cell_ids.values)
    np.testing.assert_array_equal(got["count"].values, ref["count"].values)
    np.testing.assert_array_equal(got["h_max"].values, ref["h_max"].values)
    assert int(got["count"].sum()) > 0
    del derived
    if chunk_manager == "cubed":  # Cubed memoises the plans it finalised (its last 128 computes)
        from cubed.core.plan import Plan

        Plan._finalize.cache_clear()
    gc.collect()
    assert not folder.exists()  # `got` holds numbers, not the plan


def test_cell_tasks_run_in_blocks_with_the_same_store_and_a_record_per_task(demo_recipe, tmp_path, monkeypatch):
    """A run's cell stage in blocks of several tasks (the local executors) writes what one task per
    block writes, and keeps a ledger record, peak and CPU per task."""
    from polaragg import runner
    from polaragg.ledger import read_records
    from polaragg.intermediate import Location as Loc
    from polaragg.plan import RunTarget, run_array

    recipe = _small(demo_recipe)
    stores = {}
    for per_worker in (1000, 2):  # one task per block; two blocks of several tasks
        monkeypatch.setattr(runner, "CELL_BLOCKS_PER_WORKER", per_worker)
        plan = plan_recipe(recipe, executor="single-threaded")
        n = len(plan.tasks)
        k = plan.tasks_per_block
        assert k == -(-n // min(per_worker, n))
        arr = run_array(plan, Loc(str(tmp_path / "unused")), RunTarget(str(tmp_path / "x.zarr"), "single-threaded", ""))
        assert arr.chunks[0] == (k,) * (n // k) + ((n % k,) if n % k else ())
        store = str(tmp_path / f"blocks-{per_worker}.zarr")
        summary = polaragg.run(recipe, store=store, executor="single-threaded", progress=False)
        records = read_records(store)
        assert len(records) == n and len({(r.parent, r.child_lo) for r in records}) == n
        counts = zarr.open_array(store, path="count", mode="r")[:]
        with_data = np.count_nonzero(counts.sum(axis=0))
        assert with_data > 0 and summary.child_cells_with_data == with_data  # summed from the tasks' records
        assert all(r.peak_memory_bytes > 0 and r.cpu_seconds > 0 for r in records)
        ds = xr.open_zarr(store, decode_times=False).load()
        ds.attrs = {}  # the run's own summary, cost and creation time
        stores[per_worker] = ds
    assert n > 2  # so that 2 blocks per worker means blocks of several tasks
    xr.testing.assert_identical(stores[2], stores[1000])
