"""The same plan on every offline executor, task splitting under a memory bound, and the lazy Dataset."""

import numpy as np
import pytest
import xarray as xr

import polaragg
from polaragg import read
from polaragg.aggregate import index_row
from polaragg.intermediate import Location
from polaragg.ledger import read_records
from polaragg.runner import plan_recipe
from polaragg.stats import STATS

EXECUTORS = ["single-threaded", "processes", "lithops-local", "dask", "dask-distributed"]


def _open(store: str) -> xr.Dataset:
    """A store with every variable as stored (t_mean in seconds, like the lazy Dataset's) and `time` decoded
    (datetime64, like the lazy Dataset's)."""
    ds = xr.open_zarr(store, decode_times=False)
    decoded = xr.open_zarr(store)
    return ds.assign_coords(time=decoded.time, time_bounds=decoded.time_bounds)


def _assert_same_store(a: xr.Dataset, b: xr.Dataset):
    np.testing.assert_array_equal(a.cell_ids.values, b.cell_ids.values)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.time_bounds.values, b.time_bounds.values)
    assert set(a.data_vars) == set(b.data_vars) >= {spec.name for spec in STATS}
    for name in a.data_vars:
        x, y = a[name], b[name]
        assert x.dims == y.dims and x.dtype == y.dtype, name
        if x.dtype.kind in "iu":
            np.testing.assert_array_equal(x.values, y.values, err_msg=name)
        else:
            np.testing.assert_allclose(x.values, y.values, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)


@pytest.fixture(scope="module")
def serial_reference(demo_recipe, tmp_path_factory):
    """A plain serial loop over the plan's two stages, no executor and no array library at all."""
    plan = plan_recipe(demo_recipe)
    location = Location(str(tmp_path_factory.mktemp("serial") / "partitions"))
    columns = tuple(range(len(plan.tasks)))
    index = np.stack([index_row(plan.partition(g, location), columns) for g in range(len(plan.granules))])
    blocks = [plan.reduce(j, index[:, j], location).block for j in columns]
    return plan.cell_ids(), np.concatenate(blocks)


def test_threads_store_equals_plain_serial_loop(demo_recipe, demo_store, serial_reference):
    store, _ = demo_store
    ids, block = serial_reference
    ds = xr.open_zarr(store, decode_times=False).load()
    np.testing.assert_array_equal(ds.cell_ids.values, ids)
    schema = plan_recipe(demo_recipe).schema
    assert {spec.name for spec in STATS} <= {spec.name for spec in schema.variables} == set(ds.data_vars)
    for spec in schema.variables:
        columns = block[:, schema.columns(spec.name)]  # (cells, bins) of a per-bin variable, (cells, 1) else
        expected = (columns.T if schema.is_per_bin(spec.name) else columns[:, 0]).astype(spec.dtype)
        np.testing.assert_array_equal(ds[spec.name].values, expected, err_msg=spec.name)


# lithops-local starts an interpreter per task (~1.5 s each here): it runs on a corner of the demo,
# against a threads run of the same corner (tests/test_rehearsal.py runs it again with S3 and credentials).
CORNER = [80.0, -84.0, 82.0, -83.5]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_executor_gives_the_same_store(executor, demo_recipe, demo_store, tmp_path):
    store_ref, ref_summary = demo_store
    if executor == "lithops-local":
        demo_recipe = polaragg.load_recipe({**demo_recipe.model_dump(mode="json"), "aoi": {"bbox": CORNER}})
        store_ref = str(tmp_path / "threads.zarr")
        ref_summary = polaragg.run(demo_recipe, store=store_ref, executor="threads", progress=False)
    store = str(tmp_path / f"{executor}.zarr")
    summary = polaragg.run(demo_recipe, store=store, executor=executor, progress=False)
    assert summary.executor == executor
    assert summary.observations == ref_summary.observations
    _assert_same_store(_open(store).load(), _open(store_ref).load())
    assert {r.executor for r in read_records(store)} == {executor}


