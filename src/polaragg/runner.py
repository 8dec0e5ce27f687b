"""`run` and `open_dataset`: recipe -> catalog -> plan -> (lazy Dataset | computed store + ledger).

A run refuses any store path that is not new or a polaragg store (and replaces one only when
asked), takes the store's lock, records its inputs, runs every task, gives tasks the granules whose
footprints missed them (rows found there by the footprint checks) and runs those again, retries
tasks lost with a dead worker, and finishes with the summary and cost in the store's attributes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
import uuid
import warnings
from collections import defaultdict
from typing import TextIO

import numpy as np
import xarray as xr

from .catalog import Catalog
from .cost import run_cost
from .domain import ExecutorChoice, GranuleRef
from .executors import cubed_executor, preflight
from .ledger import TaskRecord, clear_records, read_inputs, read_records, write_inputs
from .plan import Plan, PlanError, RunTarget, dataset_from_plan, default_spec, make_plan, run_array
from .progress import LedgerProgress, RunSummary, summarize
from .recipe import Recipe, load_recipe
from .sources import load_catalog
from .store import StoreError, create_store, finalize_store, inspect_target, recipe_attrs, remove_store

REPAIR_ROUNDS = 3  # footprint repairs converge in one round; more only if a repaired read failed


class PolaraggWarning(UserWarning):
    """Something a user should know that does not stop the run (e.g. an AOI without granules)."""


class ResumeError(RuntimeError):
    """A store that cannot be resumed by this recipe, or whose inputs changed since it was made."""


def plan_recipe(recipe: Recipe | str, catalog: Catalog | None = None, executor: str | None = None,
                workers: int | None = None) -> Plan:
    """The recipe's plan, with task memory projected by the model of the executor that will run it.

    Refuses plans above `output.max_cells` child cells; warns when no granule crosses the AOI.
    """
    from .memory import model_for

    recipe = _as_recipe(recipe)
    catalog = catalog if catalog is not None else load_catalog(recipe)
    grid = recipe.grid.grid()
    n_cells = len(np.unique(np.asarray(catalog.parents))) * grid.children_per_parent
    if n_cells > recipe.output.max_cells:
        raise PlanError(f"the plan has {n_cells:,} cells ({len(catalog.parents):,} parent cells x "
                        f"{grid.children_per_parent:,} children), above output.max_cells = "
                        f"{recipe.output.max_cells:,}; use a smaller aoi, a lower grid.child_order, or raise the limit")
    for note in catalog.notes():
        warnings.warn(note, PolaraggWarning, stacklevel=2)
    if len(catalog.granules) == 0 or not any(len(c) for c in catalog.granules.parent_cells):
        warnings.warn("no granule crosses the AOI: every cell will be empty", PolaraggWarning, stacklevel=2)
    return make_plan(catalog, grid, reader=recipe.reader, filters=recipe.filters.filters(),
                     memory_per_task=recipe.executor.memory_bytes, retry=recipe.retry.policy(),
                     memory=model_for(executor or recipe.executor.name, workers or recipe.executor.max_workers))


def open_dataset(recipe: Recipe | str, chunk_manager: str = "cubed", *, spec=None) -> xr.Dataset:
    """The recipe's statistics as a lazy Dataset (dimension `cells`, one chunk per parent cell).

    Nothing is read until compute; selecting cells and computing reads only the granules of the
    parent cells involved. Rows outside a granule's footprint are found and repaired only by `run`
    (its footprint checks need the whole run), so for a catalog whose footprints may lie, use `run`.
    """
    recipe = _as_recipe(recipe)
    plan = plan_recipe(recipe)
    if chunk_manager == "cubed" and spec is None:
        spec = default_spec(allowed_mem=recipe.executor.memory_bytes)
    attrs = recipe_attrs(recipe.model_dump(mode="json"), recipe.fingerprint())
    return dataset_from_plan(plan, chunk_manager, spec, attrs)


def run(
    recipe: Recipe | str,
    *,
    store: str | None = None,
    executor: str | None = None,
    max_workers: int | None = None,
    resume: bool = False,
    overwrite: bool | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> RunSummary:
    """Compute the recipe into its Zarr store and return the run summary.

    A new path (or an empty folder) gets a new store; an existing polaragg store is replaced only
    with `overwrite=True` (default: the recipe's `output.overwrite`) and anything else is refused.
    With `resume=True`, tasks that already left an ok or empty record for the same recipe and
    inputs, and whose chunk still holds what they wrote, are skipped; the rest run again.
    """
    from .lock import refuse_if_locked

    stream = sys.stderr if stream is None else stream
    recipe = _as_recipe(recipe)
    store = recipe.output.store if store is None else store
    overwrite = recipe.output.overwrite if overwrite is None else overwrite
    choice = ExecutorChoice(executor or recipe.executor.name, max_workers or recipe.executor.max_workers,
                            lambda_options=recipe.executor.aws_lambda, coiled_options=recipe.executor.coiled,
                            allowed_mem=recipe.executor.memory_bytes)
    start = time.perf_counter()
    try:
        state = inspect_target(store)
    except StoreError:
        with contextlib.suppress(OSError):  # a store being created by another run looks foreign for a moment
            refuse_if_locked(store)
        raise
    refuse_if_locked(store)
    if state == "polaragg" and not (resume or overwrite):
        raise StoreError(f"{store} already holds a polaragg store; pass --overwrite (output.overwrite: true) to "
                         "replace it or --resume to finish it")
    preflight(choice)  # a cloud executor's service answers, before anything is created
    catalog = load_catalog(recipe)
    plan = plan_recipe(recipe, catalog, choice.name, choice.max_workers)
    inputs = _inputs(plan, catalog)
    fingerprint = _run_fingerprint(recipe.fingerprint(), inputs)
    job = _Job(recipe, store, choice, state, resume, plan, catalog, inputs, fingerprint, progress, stream, start)
    try:
        return _run_locked(job)
    except OSError as exc:
        if exc.errno is not None and not exc.filename:  # name the store a disk or permission error is about
            raise type(exc)(exc.errno, exc.strerror or str(exc), store) from exc
        raise


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a run decided before taking the store's lock."""

    recipe: Recipe
    store: str
    choice: ExecutorChoice
    state: str  # what inspect_target found at the store path
    resume: bool
    plan: Plan
    catalog: Catalog
    inputs: list[dict]
    fingerprint: str
    progress: bool
    stream: TextIO
    start: float


def _run_locked(job: _Job) -> RunSummary:
    """Under the store's lock: make or check the store, run every task (and footprint repairs), summarise."""
    from .lock import acquire

    recipe, store, choice, plan, fingerprint, stream = (job.recipe, job.store, job.choice, job.plan,
                                                        job.fingerprint, job.stream)

    with acquire(store):
        done: dict[tuple[int, int], TaskRecord] = {}
        if job.resume and job.state == "polaragg":
            records = _check_resumable(store, recipe.fingerprint(), fingerprint, job.inputs, plan)
            done = _verified_done(store, records, fingerprint, plan, stream)
        else:
            if job.state == "polaragg":
                remove_store(store)
            clear_records(store)  # records left beside a store that is gone
            create_store(store, plan.cell_ids(), plan.grid,
                         {**recipe_attrs(recipe.model_dump(mode="json"), recipe.fingerprint()),
                          "inputs_fingerprint": _digest(job.inputs), "run_fingerprint": fingerprint},
                         chunk=plan.chunk_cells)
            write_inputs(store, job.inputs)
        refs = _refs_by_id(job.catalog)
        with LedgerProgress(store, len(plan.tasks), stream=stream, skip=len(done)) if job.progress \
                else contextlib.nullcontext():
            records = _fresh_records(store)
            for round_ in range(REPAIR_ROUNDS + 1):
                required, pending = _footprint_repairs(records.values(), plan)
                current = plan.with_granules({i: tuple(refs[g] for g in sorted(ids) if g in refs)
                                              for i, ids in required.items()})
                order = [i for i in current.largest_first()
                         if i in pending or (round_ == 0 and _key(current.tasks[i]) not in done)]
                if not order:
                    break
                target = RunTarget(store=store, executor=choice.name, fingerprint=fingerprint,
                                   attempts={k: r.attempt for k, r in records.items()})
                _compute_with_retries(current, target, choice, order, recipe)
                records = _fresh_records(store)
        records_list = read_records(store)
        wall = time.perf_counter() - job.start
        summary = summarize(records_list, store=store, executor=choice.name, wall_seconds=wall,
                            granules=len(job.inputs), child_cells_with_data=_child_cells_with_data(store))
        cost = run_cost(records_list, executor=choice.name, wall_seconds=wall)
        finalize_store(store, {"run_summary": json.dumps(dataclasses.asdict(summary)),
                               "run_cost": json.dumps(cost.to_dict())})
    return summary


def _key(task) -> tuple[int, int]:
    return (task.parent, task.child_lo)


def _fresh_records(store: str) -> dict[tuple[int, int], TaskRecord]:
    return {(r.parent, r.child_lo): r for r in read_records(store)}


def _inputs(plan: Plan, catalog: Catalog) -> list[dict]:
    """The granules the plan reads, by id, URL and size, sorted: what `--resume` checks has not changed."""
    g = catalog.granules
    sizes = dict(zip(g.granule_id.astype(str), g.size_bytes.fillna(0).astype("int64").tolist()))
    seen = {r.granule_id: r.url for t in plan.tasks for r in t.granules}
    return [{"granule": i, "url": seen[i], "size": int(sizes.get(i, 0))} for i in sorted(seen)]


def _digest(inputs: list[dict]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _run_fingerprint(recipe_fingerprint: str, inputs: list[dict]) -> str:
    """What task records are checked against: the recipe's values and the granules read."""
    return hashlib.sha256(f"{recipe_fingerprint}:{_digest(inputs)}".encode()).hexdigest()[:16]


def _check_resumable(store: str, recipe_fp: str, run_fp: str, inputs: list[dict], plan: Plan) -> list[TaskRecord]:
    """The store's records, if this recipe and these inputs made it; otherwise ResumeError saying what changed."""
    import zarr

    from .store import zarr_store

    try:
        root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
        attrs = dict(root.attrs)
        chunks = root["count"].chunks
        n = root["count"].shape[0]
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        raise ResumeError(f"{store} cannot be resumed: its template is incomplete ({exc}); run without "
                          "--resume and with --overwrite to start again") from None
    if attrs.get("recipe_fingerprint") != recipe_fp:
        raise ResumeError(
            f"{store} was made by a different recipe (fingerprint {attrs.get('recipe_fingerprint')}, this recipe "
            f"{recipe_fp}); resume it with its own recipe or write to a new store"
        )
    before = read_inputs(store)
    if attrs.get("run_fingerprint") != run_fp or before is None:
        raise ResumeError(f"cannot resume {store}: its inputs changed since it was made ({_input_changes(before, inputs)}); "
                          "run it again with --overwrite, or write to a new store")
    if chunks != (plan.chunk_cells,) or n != plan.n_cells:
        raise ResumeError(f"{store} has {n} cells in chunks of {chunks[0]}, the plan {plan.n_cells} in chunks "
                          f"of {plan.chunk_cells}; change memory_per_task back or write to a new store")
    return read_records(store)


def _input_changes(before: list[dict] | None, now: list[dict]) -> str:
    if before is None:
        return "the store has no record of its inputs"
    old = {i["granule"]: (i.get("url"), i.get("size")) for i in before}
    new = {i["granule"]: (i.get("url"), i.get("size")) for i in now}
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = sorted(g for g in new.keys() & old.keys() if new[g] != old[g])
    parts = []
    for what, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            parts.append(f"{len(names)} granule(s) {what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
    return "; ".join(parts) or "the granule files changed"


def _verified_done(store: str, records: list[TaskRecord], fingerprint: str, plan: Plan,
                   stream: TextIO) -> dict[tuple[int, int], TaskRecord]:
    """Finished tasks whose chunk still holds exactly what they wrote; others will run again."""
    import zarr

    from .store import read_checksum, zarr_store

    root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
    done, damaged = {}, []
    for r in records:
        if r.fingerprint != fingerprint or r.status not in ("ok", "empty"):
            continue
        start = plan.task_index(r.parent, r.child_lo) * plan.chunk_cells
        if r.checksum and read_checksum(root, start, start + plan.chunk_cells) == r.checksum:
            done[(r.parent, r.child_lo)] = r
        else:
            damaged.append(r)
    if damaged:
        print(f"resume: {len(damaged)} finished task(s) whose chunks are missing or changed run again "
              f"(first: parent {damaged[0].parent} children {damaged[0].child_lo}-{damaged[0].child_hi})",
              file=stream)
    return done


def _footprint_repairs(records, plan: Plan) -> tuple[dict[int, set[str]], set[int]]:
    """Granules each task must read because rows of them were found in its cells (by footprint checks),
    and the tasks whose records show they have not read them yet."""
    by_key = {(r.parent, r.child_lo): r for r in records}
    required: dict[int, set[str]] = defaultdict(set)
    pending: set[int] = set()
    for r in by_key.values():
        for miss in r.footprint_misses:
            try:
                index = plan.task_index(miss["parent"], miss["child_lo"])
            except KeyError:
                continue
            required[index].add(miss["granule"])
            target = by_key.get((miss["parent"], miss["child_lo"]))
            if target is None or miss["granule"] not in target.granule_ids:
                pending.add(index)
    return dict(required), pending


def _refs_by_id(catalog: Catalog) -> dict[str, GranuleRef]:
    g = catalog.granules
    return {str(i): GranuleRef(str(i), str(u)) for i, u in zip(g.granule_id, g.url)}


def _compute_with_retries(plan: Plan, target: RunTarget, choice: ExecutorChoice, order: list[int],
                          recipe: Recipe) -> None:
    """Run the tasks in `order`; tasks lost with a worker that died run again, like transient failures."""
    from concurrent.futures.process import BrokenProcessPool

    attempts = recipe.retry.attempts
    for attempt in range(1, attempts + 1):
        run_id = uuid.uuid4().hex
        try:
            _compute(plan, dataclasses.replace(target, run_id=run_id), choice, order, recipe)
            return
        except BrokenProcessPool as exc:
            fresh = _fresh_records(target.store)
            order = [i for i in order if getattr(fresh.get(_key(plan.tasks[i])), "run_id", None) != run_id]
            if attempt == attempts or not order:
                raise RuntimeError(f"workers died {attempt} time(s) on {choice.name}; {len(order)} task(s) left: "
                                   "finish with --resume (a worker killed by the system may mean too little "
                                   "memory: lower executor.memory_per_task or use fewer workers)") from exc
            print(f"a worker died ({exc}); running the {len(order)} unfinished task(s) again", file=sys.stderr)


def _compute(plan: Plan, target: RunTarget, choice: ExecutorChoice, order: list[int], recipe: Recipe) -> np.ndarray:
    ordered = dataclasses.replace(plan, tasks=tuple(plan.tasks[i] for i in order))
    # Tasks keep their own index (their place in the store); only the execution order changes.
    if choice.engine == "cubed":
        spec = default_spec(allowed_mem=recipe.executor.memory_bytes)
        arr = run_array(ordered, target, "cubed", spec)
        return arr.compute(executor=cubed_executor(choice))
    from .executors import dask_compute

    return dask_compute(run_array(ordered, target, "dask"), choice)


def _child_cells_with_data(store: str) -> int:
    import zarr

    from .store import zarr_store

    counts = zarr.open_array(zarr_store(store), path="count", mode="r")[:]
    return int(np.count_nonzero(counts))


def _as_recipe(recipe: Recipe | str) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
