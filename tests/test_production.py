"""Production behaviour: SIGKILL then --resume, validation of tampered stores, transient-failure retries,
a run's cost against the price table applied to its ledger files, and the run summary's task categories."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from helpers import one_pass_requests

import polaragg
from polaragg import read
from polaragg.cli import main
from polaragg.cost import store_cost
from polaragg.ledger import LEDGER_SUFFIX, TaskRecord, read_records
from polaragg.progress import summarize
from polaragg.read import GranuleError, H5pyGranule
from polaragg.stats import STATS

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]


def _assert_same_data(a: xr.Dataset, b: xr.Dataset):
    np.testing.assert_array_equal(a.cell_ids.values, b.cell_ids.values)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.time_bounds.values, b.time_bounds.values)
    assert set(a.data_vars) == set(b.data_vars) >= {spec.name for spec in STATS}
    for name in a.data_vars:  # exact, every variable (decoded datetimes compare exactly too)
        assert a[name].dims == b[name].dims, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def _record_names(ledger: str) -> list[str]:
    """File names of the task records in a ledger folder, sorted (the folder also holds the run's lock and
    its list of inputs)."""
    return sorted(n for n in os.listdir(ledger) if re.fullmatch(r"\d{20}-\d{5}\.json", n))


def _recipe_file(tmp_path, recipe, **changes) -> str:
    doc = recipe.model_dump(mode="json")
    doc.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _kill_run_when(recipe_path: str, store: str, ready, timeout_message: str, poll: float) -> None:
    """Start `polaragg run` in its own session and SIGKILL it (and its children) once `ready()` holds;
    fail if the run ends first or `ready()` does not hold within 180 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "polaragg.cli", "run", recipe_path, "--store", store, "--executor", "single-threaded"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if ready():
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(poll)
        else:
            pytest.fail(timeout_message)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_validate_names_cut_short_chunks_instead_of_failing_on_them(demo_store, tmp_path, capsys):
    """A task's chunk left partly written (a run killed while the task wrote it: the task has no record
    then) and a recorded task's chunk cut short are each named, with the task, and the rest of the store
    is still checked: exit 1, not a decoding error."""
    store = str(tmp_path / "copy.zarr")
    shutil.copytree(demo_store[0], store)
    shutil.copytree(demo_store[0] + LEDGER_SUFFIX, store + LEDGER_SUFFIX)
    assert main(["validate", store]) == 0
    records = sorted(read_records(store), key=lambda r: (r.parent, r.child_lo))
    unrecorded, recorded = records[0], records[-1]
    root = zarr.open_group(store, mode="r")
    chunk, ids = root["count"].chunks[-1], root["cell_ids"][:]
    shift = 2 * (int(root.attrs["child_order"]) - int(root.attrs["parent_order"]))

    def chunk_file(record, name):  # the task's chunk of the first time chunk of a per-bin variable
        first = (np.uint64(record.parent) << np.uint64(shift)) + np.uint64(record.child_lo)
        return Path(store) / name / "c" / "0" / str(int(np.searchsorted(ids, first)) // chunk)

    for record, name in ((unrecorded, "h_mean"), (recorded, "count")):
        path = chunk_file(record, name)
        path.write_bytes(path.read_bytes()[:20])
    (Path(store + LEDGER_SUFFIX) / f"{unrecorded.parent:020d}-{unrecorded.child_lo:05d}.json").unlink()
    capsys.readouterr()
    assert main(["validate", store]) == 1
    out = capsys.readouterr().out
    assert f"task parent {unrecorded.parent} children {unrecorded.child_lo}-" in out
    assert "no ledger record (the task never finished; a chunk of it is partly written)" in out
    assert f"task parent {recorded.parent} children {recorded.child_lo}-" in out and "a chunk cannot be read" in out


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_store(demo_recipe, demo_store, tmp_path):
    store_ref, _ = demo_store
    recipe_path = _recipe_file(tmp_path, demo_recipe)
    store = str(tmp_path / "killed.zarr")
    ledger = store + LEDGER_SUFFIX
    _kill_run_when(recipe_path, store, lambda: os.path.isdir(ledger) and len(_record_names(ledger)) >= 6,
                   "no task finished within 180 s", poll=0.05)
    before = {(r.parent, r.child_lo): r for r in read_records(store)}
    total = len(demo_recipe and polaragg.runner.plan_recipe(demo_recipe).tasks)
    assert 6 <= len(before) < total
    assert main(["validate", store]) == 1  # incomplete: tasks without records

    assert main(["run", recipe_path, "--store", store, "--resume", "--executor", "threads"]) == 0
    after = read_records(store)
    assert len(after) == total
    redone = [r for r in after if (r.parent, r.child_lo) in before and r.executor != "single-threaded"]
    assert redone == []  # finished tasks were not run again
    assert {r.executor for r in after} == {"single-threaded", "threads"}
    _assert_same_data(xr.open_zarr(store).load(), xr.open_zarr(store_ref).load())
    assert main(["validate", store]) == 0


def test_sigkill_in_the_granule_stage_then_resume_reads_only_the_granules_not_yet_partitioned(
        demo_recipe, demo_store, tmp_path):
    store_ref, _ = demo_store
    recipe_path = _recipe_file(tmp_path, demo_recipe)
    store = str(tmp_path / "killed.zarr")
    partitions = Path(store + ".partitions")
    _kill_run_when(recipe_path, store, lambda: partitions.is_dir() and len(list(partitions.glob("[!_]*.json"))) >= 5,
                   "no granule was partitioned within 180 s", poll=0.005)
    plan = polaragg.runner.plan_recipe(demo_recipe)
    done = {json.loads(p.read_text())["granule"] for p in partitions.glob("[!_]*.json")}
    assert 5 <= len(done) < len(plan.granules), "killed within the granule stage"
    assert not os.path.isdir(store + LEDGER_SUFFIX) or _record_names(store + LEDGER_SUFFIX) == []

    read.OPENS.clear()
    assert main(["run", recipe_path, "--store", store, "--resume", "--executor", "threads"]) == 0
    assert set(read.OPENS) == {g.url for g in plan.granules if g.granule_id not in done}
    assert set(read.OPENS.values()) == {1}
    _assert_same_data(xr.open_zarr(store).load(), xr.open_zarr(store_ref).load())
    assert not partitions.exists()  # removed once every task succeeded
    assert main(["validate", store]) == 0


def test_resume_refuses_a_store_of_another_recipe(demo_recipe, demo_store, tmp_path, capsys):
    other = _recipe_file(tmp_path, demo_recipe, filters={"quality_max": 1})
    assert main(["run", other, "--store", demo_store[0], "--resume"]) == 2
    assert "different recipe" in capsys.readouterr().err


def test_validate_fails_with_reasons_on_a_tampered_store(demo_store, tmp_path, capsys):
    store_ref, _ = demo_store
    store = str(tmp_path / "tampered.zarr")
    shutil.copytree(store_ref, store)
    shutil.copytree(store_ref + LEDGER_SUFFIX, store + LEDGER_SUFFIX)
    assert main(["validate", store]) == 0
    capsys.readouterr()

    root = zarr.open_group(store, mode="r+")
    counts = root["count"][0]  # the one time bin
    k = int(np.flatnonzero(counts > 0)[0])
    root["count"][0, k] = counts[k] + 5               # counts no longer match the ledger
    root["cell_ids"].attrs["indexing_scheme"] = "ring"  # xdggs would decode it wrongly
    records = _record_names(store + LEDGER_SUFFIX)
    os.remove(os.path.join(store + LEDGER_SUFFIX, records[-1]))  # a task without its record

    assert main(["validate", store]) == 1
    out = capsys.readouterr().out
    assert "NOT valid" in out
    assert "store counts" in out and "the ledger" in out
    assert "indexing_scheme" in out
    assert "no ledger record" in out
    assert "run summary reports" in out


def test_transient_read_failures_are_retried_and_the_result_is_unchanged(demo_recipe, demo_store, tmp_path,
                                                                         monkeypatch):
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SUB_BBOX}
    doc["retry"] = {"attempts": 4, "base_seconds": 0.001, "cap_seconds": 0.01}
    recipe = polaragg.load_recipe(doc)
    original = H5pyGranule.read
    failed: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(self, beam, variables, rows=None):
        with lock:
            n = failed.get(self.url, 0)
            if n < 2:  # the first two reads of every granule fail like a reset S3 connection
                failed[self.url] = n + 1
                raise GranuleError(self.url, "connection reset by peer (injected)", transient=True)
        return original(self, beam, variables, rows)

    monkeypatch.setattr(H5pyGranule, "read", flaky)
    read.OPENS.clear()
    store = str(tmp_path / "flaky.zarr")
    summary = polaragg.run(recipe, store=store, executor="threads", progress=False)
    assert failed and all(n == 2 for n in failed.values())
    assert summary.cells_failed == 0 and summary.granules_failed == 0
    assert all(not r.failures for r in read_records(store))
    flaky_ds = xr.open_zarr(store).load()
    ref = xr.open_zarr(demo_store[0])
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, flaky_ds.cell_ids.values))).load()
    _assert_same_data(flaky_ds, ref)


