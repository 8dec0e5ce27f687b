"""Per-task peak memory of the current process.

Workers are reused across tasks, so the process-lifetime peak (`ru_maxrss`) would carry earlier
tasks' peaks. On Linux the peak counter (VmHWM) can be reset at a task's start by writing 5 to
/proc/self/clear_refs; elsewhere the lifetime peak is reported (an upper bound).
"""

from __future__ import annotations

import resource
import sys

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
