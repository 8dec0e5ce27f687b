"""Production behaviour: SIGKILL then --resume, validation of tampered stores, transient-failure retries,
and a run's cost recomputed from its ledger alone."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

import polaragg
from polaragg import read
from polaragg.cli import main
from polaragg.cost import run_cost
from polaragg.ledger import LEDGER_SUFFIX, read_records
from polaragg.read import GranuleError, H5pyGranule
from polaragg.stats import STATS

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]


def _assert_same_data(a: xr.Dataset, b: xr.Dataset):
    np.testing.assert_array_equal(a.cell_ids.values, b.cell_ids.values)
    for spec in STATS:
        np.testing.assert_array_equal(a[spec.name].values, b[spec.name].values, err_msg=spec.name)


def _recipe_file(tmp_path, recipe, **changes) -> str:
    doc = recipe.model_dump(mode="json")
    doc.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_store(demo_recipe, demo_store, tmp_path):
    store_ref, _ = demo_store
    recipe_path = _recipe_file(tmp_path, demo_recipe)
    store = str(tmp_path / "killed.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-m", "polaragg.cli", "run", recipe_path, "--store", store, "--executor", "single-threaded"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ledger = store + LEDGER_SUFFIX
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if os.path.isdir(ledger) and len(os.listdir(ledger)) >= 6:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no task finished within 180 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
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
    counts = root["count"][:]
    k = int(np.flatnonzero(counts > 0)[0])
    root["count"][k] = counts[k] + 5                  # counts no longer match the ledger
    root["cell_ids"].attrs["indexing_scheme"] = "ring"  # xdggs would decode it wrongly
    records = sorted(os.listdir(store + LEDGER_SUFFIX))
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


def test_reported_cost_is_recomputed_from_the_ledger_alone(demo_store):
    store, summary = demo_store
    attrs = xr.open_zarr(store).attrs
    reported = json.loads(attrs["run_cost"])
    wall = json.loads(attrs["run_summary"])["wall_seconds"]
    again = run_cost(read_records(store), executor=reported["executor"], wall_seconds=wall).to_dict()
    assert again == reported
    assert reported["observations"] == summary.observations
    assert reported["lambda_usd"] > 0 and reported["coiled_usd"] > 0