def test_persistent_transient_failure_is_recorded_after_its_attempts(demo_recipe, tmp_path, monkeypatch):
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SUB_BBOX}
    doc["retry"] = {"attempts": 3, "base_seconds": 0.001, "cap_seconds": 0.01}
    recipe = polaragg.load_recipe(doc)

    def always(self, beam, variables, rows=None):
        raise GranuleError(self.url, "read timed out (injected)", transient=True)

    monkeypatch.setattr(H5pyGranule, "read", always)
    store = str(tmp_path / "down.zarr")
    polaragg.run(recipe, store=store, executor="threads", progress=False)
    records = read_records(store)
    failures = [f for r in records for f in r.failures]
    assert failures and all(f["attempts"] == 3 and f["transient"] for f in failures)
    assert all(r.status == "failed" for r in records if r.granules)


def _ledger_files(store: str) -> list[dict]:
    """The task records of a store's ledger, read as plain JSON (not through polaragg)."""
    folder = Path(store + LEDGER_SUFFIX)
    return [json.loads((folder / name).read_text()) for name in _record_names(str(folder))]


def test_reported_cost_is_the_price_table_applied_to_the_ledger_files(demo_store):
    """The stored cost report equals the documented model evaluated here on the ledger's JSON files with
    the prices of prices.yaml read by yaml: Lambda 2048 MB arm64 (a full vCPU at >= 1,769 MB, so one-core
    seconds are billed as measured, ceil to 1 ms per attempt), c7g.4xlarge on-demand (attempt-seconds /
    16 vCPU), S3 GETs per granule read and one PUT per stored variable plus the ledger record per task.
    Tasks are the cell-stage records and the granule-stage tasks their `granule_reports` carry."""
    store, summary = demo_store
    ds = xr.open_zarr(store)
    reported = json.loads(ds.attrs["run_cost"])
    doc = yaml.safe_load((Path(polaragg.__file__).parent / "data" / "prices.yaml").read_text())
    price = {k: float(v["value"]) for k, v in doc["prices"].items()}
    c7g = doc["instances"]["c7g.4xlarge"]
    records = _ledger_files(store)
    assert len(records) == summary.cells_total > 0

    granules = [g for r in records for g in r["granule_reports"]]
    assert len(granules) == len({g["granule"] for g in granules}) > 0  # each granule reported once
    attempts = [max(1, int(r.get("attempt", 1))) for r in records] + [max(1, int(g["attempts"])) for g in granules]
    seconds = [float(r["seconds"]) for r in records] + [float(g["seconds"]) for g in granules]
    billed_ms = sum(k * math.ceil(round(s * 1000.0, 6)) for k, s in zip(attempts, seconds))
    gb_seconds = billed_ms / 1000.0 * 2048 / 1024
    lambda_usd = (gb_seconds * price["lambda_gb_second_arm64"]
                  + sum(attempts) * price["lambda_requests_per_million"] / 1e6)
    hours = math.fsum(k * s for k, s in zip(attempts, seconds)) / c7g["vcpus"] / 3600.0
    ec2 = hours * c7g["hourly"]
    fee = hours * c7g["vcpus"] * price["coiled_fee_per_cpu_hour"]
    # docs/cost.md's request model with the reader's measured figures: granules once, segments, records, client
    gets, puts = one_pass_requests(records, json.loads(ds.attrs["recipe"])["reader"], len(ds.data_vars) + 1)
    gets, puts = round(gets), round(puts)
    s3 = gets * price["s3_get_per_1000"] / 1000 + puts * price["s3_put_per_1000"] / 1000

    assert reported["executor"] == "threads" and reported["total_usd"] is None  # a local run: no bill
    assert reported["n_tasks"] == len(records) + len(granules) and reported["invocations"] == sum(attempts)
    assert reported["observations"] == sum(int(r["observations"]) for r in records) == summary.observations
    assert reported["task_seconds"] == pytest.approx(math.fsum(seconds), rel=1e-12)
    assert reported["wall_seconds"] == json.loads(ds.attrs["run_summary"])["wall_seconds"]
    assert reported["lambda_gb_seconds"] == pytest.approx(gb_seconds, rel=1e-12)
    assert reported["lambda_usd"] == pytest.approx(lambda_usd, rel=1e-12)
    assert reported["instance_hours"] == pytest.approx(hours, rel=1e-12)
    assert reported["ec2_usd"] == pytest.approx(ec2, rel=1e-12)
    assert reported["coiled_usd"] == pytest.approx(ec2 + fee, rel=1e-12)
    assert (reported["s3_gets"], reported["s3_puts"]) == (gets, puts)
    again = store_cost(store, puts_per_task=len(ds.data_vars) + 1)  # the reader comes from the store's recipe
    assert (again.s3_gets, again.s3_puts) == (gets, puts)
    assert reported["s3_usd"] == pytest.approx(s3, rel=1e-12)
    assert reported["peak_memory_bytes"] == max(int(r["peak_memory_bytes"]) for r in records + granules)


