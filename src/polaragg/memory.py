"""Per-task peak memory: how it is measured, and the model that projects it before dispatch.

Measurement. Workers are reused across tasks, so the process-lifetime peak (`ru_maxrss`) would carry
earlier tasks' peaks. On Linux the peak counter (VmHWM) is reset at a task's start by writing 5 to
/proc/self/clear_refs; elsewhere the lifetime peak is reported (an upper bound). Tasks that share a
process (threads) share that counter: each task gets its own window, and a reset by one task first
folds the counter into every other open window, so each task reports the process's peak while it
ran, never less (and never a peak from before it started).

Allocator. numpy gives a task's large temporaries back to the C allocator as soon as they die, and
glibc by default returns most of that memory to the kernel (mmap for blocks over its adaptive
threshold, trimming the heap's top beyond 128 KiB-32 MiB), so the next task faults the same pages in
again: ~50,000 page faults and ~0.1 s of CPU in the cell stage of the one-cycle recipe. Tasks
therefore call `keep_freed_memory` first, which on glibc serves blocks up to 32 MiB from the heap and
keeps up to 64 MiB of free heap (faults: ~2,000). A process that ran tasks keeps that much more
resident; the measured baselines below include it.

Model. A task's projected peak is the worker's baseline plus bytes per expected row; where
`concurrent_tasks` tasks share one process, the process also holds the others, each at most the
busiest task of the plan.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from dataclasses import dataclass

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"

_ALLOCATOR_TUNED = False
# glibc mallopt parameters and the values tasks set (bytes)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 64 * 2**20), (_M_TOP_PAD, 16 * 2**20))

_WINDOWS: dict[int, int] = {}  # thread id -> highest process peak seen in that thread's window so far
_WINDOWS_LOCK = threading.Lock()


def keep_freed_memory() -> None:
    """Have this process's C allocator keep freed memory for the next task (glibc; a no-op elsewhere
    and after the first call, which forked workers inherit)."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value in _KEEP:
        mallopt(param, value)


def _hwm() -> int:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _clear() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak() -> bool:
    """Open the calling thread's peak-measurement window; False where the counter cannot be reset."""
    me = threading.get_ident()
    with _WINDOWS_LOCK:
        alive = {t.ident for t in threading.enumerate()}
        for ident in [i for i in _WINDOWS if i not in alive]:
            del _WINDOWS[ident]  # a thread that died inside a task
        current = _hwm()
        for ident in _WINDOWS:
            _WINDOWS[ident] = max(_WINDOWS[ident], current)
        cleared = _clear()
        _WINDOWS[me] = 0 if cleared else current
        return cleared


def peak_bytes() -> int:
    """Peak resident memory of this process during the calling thread's window (closing it), or
    since the process started when no window is open."""
    me = threading.get_ident()
    with _WINDOWS_LOCK:
        current = _hwm()
        return max(_WINDOWS.pop(me, 0), current)


@dataclass(frozen=True)
class MemoryModel:
    """Projected peak resident memory of one task: a worker's baseline plus bytes per expected row.

    `concurrent_tasks` > 1 means that many tasks share one process (and its memory), so a task's
    process peak also holds up to `concurrent_tasks - 1` others, each at most `busiest` rows.
    """

    baseline_bytes: int
    bytes_per_row: float
    concurrent_tasks: int = 1

    def projected(self, rows: float, busiest: float | None = None) -> int:
        others = max(rows, busiest if busiest is not None else rows) * max(0, self.concurrent_tasks - 1)
        return int(self.baseline_bytes + self.bytes_per_row * (rows + others))

    def partition(self, rows: float, busiest: float | None = None) -> int:
        """Projected peak of the granule stage for a granule of `rows` rows; where tasks share a process,
        it also holds `concurrent_tasks - 1` others of at most `busiest` rows."""
        others = max(rows, busiest if busiest is not None else rows) * max(0, self.concurrent_tasks - 1)
        return int(self.baseline_bytes + PARTITION_BYTES_PER_ROW * (rows + others))

    def rows_within(self, budget: int) -> float:
        """Most rows every task may hold (the busiest one included) within `budget` bytes."""
        return max(0.0, (budget - self.baseline_bytes) / (self.bytes_per_row * max(1, self.concurrent_tasks)))


MIB = 2**20
# The granule stage holds one beam's six columns and masks, and the granule's kept rows grouped by task:
# slopes of 18-49 B per row of the granule measured on the demo (benchmarks/memory.py), with a margin.
PARTITION_BYTES_PER_ROW = 60.0

# Measured by benchmarks/memory.py (benchmarks/results/memory.md) on the demo recipe and a 4x-density
# version, 2-core x86_64, Python 3.11. Per-row cost above a fresh worker's baseline: ~49 B/expected row
# (lithops-local, a fresh interpreter per task: 176-181 MiB + 49 B/row); the per-row figure here is the
# field fit's 56 B/row. Baselines cover the largest peak of the smallest tasks, which in reused workers
# includes heap kept from the big tasks that ran first (processes: 204 MiB at 1x, 285 MiB at 4x), and
# for in-process executors the client itself (catalog, plan: single-threaded 387 MiB at 4x; threads and
# dask also hold the other task running beside: 474 / 415 MiB).
_MEASURED: dict[str, tuple[int, float]] = {
    "single-threaded": (450 * MIB, 56.0),
    "threads": (520 * MIB, 56.0),
    "processes": (330 * MIB, 56.0),
    "lithops-local": (230 * MIB, 56.0),
    "dask": (480 * MIB, 56.0),
    "dask-distributed": (300 * MIB, 56.0),
}
# Remote workers (Lambda, Coiled): a real 1,409-granule run measured ~495 MiB for empty tasks and a fit
# of ~443 MiB + 56 B/row; the baseline has a margin over the empty tasks.
REMOTE_MODEL = MemoryModel(560 * MIB, 80.0)
SHARED_PROCESS = ("threads", "dask")  # executors whose tasks run as threads of one process

DEFAULT_MODEL = REMOTE_MODEL


def model_for(executor: str | None, workers: int | None = None) -> MemoryModel:
    """The memory model of tasks on the named executor (`workers`: tasks running at once)."""
    if executor not in _MEASURED:
        return REMOTE_MODEL
    baseline, per_row = _MEASURED[executor]
    concurrent = (workers or os.cpu_count() or 1) if executor in SHARED_PROCESS else 1
    return MemoryModel(baseline, per_row, concurrent)
