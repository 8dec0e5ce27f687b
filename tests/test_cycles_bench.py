"""benchmarks/cycles.py --quick runs end to end as a command: its CSV holds one row per point, every point
partitioned each of its granules exactly once (counted against the HDF5 files generated for its cycles), and
its report shows the rows and figures the CSV holds."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "cycles.py"
CYCLE = re.compile(r"^ATL06_\d{14}_\d{4}(\d{2})\d{2}_\d{3}_\d{2}\.h5$")
QUICK_POINTS = ["1c", "1c-fit", "2c", "2c-nofit", "2c-pyramid"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("cycles")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The command run once: (results folder, data cache, completed process)."""
    tmp = tmp_path_factory.mktemp("cycles-bench")
    cache = os.environ.get("POLARAGG_TEST_CACHE") or str(tmp / "cache")
    out = tmp / "results"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), "--cache", cache,
                           "--workdir", str(tmp / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, Path(cache), proc


def _granule_files(bench, cache: Path, cycles: tuple[int, ...]) -> list[str]:
    """The HDF5 granules generated for the quick source of these cycles (found by the cache's record of its
    parameters), each checked to be of one of the cycles by its name."""
    folders = []
    for done in cache.glob("synthetic-*/.complete"):
        params = json.loads(done.read_text())
        if (params.get("seed") == bench.SEED and params.get("cycles") == list(cycles)
                and params.get("regions") == list(bench.QUICK_REGIONS)
                and params.get("bbox") == list(bench.QUICK_BBOX)
                and (params.get("rgts") or {}).get("step") == bench.QUICK_RGT_STEP):
            folders.append(done.parent)
    assert len(folders) == 1, folders
    names = sorted(p.name for p in folders[0].glob("*.h5"))
    assert names and all(int(CYCLE.match(n).group(1)) in cycles for n in names)
    assert {int(CYCLE.match(n).group(1)) for n in names} == set(cycles)  # every cycle has granules
    return names


def test_quick_rows_and_each_granule_partitioned_once(bench, quick):
    out, cache, _ = quick
    rows = list(csv.DictReader((out / "cycles.csv").open()))
    assert [(r["executor"], r["point"]) for r in rows] == [("single-threaded", k) for k in QUICK_POINTS]
    assert not any(r["error"] for r in rows)
    by = {r["point"]: r for r in rows}
    for r in rows:
        cycles = tuple(int(c) for c in r["cycles"].split())
        assert cycles == bench.QUICK_SERIES[int(r["n_cycles"])]
        assert int(r["time_bins"]) == len(cycles)  # one bin per cycle
        files = _granule_files(bench, cache, cycles)
        # Counted independently (the files on disk) and by the ledger: one partition report per granule.
        assert int(r["granule_reports"]) == int(r["granules_reported"]) == int(r["granules"]) \
            == int(r["plan_granules"]) == len(files) > 0, r
        assert r["each_granule_once"] == "True"
        assert int(r["runs"]) == 1 and int(r["tasks"]) == int(r["plan_tasks"]) > 0
        # Task-seconds and tasks CPU are both stages of the ledger.
        assert float(r["task_s"]) == pytest.approx(float(r["cell_task_s"]) + float(r["granule_task_s"]), abs=0.002)
        assert float(r["tasks_cpu_s"]) == pytest.approx(float(r["cell_cpu_s"]) + float(r["granule_cpu_s"]), abs=0.002)
        assert float(r["granule_task_s"]) > 0 and float(r["cell_task_s"]) > 0
        assert float(r["task_s_per_1e6_obs"]) == pytest.approx(
            float(r["task_s"]) / int(r["observations"]) * 1e6, rel=0.01)
    # Twice the cycles: twice the granules, each read once (no re-read per bin).
    assert int(by["2c"]["granules"]) == 2 * int(by["1c"]["granules"])
    # The fit and the pyramid change neither the rows aggregated nor the granules read.
    assert by["1c"]["observations"] == by["1c-fit"]["observations"]
    assert by["2c"]["observations"] == by["2c-nofit"]["observations"] == by["2c-pyramid"]["observations"]
    assert int(by["2c"]["observations"]) > int(by["1c"]["observations"]) > 0
    assert [by[k]["fit"] for k in QUICK_POINTS] == ["False", "True", "True", "False", "True"]
    assert by["2c-pyramid"]["coarsest_order"] == str(bench.PYRAMID_ORDER)
    # The fit's share is given on the fitted row of each like-for-like pair, and is that pair's difference.
    for on, off in (("1c-fit", "1c"), ("2c", "2c-nofit")):
        share = (float(by[on]["task_s"]) - float(by[off]["task_s"])) / float(by[on]["task_s"])
        rounding = 0.0011 / float(by[on]["task_s"]) + 0.0001  # task-s in the CSV have 3 decimals, shares 4
        assert float(by[on]["fit_share_task_s"]) == pytest.approx(share, abs=rounding)
        assert by[off]["fit_share_task_s"] == ""


def test_quick_report_shows_the_csv(bench, quick):
    out, _, proc = quick
    rows = list(csv.DictReader((out / "cycles.csv").open()))
    md = (out / "cycles.md").read_text()
    assert proc.stdout.strip() == md.strip()  # the command prints its report
    for heading in ("## Acceptance figures", "## Points", "## Task-seconds against observations and cycles",
                    "## The change fit's cost", "## The pyramid's cost", "## Reading"):
        assert heading in md
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert re.search(rf"Machine: .*, {usable} cores,", md)
    assert "Code measured:" in md and "Command: `python benchmarks/cycles.py --quick" in md
    assert re.search(r"\d+% CPU busy before the benchmark and \d+% after", md)
    table = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| single-threaded |")]
    for r in rows:  # each point's row: its granules, partition reports and task-seconds as in the CSV
        row = [cells for cells in table if cells[1].strip() == r["label"] and len(cells) == 15]
        assert len(row) == 1, r["label"]
        cells = [c.strip() for c in row[0]]
        assert cells[4] == r["granules"] and cells[5] == r["granule_reports"]
        assert float(cells[8]) == pytest.approx(float(r["task_s"]), abs=0.006)
    assert "5 of 5** points" in md and "| reports = granules = the plan's | yes |" in md


def test_the_once_check_fails_on_a_reread_or_a_missed_granule(bench):
    """The benchmark's check is not a formality: a granule reported twice, one missing, or one the plan does
    not hold each fail it."""
    good = bench.Run(granules=6, reports=6, reported=6, reported_is_plan=True)
    assert good.each_granule_once
    assert not bench.Run(granules=6, reports=7, reported=6, reported_is_plan=True).each_granule_once  # re-read
    assert not bench.Run(granules=6, reports=5, reported=5, reported_is_plan=False).each_granule_once  # missed
    assert not bench.Run(granules=6, reports=6, reported=6, reported_is_plan=False).each_granule_once  # not the plan's
    assert not bench.Run(granules=0, reports=0, reported=0, reported_is_plan=True).each_granule_once  # nothing read
    assert not bench.Run(granules=6, reports=6, reported=6, reported_is_plan=True, error="boom").each_granule_once
