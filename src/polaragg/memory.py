"""Per-task peak memory of the current process.

Workers are reused across tasks, so the process-lifetime peak (`ru_maxrss`) would carry earlier
tasks' peaks. On Linux the peak counter (VmHWM) can be reset at a task's start by writing 5 to
/proc/self/clear_refs; elsewhere the lifetime peak is reported (an upper bound).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def reset_peak() -> bool:
    """Start a new peak-measurement window; False where the platform cannot reset the counter."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """Peak resident memory since the last `reset_peak` (or since the process started)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class MemoryModel:
    """Projected peak resident memory of one task: a worker's baseline plus bytes per expected row."""

    baseline_bytes: int
    bytes_per_row: float

    def projected(self, rows: float) -> int:
        return int(self.baseline_bytes + self.bytes_per_row * rows)

    def rows_within(self, budget: int) -> float:
        """Most expected rows a task may hold within `budget` bytes."""
        return max(0.0, (budget - self.baseline_bytes) / self.bytes_per_row)


# Measured on the demo with the processes executor: ~198 MiB + ~45 B/row; margins for row estimates.
DEFAULT_MODEL = MemoryModel(256 * 2**20, 96.0)


def model_for(executor: str | None) -> MemoryModel:
    """The memory model of tasks on the named executor."""
    return DEFAULT_MODEL
