"""CPU time of `polaragg.stats.grouped_stats` (one packed-key sort) against a lexsort formulation.

Process CPU time (`time.process_time`), best of 5, because the cores are shared. Inputs: random rows
over ~4096 cells (the size of a task's chunk), with heights that are float32 values (h_li as stored;
the packed-key sort), the same passed as float32 arrays, and heights float32 cannot hold (the
two-sort fallback). Every result is checked bit for bit against the lexsort formulation, which is
kept in tests/test_stats.py as the reference. With --demo it also times the inputs of the demo recipe's tasks, captured
from one pass of their reads: rows in along-track order, as the aggregator hands them over.

    .venv/bin/python benchmarks/stats_speed.py [--rows 1000000 5000000] [--cells 4096] [--repeats 5] [--demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from polaragg.stats import grouped_stats  # noqa: E402
from test_stats import _reference_grouped_stats  # noqa: E402


def best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def inputs(rng: np.random.Generator, rows: int, cells: int) -> dict[str, tuple]:
    cell = rng.integers(0, cells, rows)
    h32 = rng.normal(1500.0, 800.0, rows).astype(np.float32)  # negative heights included
    sigma = rng.uniform(0.02, 0.2, rows).astype(np.float32).astype(np.float64)
    t = 1.9e8 + rng.uniform(0, 1e6, rows)
    h = h32.astype(np.float64)
    return {
        "float32 values in float64": (cell, h, sigma, t, cells),
        "float32 array": (cell, h32, sigma, t, cells),
        "not float32 (fallback)": (cell, h + 1e-6, sigma, t, cells),
    }


def demo_inputs() -> list[tuple]:
    """The arguments of every non-empty `grouped_stats` call of the demo recipe's tasks."""
    import warnings

    import tempfile

    import polaragg.aggregate as aggregate
    from polaragg.intermediate import Location
    from polaragg.recipe import load_recipe
    from polaragg.runner import plan_recipe
    from polaragg.sources import synthetic_folder

    warnings.simplefilter("ignore")
    recipe = load_recipe(ROOT / "recipes" / "one-cycle.yaml")
    synthetic_folder(recipe.source)
    plan = plan_recipe(recipe)
    calls: list[tuple] = []

    def record(*a):
        calls.append(a)
        return grouped_stats(*a)

    aggregate.grouped_stats = record
    try:
        with tempfile.TemporaryDirectory() as work:  # both stages, serially: the cell stage's real inputs
            location = Location(work)
            columns = tuple(range(len(plan.tasks)))
            index = np.stack([aggregate.index_row(plan.partition(g, location), columns)
                              for g in range(len(plan.granules))])
            for j in columns:
                plan.reduce(j, index[:, j], location)
    finally:
        aggregate.grouped_stats = grouped_stats
    return [a for a in calls if len(a[0])]


def compare(label: str, calls: list[tuple], repeats: int) -> str:
    same = all(np.array_equal(grouped_stats(*a).view(np.uint64), _reference_grouped_stats(*a).view(np.uint64))
               for a in calls)
    t_old = best_cpu(lambda: [_reference_grouped_stats(*a) for a in calls], repeats)
    t_new = best_cpu(lambda: [grouped_stats(*a) for a in calls], repeats)
    return f"| {label} | {t_old:.3f} | {t_new:.3f} | {t_old / t_new:.2f}x | {same} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--cells", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--demo", action="store_true", help="also time the demo recipe's task inputs")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| input | lexsort CPU s | packed-key CPU s | speed-up | bit-identical |")
    print("|---|--:|--:|--:|---|")
    for rows in args.rows:
        for label, a in inputs(rng, rows, args.cells).items():
            row = compare(f"{rows:,} random rows, {args.cells} cells, {label}", [a], args.repeats)
            print(row, flush=True)
    if args.demo:
        calls = demo_inputs()
        rows = sum(len(a[0]) for a in calls)
        print(compare(f"demo: {len(calls)} tasks, {rows:,} rows in along-track order", calls, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
