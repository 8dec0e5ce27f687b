"""`run` and `open_dataset`: recipe -> catalog -> plan -> (lazy Dataset | computed store + ledger).

A run refuses any store path that is not new or a polaragg store (and replaces one only when
asked), takes the store's lock, records its inputs, computes the plan (granule stage, then cell
stage storing each chunk and its ledger record), retries tasks lost with a dead worker, removes the
intermediate partitions once every task succeeded, and finishes with the summary and cost in the
store's attributes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
import warnings
import weakref
from typing import TextIO

import numpy as np
import xarray as xr

from .catalog import Catalog
from .cost import puts_per_task, run_cost
from .credentials import RunCredentials
from .domain import ExecutorChoice
from .executors import (cubed_executor, forget_broken_pool, preflight, remove_lithops_job_data,
                        start_workers_early)
from .intermediate import SUFFIX as PARTITIONS_SUFFIX
from .intermediate import Location
from .ledger import TaskRecord, clear_records, read_inputs, read_records, write_inputs
from .plan import Plan, PlanError, RunTarget, dataset_from_plan, default_spec, granule_bins_of, make_plan, run_array
from .progress import LedgerProgress, RunSummary, summarize
from .recipe import Recipe, RecipeError, load_recipe
from .sources import load_catalog
from .store import StoreError, create_store, finalize_store, inspect_target, is_remote, recipe_attrs, remove_store
from .timebins import TimeBins, make_time_bins
from .validate import misses_not_aggregated

MISS_ROUNDS = 2  # reruns of tasks that lack rows another task's granule record says they hold
# Executors on a few local workers group granules into this many granule-stage tasks per worker, and a
# run's cell tasks into this many blocks per worker: enough to balance, few enough that Cubed's cost
# around each task (pickling the block function, its Zarr intermediate) stays small. On the one-cycle
# recipe with 2 processes, 2 and 2 beat 8 and 8 by 0.03-0.16 s of ~1.6 s (medians of alternating runs);
# single-threaded does not change. Lambda, Coiled and lithops-local run one granule per task.
GRANULE_TASKS_PER_WORKER = 2
CELL_BLOCKS_PER_WORKER = 2
GROUPED_EXECUTORS = ("single-threaded", "threads", "processes", "dask", "dask-distributed")
# Executors whose tasks run in the client's own process: their credentials are never pickled.
IN_PROCESS_EXECUTORS = ("single-threaded", "threads", "dask")


class PolaraggWarning(UserWarning):
    """Something a user should know that does not stop the run (e.g. an AOI without granules)."""


class ResumeError(RuntimeError):
    """A store that cannot be resumed by this recipe, or whose inputs changed since it was made."""


def plan_recipe(recipe: Recipe | str, catalog: Catalog | None = None, executor: str | None = None,
                workers: int | None = None) -> Plan:
    """The recipe's plan, with task memory projected by the model of the executor that will run it.

    Refuses plans above `output.max_cells` child cells; warns when no granule crosses the AOI.
    """
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
    bins = recipe_time_bins(recipe, catalog)
    return _make_plan(recipe, catalog.select(bins.selects(*catalog.time_spans())), bins, executor, workers)


def _make_plan(recipe: Recipe, catalog: Catalog, bins: TimeBins, executor: str | None, workers: int | None,
               **extra) -> Plan:
    """`make_plan` with the recipe's settings and the memory model of the executor that will run it."""
    from .memory import model_for

    name = executor or recipe.executor.name
    workers = 1 if name == "single-threaded" else workers or recipe.executor.max_workers or os.cpu_count() or 1
    return make_plan(catalog, recipe.grid.grid(), reader=recipe.reader, filters=recipe.filters.filters(),
                     memory_per_task=recipe.executor.memory_bytes, retry=recipe.retry.policy(),
                     memory=model_for(name, workers),
                     granule_tasks=GRANULE_TASKS_PER_WORKER * workers if name in GROUPED_EXECUTORS else None,
                     cell_blocks=CELL_BLOCKS_PER_WORKER * workers if name in GROUPED_EXECUTORS else None,
                     time=bins, coarsest_order=recipe.output.coarsest_order, **extra)


def recipe_time_bins(recipe: Recipe, catalog: Catalog) -> TimeBins:
    """The recipe's time bins over the catalog's granules (a bad selection is a RecipeError)."""
    cycles, begins, ends = catalog.time_spans()
    t = recipe.time
    try:
        return make_time_bins(t.bins, catalog_cycles=cycles, catalog_begins=begins, catalog_ends=ends,
                              cycles=t.cycle_list(), start=t.start, end=t.end, reference=t.reference, fit=t.fit,
                              min_bins=t.min_bins)
    except ValueError as exc:
        raise RecipeError(f"time: {exc}") from None


