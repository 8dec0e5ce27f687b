"""The benchmark command runs end to end on a sub-area and its table is consistent with its own figures."""

import csv
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _load_bench():
    return load_benchmark("run")


def test_benchmark_quick_run_writes_a_consistent_table(demo_recipe, tmp_path):
    from polaragg.runner import plan_recipe

    bench = _load_bench()
    out = tmp_path / "results"
    # As a script, in a process of its own: its memory figures are a process's (this test session's own
    # resident memory, grown by earlier tests, would count in the single-threaded tasks' peaks)
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--executors", "single-threaded,threads,processes",
                           "--no-scaling", "--repeats", "1", "--cpu-repeats", "1", "--floor-repeats", "1",
                           "--paired-rounds", "2",
                           "--max-wait", "0", "--max-extra", "0", "--cache", str(demo_recipe.source.cache_dir),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "latest.csv").open()))
    assert [r["executor"] for r in rows] == ["single-threaded", "threads", "processes", "read-floor (h5py)"]
    runs, floor = rows[:3], rows[3]
    assert not any(r["error"] for r in runs)
    # Both executors aggregate the same observations; the ratio columns are the figures they claim to divide.
    assert int(runs[0]["observations"]) == int(runs[1]["observations"]) == int(runs[2]["observations"]) > 100_000
    granules = len(plan_recipe(bench.quick_recipe(demo_recipe)).granules)
    for r in runs:
        assert float(r["wall_over_floor"]) == pytest.approx(float(r["wall_s"]) / float(floor["wall_s"]), rel=0.02)
        assert float(r["tasks_cpu_over_floor_cpu"]) == pytest.approx(
            float(r["tasks_cpu_s"]) / float(floor["tasks_cpu_s"]), rel=0.02)
        assert float(r["cycle_lambda_usd"]) > 0 and float(r["cycle_coiled_usd"]) > 0
        # Task-seconds and task CPU are both stages; each granule's granule-stage task is reported once.
        assert float(r["task_s"]) == pytest.approx(float(r["cell_task_s"]) + float(r["granule_task_s"]), abs=0.002)
        assert float(r["tasks_cpu_s"]) == pytest.approx(float(r["cell_cpu_s"]) + float(r["granule_cpu_s"]),
                                                       abs=0.002)
        assert float(r["granule_task_s"]) > 0 and float(r["granule_cpu_s"]) > 0 and float(r["cell_cpu_s"]) > 0
        assert int(r["granule_tasks"]) == granules
        assert float(r["peak_granule_task_mib"]) > 0
        assert int(r["over_projection"]) == int(r["granule_over_projection"]) == 0
    # Single-threaded runs in the benchmark's process: its process CPU holds the tasks' CPU and more.
    assert float(runs[0]["process_cpu_s"]) > float(runs[0]["tasks_cpu_s"])
    # Cores: one for single-threaded; the processes pool's size is the recipe's max_workers, else one worker
    # per CPU of this machine (whatever it has).
    pool = demo_recipe.executor.max_workers or os.cpu_count()
    assert [int(r["cores"]) for r in runs] == [1, pool, pool]
    for r in runs:
        per_core = int(r["observations"]) / (float(r["wall_s"]) * int(r["cores"]))
        assert float(r["obs_per_s_per_core"]) == pytest.approx(per_core, rel=0.01, abs=1.0)
    # The acceptance figures come from the paired rounds: a floor pass and one run per executor each, the
    # executors' order rotating; each figure is the median of the rounds' own ratios.
    paired = list(csv.DictReader((out / "paired.csv").open()))
    assert [p["order"].split() for p in paired] == [["single-threaded", "threads", "processes"],
                                                   ["threads", "processes", "single-threaded"]]
    assert not any(p["errors"] for p in paired)

    def median_ratio(num, den):
        return statistics.median(float(p[num]) / float(p[den]) for p in paired)

    acc = {a["key"]: a for a in csv.DictReader((out / "acceptance.csv").open())}
    assert set(acc) == {"tasks_cpu_over_floor", "run_cpu_over_floor", "processes_speedup_4x", "threads_speedup_4x"}
    expected = {
        "tasks_cpu_over_floor": (median_ratio("single-threaded_tasks_cpu", "floor_cpu_s"), 1.5, "<="),
        "run_cpu_over_floor": (median_ratio("single-threaded_process_cpu", "floor_cpu_s"), 2.0, "<="),
        "processes_speedup_4x": (median_ratio("single-threaded_wall", "processes_wall"), 1.6, ">="),
        "threads_speedup_4x": (median_ratio("single-threaded_wall", "threads_wall"), 1.0, ">="),
    }
    for key, (value, target, way) in expected.items():
        assert float(acc[key]["value"]) == pytest.approx(value, rel=0.02), key
        assert acc[key]["met"] == str(value <= target if way == "<=" else value >= target), key
    # A single-threaded run's process CPU holds its tasks' CPU and more.
    assert all(float(p["single-threaded_process_cpu"]) > float(p["single-threaded_tasks_cpu"]) for p in paired)
    md = (out / "latest.md").read_text()
    assert "Pipeline / read floor:" in md and "## Acceptance figures" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for r in runs:  # each executor's row shows the cores its CSV row reports
        row = [line for line in table if line.startswith(f"| {r['executor']} |")]
        assert len(row) == 1 and row[0].split("|")[2].strip() == r["cores"], row
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert re.search(rf"Machine: .*, {usable} cores,", md), "the machine line reports this machine's cores"
    assert (out / "latest.png").stat().st_size > 10_000
