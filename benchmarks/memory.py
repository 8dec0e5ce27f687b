"""Memory benchmark: measured per-task peak memory against the plan's projection, on every offline executor.

Both stages are checked: every cell-stage task (one per output chunk) and every granule's partition
(its own record with its own peak window and projection, in the `granule_reports` of the ledger record
that reports it, also where one granule-stage task partitions several granules).

    .venv/bin/python benchmarks/memory.py [--recipe recipes/one-cycle.yaml] [--executors NAME ...]
                                          [--densities 1 4] [--out benchmarks/results]

Runs the recipe at 1x and at 4x its density (4 reference ground tracks where it has 1, same area and
grid) on each executor, each run in a fresh interpreter (like `polaragg run`), and writes into --out:

- memory.csv: one row per (executor, density): cell tasks, max measured peak, max projected, tasks whose
  measured peak exceeds their projection, smallest headroom, peak of near-empty tasks, the largest
  (peak - baseline) per expected row; the same for the granule partitions (with the slope of their
  peak over the rows read); worker processes seen and their resident-memory growth;
- memory.md: the same as tables, with the models used.

Exits 1 when any task's measured peak (either stage) exceeds its projected peak, a granule's
granule-stage task is not reported exactly once, or a run fails.
Memory figures only: the runs share the machine, so no timings are reported.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "one-cycle.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results"
OFFLINE_EXECUTORS = ("single-threaded", "threads", "processes", "lithops-local", "dask", "dask-distributed")
MIB = 2**20
EMPTY_ROWS = 1_000  # tasks expecting fewer rows than this count as near-empty (their peak ~ the baseline)
COLUMNS = (
    "executor", "density", "tasks", "split", "max_expected_rows", "max_measured_mib", "max_projected_mib",
    "over_projection", "min_headroom_mib", "empty_task_peak_mib", "max_bytes_per_row", "workers_seen",
    "max_worker_growth_mib", "model_baseline_mib", "model_bytes_per_row", "model_concurrent_tasks",
    "granule_tasks", "max_granule_rows", "max_granule_measured_mib", "max_granule_projected_mib",
    "granule_over_projection", "granule_min_headroom_mib", "granule_bytes_per_row_fit", "model_granule_bytes_per_row",
    "error",
)


# ----------------------------------------------------------------------------------------------------
# Recipes


def dense_recipe(recipe, density: int):
    """The recipe with `density` times its synthetic reference ground tracks (RGTs) in the same area.

    An RGT range with step s becomes, for each of its RGTs r, the RGTs r, r + k, r + 2k, ... (density
    of them, k = s // density), so the tracks stay spread evenly over the cycle.
    """
    from polaragg.recipe import RgtRange, SyntheticSource

    source = recipe.source
    if density == 1:
        return recipe
    if not isinstance(source, SyntheticSource) or not isinstance(source.rgts, RgtRange):
        raise SystemExit("denser versions need a synthetic source with an RGT range")
    step = source.rgts.step
    if step < density:
        raise SystemExit(f"RGT step {step} leaves no room for {density}x the tracks")
    gap = step // density
    base = source.rgts.values()
    rgts = sorted({r + i * gap for r in base for i in range(density) if r + i * gap <= 1387})
    return recipe.model_copy(update={"source": source.model_copy(update={"rgts": rgts})})


# ----------------------------------------------------------------------------------------------------
# One run (in its own interpreter)


class RssSampler:
    """Resident memory of this process and its descendants, sampled every `interval` s (psutil)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            try:
                procs = [me] + me.children(recursive=True)
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    if "python" not in proc.name().lower():
                        continue
                    self.samples.setdefault(proc.pid, []).append(proc.memory_info().rss)
                except psutil.Error:
                    pass

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth(self, pids: set[int]) -> int:
        """Largest rise, over the given processes, of their resident floor (lowest sample) from the
        second quarter of their samples to the last quarter: memory a reused worker keeps."""
        worst = 0
        for pid in pids:
            s = self.samples.get(pid, [])
            if len(s) < 8:
                continue
            q = len(s) // 4
            worst = max(worst, min(s[-q:]) - min(s[q:2 * q]))
        return worst


def run_one(recipe_path: str, executor: str, density: int, cache: str | None, workdir: str) -> dict:
    """Run the recipe once and return, per task, its expected rows, projected and measured peak."""
    import polaragg
    from polaragg.ledger import read_records
    from polaragg.recipe import SyntheticSource
    from polaragg.runner import plan_recipe
    from polaragg.sources import load_catalog, synthetic_folder

    recipe = polaragg.load_recipe(recipe_path)
    if cache and isinstance(recipe.source, SyntheticSource):
        recipe = recipe.model_copy(update={"source": recipe.source.model_copy(update={"cache_dir": cache})})
    recipe = dense_recipe(recipe, density)
    if isinstance(recipe.source, SyntheticSource):
        synthetic_folder(recipe.source)
    plan = plan_recipe(recipe, load_catalog(recipe), executor)
    store = str(Path(workdir) / f"{executor}-{density}x.zarr")
    with RssSampler() as sampler:
        polaragg.run(recipe, store=store, executor=executor, progress=False)
    me = os.getpid()
    workers = {pid for pid in sampler.samples if pid != me} or {me}
    records = read_records(store)
    measured = {(r.parent, r.child_lo): r for r in records}
    reports: dict[str, list[dict]] = {}
    for r in records:
        for g in r.granule_reports:
            reports.setdefault(g["granule"], []).append(g)
    granules = []
    for ref, projected in zip(plan.granules, plan.granule_projected_bytes):
        got = reports.get(ref.granule_id, [])
        g = got[0] if len(got) == 1 else None  # reported exactly once, or counted as missing
        granules.append({"granule": ref.granule_id, "projected": projected,
                         "measured": g["peak_memory_bytes"] if g else None, "rows": g["rows"] if g else None,
                         "reports": len(got), "status": g["status"] if g else "missing"})
    tasks = []
    for t in plan.tasks:
        r = measured.get((t.parent, t.child_lo))
        tasks.append({"parent": t.parent, "child_lo": t.child_lo, "expected_rows": t.expected_rows,
                      "projected": t.projected_bytes, "measured": r.peak_memory_bytes if r else None,
                      "rows_in_cell": r.rows_in_cell if r else None, "status": r.status if r else "missing"})
    m = plan.memory
    from polaragg.memory import PARTITION_BYTES_PER_ROW

    return {"executor": executor, "density": density, "split": plan.split, "tasks": tasks, "granules": granules,
            "model": {"baseline": m.baseline_bytes, "per_row": m.bytes_per_row,
                      "concurrent": getattr(m, "concurrent_tasks", 1), "granule_per_row": PARTITION_BYTES_PER_ROW},
            "workers": len(workers), "growth": sampler.growth(workers)}


# ----------------------------------------------------------------------------------------------------
# Summary


def summarize(result: dict) -> dict:
    tasks = [t for t in result["tasks"] if t["measured"] is not None]
    missing = len(result["tasks"]) - len(tasks)
    empty = [t["measured"] for t in tasks if t["expected_rows"] < EMPTY_ROWS]
    baseline = max(empty) if empty else min((t["measured"] for t in tasks), default=0)
    per_row = max(((t["measured"] - baseline) / t["expected_rows"] for t in tasks if t["expected_rows"] >= EMPTY_ROWS),
                  default=0.0)
    over = sum(t["measured"] > t["projected"] for t in tasks)
    model = result["model"]
    granules = [g for g in result.get("granules", []) if g["measured"] is not None]
    g_missing = len(result.get("granules", [])) - len(granules)
    g_over = sum(g["measured"] > g["projected"] for g in granules)
    slope = _slope([g["rows"] for g in granules], [g["measured"] for g in granules])
    errors = [f"{missing} tasks without a ledger record"] if missing else []
    if g_missing:
        errors.append(f"{g_missing} granules not reported exactly once")
    return {
        "executor": result["executor"], "density": f"{result['density']}x", "tasks": len(result["tasks"]),
        "split": result["split"],
        "max_expected_rows": round(max((t["expected_rows"] for t in result["tasks"]), default=0)),
        "max_measured_mib": round(max((t["measured"] for t in tasks), default=0) / MIB, 1),
        "max_projected_mib": round(max((t["projected"] for t in result["tasks"]), default=0) / MIB, 1),
        "over_projection": over + missing,
        "min_headroom_mib": round(min((t["projected"] - t["measured"] for t in tasks), default=0) / MIB, 1),
        "empty_task_peak_mib": round(baseline / MIB, 1),
        "max_bytes_per_row": round(max(per_row, 0.0), 1),
        "workers_seen": result["workers"],
        "max_worker_growth_mib": round(result["growth"] / MIB, 1),
        "model_baseline_mib": round(model["baseline"] / MIB, 1),
        "model_bytes_per_row": model["per_row"],
        "model_concurrent_tasks": model["concurrent"],
        "granule_tasks": len(result.get("granules", [])),
        "max_granule_rows": max((g["rows"] for g in granules), default=0),
        "max_granule_measured_mib": round(max((g["measured"] for g in granules), default=0) / MIB, 1),
        "max_granule_projected_mib": round(max((g["projected"] for g in result.get("granules", [])), default=0) / MIB, 1),
        "granule_over_projection": g_over + g_missing,
        "granule_min_headroom_mib": round(min((g["projected"] - g["measured"] for g in granules), default=0) / MIB, 1),
        "granule_bytes_per_row_fit": "" if slope is None else round(slope, 1),
        "model_granule_bytes_per_row": model.get("granule_per_row", ""),
        "error": "; ".join(errors),
    }


def _slope(x: list[int], y: list[int]) -> float | None:
    """Least-squares slope of y over x (bytes per row), None with fewer than 3 points or no spread."""
    import numpy as np

    if len(x) < 3 or len(set(x)) < 2:
        return None
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def _int(x) -> int:
    return int(x) if x not in ("", None) else 0


def markdown(rows: list[dict], machine: str, date: str) -> str:
    ok = [r for r in rows if not r["error"]]
    cell_bad = sum(_int(r["over_projection"]) for r in ok)
    granule_bad = sum(_int(r["granule_over_projection"]) for r in ok)
    failed = sum(bool(r["error"]) for r in rows)
    lines = [
        "# Memory: measured per-task peak against the plan's projection, both stages",
        "",
        f"{date}, {machine}. Demo recipe (1x) and a 4x-density version (4 reference ground tracks for each of the "
        "demo's, same area and grid), each run in a fresh interpreter. Measured: the ledger's "
        "`peak_memory_bytes` of each cell-stage task and, in `granule_reports`, of each granule's partition "
        "(VmHWM of the process running it, reset at the task's start; for `single-threaded`, `threads` and "
        "`dask` the whole process while the task ran, the client and other tasks included). Projected: the "
        "plan's `projected_memory_bytes` from `polaragg.memory.model_for(executor)`: cell tasks baseline + "
        "bytes per expected row, granule partitions baseline + `PARTITION_BYTES_PER_ROW` x the granule's "
        "catalogued rows (both with the other tasks of a shared process at the busiest task's or granule's "
        "rows, where tasks share one).",
        "",
        f"**Measured > projected: {cell_bad} cell-stage tasks, {granule_bad} granule partitions"
        f"{f'; {failed} runs failed or incomplete' if failed else ''}** (the script exits 1 unless all 0).",
        "",
        "## Cell stage",
        "",
        "| executor | density | tasks | split | max expected rows | max measured MiB | max projected MiB | measured > "
        "projected | min headroom MiB | near-empty task peak MiB | max (peak - that) B/row | worker processes | "
        "max worker growth MiB | model |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        model = f"{float(r['model_baseline_mib'] or 0):.0f} MiB + {float(r['model_bytes_per_row'] or 0):.0f} B/row"
        if _int(r["model_concurrent_tasks"]) > 1:
            model += f", {r['model_concurrent_tasks']} tasks per process"
        if r["error"]:
            model += f" - ERROR: {r['error']}"
        lines.append(
            f"| {r['executor']} | {r['density']} | {r['tasks']} | {r['split']} | {_int(r['max_expected_rows']):,} | "
            f"{r['max_measured_mib']} | {r['max_projected_mib']} | {r['over_projection']} | {r['min_headroom_mib']} | "
            f"{r['empty_task_peak_mib']} | {r['max_bytes_per_row']} | {r['workers_seen']} | "
            f"{r['max_worker_growth_mib']} | {model} |")
    lines += [
        "",
        "## Granule stage",
        "",
        "| executor | density | granules | max rows read | max measured MiB | max projected MiB | measured > "
        "projected | min headroom MiB | slope of peak over rows, B/row | model |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        if r["error"] and not r["granule_tasks"]:
            lines.append(f"| {r['executor']} | {r['density']} | ERROR: {r['error']} |" + " |" * 7)
            continue
        model = (f"{float(r['model_baseline_mib'] or 0):.0f} MiB + {float(r['model_granule_bytes_per_row'] or 0):.0f} "
                 "B/catalogued row")
        if _int(r["model_concurrent_tasks"]) > 1:
            model += f", {r['model_concurrent_tasks']} tasks per process"
        lines.append(
            f"| {r['executor']} | {r['density']} | {r['granule_tasks']} | {_int(r['max_granule_rows']):,} | "
            f"{r['max_granule_measured_mib']} | {r['max_granule_projected_mib']} | {r['granule_over_projection']} | "
            f"{r['granule_min_headroom_mib']} | {r['granule_bytes_per_row_fit'] or '-'} | {model} |")
    lines += [
        "",
        "- *near-empty task peak*: the largest peak of cell tasks expecting < 1,000 rows, i.e. the worker baseline "
        "(for the in-process executors, the client process, with other tasks running beside).",
        "- *max (peak - that) B/row*: the largest measured cost per expected row above that baseline, over "
        "cell tasks expecting >= 1,000 rows; it includes the error of the footprint row estimate.",
        "- *slope of peak over rows*: least-squares slope of the granule partitions' measured peak against the rows "
        "they read (what one more row costs the granule stage; the baseline dominates the figure).",
        "- *worker growth*: rise of a worker process's lowest resident memory from the second to the last "
        "quarter of its life (psutil samples every 0.1 s): what a reused worker keeps between tasks.",
        "",
    ]
    return "\n".join(lines)


def machine() -> str:
    """The machine line, from the main benchmark's own description of this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import machine_info

    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    p.add_argument("--executors", nargs="+", default=list(OFFLINE_EXECUTORS))
    p.add_argument("--densities", nargs="+", type=int, default=[1, 4])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--cache", default=None, help="synthetic data cache (default: $POLARAGG_CACHE or ~/.cache/polaragg)")
    p.add_argument("--raw", default=None, help="also write every task's figures to this JSON file")
    p.add_argument("--one", nargs=2, metavar=("EXECUTOR", "DENSITY"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        with tempfile.TemporaryDirectory(prefix="polaragg-mem-") as workdir:
            result = run_one(args.recipe, args.one[0], int(args.one[1]), args.cache, workdir)
        Path(args.json).write_text(json.dumps(result))
        return 0

    executors = [e for item in args.executors for e in item.split(",") if e]
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="polaragg-mem-") as tmp:
        for density in args.densities:
            for name in executors:
                path = Path(tmp) / f"{name}-{density}.json"
                command = [sys.executable, __file__, "--recipe", args.recipe, "--one", name, str(density),
                           "--json", str(path)] + (["--cache", args.cache] if args.cache else [])
                print(f"{name} {density}x ...", file=sys.stderr, flush=True)
                done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0 or not path.exists():
                    tail = (done.stderr or "").strip().splitlines()[-1:] or ["no output"]
                    rows.append({c: "" for c in COLUMNS} | {"executor": name, "density": f"{density}x",
                                                            "over_projection": 0, "granule_over_projection": 0,
                                                            "model_concurrent_tasks": 1, "model_baseline_mib": 0,
                                                            "model_bytes_per_row": 0, "error": tail[0][:200]})
                    print(f"  FAILED: {rows[-1]['error']}", file=sys.stderr)
                    continue
                result = json.loads(path.read_text())
                raw.append(result)
                rows.append(summarize(result))
                r = rows[-1]
                print(f"  {r['tasks']} tasks, max measured {r['max_measured_mib']} MiB, max projected "
                      f"{r['max_projected_mib']} MiB, over {r['over_projection']}; {r['granule_tasks']} granule partitions, "
                      f"max measured {r['max_granule_measured_mib']} MiB, max projected "
                      f"{r['max_granule_projected_mib']} MiB, over {r['granule_over_projection']}",
                      file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "memory.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "memory.md").write_text(markdown(rows, machine(), dt.datetime.now().strftime("%Y-%m-%d %H:%M")))
    if args.raw:
        Path(args.raw).write_text(json.dumps(raw))
    failed = any(r["error"] for r in rows) or any(_int(r["over_projection"]) or _int(r["granule_over_projection"])
                                                  for r in rows)
    print(f"wrote {out}/memory.md and memory.csv; {'FAILED' if failed else 'every task within its projection'}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
