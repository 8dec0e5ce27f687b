"""What the benchmark scripts share: facts about the machine and the code measured, and other processes' load.

- `machine_info`: CPU model, usable cores, RAM, OS, Python and the versions of a list of packages;
- `machine_busy`: machine-wide CPU use and load average over a short idle window;
- `code_label`: where polaragg was imported from and, in a git checkout, its commit;
- `OtherLoad`: CPU-seconds of processes outside the benchmark's process tree while a block runs, and
  `wait_for_quiet`, which waits (bounded) for them to calm down before a measurement.

Used by benchmarks/run.py and benchmarks/cycles.py (and, through run.py, by memory.py and s3.py). The
scripts run as `python benchmarks/<x>.py`, so this folder is on sys.path; executor workers import the main
script and with it this module, so it must stay importable without side effects.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The packages whose versions `machine_info` lists by default (benchmarks/run.py's report).
PACKAGES = ("polaragg", "numpy", "h5py", "isal", "deflate", "zarr", "xarray", "cubed", "dask", "distributed", "lithops",
            "pandas")


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _psutil():
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return None
    return psutil


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The machine's CPU model, usable cores, RAM, OS and Python, and the versions of `packages`."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return {
        "cpu": cpu,
        "cores": str(_cores()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": ", ".join(versions),
    }


def machine_busy(seconds: float = 2.0) -> dict:
    """Machine-wide CPU use (psutil.cpu_percent over `seconds`, this benchmark idle) and the load average."""
    psutil = _psutil()
    busy = psutil.cpu_percent(interval=seconds) if psutil is not None else math.nan
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {"cpu_percent": busy, "loadavg": tuple(round(x, 2) for x in load)}


def code_label() -> str:
    """Where polaragg was imported from and, inside a git checkout, its commit (and whether src/ differs)."""
    import polaragg

    src = Path(polaragg.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return f"`{src}`"
    if head.returncode != 0:
        return f"`{src}` (not a git checkout)"
    state = " with uncommitted changes under src/" if dirty.stdout.strip() else ""
    return f"`{src}` at commit {head.stdout.strip()}{state}"


class OtherLoad:
    """CPU-seconds used by processes outside this benchmark's process tree while a block runs.

    Samples every process every `interval` s (psutil), and at the block's start and end (a process that
    starts and ends between two samples is missed). Our tree is this process and its descendants
    (executor workers); everything else on the machine (other users' tests, say) is interference.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self.seconds = 0.0
        self.wall = 0.0

    def _sample(self, initial: bool = False) -> None:
        psutil = _psutil()
        if psutil is None:
            return
        me = psutil.Process()
        try:
            ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
        except psutil.Error:
            ours = {me.pid}
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            pid, times = proc.info["pid"], proc.info["cpu_times"]
            if pid in ours or times is None:
                continue
            cpu = times.user + times.system
            self._first.setdefault(pid, cpu if initial else 0.0)  # new during the block: all its CPU counts
            self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "OtherLoad":
        self._t0 = time.perf_counter()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        self.wall = time.perf_counter() - self._t0
        self.seconds = sum(max(0.0, self._last[p] - self._first[p]) for p in self._last)

    @property
    def share(self) -> float:
        """Other processes' CPU as a fraction of the machine's capacity during the block."""
        return self.seconds / (self.wall * _cores()) if self.wall > 0 else 0.0


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 1.0) -> float:
    """Wait (at most `max_wait` s) until other processes use under `threshold` of the CPU; returns the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        with OtherLoad(interval=window) as load:
            time.sleep(window)
        if load.share < threshold:
            break
    return time.perf_counter() - t0