def open_dataset(recipe: Recipe | str, chunk_manager: str = "cubed", *, spec=None,
                 work_dir: str | None = None) -> xr.Dataset:
    """The recipe's statistics as a lazy Dataset at the child order (per-bin variables over `time` and
    `cells`, per-cell ones over `cells`; one chunk per task). A stored pyramid's coarser orders come from
    `run` (the store's groups), not from this Dataset.

    Nothing is read until compute. Computing runs the same plan as `run`: each granule is read once
    into partitions under `work_dir` (default: the recipe's `executor.work_dir`, else a temporary folder
    removed once neither this Dataset nor one derived from it is left, on Cubed also once Cubed's memo
    of its last 128 computed plans lets them go, or at exit; later computes reuse them), Cubed's
    intermediates beside them, then each selected chunk is reduced from its partitions (on Dask only
    the selected chunks; Cubed reduces every chunk once). Workers must reach `work_dir`: on a cluster
    or on Lambda give a folder they share, e.g. an `s3://` prefix. The partitions hold ~20 bytes per
    observation (~36 with the change fit's x, y). The recipe's credentials travel with the tasks as in
    `run`; with a remote `work_dir` on Cubed, the store's become this session's s3fs defaults (Cubed
    opens its intermediates without options).
    """
    from .credentials import process_defaults, run_credentials

    recipe = _as_recipe(recipe)
    catalog = load_catalog(recipe)
    plan = plan_recipe(recipe, catalog)
    work_dir = work_dir or recipe.executor.work_dir
    needs_granules = catalog.reads_s3()
    credentials = run_credentials(recipe.credentials, needs_granules, is_remote(work_dir or ""),
                                  leaves_client=recipe.executor.name not in IN_PROCESS_EXECUTORS)
    plan = dataclasses.replace(plan, storage_options=credentials.options("s3://", "granules"))
    if chunk_manager == "cubed" and spec is None:
        cubed_dir = f"{work_dir.rstrip('/')}/polaragg-cubed" if work_dir else None
        options = credentials.options(cubed_dir, "store") if cubed_dir else None
        spec = default_spec(work_dir=cubed_dir, allowed_mem=recipe.executor.memory_bytes,
                            storage_options=process_defaults(options) if options is not None else None)
    if work_dir is None:
        work_dir = tempfile.mkdtemp(prefix="polaragg-partitions-")
        location = Location(work_dir)
        # Removed once no lazy array of the Dataset (or of one derived from it) holds the location, or at
        # exit: the callback holds an equal Location, not this one.
        weakref.finalize(location, Location(work_dir).remove)
    else:
        url = f"{work_dir.rstrip('/')}/polaragg-partitions-{plan.partition_key}" if is_remote(work_dir) else \
            os.path.join(work_dir, f"polaragg-partitions-{plan.partition_key}")
        location = Location(url, storage_options=credentials.options(url, "store"))
    location.create()
    attrs = recipe_attrs(recipe.model_dump(mode="json"), recipe.fingerprint())
    return dataset_from_plan(plan, location, chunk_manager, spec, attrs)


def partitions_location(store: str, credentials: RunCredentials | None = None) -> Location:
    """Where a run keeps its partitions: next to the store (the same folder or bucket), reached with the
    store's credentials (none given: those of the run in progress, else the environment's)."""
    url = store.rstrip("/") + PARTITIONS_SUFFIX
    return Location(url, storage_options=credentials.options(url, "store") if credentials else None)