def test_split_tasks_stay_under_the_memory_bound_and_equal_the_unsplit_result(demo_recipe, demo_store, tmp_path):
    from polaragg.memory import model_for

    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": [70.0, -88.0, 110.0, -86.5]}
    doc["executor"]["memory_per_task"] = "100GB"
    whole = plan_recipe(polaragg.load_recipe(doc), executor="processes")
    busiest = max(t.expected_rows for t in whole.tasks)
    # The busiest parent must split; the granule stage (a granule is its unit) must fit.
    bound = max(model_for("processes").projected(busiest / 3), whole.max_granule_projected_bytes)
    assert bound < model_for("processes").projected(busiest)
    doc["executor"]["memory_per_task"] = f"{bound}B"
    recipe = polaragg.load_recipe(doc)
    plan = plan_recipe(recipe, executor="processes")
    assert plan.split > 1
    assert plan.max_projected_bytes <= bound
    store = str(tmp_path / "split.zarr")
    polaragg.run(recipe, store=store, executor="processes", progress=False)
    records = read_records(store)
    assert len(records) == len(plan.tasks) == plan.split * len(plan.parents)
    peaks = np.array([r.peak_memory_bytes for r in records])
    print(f"\nsplit x{plan.split}: {len(records)} tasks, measured peak per task {peaks.min() / 2**20:.0f}-"
          f"{peaks.max() / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB, projected <= "
          f"{plan.max_projected_bytes / 2**20:.0f} MiB)")
    assert peaks.max() < bound
    assert all(r.peak_memory_bytes <= r.projected_memory_bytes for r in records)
    split = _open(store)
    assert split["h_mean"].encoding["chunks"] == (1, 4096 // plan.split)
    ref = _open(demo_store[0])
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, split.cell_ids.values)))
    _assert_same_store(split.load(), ref.load())


def test_lazy_dataset_reads_nothing_until_compute_and_each_granule_once(demo_recipe, demo_store):
    plan = plan_recipe(demo_recipe)
    read.OPENS.clear()
    ds = polaragg.open_dataset(demo_recipe)
    assert read.OPENS == {}  # nothing read yet
    import xdggs  # noqa: F401

    decoded = ds.dggs.decode()  # xdggs decodes the lazy dataset before any compute
    assert decoded.dggs.grid_info.level == 12
    assert read.OPENS == {}
    assert ds["h_mean"].chunks == ((1,), (4096,) * len(plan.parents))

    task = max(plan.tasks, key=lambda t: len(t.granules))
    k = int(np.searchsorted(plan.parents, task.parent))
    one = ds.isel(cells=slice(k * 4096, (k + 1) * 4096)).compute()
    # Any granule may hold rows of any cell (footprints can lie), so the granule stage reads every granule
    # of the plan: each exactly once.
    assert set(read.OPENS) == {g.url for g in plan.granules}
    assert all(n == 1 for n in read.OPENS.values())
    assert len(read.OPENS) > len(task.granules)
    ref = _open(demo_store[0]).isel(cells=slice(k * 4096, (k + 1) * 4096)).load()
    _assert_same_store(one, ref)


@pytest.mark.parametrize("executor, service", [("lambda", "AWS Lambda"), ("coiled", "Coiled")])
def test_cloud_executors_fail_fast_naming_the_service(executor, service, demo_recipe, tmp_path, monkeypatch):
    import socket
    import time

    from polaragg.domain import ExecutorError

    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": [85.0, -86.0, 86.0, -85.5]}
    doc["executor"]["aws_lambda"] = {"role_arn": "arn:aws:iam::123456789012:role/polaragg"}
    start = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        polaragg.run(polaragg.load_recipe(doc), store=str(tmp_path / "x.zarr"), executor=executor, progress=False)
    assert time.monotonic() - start < 10
    assert service in str(info.value)


@pytest.mark.parametrize("chunk_manager", ["cubed", "dask"])
def test_full_lazy_compute_reads_each_granule_once_and_equals_the_store(chunk_manager, demo_recipe, demo_store):
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": [85.0, -86.0, 95.0, -85.0]}
    recipe = polaragg.load_recipe(doc)
    plan = plan_recipe(recipe)
    read.OPENS.clear()
    ds = polaragg.open_dataset(recipe, chunk_manager=chunk_manager).compute()
    assert set(read.OPENS) == {g.url for g in plan.granules} and set(read.OPENS.values()) == {1}
    assert len(plan.granules) < sum(len(t.granules) for t in plan.tasks)  # fewer reads than (granule, task) pairs
    ref = _open(demo_store[0])
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, ds.cell_ids.values))).load()
    _assert_same_store(ds, ref)
