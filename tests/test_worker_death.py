"""A worker that dies mid-run loses only its task, which runs again: the store is as if nothing happened."""

import gc
import os
import signal
import threading
import time

import numpy as np
import psutil
import xarray as xr

import polaragg
from helpers import killed_client_leftover
from polaragg.ledger import LEDGER_SUFFIX, read_records
from polaragg.stats import STATS

SUB_BBOX = (85.0, -87.0, 95.0, -85.0)


def _pool_workers() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            out.append(child)
    return out


def test_a_killed_worker_is_retried_and_the_store_is_complete(demo_recipe, demo_store, tmp_path, capsys, caplog):
    recipe = demo_recipe.model_copy(update={"aoi": demo_recipe.aoi.model_copy(update={"bbox": SUB_BBOX})})
    store = str(tmp_path / "killed-worker.zarr")
    killed: list[int] = []
    # What a SIGKILLed client of an earlier run into this store left: its marked Cubed folder.
    work = killed_client_leftover(store)
    work_during_run: list[bool] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ledger = store + LEDGER_SUFFIX
            if os.path.isdir(ledger) and any(n.endswith(".json") for n in os.listdir(ledger)):
                workers = _pool_workers()
                if workers:
                    work_during_run.append(os.path.isdir(work) and any(
                        n.startswith("cubed-") and "stale" not in n for n in os.listdir(work)))
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    summary = polaragg.run(recipe, store=store, executor="processes", max_workers=2, progress=False)
    killer.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert "a worker died" in capsys.readouterr().err
    # The pool's other futures, abandoned with their BrokenProcessPool, print no tracebacks when collected.
    gc.collect()
    echoes = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not echoes, f"{len(echoes)} asyncio report(s) of abandoned futures"
    # Cubed's intermediates went next to the store (not the client's temporary folder), and the folder,
    # with what the earlier client left in it, is gone once the compute ended
    assert work_during_run == [True]
    assert not os.path.exists(work)
    records = read_records(store)
    plan = polaragg.runner.plan_recipe(recipe)
    assert len(records) == len(plan.tasks) and all(r.status == "ok" for r in records)
    got = xr.open_zarr(store, decode_times=False).load()  # every variable as stored (t_mean in seconds)
    ref = xr.open_zarr(demo_store[0], decode_times=False).load()
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, got.cell_ids.values)))
    np.testing.assert_array_equal(got.cell_ids.values, ref.cell_ids.values)
    np.testing.assert_array_equal(got.time.values, ref.time.values)
    assert set(got.data_vars) == set(ref.data_vars) >= {spec.name for spec in STATS}
    for name in got.data_vars:
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=name)
    assert summary.observations == int(ref["count"].sum())


def test_broken_pool_filter_works_while_the_interpreter_shuts_down(monkeypatch):
    """asyncio reports abandoned futures at exit too, when imports fail: the filter must not import."""
    import builtins
    import logging
    from concurrent.futures.process import BrokenProcessPool

    from polaragg import executors

    executors.forget_broken_pool()
    echo = executors._BROKEN_POOL_ECHO
    broken = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved",
                               None, (BrokenProcessPool, BrokenProcessPool("gone"), None))
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved",
                              None, (ValueError, ValueError("kept"), None))

    def no_imports(*args, **kwargs):
        raise ImportError("sys.meta_path is None, Python is likely shutting down")

    monkeypatch.setattr(builtins, "__import__", no_imports)
    try:
        verdicts = echo.filter(broken), echo.filter(other)
    except ImportError as exc:
        verdicts = exc
    finally:
        monkeypatch.undo()
    assert verdicts == (False, True)