def run(
    recipe: Recipe | str,
    *,
    store: str | None = None,
    executor: str | None = None,
    max_workers: int | None = None,
    resume: bool = False,
    overwrite: bool | None = None,
    append: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> RunSummary:
    """Compute the recipe into its Zarr store and return the run summary.

    A new path (or an empty folder) gets a new store; an existing polaragg store is replaced only
    with `overwrite=True` (default: the recipe's `output.overwrite`) and anything else is refused.
    With `resume=True`, tasks that already left an ok or empty record for the same recipe and
    inputs, and whose chunk still holds what they wrote, are skipped; the rest run again.
    With `append=True` the recipe's time bins must extend the store's (same recipe otherwise, the
    store's bins first and their granules unchanged): only the new bins' granules are read, every task
    adds its new bins and refits its cells over all bins from the stored moments, and the pyramid's
    merged orders are merged again; an interrupted append finishes with `append=True` again.
    """
    stream = sys.stderr if stream is None else stream
    recipe = _as_recipe(recipe)
    store = recipe.output.store if store is None else store
    overwrite = recipe.output.overwrite if overwrite is None else overwrite
    choice = _choice(recipe, executor, max_workers)
    start = time.perf_counter()
    with contextlib.ExitStack() as scopes:
        return _run(recipe, store, choice, resume, overwrite, append, progress, stream, start, scopes)


def _forget_when_done(scopes: contextlib.ExitStack, credentials: RunCredentials) -> None:
    for held in credentials.sets():
        scopes.callback(held.forget)


def _choice(recipe: Recipe, executor: str | None, max_workers: int | None) -> ExecutorChoice:
    return ExecutorChoice(executor or recipe.executor.name, max_workers or recipe.executor.max_workers,
                          lambda_options=recipe.executor.aws_lambda, coiled_options=recipe.executor.coiled,
                          allowed_mem=recipe.executor.memory_bytes, address=recipe.executor.scheduler,
                          lithops_storage_bucket=recipe.executor.lithops_storage_bucket)


def check(recipe: Recipe | str, *, store: str | None = None, executor: str | None = None,
          max_workers: int | None = None) -> list:
    """The preflight checks of a run of `recipe` (`preflight.Check`s), run and returned; nothing is created.
    Credentials that cannot be obtained at all fail the check of their set."""
    from .credentials import CredentialError, run_credentials
    from .fs import options_scope
    from .preflight import Check, preflight

    recipe = _as_recipe(recipe)
    store = recipe.output.store if store is None else store
    choice = _choice(recipe, executor, max_workers)
    work_dir = recipe.executor.work_dir or ""
    failed = []
    try:
        credentials = run_credentials(recipe.credentials, False, is_remote(store) or is_remote(work_dir),
                                      leaves_client=choice.name not in IN_PROCESS_EXECUTORS)
    except CredentialError as exc:
        credentials, failed = RunCredentials(), [Check("credentials.store", "failed", str(exc))]
    with options_scope(credentials.scopes([store.rstrip("/"), work_dir.rstrip("/")])):
        try:
            catalog = load_catalog(recipe)
        except Exception as exc:  # noqa: BLE001 - the check's one line
            return failed + [Check("catalog", "failed", " ".join(str(exc).split()) or type(exc).__name__)]
        needs_granules = catalog.reads_s3()
        if needs_granules:
            try:
                credentials = dataclasses.replace(
                    credentials, granules=run_credentials(recipe.credentials, True, False,
                                                          leaves_client=choice.name not in IN_PROCESS_EXECUTORS).granules)
            except CredentialError as exc:
                failed.append(Check("credentials.granules", "failed", str(exc)))
        checks = preflight(recipe, store, choice, credentials, needs_granules=needs_granules)
    names = {c.name for c in failed}
    if "credentials.store" in names and (is_remote(store) or is_remote(work_dir)):  # probing without them says nothing
        checks = [Check(c.name, "failed", "not checked: the store's credentials could not be obtained")
                  if c.name in ("store", "executor.work_dir") else c for c in checks]
    return failed + [c for c in checks if c.name not in names]


def _run(recipe: Recipe, store: str, choice: ExecutorChoice, resume: bool, overwrite: bool, append: bool,
         progress: bool, stream: TextIO, start: float, scopes: contextlib.ExitStack) -> RunSummary:
    """`run` once the executor is chosen; `scopes` holds the run's credential scopes until it returns."""
    from .credentials import run_credentials
    from .fs import options_scope
    from .lock import refuse_if_locked
    from .preflight import credentials_check, require

    work_dir = recipe.executor.work_dir or ""
    leaves = choice.name not in IN_PROCESS_EXECUTORS
    credentials = run_credentials(recipe.credentials, False, is_remote(store) or is_remote(work_dir),
                                  leaves_client=leaves)
    _forget_when_done(scopes, credentials)
    if credentials.store is not None:
        require([credentials_check(recipe, credentials, "store")])
    scopes.enter_context(options_scope(credentials.scopes([store.rstrip("/"), work_dir.rstrip("/")])))
    try:
        state = inspect_target(store)
    except StoreError:
        with contextlib.suppress(OSError):  # a store being created by another run looks foreign for a moment
            refuse_if_locked(store)
        raise
    refuse_if_locked(store)
    if not is_remote(store):  # one spelling of the path for the store, its ledger and its partitions
        store = os.path.normpath(os.path.abspath(os.path.expanduser(store.removeprefix("file://"))))
    if not partitions_location(store).is_ours():
        raise StoreError(f"{store}{PARTITIONS_SUFFIX} exists and was not made by polaragg; move it away or "
                         "choose another store")
    if append and state != "polaragg":
        raise StoreError(f"{store} holds no polaragg store to append to; run without --append to make one")
    if state == "polaragg" and not (resume or overwrite or append):
        raise StoreError(f"{store} already holds a polaragg store; pass --overwrite (output.overwrite: true) to "
                         "replace it, --resume to finish it or --append to add time bins")
    preflight(choice)  # a cloud executor's service answers, before anything is created
    start_workers_early(choice)  # the fork server's imports overlap the catalog and the plan
    catalog = load_catalog(recipe)
    if catalog.reads_s3():
        credentials = dataclasses.replace(
            credentials, granules=run_credentials(recipe.credentials, True, False, leaves_client=leaves).granules)
        _forget_when_done(scopes, dataclasses.replace(credentials, store=None))
        scopes.enter_context(options_scope(credentials.scopes([])))
    if append:
        plan, inputs = _append_plan(recipe, catalog, store, choice)
    else:
        plan = plan_recipe(recipe, catalog, choice.name, choice.max_workers)
        inputs = _inputs(plan, catalog)
    plan = dataclasses.replace(plan, storage_options=credentials.options("s3://", "granules"))
    from .preflight import preflight as full_preflight

    require(full_preflight(recipe, store, choice, credentials, needs_granules=credentials.granules is not None))
    fingerprint = _run_fingerprint(recipe.fingerprint(), inputs)
    job = _Job(recipe, store, choice, state, resume or append, plan, catalog, inputs, fingerprint, progress, stream,
               start, append, credentials)
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
    append: bool = False
    credentials: RunCredentials = RunCredentials()


def _run_locked(job: _Job) -> RunSummary:
    """Under the store's lock: make or check the store, run the plan's remaining tasks (then any task that
    lacks rows a granule's record places in it), summarise, remove the partitions once all is well."""
    from .lock import acquire

    recipe, store, choice, plan, fingerprint, stream = (job.recipe, job.store, job.choice, job.plan,
                                                        job.fingerprint, job.stream)

    location = partitions_location(store, job.credentials)
    template: concurrent.futures.Future | None = None  # the store's template, while it is being written
    with acquire(store):
        done: dict[tuple[int, int], TaskRecord] = {}
        if job.append:
            _begin_append(store, job)
            done = _verified_done(store, read_records(store), fingerprint, plan, stream)
        elif job.resume and job.state == "polaragg":
            records = _check_resumable(store, recipe.fingerprint(), fingerprint, job.inputs, plan)
            done = _verified_done(store, records, fingerprint, plan, stream)
        else:
            if job.state == "polaragg":
                remove_store(store)
            location.remove()  # partitions of an earlier run into this path
            clear_records(store)  # records left beside a store that is gone
            write_template = functools.partial(
                create_store, store, plan.cell_ids(), plan.grid,
                {**recipe_attrs(recipe.model_dump(mode="json"), recipe.fingerprint()),
                 "inputs_fingerprint": _digest(job.inputs), "run_fingerprint": fingerprint,
                 "task_orders": list(plan.task_orders), **_time_attrs(plan)},
                chunk=plan.chunk_cells, schema=plan.schema, bins=plan.time, pyramid=plan.pyramid(),
                time_chunk=plan.time_chunk)
            if choice.engine == "cubed" and choice.name not in IN_PROCESS_EXECUTORS:
                template = _in_background(write_template)  # the client is idle while workers partition
            else:
                write_template()
            write_inputs(store, job.inputs)
        with _awaited(template):  # never left writing once the lock is released
            with LedgerProgress(store, len(plan.tasks), stream=stream, skip=len(done)) if job.progress \
                    else contextlib.nullcontext():
                order = [i for i in plan.largest_first() if _key(plan.tasks[i]) not in done]
                records_list: list[TaskRecord] | None = None  # as the last round left them
                for _ in range(MISS_ROUNDS + 1):
                    if not order:
                        break
                    location.create()
                    records = _fresh_records(store)
                    target = RunTarget(store=store, executor=choice.name, fingerprint=fingerprint,
                                       storage_options=job.credentials.options(store, "store"),
                                       attempts={k: r.attempt for k, r in records.items()})
                    _compute_with_retries(plan, location, target, choice, order, recipe, job.credentials, template)
                    # A task skipped on resume lacks the rows of a granule partitioned only now (one that
                    # failed before): the granule's reporter names it; run it again from the partitions.
                    records_list = read_records(store)
                    order = _tasks_missing_rows(records_list, plan)
        if plan.merged_orders:
            merge_coarser_orders(store, plan)
        if records_list is None:
            records_list = read_records(store)
        finished = all(r.status in ("ok", "empty") for r in records_list) and not _tasks_missing_rows(records_list, plan)
        # The partitions go while the summary is written; kept otherwise: a resume reuses the granules
        # already partitioned.
        with _awaited(_in_background(location.remove) if finished else None):
            summary = _finish(job, plan, records_list)
    return summary


def _finish(job: _Job, plan: Plan, records_list: list[TaskRecord]) -> RunSummary:
    """The run's summary and cost, written into the store's attributes (its last write)."""
    store, choice = job.store, job.choice
    wall = time.perf_counter() - job.start
    summary = summarize(records_list, store=store, executor=choice.name, wall_seconds=wall,
                        granules=len(job.inputs), child_cells_with_data=_child_cells_with_data(store, records_list, plan),
                        time_bins=plan.time.n, fit_outcomes=_fit_outcomes(store) if plan.schema.fit else None)
    cost = run_cost(records_list, executor=choice.name, wall_seconds=wall, puts_per_task=puts_per_task(plan),
                    reader=job.recipe.reader)
    finalize_store(store, {"run_summary": json.dumps({k: v for k, v in dataclasses.asdict(summary).items()
                                                      if k != "cost"}),
                           "run_cost": json.dumps(cost.to_dict())}, drop=("appending",))
    return dataclasses.replace(summary, cost=cost.to_dict())


def _tasks_missing_rows(records, plan: Plan) -> list[int]:
    """Tasks whose record does not show the granule of a footprint miss another record found in them."""
    missing = set()
    for m in misses_not_aggregated(records):
        with contextlib.suppress(KeyError):  # a task of another plan
            missing.add(plan.task_index(m["parent"], m["child_lo"]))
    return sorted(missing)


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
        chunks = root["count"].chunks[-1:]
        n = root["count"].shape[-1]
        from .store import schema_of

        stored_schema = schema_of(root)
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
    if stored_schema != plan.schema:
        raise ResumeError(f"{store} holds {stored_schema.n_bins} time bin(s){' and the change fit' * stored_schema.fit}, "
                          f"the plan {plan.schema.n_bins}{' and the fit' * plan.schema.fit}; resume with the recipe "
                          "that made it or write to a new store")
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
        if r.checksum and _stored_checksum(root, plan, start // plan.chunk_cells) == r.checksum:
            done[(r.parent, r.child_lo)] = r
        else:
            damaged.append(r)
    if damaged:
        print(f"resume: {len(damaged)} finished task(s) whose chunks are missing or changed run again "
              f"(first: parent {damaged[0].parent} children {damaged[0].child_lo}-{damaged[0].child_hi})",
              file=stream)
    return done


@contextlib.contextmanager
def _awaited(work: concurrent.futures.Future | None):
    """Wait for `work` (if any) on leaving the block, however it is left; then raise what it raised."""
    try:
        yield
    finally:
        if work is not None:
            concurrent.futures.wait([work])
    if work is not None:
        work.result()


def _in_background(write) -> concurrent.futures.Future:
    """`write()` on a thread of its own."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="polaragg-background")
    try:
        return pool.submit(write)
    finally:
        pool.shutdown(wait=False)


def _store_gate(template: concurrent.futures.Future):
    """A Cubed callback holding back every operation after the granule stage (the plan's first, see
    `plan._index`) until the store's template is written, and raising what writing it raised."""
    from cubed import Callback

    class StoreGate(Callback):
        def __init__(self) -> None:
            self.started = 0

        def on_operation_start(self, event) -> None:
            if event.name == "create-arrays":
                return
            self.started += 1
            if self.started > 1:
                template.result()

    return StoreGate()


def _compute_with_retries(plan: Plan, location: Location, target: RunTarget, choice: ExecutorChoice,
                          order: list[int], recipe: Recipe, credentials: RunCredentials,
                          template: concurrent.futures.Future | None = None) -> None:
    """Run the tasks in `order`; tasks lost with a worker that died run again, like transient failures."""
    from concurrent.futures.process import BrokenProcessPool

    attempts = recipe.retry.attempts
    for attempt in range(1, attempts + 1):
        run_id = uuid.uuid4().hex
        try:
            _compute(plan.with_columns(order), location, dataclasses.replace(target, run_id=run_id), choice, recipe,
                     credentials, template)
            return
        except BrokenProcessPool as exc:
            fresh = _fresh_records(target.store)
            order = [i for i in order if getattr(fresh.get(_key(plan.tasks[i])), "run_id", None) != run_id]
            if attempt == attempts or not order:
                forget_broken_pool()
                raise RuntimeError(f"workers died {attempt} time(s) on {choice.name}; {len(order)} task(s) left: "
                                   "finish with --resume (a worker killed by the system may mean too little "
                                   "memory: lower executor.memory_per_task or use fewer workers)") from exc
            print(f"a worker died ({exc}); running the {len(order)} unfinished task(s) again", file=sys.stderr)
        forget_broken_pool()  # outside the handler: the exception no longer holds the abandoned futures


WORK_SUFFIX = ".cubed"  # Cubed's intermediates of a run: next to its store, unless executor.work_dir says otherwise


def work_location(store: str, recipe: Recipe, run_id: str, credentials: RunCredentials | None = None) -> Location:
    """Where this run's Cubed intermediates go: a folder of its own under `executor.work_dir`, else
    `<store>.cubed` (workers cannot see the client's disk when the store is remote; next to a local store,
    what a killed client leaves is found and removed by the next run into it). Reached with the store's
    credentials."""
    if recipe.executor.work_dir:
        url = f"{recipe.executor.work_dir.rstrip('/')}/polaragg-{run_id}"
    else:
        url = store.rstrip("/") + WORK_SUFFIX
    return Location(url, storage_options=credentials.options(url, "store") if credentials else None)


def _compute(plan: Plan, location: Location, target: RunTarget, choice: ExecutorChoice, recipe: Recipe,
             credentials: RunCredentials | None = None, template: concurrent.futures.Future | None = None) -> None:
    """Run the plan's tasks; `template` (Cubed executors): the store's template being written meanwhile."""
    if choice.engine == "cubed":
        in_process = choice.name in IN_PROCESS_EXECUTORS  # intermediates in memory
        work = work_location(target.store, recipe, target.run_id, credentials)
        if not in_process:
            if not work.is_ours():
                raise StoreError(f"{work.url} exists and was not made by polaragg; set executor.work_dir elsewhere")
            work.create()
        from .credentials import S3Options, clear_process_defaults, process_defaults

        # Cubed opens its work_dir's Zarr arrays without storage options: the store's credentials reach them
        # as the s3fs defaults of the client and of every worker its operations are unpickled in.
        options = work.storage_options if isinstance(work.storage_options, S3Options) else None
        try:
            spec = default_spec(work_dir=None if in_process else work.url,  # in memory: no folder used
                                allowed_mem=recipe.executor.memory_bytes, in_process=in_process,
                                storage_options=process_defaults(options) if options else None)
            import cubed

            arr = run_array(plan, location, target, "cubed", spec)
            callbacks = [_store_gate(template)] if template is not None else None
            if in_process or is_remote(work.url):
                arr.compute(executor=cubed_executor(choice), callbacks=callbacks)
            else:  # the tasks' summaries stay in the work folder: the ledger holds what the run reports
                cubed.to_zarr(arr, f"{work.url.rstrip('/')}/summaries.zarr", executor=cubed_executor(choice),
                              callbacks=callbacks)
        finally:
            if options is not None:
                clear_process_defaults()
            try:
                remove_lithops_job_data(choice)  # the tasks' payloads carried credentials
            except Exception as exc:  # noqa: BLE001 - never hides the compute's own outcome
                warnings.warn(f"could not delete Lithops' job data of this run ({type(exc).__name__}): its "
                              "payloads hold credentials; delete lithops.jobs/ in its storage bucket",
                              PolaraggWarning, stacklevel=2)
            try:
                # This compute's folder (in-process runs: what a killed client of another run left). Only a
                # folder polaragg marked as its own; a rerun of tasks starts afresh.
                work.remove()
            except Exception as exc:  # noqa: BLE001 - never hides the compute's own outcome
                warnings.warn(f"could not delete Cubed's intermediates in {work.url} ({type(exc).__name__}); "
                              "the next run into this store removes them", PolaraggWarning, stacklevel=2)
        return
    from .executors import dask_compute

    dask_compute(run_array(plan, location, target, "dask"), choice,
                 credentials=credentials.sets() if credentials else ())


def _child_cells_with_data(store: str, records: list[TaskRecord], plan: Plan) -> int:
    """Child cells with observations: the sum of the tasks' own counts where every task of the plan recorded
    one, else counted from the store's `count`."""
    counted = {_key(r): r.cells_with_data for r in records if r.cells_with_data is not None}
    if all(_key(t) in counted for t in plan.tasks):
        return sum(counted[_key(t)] for t in plan.tasks)
    import zarr

    from .store import zarr_store

    counts = zarr.open_array(zarr_store(store), path="count", mode="r")[:]
    return int(np.count_nonzero(counts.reshape(-1, counts.shape[-1]).sum(axis=0)))


def _append_plan(recipe: Recipe, catalog: Catalog, store: str, choice: ExecutorChoice) -> tuple[Plan, list[dict]]:
    """The plan that adds the recipe's new time bins to a store, and the inputs of the whole store.

    Refused, saying why: a store made by a recipe that differs in more than `time`; bins that do not
    start with the store's; a store without the fit's moments when the bins need the fit; granules of
    the store's bins that changed; new granules reaching back into the store's bins."""
    import zarr

    from .store import schema_of, zarr_store

    root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
    attrs = dict(root.attrs)
    try:
        made_by = load_recipe(json.loads(attrs["recipe"]))
    except (KeyError, ValueError, RecipeError) as exc:
        raise ResumeError(f"cannot append to {store}: it does not say which recipe made it ({exc})") from None
    if recipe.model_copy(update={"time": made_by.time}).fingerprint() != attrs.get("recipe_fingerprint"):
        raise ResumeError(f"cannot append to {store}: the recipe differs from the one that made it in more than its "
                          "time section; write to a new store")
    bins = recipe_time_bins(recipe, catalog)
    stored = root["time_bounds"][:]
    appending = attrs.get("appending")
    n_old = int(appending["from"]) if appending else stored.shape[0]
    if appending and stored.shape[0] != bins.n:
        raise ResumeError(f"{store} is part way through appending to {stored.shape[0]} bins; append the same bins "
                          f"again to finish it (this recipe has {bins.n})")
    if bins.n <= n_old:
        raise ResumeError(f"nothing to append: the recipe's {bins.n} time bin(s) add none to the store's {n_old}")
    if not np.allclose(bins.bounds()[:n_old], stored[:n_old], rtol=0, atol=1e-3):
        raise ResumeError(f"cannot append to {store}: the recipe's first {n_old} time bin(s) are not the store's "
                          f"({', '.join(bins.labels[:n_old][:3])} ...); bins can only be added after the last one")
    if schema_of(root).fit != bins.fit:
        raise ResumeError(f"cannot append to {store}: it was made {'with' if schema_of(root).fit else 'without'} the "
                          f"change fit and these bins {'need' if bins.fit else 'do not use'} it; set time.fit: true in "
                          "the recipe that makes a store meant to grow")
    cycles, begins, ends = catalog.time_spans()
    bin_of = granule_bins_of(catalog, bins)
    ids = catalog.granules.granule_id.astype(str).to_numpy()
    g_bin = np.array([bin_of[i][1] for i in ids], np.int64)
    crosses = np.array([len(c) > 0 for c in catalog.granules.parent_cells], bool)
    selected = bins.selects(cycles, begins, ends)
    before = {i["granule"]: (i["url"], i["size"]) for i in read_inputs(store) or []}
    sizes = dict(zip(ids, catalog.granules.size_bytes.fillna(0).astype("int64").tolist()))
    urls = dict(zip(ids, catalog.granules.url.astype(str)))
    old = selected & crosses & (g_bin >= 0) & (g_bin < n_old) if bins.kind == "cycle" else \
        selected & crosses & ~(begins >= bins.ends[n_old - 1])
    now = {i: (urls[i], sizes[i]) for i in ids[old]}
    if now != before:
        changed = sorted(set(now) ^ set(before)) or sorted(k for k in now if now[k] != before.get(k))
        raise ResumeError(f"cannot append to {store}: the granules of its time bins changed ({len(changed)} granule(s), "
                          f"e.g. {', '.join(changed[:3])}); run it again with --overwrite")
    new = selected & ~old & (g_bin >= n_old if bins.kind == "cycle" else True)
    plan = _make_plan(recipe, catalog.select(new), bins, choice.name, choice.max_workers, stored_bins=n_old,
                      time_chunk=int(root["count"].chunks[0]))
    stored_plan_inputs = [{"granule": g, "url": u, "size": int(z)} for g, (u, z) in before.items()]
    inputs = sorted(stored_plan_inputs + _inputs(plan, catalog.select(new)), key=lambda i: i["granule"])
    return plan, inputs


def _begin_append(store: str, job: _Job) -> None:
    """Grow every per-bin array of every order to the plan's bins and rewrite `time`; the store's recipe,
    inputs and fingerprints become the append's (`appending` marks it until the run finishes)."""
    import zarr

    from .schema import time_coordinates
    from .store import zarr_store

    plan = job.plan
    zstore = zarr_store(store)
    root = zarr.open_group(zstore, mode="r+", zarr_format=3, use_consolidated=False)
    centres, bounds, _ = time_coordinates(plan.time)
    for level in [root, *(root[str(o)] for o, _, _ in plan.pyramid())]:
        for name in level.array_keys():
            arr = level[name]
            if name == "time":
                arr.resize(centres.shape)
                arr[:] = centres
            elif name == "time_bounds":
                arr.resize(bounds.shape)
                arr[:] = bounds
            elif arr.metadata.dimension_names and arr.metadata.dimension_names[0] == "time" \
                    and arr.shape[0] != plan.time.n:
                arr.resize((plan.time.n,) + arr.shape[1:])
    root.attrs.update({**recipe_attrs(job.recipe.model_dump(mode="json"), job.recipe.fingerprint()),
                       "inputs_fingerprint": _digest(job.inputs), "run_fingerprint": job.fingerprint,
                       **_time_attrs(plan), "appending": {"from": plan.stored_bins}})
    write_inputs(store, job.inputs)
    with warnings.catch_warnings():  # readers of the consolidated metadata (tasks, checks) see the new shapes
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(zstore)


def _time_attrs(plan: Plan) -> dict:
    """Root attributes of the time bins and the fit's reference instant."""
    from .cycles import datetime_of

    out = {"time_bins": plan.time.kind, "time_bin_labels": list(plan.time.labels)}
    if plan.time.fit:
        out["fit_reference"] = datetime_of(plan.time.reference).isoformat()
        out["fit_model"] = ("h = a + b x + c y + dhdt (t - t0) per cell, weighted least squares (w = 1/h_li_sigma^2); "
                            "x, y polar stereographic metres from the cell centre; t in years of 365.25 days from "
                            "fit_reference; see docs/change-design.md")
    return out


def _stored_checksum(root, plan: Plan, task: int) -> str:
    """Checksum of what task `task` wrote at each of its orders (as the task computed it)."""
    from .store import combine_checksums, read_checksum

    digests = []
    for order, shift in zip(plan.task_orders, plan.shifts):
        n = plan.chunk_cells >> shift
        level = root if shift == 0 else root[str(order)]
        digests.append(read_checksum(level, task * n, (task + 1) * n, plan.schema))
    return combine_checksums(digests)


def merge_coarser_orders(store: str, plan: Plan) -> None:
    """Write the orders coarser than the tasks' own cells, each merged from the next finer one's sufficient
    statistics (client side: these orders hold at most a few cells per task)."""
    import zarr

    from .pyramid import coarser
    from .store import zarr_store

    root = zarr.open_group(zarr_store(store), mode="r+", zarr_format=3, use_consolidated=False)
    finest = plan.task_orders[-1]
    level = root if finest == plan.grid.child_order else root[str(finest)]
    ids = level["cell_ids"][:]
    values = {spec.name: level[spec.name][:] for spec in plan.schema.variables}
    for order in plan.merged_orders:
        schema = dataclasses.replace(plan.schema, quantiles=False)
        ids, values = coarser(ids, values, order + 1, schema, plan.hemisphere, plan.time.min_bins)
        group = root[str(order)]
        if not np.array_equal(group["cell_ids"][:], ids):
            raise RuntimeError(f"order {order}: the merged cells differ from the store's template")
        for name, array in values.items():
            group[name][...] = array


def _fit_outcomes(store: str) -> dict[str, int]:
    """Child cells with data by outcome of the change fit."""
    import zarr

    from .change import FIT_STATUS
    from .store import zarr_store

    root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
    status = root["fit_status"][:]
    has = root["count"][:].sum(axis=0) > 0
    codes, n = np.unique(status[has], return_counts=True)
    return {FIT_STATUS.get(int(c), str(int(c))): int(k) for c, k in zip(codes, n)}


def _as_recipe(recipe: Recipe | str) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