def _record(i: int, *, rows: int, observations: int, granules: int, failures: int = 0) -> TaskRecord:
    failed = [{"granule": f"G{i}-{k}", "reason": "not a readable HDF5 file", "transient": False,
               "attempts": 1} for k in range(failures)]
    status = "failed" if failures and not observations else "partial" if failures else \
        "ok" if observations else "empty"
    return TaskRecord(parent=i, child_lo=0, child_hi=4096, status=status, observations=observations,
                      rows_in_cell=rows, granules=granules, granules_read=granules - failures,
                      failures=failed, seconds=0.5, executor="threads")


def test_summary_separates_tasks_without_rows_from_tasks_whose_rows_were_all_filtered():
    # (rows in the task's cells, observations kept, granules, failed granules) -> expected category
    cases = [
        ((0, 0, 0, 0), "no data"),     # no granule crosses the cell
        ((0, 0, 3, 0), "no data"),     # granules cross the cell's footprint, but no row falls inside it
        ((0, 0, 5, 0), "no data"),
        ((120, 0, 2, 0), "filtered"),  # rows inside, every one rejected by the filters
        ((7, 0, 1, 0), "filtered"),
        ((900, 850, 4, 0), "data"),
        ((0, 0, 2, 2), "error"),       # nothing could be read: not an empty cell
        ((300, 250, 3, 1), "data+error"),
    ]
    records = [_record(i, rows=r, observations=o, granules=g, failures=f)
               for i, ((r, o, g, f), _) in enumerate(cases)]
    kinds = [k for _, k in cases]
    s = summarize(records, store="x.zarr", executor="threads", wall_seconds=2.0, granules=9,
                  child_cells_with_data=10)
    assert s.cells_total == len(cases)
    assert s.cells_empty_no_data == kinds.count("no data") == 3
    assert s.cells_empty_filtered == kinds.count("filtered") == 2
    assert s.cells_with_data == kinds.count("data") + kinds.count("data+error") == 2
    assert s.cells_failed == kinds.count("error") + kinds.count("data+error") == 2
    assert s.granules_failed == 3
    text = s.format()
    assert re.search(r"Empty \(no data\):\s+3\b", text), text
    assert re.search(r"Empty \(filtered\):\s+2\b", text), text
    assert "no granules" not in text
