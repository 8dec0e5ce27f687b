"""The `polaragg` command."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from .domain import ALL_EXECUTORS


def _demo_recipe_path() -> Path:
    return Path(str(resources.files("polaragg") / "recipes" / "demo.yaml"))


def _store_variables(store: str) -> set[str]:
    import xarray as xr

    return set(xr.open_zarr(store).data_vars)


def cmd_demo(args: argparse.Namespace) -> int:
    from .recipe import load_recipe
    from .runner import run
    from .sources import synthetic_folder
    from .viz import plot_store

    from .store import inspect_target

    out = Path(args.out)
    recipe = load_recipe(_demo_recipe_path())
    store = str(out / "demo.zarr")
    inspect_target(store)  # refuses a path that is not polaragg's before anything is generated
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] Synthetic ATL06 granules (cached after the first run) ...", flush=True)
    folder = synthetic_folder(recipe.source)
    n = len(list(folder.glob("*.h5")))
    print(f"      {n} granules in {folder} ({time.perf_counter() - t0:.1f}s)", flush=True)
    print(f"[2/4] Catalog, plan and compute on '{args.executor or recipe.executor.name}' ...", flush=True)
    summary = run(recipe, store=store, executor=args.executor, overwrite=True)  # only ever a polaragg store
    print("[3/4] Maps ...", flush=True)
    order = recipe.grid.child_order
    png = plot_store(store, var="h_mean", out=out / "demo_h_mean.png",
                     title=f"polaragg demo: h_mean, latest bin (order {order})")
    print(f"      {png}")
    if "dhdt" in _store_variables(store):  # several cycles: the change per cell beside the heights
        dhdt = plot_store(store, var="dhdt", out=out / "demo_dhdt.png", cmap="RdBu", vmin=-2.0, vmax=2.0,
                          title=f"polaragg demo: dh/dt (m/yr), cells fitted over every cycle (order {order})")
        print(f"      {dhdt}")
    print("[4/4] Done.\n")
    print(summary.format())
    print(_cost_text(summary.cost))
    print(f"\nOpen it: xr.open_zarr({store!r}).dggs.decode()   (demo total {time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    summary = run(args.recipe, store=args.store, executor=args.executor, max_workers=args.workers,
                  resume=args.resume, overwrite=True if args.overwrite else None, append=args.append)
    print(summary.format())
    print(_cost_text(summary.cost))
    return 0 if summary.cells_failed == 0 else 3


def cmd_check(args: argparse.Namespace) -> int:
    from .runner import check

    checks = check(args.recipe, store=args.store, executor=args.executor, max_workers=args.workers)
    for c in checks:
        print(c.format())
    failed = [c for c in checks if c.status == "failed"]
    print(f"preflight: {len(failed)} check(s) failed" if failed else "preflight: ready to run")
    return 1 if failed else 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from .recipe import load_recipe
    from .sources import load_catalog

    recipe = load_recipe(args.recipe)
    out = Path(args.out or f"polaragg-out/{recipe.name}.catalog.parquet")
    _check_output_file(out, args.overwrite, _is_catalog)
    catalog = load_catalog(recipe)
    catalog.write(out)
    for line in catalog.notes():
        print(f"note: {line}")
    pairs = catalog.pairs()
    print(f"catalog {out}: {len(catalog.granules)} granules, {len(catalog.parents)} AOI parent cells "
          f"(order {catalog.parent_order}), {len(pairs)} (cell, granule) pairs")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import numpy as np

    from .runner import plan_recipe

    from .cost import estimate
    from .prices import load_prices

    from .recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.map:
        _check_output_file(Path(args.map), args.overwrite, _is_polaragg_png)
    from .sources import load_catalog

    catalog = load_catalog(recipe)
    for line in catalog.notes():
        print(f"note: {line}")
    plan = plan_recipe(recipe, catalog)
    print(f"executor:            {recipe.executor.name} (memory per task {recipe.executor.memory_per_task})")
    from .calibration import default_calibration

    print(describe_plan(plan, top=args.top, observations_per_row=default_calibration().observations_per_row))
    print()
    print(estimate(plan, prices=load_prices(args.prices), executor=recipe.executor.name, catalog=catalog).format())
    if args.map:
        from .viz import plot_parent_cells

        with_granules = {t.parent for t in plan.tasks if t.granules}
        has = np.array([int(p) in with_granules for p in plan.parents])
        png = plot_parent_cells(plan.parents, plan.grid.parent_order, args.map,
                                title=f"planned parent cells (order {plan.grid.parent_order})", highlight=has)
        print(f"map: {png}")
    return 0


def describe_plan(plan, top: int = 10, observations_per_row: float = 1.0) -> str:
    """Human-readable plan: cells, granules, pairs, expected rows and observations, the largest tasks.

    Expected observations are the expected rows times the calibrated share that passes the filters,
    the same figure the cost estimate uses.
    """
    import healpix_geo.nested as hpn
    import numpy as np

    granules = {g.granule_id for t in plan.tasks for g in t.granules}
    pairs = sum(len(t.granules) for t in plan.tasks if t.child_lo == 0)
    expected = np.array([t.expected_rows for t in plan.tasks])
    lines = [
        f"parent cells:        {len(plan.parents):,} (order {plan.grid.parent_order}; "
        f"{len({t.parent for t in plan.tasks if t.granules}):,} with granules)",
        f"tasks:               {len(plan.tasks):,} ({plan.split} per parent cell; projected memory per task "
        f"<= {plan.max_projected_bytes / 2**20:,.0f} MiB)",
        f"child cells:         {plan.n_cells:,} (order {plan.grid.child_order})",
        f"granules:            {len(granules):,}",
        f"(cell, granule):     {pairs:,} pairs",
        f"expected rows:       {expected.sum():,.0f} total, {expected.mean() if expected.size else 0:,.0f} per task "
        f"on average (from footprints)",
        f"expected obs.:       {sum(round(r * observations_per_row) for r in expected):,.0f} "
        f"(rows x {observations_per_row:.3f} passing the filters; used by the estimate below)",
        f"largest {min(top, len(plan.tasks))} tasks (run first):",
        f"  {'parent':>8} {'children':>11} {'lon':>8} {'lat':>7} {'granules':>8} {'expected rows':>14}",
    ]
    order = plan.largest_first()[:top]
    if order:
        ids = np.array([plan.tasks[i].parent for i in order], dtype=np.uint64)
        lon, lat = hpn.healpix_to_lonlat(ids, plan.grid.parent_order, ellipsoid="WGS84")
        for k, i in enumerate(order):
            t = plan.tasks[i]
            lines.append(f"  {t.parent:>8} {t.child_lo:>5}-{t.child_hi:<5} {float(lon[k]):8.2f} "
                         f"{float(lat[k]):7.2f} {len(t.granules):>8} {t.expected_rows:>14,.0f}")
    return "\n".join(lines)


def _cost_text(cost: dict) -> str:
    from .cost import format_cost

    return format_cost(cost)


def cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import SynthConfig, generate

    bbox = tuple(args.bbox) if args.bbox else None
    rgts = tuple(range(args.rgt_start, args.rgt_stop, args.rgt_step))
    granules = generate(args.out, SynthConfig(seed=args.seed, cycles=tuple(args.cycles), rgts=rgts,
                                              regions=tuple(args.regions), bbox=bbox))
    rows = sum(g.rows for g in granules)
    print(f"wrote {len(granules)} granules ({rows:,} rows) to {args.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .validate import store_status

    print(store_status(args.store).format())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate_store

    problems = validate_store(args.store)
    if problems:
        print(f"{args.store}: NOT valid ({len(problems)} problem(s))")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.store}: valid")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from . import viz

    out = args.out or viz.default_map_path(args.store, args.var)
    _check_output_file(Path(out), args.overwrite, _is_polaragg_png)
    print(viz.plot_store(args.store, var=args.var, out=out))
    return 0


def _check_output_file(path: Path, overwrite: bool, ours) -> None:
    """Refuse to write over a file that polaragg did not make, or over one of ours unless asked."""
    from .store import StoreError

    if path.is_dir():
        raise StoreError(f"{path} is a folder; give a file name")
    if not path.exists():
        return
    if not ours(path):
        raise StoreError(f"{path} exists and was not written by polaragg; choose another file name")
    if not overwrite:
        raise StoreError(f"{path} exists; pass --overwrite to replace it")


def _is_catalog(path: Path) -> bool:
    try:
        import pyarrow.parquet as pq

        return b"polaragg" in (pq.read_schema(path).metadata or {})
    except Exception:
        return False


def _is_polaragg_png(path: Path) -> bool:
    """A PNG polaragg drew: matplotlib writes its Software text chunk, with polaragg's title metadata."""
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"polaragg" in head


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polaragg", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    executor_help = "executor to run on (default: the recipe's executor.name)"

    p = sub.add_parser("demo", help="synthesise the embedded ATL06 demo data, aggregate it, map it")
    p.add_argument("--out", default="polaragg-out", help="output folder (default: polaragg-out)")
    p.add_argument("--executor", choices=ALL_EXECUTORS, default=None, help=executor_help)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a recipe into its Zarr store")
    p.add_argument("recipe", help="recipe file (YAML)")
    p.add_argument("--store", default=None, help="output store path or URL (overrides the recipe)")
    p.add_argument("--executor", choices=ALL_EXECUTORS, default=None, help=executor_help)
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: the number of cores)")
    p.add_argument("--resume", action="store_true",
                   help="run only tasks without an ok/empty ledger record for this recipe and its inputs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing polaragg store at the path (never anything else)")
    p.add_argument("--append", action="store_true",
                   help="add the recipe's new time bins (e.g. a new cycle) to the store, refitting from its sums")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="only the preflight of a run: credentials, store and work_dir writable, executor "
                                     "reachable and matching; creates nothing")
    p.add_argument("recipe", help="recipe file (YAML)")
    p.add_argument("--store", default=None, help="output store path or URL (overrides the recipe)")
    p.add_argument("--executor", choices=ALL_EXECUTORS, default=None, help=executor_help)
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: the number of cores)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("status", help="progress and failures (grouped by reason) of a store")
    p.add_argument("store", help="store path or URL")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("validate", help="check a store is complete and consistent; exit 1 with reasons if not")
    p.add_argument("store", help="store path or URL")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("catalog", help="search granules once and write the catalog (Parquet)")
    p.add_argument("recipe", help="recipe file (YAML)")
    p.add_argument("--out", default=None, help="catalog file (default: polaragg-out/<name>.catalog.parquet)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing polaragg catalog file")
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("plan", help="show the plan without reading any granule")
    p.add_argument("recipe", help="recipe file (YAML)")
    p.add_argument("--top", type=int, default=10, help="how many of the largest tasks to list")
    p.add_argument("--map", default=None, metavar="PNG", help="also draw the planned parent cells")
    p.add_argument("--prices", default=None, metavar="YAML", help="price overrides for the estimate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing map drawn by polaragg")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("synth", help="write synthetic ATL06 granules and UMM-G records")
    p.add_argument("out", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cycles", type=int, nargs="+", default=[22], metavar="CYCLE",
                   help="ICESat-2 cycles, the same tracks repeated (default 22)")
    p.add_argument("--rgt-start", type=int, default=1, help="first reference ground track")
    p.add_argument("--rgt-stop", type=int, default=1388, help="last reference ground track (exclusive)")
    p.add_argument("--rgt-step", type=int, default=20, help="step between reference ground tracks")
    p.add_argument("--regions", type=int, nargs="+", default=[10, 11, 12], choices=[3, 4, 5, 10, 11, 12], help="ATL06 regions: 10 11 12 Antarctica, 3 4 5 Greenland (default 10 11 12)")
    p.add_argument("--bbox", type=float, nargs=4, metavar=("LON_MIN", "LAT_MIN", "LON_MAX", "LAT_MAX"),
                   help="clip the granules to a lon/lat box")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("map", help="polar stereographic map of a store variable")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--var", default="h_mean", help="variable to draw (default h_mean)")
    p.add_argument("--out", default=None, help="PNG file (default: next to the store, <store>_<var>.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing map drawn by polaragg")
    p.set_defaults(func=cmd_map)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; an error a user can cause is one line on stderr (a traceback only with --debug)."""
    import warnings

    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"polaragg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line; --debug shows the traceback
        print(f"polaragg {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 2


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user as one line each; library deprecation noise is not shown."""
    if issubclass(category, UserWarning) and not issubclass(category, (DeprecationWarning, FutureWarning)) \
            and category.__module__.startswith("polaragg"):
        print(f"polaragg: warning: {message}", file=sys.stderr)


def describe_error(exc: BaseException) -> str:
    """One line naming what is wrong: the file, bucket or service, never a credential."""
    import errno

    text = " ".join(str(exc).split()) or type(exc).__name__
    name = type(exc).__name__
    if isinstance(exc, PermissionError):
        where = exc.filename or text
        return f"permission denied: cannot write or read {where} (check the folder's permissions or the credentials)"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device writing {exc.filename or 'the store'}"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"read-only file system: cannot write {exc.filename or 'the store'}"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return "no S3 credentials found (set AWS_* variables or a profile)"
    if name in ("ClientError", "InvalidAccessKeyId", "SignatureDoesNotMatch") or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return f"S3 refused the request ({_clip(text)}): check the credentials and bucket"
    if "NoSuchBucket" in text or name == "NoSuchBucket":
        return f"the bucket does not exist ({_clip(text)})"
    if name in ("EndpointConnectionError", "EndpointUnreachable", "ConnectTimeoutError"):
        return f"{_clip(text)}; when it is back, run again with --resume"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {exc.filename or text}"
    if isinstance(exc, KeyError):
        return f"not found: {text}"
    return _clip(text) if isinstance(exc, (ValueError, RuntimeError, OSError)) else f"{name}: {_clip(text)}"


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
