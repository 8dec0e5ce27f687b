"""Progress display and the end-of-run summary.

Progress watches the ledger (records written by the tasks), so it works the same on every executor,
including those whose workers cannot talk back to the client.
"""

from __future__ import annotations

import dataclasses

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from .ledger import TaskRecord, ledger_location


class LedgerProgress:
    """Background thread printing cells done/total, observations, cells/s and ETA."""

    def __init__(self, store_url: str, total: int, *, storage_options: dict | None = None,
                 stream: TextIO = sys.stderr, interval: float = 1.0, skip: int = 0) -> None:
        self.store_url = store_url
        self.total = total
        self.storage_options = storage_options
        self.stream = stream
        self.interval = interval
        self.skip = skip  # records already present before this run started (resumed work)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._seen: dict[str, int] = {}
        self._start = time.perf_counter()

    def __enter__(self) -> "LedgerProgress":
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        self._print(final=True)

    def _poll(self) -> None:
        fs, root = ledger_location(self.store_url, self.storage_options)
        try:
            paths = fs.glob(f"{root}/*.json")
        except (OSError, FileNotFoundError):
            return
        for path in paths:
            if path in self._seen:
                continue
            try:
                with fs.open(path, "r") as f:
                    self._seen[path] = int(json.load(f).get("observations", 0))
            except (OSError, ValueError):
                continue  # being written; read it next time

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()
            self._print()

    def _print(self, final: bool = False) -> None:
        done = len(self._seen)
        new = max(0, done - self.skip)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = new / elapsed
        remaining = max(self.total - done, 0)
        eta = remaining / rate if rate > 0 else float("nan")
        obs = sum(self._seen.values())
        line = (f"  [{done:>5}/{self.total}] {obs:>13,} obs | {rate:5.1f} cells/s | "
                f"ETA {eta:5.1f}s" if eta == eta else f"  [{done:>5}/{self.total}] {obs:>13,} obs | starting")
        end = "\n" if final else "\r"
        if self.stream.isatty() or final:
            print(line, end=end, file=self.stream, flush=True)


@dataclass(frozen=True)
class RunSummary:
    """The end-of-run figures (also kept in the store's root attributes).

    Task outcomes: `cells_with_data` kept at least one observation; `cells_empty_no_data` had no row
    inside its cells and no failed granule (nothing to aggregate there); `cells_empty_filtered` had rows
    inside its cells but the filters (quality, fill values, sigma) dropped every one; `cells_failed` had
    at least one granule that could not be read (it may also have data from the other granules).
    """

    store: str
    executor: str
    cells_total: int
    cells_with_data: int
    cells_empty_no_data: int
    cells_empty_filtered: int
    cells_failed: int
    child_cells_with_data: int
    granules: int
    granules_failed: int
    observations: int
    wall_seconds: float
    task_seconds: float
    peak_memory_bytes: int
    time_bins: int = 1
    # Child cells with data by outcome of the change fit ({"ok": n, "few_bins": n, ...}); empty without a fit.
    fit_outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    # The run's cost report (`cost.CostReport.to_dict`), kept in the store as its own attribute, `run_cost`.
    cost: dict = dataclasses.field(default_factory=dict, repr=False)

    def format(self) -> str:
        bar = "=" * 70
        thin = "-" * 70
        rate = self.cells_total / self.wall_seconds if self.wall_seconds > 0 else 0.0
        obs_rate = self.observations / self.wall_seconds if self.wall_seconds > 0 else 0.0
        return "\n".join([
            bar,
            "Summary",
            bar,
            f"      Total cells:          {self.cells_total:,}  "
            f"(parent cells; {self.child_cells_with_data:,} child cells with data)",
            f"      With data:            {self.cells_with_data:,}",
            f"      Empty (no data):      {self.cells_empty_no_data:,}  (no rows in the cells)",
            f"      Empty (filtered):     {self.cells_empty_filtered:,}  (rows in the cells, all filtered)",
            f"      Errors:               {self.cells_failed:,}  "
            f"(cells with a failed granule; {self.granules_failed} granule failures)",
            f"      Granules:             {self.granules:,}",
            f"      Total observations:   {self.observations:,}  ({self.time_bins} time bin(s))",
            *([f"      Change fit:           " + ", ".join(f"{n:,} {k}" for k, n in self.fit_outcomes.items())
               + "  (child cells with data)"] if self.fit_outcomes else []),
            thin,
            f"      Wall clock time:      {self.wall_seconds:.1f}s",
            f"      Task time:            {self.task_seconds:.1f}s  (executor: {self.executor})",
            f"      Throughput:           {rate:.1f} cells/sec, {obs_rate:,.0f} obs/sec",
            f"      Peak task memory:     {self.peak_memory_bytes / 2**20:,.0f} MiB",
            thin,
            f"      Output location:      {self.store}",
            bar,
        ])


def summarize(records: list[TaskRecord], *, store: str, executor: str, wall_seconds: float,
              granules: int, child_cells_with_data: int, time_bins: int = 1,
              fit_outcomes: dict[str, int] | None = None) -> RunSummary:
    """The summary of a run from its ledger records (one per task); see `RunSummary` for the categories."""
    failed_granules = {f["granule"] for r in records for f in r.failures}
    return RunSummary(
        store=store,
        executor=executor,
        cells_total=len(records),
        cells_with_data=sum(r.observations > 0 for r in records),
        cells_empty_no_data=sum(r.rows_in_cell == 0 and r.observations == 0 and not r.failures
                                for r in records),
        cells_empty_filtered=sum(r.rows_in_cell > 0 and r.observations == 0 for r in records),
        cells_failed=sum(bool(r.failures) for r in records),
        child_cells_with_data=child_cells_with_data,
        granules=granules,
        granules_failed=len(failed_granules),
        observations=sum(r.observations for r in records),
        wall_seconds=wall_seconds,
        task_seconds=sum(r.seconds + r.granule_seconds for r in records),
        peak_memory_bytes=max((r.peak_memory_bytes for r in records), default=0),
        time_bins=time_bins,
        fit_outcomes=dict(fit_outcomes or {}),
    )

