"""The plan: one bounded task per parent cell, exposed lazily as an xarray Dataset over Cubed or Dask.

`Plan` is plain picklable data (cells, granule lists, reader settings) so the same task function
runs in threads, processes, Lithops workers or Dask workers. Two lazy arrays are built over it:

- the statistics array (children x statistics), chunked one parent per chunk: `open_dataset`
  turns its columns into Dataset variables for interactive use;
- the run array (parents x summary fields): each of its tasks also writes its statistics chunk
  into the output store and its ledger record, which is how `run` produces a store on any executor.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from .aggregate import TaskLayout, TaskResult, reduce_parent
from .catalog import Catalog
from .domain import Filters, GranuleRef, RetryPolicy
from .grid import Grid
from .ledger import TaskRecord, write_record
from .memory import DEFAULT_MODEL, MemoryModel, peak_bytes, reset_peak
from .read import ReaderName
from .stats import STAT_INDEX, STATS
from .store import write_block

SUMMARY_FIELDS: tuple[str, ...] = (
    "observations", "rows_in_cell", "granules", "granules_read", "failures", "seconds", "peak_memory_bytes",
)


class PlanError(ValueError):
    """A plan that cannot satisfy its constraints (e.g. a task that cannot fit its memory bound)."""


@dataclass(frozen=True)
class Task:
    """One bounded unit of work: the child range [child_lo, child_hi) of one parent cell."""

    index: int  # block index: the task's chunk of the output is cells [index * chunk, (index + 1) * chunk)
    parent: int
    child_lo: int
    child_hi: int
    granules: tuple[GranuleRef, ...]
    expected_rows: float
    projected_bytes: int = 0  # peak memory projected by the plan's memory model
    # Granules this task checks against their footprints, each with the indices of the tasks listing it.
    check: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Plan:
    grid: Grid
    parents: np.ndarray = field(repr=False)
    tasks: tuple[Task, ...] = field(repr=False)
    reader: ReaderName = "h5py"
    filters: Filters = Filters()
    storage_options: dict | None = field(default=None, repr=False)
    split: int = 1  # tasks per parent cell
    retry: RetryPolicy = RetryPolicy()
    memory: MemoryModel = DEFAULT_MODEL

    @property
    def n_cells(self) -> int:
        return len(self.parents) * self.grid.children_per_parent

    @property
    def chunk_cells(self) -> int:
        """Cells per task and per store chunk: one parent's children, or a 1/split share of them."""
        return self.grid.children_per_parent // self.split

    def cell_ids(self) -> np.ndarray:
        return self.grid.children_of(self.parents)

    @property
    def layout(self) -> TaskLayout:
        return TaskLayout(self.parents, self.split, self.grid)

    def run_task(self, index: int, check_footprints: bool = True) -> TaskResult:
        """Reduce one task. Footprint checks only pay off where their misses are repaired (`run`), so
        the lazy Dataset's blocks skip them."""
        task = self.tasks[index]
        check = {g: frozenset(listed) for g, listed in task.check} if check_footprints else {}
        return reduce_parent(
            task.parent, list(task.granules), self.grid, reader=self.reader, filters=self.filters,
            storage_options=self.storage_options, child_range=(task.child_lo, task.child_hi), retry=self.retry,
            check=check, layout=self.layout if check else None,
        )

    def task_place(self, index: int) -> dict[str, int]:
        """Parent cell and first child of the task with a given index (of the whole plan)."""
        return {"parent": int(self.parents[index // self.split]), "child_lo": (index % self.split) * self.chunk_cells}

    def task_index(self, parent: int, child_lo: int) -> int:
        """Index of the task covering children [child_lo, ...) of `parent` (a task of this plan)."""
        pos = int(np.searchsorted(self.parents, np.uint64(parent)))
        if pos >= self.parents.size or int(self.parents[pos]) != int(parent):
            raise KeyError(f"parent cell {parent} is not in the plan")
        return pos * self.split + child_lo // self.chunk_cells

    def with_granules(self, extra: dict[int, tuple[GranuleRef, ...]], rows: dict[int, int] | None = None) -> "Plan":
        """The plan with more granules given to some tasks (by index), e.g. those their footprints missed."""
        tasks = list(self.tasks)
        for i, refs in extra.items():
            t = tasks[i]
            have = {g.granule_id for g in t.granules}
            added = tuple(g for g in refs if g.granule_id not in have)
            rows_more = float((rows or {}).get(i, 0))
            busiest = max(x.expected_rows for x in tasks)
            tasks[i] = dataclasses.replace(t, granules=t.granules + added, expected_rows=t.expected_rows + rows_more,
                                           projected_bytes=self.memory.projected(t.expected_rows + rows_more, busiest))
        return dataclasses.replace(self, tasks=tuple(tasks))

    def largest_first(self) -> list[int]:
        """Task order for execution: most expected rows first, so the longest tasks do not start last."""
        return sorted(range(len(self.tasks)), key=lambda i: -self.tasks[i].expected_rows)

    @property
    def max_projected_bytes(self) -> int:
        return max((t.projected_bytes for t in self.tasks), default=self.memory.baseline_bytes)


def make_plan(
    catalog: Catalog,
    grid: Grid,
    *,
    reader: ReaderName = "h5py",
    filters: Filters = Filters(),
    storage_options: dict | None = None,
    memory_per_task: int | None = None,
    retry: RetryPolicy = RetryPolicy(),
    memory: MemoryModel = DEFAULT_MODEL,
) -> Plan:
    """Tasks for every AOI parent cell (cells without granules too: they come out empty).

    When the busiest parent's projected memory exceeds `memory_per_task`, every parent's children
    are split into the smallest power-of-two number of equal ranges for which every task fits, before
    dispatch. A split task gets only the granules whose footprint crosses its own child range (exact
    coverage at the range's order) and the rows expected there.
    """
    if catalog.parent_order != grid.parent_order:
        raise ValueError(f"catalog parent order {catalog.parent_order} != grid parent order {grid.parent_order}")
    parents = np.unique(np.asarray(catalog.parents, dtype=np.uint64))
    rows = catalog.expected_rows()
    busiest = max(rows.values(), default=0.0)
    split = 1
    if memory_per_task is not None:
        if memory_per_task <= memory.baseline_bytes:
            raise PlanError(f"memory per task {memory_per_task / 2**20:.0f} MiB is below a worker's baseline of "
                            f"{memory.baseline_bytes / 2**20:.0f} MiB")
        while memory.projected(busiest / split, busiest / split) > memory_per_task \
                and split < grid.children_per_parent:
            split *= 2
    fine: dict[int, pd.DataFrame] = {}  # catalog.pairs_at by order: splits 2 and 4 share one order
    while True:
        tasks = _tasks(catalog, grid, parents, split, memory, rows, fine)
        worst = max((t.projected_bytes for t in tasks), default=0)
        if memory_per_task is None or worst <= memory_per_task:
            break
        if split >= grid.children_per_parent:
            raise PlanError(f"a task with {max(t.expected_rows for t in tasks):,.0f} expected rows cannot fit "
                            f"in {memory_per_task / 2**20:.0f} MiB even split per child cell")
        split *= 2
    return Plan(grid, parents, tuple(_assign_checks(tasks)), reader, filters, storage_options, split, retry, memory)


def _assign_checks(tasks: list[Task]) -> list[Task]:
    """Give each granule's footprint check to one task that reads it, spread over the tasks."""
    listing: dict[str, list[int]] = {}
    for t in tasks:
        for g in t.granules:
            listing.setdefault(g.granule_id, []).append(t.index)
    checks: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    load = np.zeros(len(tasks))
    for granule_id, listed in listing.items():
        checker = min(listed, key=lambda i: (load[i], i))  # the least-loaded task already reading it
        load[checker] += 1
        checks.setdefault(checker, []).append((granule_id, tuple(listed)))
    return [dataclasses.replace(t, check=tuple(checks.get(t.index, ()))) for t in tasks]


def _tasks(catalog: Catalog, grid: Grid, parents: np.ndarray, split: int, memory: MemoryModel,
           rows: dict[int, float] | None = None,
           fine_pairs: dict[int, pd.DataFrame] | None = None) -> list[Task]:
    """`split` equal child ranges per parent, each with the granules crossing it, in cell order.

    `rows` (the catalog's expected rows per parent) and `fine_pairs` (pairs by order) are reused
    when given.
    """
    if split == 1:
        rows = catalog.expected_rows() if rows is None else rows
        busiest = max((rows.get(int(p), 0.0) for p in parents), default=0.0)
        return [Task(i, int(p), 0, grid.children_per_parent, tuple(catalog.granules_of(int(p))),
                     rows.get(int(p), 0.0), memory.projected(rows.get(int(p), 0.0), busiest))
                for i, p in enumerate(parents)]
    levels = (split.bit_length()) // 2  # finest order whose cells tile every range: 4**levels >= split
    order = grid.parent_order + levels
    per_range = 4**levels // split  # cells of that order in one range
    fine_pairs = {} if fine_pairs is None else fine_pairs
    if order not in fine_pairs:
        fine_pairs[order] = catalog.pairs_at(order)
    fine = fine_pairs[order]
    local = (fine.cell.to_numpy() & np.uint64(4**levels - 1)).astype(np.int64)
    key = (fine.cell.to_numpy() >> np.uint64(2 * levels)).astype(np.uint64) * np.uint64(split) + (
        local // per_range).astype(np.uint64)
    fine = fine.assign(key=key).sort_values(["key", "row"], kind="stable")
    by_key = {int(k): g for k, g in fine.groupby("key", sort=False)}
    size = grid.children_per_parent // split
    tasks = []
    for p in parents:
        for k in range(split):
            group = by_key.get(int(p) * split + k)
            granules = () if group is None else catalog.granule_refs(group.row.to_numpy())
            expected = 0.0 if group is None else float(group.expected_rows.sum())
            tasks.append(Task(len(tasks), int(p), k * size, (k + 1) * size, granules, expected))
    busiest = max((t.expected_rows for t in tasks), default=0.0)
    return [dataclasses.replace(t, projected_bytes=memory.projected(t.expected_rows, busiest)) for t in tasks]


class _StatsBlock:
    """Picklable block function of the statistics array."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __call__(self, *_: object, block_id: tuple[int, int]) -> np.ndarray:
        return self.plan.run_task(block_id[0], check_footprints=False).block


class _BlockCache:
    """Task blocks shared, within one process, by the per-variable arrays of one lazy Dataset.

    Each variable is its own Cubed array so that a selection fuses with it and computes only the
    blocks it needs; this cache makes the variables of a block share one read of its granules. An
    entry is dropped once every variable has taken its column (or when the cache is full).
    """

    MAX_ENTRIES = 2048

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], list] = {}  # key -> [lock, block, columns still to take]

    def column(self, plan: Plan, token: str, index: int, column: int) -> np.ndarray:
        key = (token, index)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.pop(next(iter(self._entries)))
                entry = self._entries[key] = [threading.Lock(), None, len(STATS)]
        with entry[0]:
            if entry[1] is None:
                entry[1] = plan.run_task(index, check_footprints=False).block
            block = entry[1]
        with self._lock:
            entry[2] -= 1
            if entry[2] <= 0:
                self._entries.pop(key, None)
        return block[:, column]


_BLOCKS = _BlockCache()


class _StatColumn:
    """Picklable block function of one statistic's lazy array."""

    def __init__(self, plan: Plan, token: str, stat: int) -> None:
        self.plan = plan
        self.token = token
        self.stat = stat

    def __call__(self, *_: object, block_id: tuple[int]) -> np.ndarray:
        column = _BLOCKS.column(self.plan, self.token, block_id[0], self.stat)
        return column.astype(STATS[self.stat].dtype)


@dataclass(frozen=True)
class RunTarget:
    store: str
    executor: str
    fingerprint: str
    storage_options: dict | None = None
    attempts: dict[tuple[int, int], int] = field(default_factory=dict)  # earlier attempts, when resuming
    run_id: str = ""  # one per dispatch of tasks: tells a task finished in it from an older record


class _RunBlock:
    """Picklable block function of the run array: reduce, write the chunk, write the ledger record."""

    def __init__(self, plan: Plan, target: RunTarget) -> None:
        self.plan = plan
        self.target = target

    def __call__(self, *_: object, block_id: tuple[int, int]) -> np.ndarray:
        index = block_id[0]
        task = self.plan.tasks[index]
        reset_peak()
        result = self.plan.run_task(index)
        start = task.index * self.plan.chunk_cells
        digest = write_block(self.target.store, start, result.block, storage_options=self.target.storage_options)
        peak = peak_bytes()
        tasks = self.plan.tasks
        record = TaskRecord(
            parent=result.parent, child_lo=result.child_lo, child_hi=result.child_hi, status=result.status,
            observations=result.observations, rows_in_cell=result.rows_in_cell, granules=len(task.granules),
            granules_read=result.granules_read,
            failures=[{"granule": f.granule_id, "reason": f.reason, "transient": f.transient,
                       "attempts": f.attempts} for f in result.failures],
            seconds=result.seconds, peak_memory_bytes=peak, executor=self.target.executor,
            attempt=self.target.attempts.get((task.parent, task.child_lo), 0) + 1,
            fingerprint=self.target.fingerprint, rows_filtered=result.rows_filtered,
            rows_invalid=result.rows_invalid, granule_ids=list(result.granule_ids),
            footprint_misses=[{"granule": m.granule_id, **self.plan.task_place(m.task), "rows": m.rows}
                              for m in result.footprint_misses],
            checksum=digest, projected_memory_bytes=task.projected_bytes, run_id=self.target.run_id,
        )
        write_record(self.target.store, record, self.target.storage_options)
        summary = [result.observations, result.rows_in_cell, len(task.granules), result.granules_read,
                   len(result.failures), result.seconds, peak]
        return np.asarray(summary, dtype=np.float64)[None, :]


def stats_array(plan: Plan, chunk_manager: str = "cubed", spec=None):
    """Lazy (cells x statistics) float64 array, one chunk per task (one parent cell unless split)."""
    chunks = ((plan.chunk_cells,) * len(plan.tasks), (len(STATS),))
    extra = {"extra_projected_mem": plan.max_projected_bytes} if chunk_manager == "cubed" else {}
    return _virtual(_StatsBlock(plan), chunks, chunk_manager, spec, name="polaragg-stats", **extra)


def run_array(plan: Plan, target: RunTarget, chunk_manager: str = "cubed", spec=None):
    """Lazy (tasks x summary) array whose computation runs every task and fills the store."""
    chunks = ((1,) * len(plan.tasks), (len(SUMMARY_FIELDS),))
    extra = {"extra_projected_mem": plan.max_projected_bytes} if chunk_manager == "cubed" else {}
    return _virtual(_RunBlock(plan, target), chunks, chunk_manager, spec, name="polaragg-run", **extra)


def _virtual(func, chunks, chunk_manager: str, spec, name: str, **kwargs):
    if chunk_manager == "cubed":
        import cubed

        return cubed.map_blocks(func, dtype=np.float64, chunks=chunks, spec=spec, **kwargs)
    if chunk_manager == "dask":
        import dask.array as da

        return da.map_blocks(func, dtype=np.float64, chunks=chunks, meta=np.empty((0, 0)), name=name)
    raise ValueError(f"chunk_manager must be 'cubed' or 'dask', got {chunk_manager!r}")


def dataset_from_plan(plan: Plan, chunk_manager: str = "cubed", spec=None, attrs: dict | None = None) -> xr.Dataset:
    """The lazy Dataset: one variable per statistic over dimension `cells`, coordinate `cell_ids`.

    Dask: the variables are columns of one shared task array (graph culling keeps selections
    cheap). Cubed: one array per variable over a shared per-process block cache, because Cubed only
    fuses an array into a selection that is its single consumer.
    """
    variables = {}
    if chunk_manager == "dask":
        arr = stats_array(plan, chunk_manager, spec)
    else:
        import cubed

        token = uuid.uuid4().hex
        chunks = ((plan.chunk_cells,) * len(plan.tasks),)
    for i, stat in enumerate(STATS):
        if chunk_manager == "dask":
            column = arr[:, STAT_INDEX[stat.name]].astype(stat.dtype)
        else:
            column = cubed.map_blocks(_StatColumn(plan, token, i), dtype=np.dtype(stat.dtype), chunks=chunks,
                                      spec=spec, extra_projected_mem=plan.max_projected_bytes)
        variables[stat.name] = xr.Variable(("cells",), column, {"units": stat.units, "long_name": stat.long_name})
    cell_ids = xr.Variable(("cells",), plan.cell_ids(), plan.grid.cell_id_attrs())
    return xr.Dataset(variables, coords={"cell_ids": cell_ids}, attrs=attrs or {})


def default_spec(work_dir: str | None = None, allowed_mem: int = 2 * 10**9):
    """A Cubed Spec with a per-run-safe work directory."""
    import cubed

    return cubed.Spec(work_dir=work_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "polaragg-cubed"),
                      allowed_mem=allowed_mem)
