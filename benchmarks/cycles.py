"""polaragg cycles benchmark: task-seconds against the number of cycles (one pass, no re-read per bin).

    .venv/bin/python benchmarks/cycles.py [--out benchmarks/results] [--quick] [--cache DIR]
                                          [--executors single-threaded,processes] [--repeats 2]
                                          [--git-export HEAD]

The demo's sector (synthetic ATL06, seed 2026, regions 10-12, bbox 70E-110E x 83S-88S, order-6 parents ->
order-12 children, every 18th reference ground track) over 1, 2 and 4 cycles (22; 21-22; 19-22), one time
bin per cycle, on `single-threaded` and `processes` (2 workers). Points per executor:

- 1 cycle (the fit is off by default for one bin) and 1 cycle with `time: {fit: true}`;
- 2 and 4 cycles (the fit is on by default), each also with `time: {fit: false}`, so the fit's cost is a
  difference of like-for-like runs at every cycle count;
- 4 cycles with `output.coarsest_order: 4` (pyramid: orders 12..4).

Each point: its data generated (or found) in the cache first, untimed; one warm-up run; then `--repeats`
measured `polaragg.run` calls in this process (each after waiting, up to `--max-wait` s, for other processes
to go quiet); the run with the least task-seconds is kept (all runs are in the CSV). From each run's ledger
(`polaragg.ledger.read_records`): task-seconds (`seconds` + `granule_seconds`), tasks CPU (`cpu_seconds` +
`granule_cpu_seconds`) and the granule-stage partition reports (`granule_reports`), which must name every
granule of the plan exactly once: each granule is read once whatever the number of bins.

Writes --out/cycles.md (tables, line fits of task-seconds against observations and against cycles, the
fit's and the pyramid's cost, a reading) and --out/cycles.csv (one row per executor and point).

`--quick`: a small area near the pole (bbox 85E-95E x 85S-87S), region 11, every 60th RGT, 1 and 2 cycles,
one run per point, no warm-up, single-threaded only (tests/test_cycles_bench.py).
`--git-export REV`: measure the code of commit REV (its src/ exported with `git archive` into a temporary
folder and put first on PYTHONPATH), so edits in a shared working tree during the run are not measured.

Executors spawn workers that import this file, so it must stay importable without side effects.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by file path (tests): find common.py
    sys.path.append(str(Path(__file__).resolve().parent))

from common import OtherLoad, code_label, machine_busy, machine_info, wait_for_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
SCALING_REFERENCE = DEFAULT_OUT / "scaling.csv"  # benchmarks/run.py's density series (one cycle)
MIB = 2**20

SEED = 2026
BBOX = (70.0, -88.0, 110.0, -83.0)
REGIONS = (10, 11, 12)
RGT_STEP = 18
PARENT_ORDER, CHILD_ORDER = 6, 12
SERIES = {1: (22,), 2: (21, 22), 4: (19, 20, 21, 22)}
PYRAMID_ORDER = 4
EXECUTORS = ("single-threaded", "processes")
WORKERS = 2

QUICK_BBOX = (85.0, -87.0, 95.0, -85.0)
QUICK_REGIONS = (11,)
QUICK_RGT_STEP = 60
QUICK_SERIES = {1: (22,), 2: (21, 22)}

PACKAGES = ("polaragg", "numpy", "h5py", "isal", "deflate", "zarr", "xarray", "cubed", "pandas", "psutil")
# A measured run during which other processes used more than this share of the machine is "disturbed":
# while the best run of a point is, up to --max-extra more runs are made.
DISTURBED = 0.2
# "Linear": task-seconds fit a line in the observations (R^2 at least this) and the cost per observation
# does not grow with the cycles (task-seconds per 10^6 observations at the most cycles at most this times
# the figure at one cycle; a fixed cost per run makes it fall instead).
LINEAR_R2 = 0.98
LINEAR_MARGINAL = 1.10


# ----------------------------------------------------------------------------------------------------
# Points and recipes


@dataclass(frozen=True)
class Point:
    """One recipe of the series: its cycles, the recipe's `time.fit` (None: the default) and pyramid."""

    key: str
    cycles: tuple[int, ...]
    fit: bool | None = None
    coarsest_order: int | None = None

    @property
    def n(self) -> int:
        return len(self.cycles)

    @property
    def fits(self) -> bool:
        """Whether the run computes the change fit (the default: two bins or more)."""
        return self.n >= 2 if self.fit is None else self.fit

    @property
    def variant(self) -> str:
        if self.coarsest_order is not None:
            return "pyramid"
        if self.fit is None:
            return "default"
        return "fit on" if self.fit else "fit off"

    @property
    def label(self) -> str:
        what = f"{self.n} cycle{'s' if self.n > 1 else ''}"
        if self.coarsest_order is not None:
            return f"{what} + pyramid (to order {self.coarsest_order})"
        if self.fit is True:
            return f"{what}, fit on"
        if self.fit is False:
            return f"{what}, fit off"
        return what


def points(series: dict[int, tuple[int, ...]]) -> list[Point]:
    """1 cycle (fit off, default) and with the fit on; 2+ cycles (fit on, default) and with it off; the most
    cycles with the pyramid."""
    out: list[Point] = []
    for n, cycles in series.items():
        if n == 1:
            out += [Point(f"{n}c", cycles), Point(f"{n}c-fit", cycles, fit=True)]
        else:
            out += [Point(f"{n}c", cycles), Point(f"{n}c-nofit", cycles, fit=False)]
    top = max(series)
    out.append(Point(f"{top}c-pyramid", series[top], coarsest_order=PYRAMID_ORDER))
    return out


