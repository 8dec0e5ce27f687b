"""The fastest of several equivalent implementations on this machine, timed once on a small workload.

Which numpy sort or which inflater is faster depends on the CPU (SIMD instructions, the library's own
dispatch); the candidates give identical results, so picking by a few milliseconds of timing changes
only how long the work takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping


def fastest(candidates: Mapping[str, Callable[[], object]], repeats: int = 3) -> str:
    """The name of the candidate with the least time over `repeats` interleaved calls of each."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            best[name] = min(best.get(name, math.inf), time.perf_counter() - start)
    return min(best, key=best.__getitem__)
