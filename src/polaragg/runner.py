"""`run` and `open_dataset`: recipe -> catalog -> plan -> (lazy Dataset | computed store + ledger)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from typing import TextIO

import numpy as np
import xarray as xr

from .catalog import Catalog
from .cost import run_cost
from .executors import ExecutorChoice, cubed_executor
from .ledger import TaskRecord, read_records
from .plan import Plan, RunTarget, dataset_from_plan, default_spec, make_plan, parse_bytes, run_array
from .progress import LedgerProgress, RunSummary, summarize
from .recipe import Recipe, load_recipe
from .sources import load_catalog
from .store import create_store, recipe_attrs, finalize_store


def plan_recipe(recipe: Recipe | str, catalog: Catalog | None = None, executor: str | None = None) -> Plan:
    """The recipe's plan, with task memory projected by the model of the executor that will run it."""
    from .memory import model_for

    recipe = _as_recipe(recipe)
    catalog = catalog if catalog is not None else load_catalog(recipe)
    return make_plan(catalog, recipe.grid.grid(), reader=recipe.reader, filters=recipe.filters.filters(),
                     memory_per_task=parse_bytes(recipe.executor.memory_per_task), retry=recipe.retry.policy(),
                     memory=model_for(executor or recipe.executor.name))


def open_dataset(recipe: Recipe | str, chunk_manager: str = "cubed", *, spec=None) -> xr.Dataset:
    """The recipe's statistics as a lazy Dataset (dimension `cells`, one chunk per parent cell).

    Nothing is read until compute; selecting cells and computing reads only the granules of the
    parent cells involved.
    """
    recipe = _as_recipe(recipe)
    plan = plan_recipe(recipe)
    if chunk_manager == "cubed" and spec is None:
        spec = default_spec(allowed_mem=parse_bytes(recipe.executor.memory_per_task))
    attrs = recipe_attrs(recipe.model_dump(mode="json"), recipe.fingerprint())
    return dataset_from_plan(plan, chunk_manager, spec, attrs)


class ResumeError(RuntimeError):
    """A store that cannot be resumed by this recipe."""


def run(
    recipe: Recipe | str,
    *,
    store: str | None = None,
    executor: str | None = None,
    max_workers: int | None = None,
    resume: bool = False,
    progress: bool = True,
    stream: TextIO = sys.stderr,
) -> RunSummary:
    """Compute the recipe into its Zarr store and return the run summary.

    With `resume=True`, tasks that already left an ok or empty record for the same recipe
    fingerprint are skipped; failed, partial and missing ones run again.
    """
    recipe = _as_recipe(recipe)
    store = store or recipe.output.store
    choice = ExecutorChoice(executor or recipe.executor.name, max_workers or recipe.executor.max_workers,
                            lambda_options=recipe.executor.aws_lambda, coiled_options=recipe.executor.coiled,
                            allowed_mem=parse_bytes(recipe.executor.memory_per_task))
    start = time.perf_counter()
    catalog = load_catalog(recipe)
    plan = plan_recipe(recipe, catalog, choice.name)
    fingerprint = recipe.fingerprint()
    done: dict[tuple[int, int], TaskRecord] = {}
    attempts: dict[tuple[int, int], int] = {}
    if resume and _store_matches(store, fingerprint, plan):
        for r in read_records(store):
            attempts[(r.parent, r.child_lo)] = r.attempt
            if r.fingerprint == fingerprint and r.status in ("ok", "empty"):
                done[(r.parent, r.child_lo)] = r
    else:
        create_store(store, plan.cell_ids(), plan.grid, recipe_attrs(recipe.model_dump(mode="json"), fingerprint),
                     overwrite=recipe.output.overwrite, chunk=plan.chunk_cells)
    target = RunTarget(store=store, executor=choice.name, fingerprint=fingerprint, attempts=attempts)
    order = [i for i in plan.largest_first() if (plan.tasks[i].parent, plan.tasks[i].child_lo) not in done]
    if order:
        with LedgerProgress(store, len(plan.tasks), stream=stream, skip=len(done)) if progress \
                else contextlib.nullcontext():
            _compute(plan, target, choice, order, recipe)
    records = read_records(store)
    wall = time.perf_counter() - start
    with_data = _child_cells_with_data(store)
    summary = summarize(records, store=store, executor=choice.name, wall_seconds=wall,
                        granules=len(catalog.granules), child_cells_with_data=with_data)
    cost = run_cost(records, executor=choice.name, wall_seconds=wall)
    finalize_store(store, {"run_summary": json.dumps(dataclasses.asdict(summary)),
                           "run_cost": json.dumps(cost.to_dict())})
    return summary


def _store_matches(store: str, fingerprint: str, plan: Plan) -> bool:
    """Whether a resumable store of this recipe exists; raises if a different recipe made it."""
    import zarr

    from .store import zarr_store

    try:
        root = zarr.open_group(zarr_store(store), mode="r", zarr_format=3)
        attrs = dict(root.attrs)
        chunks = root["count"].chunks
        n = root["count"].shape[0]
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return False  # nothing usable there (or killed before the template was complete): start afresh
    if attrs.get("recipe_fingerprint") != fingerprint:
        raise ResumeError(
            f"{store} was made by a different recipe (fingerprint {attrs.get('recipe_fingerprint')}, this recipe "
            f"{fingerprint}); resume it with its own recipe or write to a new store"
        )
    if chunks != (plan.chunk_cells,) or n != plan.n_cells:
        raise ResumeError(f"{store} has {n} cells in chunks of {chunks[0]}, the plan {plan.n_cells} in chunks "
                          f"of {plan.chunk_cells}; change memory_per_task back or write to a new store")
    return True


def _compute(plan: Plan, target: RunTarget, choice: ExecutorChoice, order: list[int], recipe: Recipe) -> np.ndarray:
    ordered = dataclasses.replace(plan, tasks=tuple(plan.tasks[i] for i in order))
    # Tasks keep their own index (their place in the store); only the execution order changes.
    if choice.engine == "cubed":
        spec = default_spec(allowed_mem=parse_bytes(recipe.executor.memory_per_task))
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