def recipe_dict(point: Point, *, quick: bool, cache: str | None, executor: str, workers: int) -> dict:
    bbox = QUICK_BBOX if quick else BBOX
    source = {"kind": "synthetic", "seed": SEED, "cycles": list(point.cycles),
              "rgts": {"start": 1, "stop": 1388, "step": QUICK_RGT_STEP if quick else RGT_STEP},
              "regions": list(QUICK_REGIONS if quick else REGIONS), "bbox": list(bbox)}
    if cache:
        source["cache_dir"] = cache
    recipe = {
        "name": "cycles",
        "description": f"cycles benchmark: {point.label}",
        "source": source,
        "aoi": {"bbox": list(bbox)},
        "grid": {"parent_order": PARENT_ORDER, "child_order": CHILD_ORDER},
        "filters": {"quality_max": 0},
        "executor": {"name": executor, "memory_per_task": "2GB",
                     **({"max_workers": workers} if executor != "single-threaded" else {})},
        "output": {"store": "polaragg-out/cycles.zarr",
                   **({"coarsest_order": point.coarsest_order} if point.coarsest_order is not None else {})},
    }
    if point.fit is not None:
        recipe["time"] = {"fit": point.fit}
    return recipe


# ----------------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Run:
    """One measured `polaragg.run`, from its summary and ledger."""

    wall: float = math.nan  # RunSummary.wall_seconds
    process_cpu: float = math.nan  # time.process_time() around the call (all of it on single-threaded)
    cell_seconds: float = math.nan
    granule_seconds: float = math.nan
    cell_cpu: float = math.nan
    granule_cpu: float = math.nan
    tasks: int = 0
    granules: int = 0  # RunSummary.granules
    reports: int = 0  # granule-stage partition reports in the ledger (granule_reports)
    reported: int = 0  # distinct granules among them
    reported_is_plan: bool = False  # the reported granules are exactly the plan's
    observations: int = 0
    time_bins: int = 0
    fit_ok: int = 0
    peak_task_bytes: int = 0
    other_share: float = 0.0
    error: str = ""

    @property
    def task_seconds(self) -> float:
        return self.cell_seconds + self.granule_seconds

    @property
    def tasks_cpu(self) -> float:
        return self.cell_cpu + self.granule_cpu

    @property
    def each_granule_once(self) -> bool:
        return (not self.error and self.granules > 0 and self.reports == self.reported == self.granules
                and self.reported_is_plan)


def _remove_store(store: str) -> None:
    for suffix in ("", ".ledger", ".partitions"):
        shutil.rmtree(store + suffix, ignore_errors=True)


def run_once(recipe, executor: str, store: str, planned: frozenset[str], sample: float = 1.0) -> Run:
    """One `polaragg.run` of `recipe` into `store` (removed after), measured."""
    import polaragg
    from polaragg.ledger import read_records

    out = Run()
    _remove_store(store)
    try:
        with OtherLoad(interval=sample) as load:
            c0 = time.process_time()
            summary = polaragg.run(recipe, store=store, executor=executor, progress=False)
            out.process_cpu = time.process_time() - c0
        out.other_share = load.share
        records = read_records(store)
        reports = [g for r in records for g in r.granule_reports]
        names = [str(g["granule"]) for g in reports]
        out.wall = summary.wall_seconds
        out.cell_seconds = math.fsum(r.seconds for r in records)
        out.granule_seconds = math.fsum(r.granule_seconds for r in records)
        out.cell_cpu = math.fsum(r.cpu_seconds for r in records)
        out.granule_cpu = math.fsum(r.granule_cpu_seconds for r in records)
        out.tasks = len(records)
        out.granules = summary.granules
        out.reports, out.reported = len(names), len(set(names))
        out.reported_is_plan = set(names) == planned
        out.observations = sum(r.observations for r in records)
        out.time_bins = summary.time_bins
        out.fit_ok = int(summary.fit_outcomes.get("ok", 0))
        out.peak_task_bytes = max((r.peak_memory_bytes for r in records), default=0)
    except Exception as exc:  # one failing point must not lose the others' figures
        out.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        _remove_store(store)
    return out


@dataclass
class Result:
    """A point on an executor: the kept run (least task-seconds) and every measured run."""

    point: Point
    executor: str
    cores: int
    best: Run
    runs: list[Run]
    plan_tasks: int = 0
    plan_granules: int = 0
    bin_groups: int = 1
    generate_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.best.error

    def per_million(self, value: float) -> float:
        return value / self.best.observations * 1e6 if self.best.observations else math.nan


def measure(point: Point, recipe, executor: str, workdir: Path, planned: frozenset[str], *, warmups: int,
            repeats: int, max_wait: float, max_extra: int, log) -> tuple[Run, list[Run]]:
    store = str(workdir / f"{point.key}-{executor}.zarr")
    for _ in range(warmups):
        warm = run_once(recipe, executor, store, planned)
        if warm.error:
            return warm, [warm]
    runs: list[Run] = []
    extra = 0
    while True:
        wait_for_quiet(max_wait)
        r = run_once(recipe, executor, store, planned)
        runs.append(r)
        if r.error:
            return r, runs
        log(f"    run {len(runs)}: wall {r.wall:.2f} s, task-s {r.task_seconds:.2f} (cell {r.cell_seconds:.2f} + "
            f"granule {r.granule_seconds:.2f}), tasks CPU {r.tasks_cpu:.2f} s, other CPU {r.other_share:.0%}")
        if len(runs) < max(1, repeats):
            continue
        best = min(runs, key=lambda x: x.task_seconds)
        if best.other_share <= DISTURBED or extra >= max_extra:
            return best, runs
        extra += 1


