"""Tasks keep freed memory for the next task instead of faulting it in again (glibc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning")

_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from polaragg.memory import keep_freed_memory
        keep_freed_memory()
    def task():  # a cell task's pattern: temporaries of 0.4-4.7 MB made and dropped
        for n in (600_000, 150_000, 400_000, 50_000, 586_000):
            a = np.ones(n); b = a * 2.0; c = np.sqrt(b); k = np.argsort(c, kind="stable"); del a, b, c, k
    task()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        task()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_freed_memory_is_reused_without_page_faults():
    default, tuned = _faults("default"), _faults("tuned")
    # 20 repeats of ~16 MB of temporaries: glibc's defaults fault most pages in every time.
    assert default > 20_000, default
    assert tuned < default / 20, (tuned, default)