# ----------------------------------------------------------------------------------------------------
# Analysis


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = a x + b; (a, b, R^2)."""
    import numpy as np

    x_, y_ = np.asarray(x, float), np.asarray(y, float)
    if len(x_) < 2 or np.ptp(x_) == 0:
        return math.nan, math.nan, math.nan
    a, b = np.polyfit(x_, y_, 1)
    ss = float(((y_ - y_.mean()) ** 2).sum())
    r2 = 1.0 - float(((y_ - (a * x_ + b)) ** 2).sum()) / ss if ss > 0 else math.nan
    return float(a), float(b), r2


def find(results: list[Result], executor: str, key: str) -> Result | None:
    return next((r for r in results if r.executor == executor and r.point.key == key and r.ok), None)


def series_of(results: list[Result], executor: str, series: dict[int, tuple[int, ...]], which: str) -> list[Result]:
    """The cycle series of one kind: `default` (the recipe's default fit: off at 1 cycle, on at 2+),
    `fit on` (on at every point) or `fit off` (off at every point)."""
    keys = []
    for n in series:
        if which == "default":
            keys.append(f"{n}c")
        elif which == "fit on":
            keys.append(f"{n}c-fit" if n == 1 else f"{n}c")
        else:
            keys.append(f"{n}c" if n == 1 else f"{n}c-nofit")
    got = [find(results, executor, k) for k in keys]
    return [r for r in got if r is not None]


SERIES_KINDS = ("fit on", "fit off", "default")


def fits(results: list[Result], executors: list[str], series: dict[int, tuple[int, ...]]) -> list[dict]:
    """Line fits of task-seconds (and tasks CPU) against observations and against cycles, per series."""
    out = []
    for ex in executors:
        for kind in SERIES_KINDS:
            rs = series_of(results, ex, series, kind)
            if len(rs) < 2:
                continue
            obs = [r.best.observations / 1e6 for r in rs]
            ts = [r.best.task_seconds for r in rs]
            cpu = [r.best.tasks_cpu for r in rs]
            cyc = [r.point.n for r in rs]
            a, b, r2 = linear_fit(obs, ts)
            ac, bc, r2c = linear_fit(cyc, ts)
            au, bu, r2u = linear_fit(obs, cpu)
            first, last = rs[0], rs[-1]
            per = [r.per_million(r.best.task_seconds) for r in rs]
            out.append({
                "executor": ex, "series": kind, "points": [r.point.key for r in rs], "cycles": cyc,
                "per_obs": (a, b, r2), "per_cycle": (ac, bc, r2c), "cpu_per_obs": (au, bu, r2u),
                "obs_ratio": last.best.observations / first.best.observations,
                "task_s_ratio": last.best.task_seconds / first.best.task_seconds,
                "cpu_ratio": last.best.tasks_cpu / first.best.tasks_cpu,
                "cycle_ratio": last.point.n / first.point.n,
                "per_million": per, "marginal": per[-1] / per[0] if per[0] else math.nan,
                "linear": r2 >= LINEAR_R2 and per[-1] <= LINEAR_MARGINAL * per[0],
            })
    return out


def fit_costs(results: list[Result], executors: list[str], series: dict[int, tuple[int, ...]]) -> list[dict]:
    """Per executor and cycle count: the run with the fit against the same run without it."""
    out = []
    for ex in executors:
        for n in series:
            on = find(results, ex, f"{n}c-fit" if n == 1 else f"{n}c")
            off = find(results, ex, f"{n}c" if n == 1 else f"{n}c-nofit")
            if on is None or off is None:
                continue
            d, dc = on.best.task_seconds - off.best.task_seconds, on.best.tasks_cpu - off.best.tasks_cpu
            out.append({"executor": ex, "cycles": n, "on": on, "off": off, "delta": d, "delta_cpu": dc,
                        "share": d / on.best.task_seconds, "share_cpu": dc / on.best.tasks_cpu,
                        "granule_delta": on.best.granule_seconds - off.best.granule_seconds,
                        "cell_delta": on.best.cell_seconds - off.best.cell_seconds,
                        "wall_delta": on.best.wall - off.best.wall})
    return out


def pyramid_costs(results: list[Result], executors: list[str], series: dict[int, tuple[int, ...]]) -> list[dict]:
    top = max(series)
    out = []
    for ex in executors:
        base, pyr = find(results, ex, f"{top}c"), find(results, ex, f"{top}c-pyramid")
        if base is None or pyr is None:
            continue
        out.append({"executor": ex, "cycles": top, "base": base, "pyramid": pyr,
                    "delta": pyr.best.task_seconds - base.best.task_seconds,
                    "delta_cpu": pyr.best.tasks_cpu - base.best.tasks_cpu,
                    "delta_wall": pyr.best.wall - base.best.wall,
                    "ratio": pyr.best.task_seconds / base.best.task_seconds,
                    "wall_ratio": pyr.best.wall / base.best.wall})
    return out


def one_pass_reference(results: list[Result], executors: list[str]) -> list[dict]:
    """The 1-cycle point against benchmarks/run.py's density series (scaling.csv), where that series has a
    point of the same observations on the same executor (the same recipe: one cycle, the same RGTs)."""
    if not SCALING_REFERENCE.exists():
        return []
    try:
        rows = list(csv.DictReader(SCALING_REFERENCE.open()))
    except (OSError, csv.Error):
        return []
    out = []
    for ex in executors:
        mine = find(results, ex, "1c")
        if mine is None:
            continue
        ref = next((row for row in rows if row.get("executor") == ex and row.get("series") == "one task per parent"
                    and row.get("observations") == str(mine.best.observations)), None)
        if ref is None:
            continue
        try:
            ts, cpu, wall = float(ref["task_s"]), float(ref["tasks_cpu_s"]), float(ref["wall_s"])
        except (KeyError, ValueError):
            continue
        out.append({"executor": ex, "mine": mine, "task_s": ts, "tasks_cpu": cpu, "wall": wall,
                    "granules": ref.get("granules", ""), "ratio": mine.best.task_seconds / ts,
                    "cpu_ratio": mine.best.tasks_cpu / cpu if cpu else math.nan})
    return out


# ----------------------------------------------------------------------------------------------------
# Output

CSV_COLUMNS = (
    "executor", "cores", "point", "label", "cycles", "n_cycles", "time_bins", "fit", "coarsest_order",
    "plan_tasks", "plan_granules", "bin_groups", "granules", "granule_reports", "granules_reported",
    "each_granule_once", "tasks", "observations", "wall_s", "process_cpu_s", "task_s", "cell_task_s",
    "granule_task_s", "tasks_cpu_s", "cell_cpu_s", "granule_cpu_s", "task_s_per_1e6_obs", "tasks_cpu_per_1e6_obs",
    "granule_ms_per_granule", "fit_share_task_s", "fit_share_cpu", "fit_ok_cells", "peak_task_mib",
    "other_cpu_share", "runs", "task_s_all", "walls_s", "other_cpu_all", "generate_s", "error",
)


def _r(x: float, digits: int = 3):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


def csv_row(r: Result, shares: dict[tuple[str, str], dict]) -> dict:
    b, p = r.best, r.point
    share = shares.get((r.executor, p.key))
    ok = [x for x in r.runs if not x.error]
    return {
        "executor": r.executor, "cores": r.cores, "point": p.key, "label": p.label,
        "cycles": " ".join(str(c) for c in p.cycles), "n_cycles": p.n, "time_bins": b.time_bins,
        "fit": p.fits, "coarsest_order": "" if p.coarsest_order is None else p.coarsest_order,
        "plan_tasks": r.plan_tasks, "plan_granules": r.plan_granules, "bin_groups": r.bin_groups,
        "granules": b.granules, "granule_reports": b.reports, "granules_reported": b.reported,
        "each_granule_once": all(x.each_granule_once for x in r.runs) and bool(r.runs),
        "tasks": b.tasks, "observations": b.observations, "wall_s": _r(b.wall), "process_cpu_s": _r(b.process_cpu),
        "task_s": _r(b.task_seconds), "cell_task_s": _r(b.cell_seconds), "granule_task_s": _r(b.granule_seconds),
        "tasks_cpu_s": _r(b.tasks_cpu), "cell_cpu_s": _r(b.cell_cpu), "granule_cpu_s": _r(b.granule_cpu),
        "task_s_per_1e6_obs": _r(r.per_million(b.task_seconds), 4),
        "tasks_cpu_per_1e6_obs": _r(r.per_million(b.tasks_cpu), 4),
        "granule_ms_per_granule": _r(b.granule_seconds / b.granules * 1e3 if b.granules else math.nan, 2),
        "fit_share_task_s": _r(share["share"], 4) if share else "",
        "fit_share_cpu": _r(share["share_cpu"], 4) if share else "",
        "fit_ok_cells": b.fit_ok, "peak_task_mib": _r(b.peak_task_bytes / MIB, 1),
        "other_cpu_share": _r(b.other_share), "runs": len(ok),
        "task_s_all": " ".join(f"{x.task_seconds:.3f}" for x in ok),
        "walls_s": " ".join(f"{x.wall:.3f}" for x in ok),
        "other_cpu_all": " ".join(f"{x.other_share:.3f}" for x in ok),
        "generate_s": _r(r.generate_s, 1), "error": b.error,
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)


def _f(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def _n(k: int, what: str) -> str:
    return f"{'no' if k == 0 else k} {what}{'' if k == 1 else 's'}"


def _signed_pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.0%}"


def markdown(ctx: dict) -> str:
    results: list[Result] = ctx["results"]
    info = ctx["machine"]
    series = ctx["series"]
    executors = ctx["executors"]
    others = [r.best.other_share for r in results if r.ok]
    lines = [
        f"# polaragg cycles benchmark ({ctx['date']})",
        "",
        "Acceptance point: performance stays on the one-pass design's figures (no re-read per bin): task-seconds "
        "grow linearly with the number of cycles (series of 1, 2, 4 cycles).",
        "",
        f"Recipe: synthetic ATL06 (seed {SEED}), regions {list(ctx['regions'])}, bbox {list(ctx['bbox'])} "
        f"(source and AOI), every {ctx['rgt_step']}th RGT, order-{PARENT_ORDER} parents -> order-{CHILD_ORDER} "
        f"children, `quality_max: 0`, `memory_per_task: 2GB`, one time bin per cycle; cycles "
        + "; ".join(f"{n}: {list(c)}" for n, c in series.items())
        + f"{' (--quick)' if ctx['quick'] else ''}. Executors: "
        + ", ".join(f"`{e}`" + (f" ({WORKERS} workers)" if e != "single-threaded" else "") for e in executors)
        + f". Per point: data generated first (untimed), {_n(ctx['warmups'], 'warm-up run')}, then "
        f"{_n(ctx['repeats'], 'measured run')} ("
        + (f"up to {_n(ctx['max_extra'], 'more run')} while the best was disturbed, other CPU > {DISTURBED:.0%}"
           if ctx['max_extra'] else "no extra runs") + "); "
        "the run with the least task-seconds is kept.",
        "",
        f"Command: `{ctx['command']}` ({ctx['total']:.0f} s in all).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, {info['os']}, Python {info['python']}; "
        f"{info['packages']}.",
        "",
        f"Code measured: {ctx['code']}.",
        "",
        f"Other load on the machine: {_f(ctx['busy_before']['cpu_percent'], 0)}% CPU busy before the benchmark and "
        f"{_f(ctx['busy_after']['cpu_percent'], 0)}% after (psutil.cpu_percent over 2 s with this benchmark idle; "
        f"load average {ctx['busy_before']['loadavg']} / {ctx['busy_after']['loadavg']}); during each kept run, "
        f"processes outside the benchmark's tree used {_pct(min(others, default=math.nan))}"
        f"-{_pct(max(others, default=math.nan))} of the machine "
        "(*other CPU* column).",
        "",
    ]
    lines += _acceptance_md(ctx)
    lines += _points_md(ctx)
    lines += _fits_md(ctx)
    lines += _fit_cost_md(ctx)
    lines += _pyramid_md(ctx)
    lines += _reading_md(ctx)
    lines += _notes_md(ctx)
    return "\n".join(lines) + "\n"


def _acceptance_md(ctx: dict) -> list[str]:
    results: list[Result] = ctx["results"]
    lines = ["## Acceptance figures", "", "| figure | measured | criterion | met |", "|---|---|---|---|"]
    ok = [r for r in results if r.ok]
    once = [r for r in results if r.runs and all(x.each_granule_once for x in r.runs)]
    runs = sum(len(r.runs) for r in results)
    lines.append(
        f"| Each granule partitioned once, whatever the bins (no re-read per bin) | **{len(once)} of {len(results)}** "
        f"points, every measured run ({runs} runs): `granule_reports` name each of the plan's granules exactly once "
        f"({', '.join(sorted({f'{r.point.n} cycle(s): {r.best.granules}' for r in ok}))} granules) | "
        f"reports = granules = the plan's | {'yes' if len(once) == len(results) and results else '**NO**'} |")
    for f in ctx["fits"]:
        if f["series"] != "fit on":
            continue
        a, b, r2 = f["per_obs"]
        ac, bc, r2c = f["per_cycle"]
        per = ", ".join(_f(x, 3) for x in f["per_million"])
        lines.append(
            f"| Task-seconds against cycles {'/'.join(str(c) for c in f['cycles'])}, fit on at every point "
            f"(`{f['executor']}`) | x{f['obs_ratio']:.2f} observations -> **x{f['task_s_ratio']:.2f} task-s**; line "
            f"in observations R^2 **{r2:.3f}** ({a:.3f} s per 10^6 obs {b:+.2f} s), in cycles R^2 {r2c:.3f}; "
            f"task-s per 10^6 obs {per}; tasks CPU x{f['cpu_ratio']:.2f}, R^2 {f['cpu_per_obs'][2]:.3f} | "
            f"R^2 >= {LINEAR_R2} and per-10^6-obs at {f['cycles'][-1]} cycles <= "
            f"{LINEAR_MARGINAL:.2f}x that at {f['cycles'][0]} | {'yes' if f['linear'] else '**NO**'} |")
    for ref in ctx["reference"]:
        lines.append(
            f"| 1 cycle against the one-pass benchmark (`{ref['executor']}`, same recipe in "
            f"`benchmarks/results/scaling.csv`) | task-s {ref['mine'].best.task_seconds:.2f} / {ref['task_s']:.2f} = "
            f"**{ref['ratio']:.2f}x**; tasks CPU {ref['mine'].best.tasks_cpu:.2f} / {ref['tasks_cpu']:.2f} = "
            f"{ref['cpu_ratio']:.2f}x | - (machine load differs between the two runs) | - |")
    lines.append("")
    return lines


def _points_md(ctx: dict) -> list[str]:
    results: list[Result] = ctx["results"]
    shares = ctx["shares"]
    lines = [
        "## Points",
        "",
        "| executor | point | bins | fit | granules | partitioned | observations | wall s | task-s | cell + granule "
        "stage s | tasks CPU s | task-s / 10^6 obs | ms / granule (granule stage) | fit's share of task-s | other CPU |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        b = r.best
        if not r.ok:
            lines.append(f"| {r.executor} | {r.point.label} | | | | | | | | | | | | | FAILED: {b.error} |")
            continue
        share = shares.get((r.executor, r.point.key))
        part = f"{b.reports}" + ("" if b.each_granule_once else " **(not once)**")
        lines.append(
            f"| {r.executor} | {r.point.label} | {b.time_bins} | {'on' if r.point.fits else 'off'} | {b.granules} | "
            f"{part} | {b.observations:,} | {b.wall:.2f} | {b.task_seconds:.2f} | {b.cell_seconds:.2f} + "
            f"{b.granule_seconds:.2f} | {b.tasks_cpu:.2f} | {r.per_million(b.task_seconds):.3f} | "
            f"{b.granule_seconds / b.granules * 1e3:.1f} | {_pct(share['share']) if share else ''} | "
            f"{_pct(b.other_share)} |")
    lines += ["", "*partitioned*: partition reports (`granule_reports`) in the ledger, every run checked to name each "
              "of the plan's granules exactly once. *fit's share*: (task-s with the fit - task-s of the same "
              "cycles without it) / task-s with it (see below).", ""]
    return lines


def _fits_md(ctx: dict) -> list[str]:
    lines = ["## Task-seconds against observations and cycles", ""]
    names = {"fit on": "fit on at every point (1 cycle with `time: {fit: true}`)",
             "fit off": "fit off at every point (2+ cycles with `time: {fit: false}`)",
             "default": "the recipes' default (fit off at 1 cycle, on at 2+)"}
    for f in ctx["fits"]:
        a, b, r2 = f["per_obs"]
        ac, bc, r2c = f["per_cycle"]
        au, bu, r2u = f["cpu_per_obs"]
        lines.append(
            f"- `{f['executor']}`, {names[f['series']]}: task-seconds = {a:.3f} s per 10^6 observations {b:+.2f} s "
            f"(R^2 {r2:.3f}); = {ac:.2f} s per cycle {bc:+.2f} s (R^2 {r2c:.3f}); tasks CPU = {au:.3f} s per 10^6 "
            f"observations {bu:+.2f} s (R^2 {r2u:.3f}). x{f['cycle_ratio']:.0f} the cycles, x{f['obs_ratio']:.2f} "
            f"the observations -> x{f['task_s_ratio']:.2f} the task-seconds; per 10^6 observations "
            f"{' -> '.join(_f(x, 3) for x in f['per_million'])} s ({f['marginal']:.2f}x)."
            + (" (Two points: any two fit a line exactly.)" if len(f["points"]) == 2 else ""))
    lines.append("")
    return lines


def _fit_cost_md(ctx: dict) -> list[str]:
    costs = ctx["fit_costs"]
    if not costs:
        return []
    lines = ["## The change fit's cost", "",
             "Like for like: the same cycles with and without the fit (`time.fit`).", "",
             "| executor | cycles | task-s fit off | task-s fit on | extra task-s | fit's share of task-s | of which "
             "granule stage | cell stage | tasks CPU off / on | fit's share of CPU | wall off / on |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for c in costs:
        on, off = c["on"].best, c["off"].best
        lines.append(
            f"| {c['executor']} | {c['cycles']} | {off.task_seconds:.2f} | {on.task_seconds:.2f} | {c['delta']:+.2f} | "
            f"{_pct(c['share'])} | {c['granule_delta']:+.2f} | {c['cell_delta']:+.2f} | {off.tasks_cpu:.2f} / "
            f"{on.tasks_cpu:.2f} | {_pct(c['share_cpu'])} | {off.wall:.2f} / {on.wall:.2f} |")
    lines += ["", "With the fit the granule stage also projects every kept row to polar stereographic x, y and writes "
              "two more float64 columns into the partitions; the cell stage reads them, accumulates the 15 weighted "
              "moments per (bin, cell) at the child order (merged up to the coarser in-task orders), solves the "
              "per-cell least squares and writes the fit's variables and the per-bin anomalies.", ""]
    return lines


def _pyramid_md(ctx: dict) -> list[str]:
    costs = ctx["pyramid_costs"]
    if not costs:
        return []
    lines = ["## The pyramid's cost", "",
             f"`output.coarsest_order: {PYRAMID_ORDER}` at {costs[0]['cycles']} cycles (fit on): orders "
             f"{CHILD_ORDER}..{PARENT_ORDER} computed inside each task, coarser ones merged after the tasks from the "
             "sufficient statistics (in the run's wall clock, not in task-seconds).", "",
             "| executor | task-s without / with | extra task-s | ratio | tasks CPU without / with | wall s without / "
             "with | extra wall s |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for c in costs:
        b, p = c["base"].best, c["pyramid"].best
        lines.append(f"| {c['executor']} | {b.task_seconds:.2f} / {p.task_seconds:.2f} | {c['delta']:+.2f} | "
                     f"{c['ratio']:.2f}x | {b.tasks_cpu:.2f} / {p.tasks_cpu:.2f} | {b.wall:.2f} / {p.wall:.2f} | "
                     f"{c['delta_wall']:+.2f} |")
    lines.append("")
    return lines


def _reading_md(ctx: dict) -> list[str]:
    """A reading of the figures, worded from them."""
    lines = ["## Reading", ""]
    results: list[Result] = ctx["results"]
    once = all(r.runs and all(x.each_granule_once for x in r.runs) for r in results) and bool(results)
    lines.append(
        ("- One pass: " if once else "- **Not one pass**: ")
        + ("every run of every point partitioned each of its granules exactly once; more bins add granules (one "
           "cycle's granules per bin), never a second read of a granule." if once else
           "some run partitioned a granule more or less than once (see *partitioned*)."))
    for f in ctx["fits"]:
        if f["series"] == "default":
            continue
        a, b, r2 = f["per_obs"]
        verdict = "linear" if f["linear"] else "not linear by the criterion"
        growth = ("the cost per observation falls as the fixed costs (per task: dispatch, chunk write, record) "
                  "spread over more rows" if f["marginal"] < 0.97 else
                  "the cost per observation stays flat" if f["marginal"] <= 1.03 else
                  "the cost per observation rises")
        lines.append(f"- `{f['executor']}`, {f['series']}: {verdict}: R^2 {r2:.3f}, x{f['obs_ratio']:.2f} observations "
                     f"took x{f['task_s_ratio']:.2f} task-seconds; {growth} ({f['marginal']:.2f}x from "
                     f"{f['cycles'][0]} to {f['cycles'][-1]} cycles), marginal {a:.3f} s per 10^6 observations.")
    by_ex: dict[str, list[dict]] = {}
    for c in ctx["fit_costs"]:
        by_ex.setdefault(c["executor"], []).append(c)
    for ex, cs in by_ex.items():
        lines.append(f"- The fit on `{ex}`: " + "; ".join(
            f"{c['cycles']} cycle{'s' if c['cycles'] > 1 else ''} {c['delta']:+.2f} task-s ({_signed_pct(c['share'])} of "
            f"the fitted run; CPU {_signed_pct(c['share_cpu'])})" for c in cs) + ".")
    for c in ctx["pyramid_costs"]:
        lines.append(f"- The pyramid on `{c['executor']}` (to order {PYRAMID_ORDER}, {c['cycles']} cycles): "
                     f"{c['delta']:+.2f} task-s ({c['ratio']:.2f}x) and {c['delta_wall']:+.2f} s wall "
                     f"({c['wall_ratio']:.2f}x).")
    for ref in ctx["reference"]:
        lines.append(f"- 1 cycle on `{ref['executor']}` against the one-pass benchmark's same recipe: "
                     f"{ref['ratio']:.2f}x its task-seconds, {ref['cpu_ratio']:.2f}x its tasks CPU.")
    lines.append("")
    return lines


def _notes_md(ctx: dict) -> list[str]:
    return [
        "## Notes",
        "",
        "- *wall s*: `RunSummary.wall_seconds` (catalog from its cache, plan, both stages, store, pyramid merges).",
        "- *task-s*: sum over the ledger's records of `seconds` (cell-stage tasks: read their segments of the "
        "partitions, reduce, write the chunk and the record) + `granule_seconds` (granule-stage partitions: read "
        "the HDF5 granule, filter, HEALPix, bin, group by task, write the partition), each task timing itself.",
        "- *tasks CPU*: `cpu_seconds` + `granule_cpu_seconds`, the process CPU while each task ran; exact on both "
        "executors here, which run one task per process at a time.",
        "- *partitioned*: `len(granule_reports)` over the records; checked against `RunSummary.granules`, the "
        "distinct granule names and the plan's granule list (`plan_recipe(recipe).granules`) in every run.",
        "- *other CPU*: CPU-seconds of processes outside this benchmark's process tree during the kept run, as a "
        "share of the machine (sampled each second with psutil). On 2 cores, other work slows task-seconds too, so "
        "points are compared by their least-task-seconds run.",
        "- The fit's share is a difference of two runs measured apart; under varying load it is uncertain by "
        "roughly the run-to-run spread of the task-seconds (all runs in `cycles.csv`, `task_s_all`).",
        "",
    ]


# ----------------------------------------------------------------------------------------------------
# Main


def _git_export(rev: str) -> tuple[Path, str]:
    """`git archive REV src` into a temporary folder; (folder, short commit)."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="polaragg-cycles-src-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], capture_output=True,
                             check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True, timeout=120)
    return folder, commit


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default: benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="tiny: small area, region 11, every 60th RGT, 1 and 2 cycles, "
                                                        "one run per point, single-threaded")
    p.add_argument("--executors", nargs="+", default=None, help="executors (space or comma separated; default "
                                                                f"{','.join(EXECUTORS)}; --quick: single-threaded)")
    p.add_argument("--workers", type=int, default=WORKERS, help="workers of the parallel executors")
    p.add_argument("--repeats", type=int, default=None, help="measured runs per point (default 2; --quick 1)")
    p.add_argument("--warmups", type=int, default=None, help="untimed runs per point first (default 1; --quick 0)")
    p.add_argument("--max-wait", type=float, default=None,
                   help="before each measured run, wait up to this many seconds for other processes to go quiet "
                        "(default 5; --quick 0)")
    p.add_argument("--max-extra", type=int, default=None,
                   help=f"extra runs of a point whose best run was disturbed (other CPU > {DISTURBED:.0%}; default 1; "
                        "--quick 0)")
    p.add_argument("--cache", default=None, help="synthetic data cache (default: $POLARAGG_CACHE or ~/.cache/polaragg)")
    p.add_argument("--workdir", default=None, help="scratch folder for the stores (default: a temporary folder)")
    p.add_argument("--code-label", default=None, help="what code is measured, for the report (default: polaragg's "
                                                      "location and git commit)")
    p.add_argument("--git-export", default=None, metavar="REV",
                   help="measure commit REV: export its src/ with git archive and rerun this script on it")
    p.add_argument("--as-command", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    command = args.as_command or "python benchmarks/cycles.py " + " ".join(argv)

    if args.git_export:
        folder, commit = _git_export(args.git_export)
        rest, skip = [], False
        for a in argv:  # drop --git-export REV / --git-export=REV
            if skip:
                skip = False
            elif a == "--git-export":
                skip = True
            elif not a.startswith("--git-export="):
                rest.append(a)
        label = args.code_label or (f"commit {commit} (`{args.git_export}` of {ROOT}; src/ exported with git archive, "
                                    "so edits in the shared working tree during the run are not measured)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder / "src"),
                                                                         os.environ.get("PYTHONPATH")]))}
        try:
            return subprocess.run([sys.executable, str(Path(__file__).resolve()), *rest, "--code-label", label,
                                   "--as-command", command], env=env).returncode
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    started = time.perf_counter()
    quick = args.quick
    series = QUICK_SERIES if quick else SERIES
    executors = [e for item in (args.executors or (["single-threaded"] if quick else list(EXECUTORS)))
                 for e in item.split(",") if e]
    repeats = args.repeats if args.repeats is not None else (1 if quick else 2)
    warmups = args.warmups if args.warmups is not None else (0 if quick else 1)
    max_wait = args.max_wait if args.max_wait is not None else (0.0 if quick else 5.0)
    max_extra = args.max_extra if args.max_extra is not None else (0 if quick else 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="polaragg-cycles-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from polaragg import load_recipe
    from polaragg.domain import ExecutorChoice
    from polaragg.runner import plan_recipe
    from polaragg.sources import synthetic_folder

    import polaragg

    log(f"polaragg from {Path(polaragg.__file__).resolve().parent}")
    busy_before = machine_busy()
    log(f"machine before: {busy_before['cpu_percent']:.0f}% CPU busy, load average {busy_before['loadavg']}")
    pts = points(series)
    # Data first, untimed (one synthetic source per cycle list), and each point's plan.
    generated: dict[tuple[int, ...], float] = {}
    plans: dict[str, tuple[int, frozenset[str], int]] = {}
    for pt in pts:
        recipe = load_recipe(recipe_dict(pt, quick=quick, cache=args.cache, executor="single-threaded",
                                         workers=args.workers))
        if pt.cycles not in generated:
            t0 = time.perf_counter()
            folder = synthetic_folder(recipe.source)
            generated[pt.cycles] = time.perf_counter() - t0
            log(f"data for cycles {list(pt.cycles)}: {folder} ({generated[pt.cycles]:.1f} s)")
        plan = plan_recipe(recipe)
        plans[pt.key] = (len(plan.tasks), frozenset(g.granule_id for g in plan.granules),
                         max(1, len(plan.bin_groups)))

    results: list[Result] = []
    for ex in executors:
        cores = 1 if ex == "single-threaded" else ExecutorChoice(ex, args.workers).workers
        for pt in pts:
            recipe = load_recipe(recipe_dict(pt, quick=quick, cache=args.cache, executor=ex, workers=args.workers))
            n_tasks, planned, groups = plans[pt.key]
            log(f"{ex}: {pt.label} ({len(planned)} granules, {n_tasks} tasks) ...")
            best, runs = measure(pt, recipe, ex, workdir, planned, warmups=warmups, repeats=repeats,
                                 max_wait=max_wait, max_extra=max_extra, log=log)
            r = Result(pt, ex, cores, best, runs, n_tasks, len(planned), groups, generated[pt.cycles])
            results.append(r)
            if best.error:
                log(f"  FAILED: {best.error}")
            else:
                log(f"  kept: task-s {best.task_seconds:.2f}, {best.observations:,} obs, {best.reports} partition "
                    f"reports for {best.granules} granules{'' if best.each_granule_once else ' (NOT ONCE)'}")

    busy_after = machine_busy()
    log(f"machine after: {busy_after['cpu_percent']:.0f}% CPU busy, load average {busy_after['loadavg']}")
    total = time.perf_counter() - started
    costs = fit_costs(results, executors, series)
    shares = {(c["executor"], c["on"].point.key): c for c in costs}
    ctx = {
        "results": results, "series": series, "executors": executors, "quick": quick, "warmups": warmups,
        "repeats": repeats, "max_extra": max_extra, "machine": machine_info(PACKAGES),
        "code": args.code_label or code_label(), "command": command,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "total": total, "busy_before": busy_before,
        "busy_after": busy_after, "bbox": QUICK_BBOX if quick else BBOX, "regions": QUICK_REGIONS if quick else REGIONS,
        "rgt_step": QUICK_RGT_STEP if quick else RGT_STEP, "fits": fits(results, executors, series),
        "fit_costs": costs, "shares": shares, "pyramid_costs": pyramid_costs(results, executors, series),
        "reference": [] if quick else one_pass_reference(results, executors),
    }
    write_csv(out / "cycles.csv", [csv_row(r, shares) for r in results])
    (out / "cycles.md").write_text(markdown(ctx))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {out / 'cycles.md'} and {out / 'cycles.csv'} in {total:.0f} s")
    print((out / "cycles.md").read_text())
    failed = any(not r.ok for r in results) or not all(all(x.each_granule_once for x in r.runs) for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
