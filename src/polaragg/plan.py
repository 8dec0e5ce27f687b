"""The plan: a granule stage and a cell stage, as one lazy Cubed or Dask computation.

`Plan` is plain picklable data (cells, tasks, granules, reader settings), so its block functions
run in threads, processes, Lithops workers or Dask workers. The computation is three arrays:

- `index` (granules x tasks, one block per granule): each block reads its granule once, writes
  the granule's rows, sorted by task, to the intermediate, and returns where each task's segment is;
- the same index by task (one block per task, every granule's entry for it): a transpose;
- `stats` (cells x statistics, one block per task): each block reads its segments and reduces them.

`open_dataset` exposes the columns of `stats`; `run` stores each block of `stats` into the output
store as it is computed (with its ledger record), which is the same computation ending in a write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import xarray as xr

from .aggregate import PartitionJob, ReduceJob, TaskLayout, TaskResult, index_row, partition_granule, reduce_task
from .catalog import Catalog
from .domain import Filters, GranuleRef, RetryPolicy
from .grid import Grid
from .intermediate import PARTITION_FORMAT, GranuleRecord, Location
from .ledger import TaskRecord, write_record
from .memory import DEFAULT_MODEL, MemoryModel, peak_bytes, reset_peak
from .read import ReaderName
from .schema import OutputSchema
from .store import combine_checksums, write_block
from .timebins import NO_BIN, TimeBins

SUMMARY_FIELDS: tuple[str, ...] = (
    "observations", "rows_in_cell", "granules", "granules_read", "failures", "seconds", "peak_memory_bytes",
)


MERGED_CHUNK = 4096  # cells per chunk of the orders merged after the tasks (written whole by the client)
# Largest groups on the local executors, so that a large run still has tasks a retry can afford to repeat
# (a block retried runs all its tasks again) and a granule-stage task never holds a whole cycle.
MAX_GRANULES_PER_TASK = 32
MAX_TASKS_PER_BLOCK = 64


def _group_size(n: int, groups: int | None, cap: int) -> int:
    """Items per group for `n` items in about `groups` groups of at most `cap` (1 when not grouped)."""
    return 1 if not groups or n == 0 else min(cap, -(-n // min(groups, n)))


class PlanError(ValueError):
    """A plan that cannot satisfy its constraints (e.g. a task that cannot fit its memory bound)."""


@dataclass(frozen=True)
class Task:
    """One bounded unit of the cell stage: the child range [child_lo, child_hi) of one parent cell."""

    index: int  # block index: the task's chunk of the output is cells [index * chunk, (index + 1) * chunk)
    parent: int
    child_lo: int
    child_hi: int
    granules: tuple[GranuleRef, ...]  # granules whose footprints cross the range (planning, failures)
    expected_rows: float
    projected_bytes: int = 0  # peak memory projected by the plan's memory model
    # Granules whose granule-stage record this task reports, each with the indices of the tasks listing it.
    reports: tuple[tuple[str, tuple[int, ...]], ...] = ()


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
    # Every granule some task lists, largest first: the granule stage's blocks, in execution order.
    granules: tuple[GranuleRef, ...] = field(default=(), repr=False)
    granule_projected_bytes: tuple[int, ...] = field(default=(), repr=False)
    # Tasks the cell stage computes, in execution order (None: all of them, in cell order).
    columns: tuple[int, ...] | None = field(default=None, repr=False)
    granules_per_task: int = 1  # granule-stage task b partitions granules [b * k, (b + 1) * k)
    # A run's cell stage in up to this many blocks of consecutive `task_columns` (None: a block per task).
    cell_blocks: int | None = None
    time: TimeBins = PartitionJob.bins  # default: one bin holding every time, no fit
    hemisphere: str = "south"  # of the polar stereographic x, y of the change fit
    granule_bins: tuple[int, ...] = field(default=(), repr=False)  # per granule: its bin (cycle bins) or NO_BIN
    coarsest_order: int | None = None  # pyramid: every order from the child order to this one (None: none)
    bin_groups: tuple[tuple[int, int], ...] = ()  # time split: groups of bins a task reduces in turn
    stored_bins: int = 0  # appending: bins before this one are in the store already, read back, not computed
    time_chunk: int = 0  # bins per chunk of the store's per-bin arrays (0: all of the plan's bins)

    @cached_property
    def schema(self) -> OutputSchema:
        return OutputSchema(self.time.n, self.time.fit)

    @property
    def task_order(self) -> int:
        """The finest order whose cells lie whole inside every task (the parent order unless split)."""
        return self.grid.parent_order + self.split.bit_length() // 2  # ceil(log4(split))

    @property
    def task_orders(self) -> tuple[int, ...]:
        """Orders each task computes from its observations, child order first (exact quantiles)."""
        if self.coarsest_order is None:
            return (self.grid.child_order,)
        return tuple(range(self.grid.child_order, max(self.task_order, self.coarsest_order) - 1, -1))

    @property
    def merged_orders(self) -> tuple[int, ...]:
        """Coarser orders, merged after the tasks from the sufficient statistics (no quantiles)."""
        if self.coarsest_order is None or self.coarsest_order >= self.task_order:
            return ()
        return tuple(range(self.task_order - 1, self.coarsest_order - 1, -1))

    @property
    def shifts(self) -> tuple[int, ...]:
        return tuple(2 * (self.grid.child_order - o) for o in self.task_orders)

    def pyramid(self) -> tuple[tuple[int, int, OutputSchema], ...]:
        """The store's coarser orders: (order, cells per chunk, schema)."""
        levels = [(o, self.chunk_cells >> (2 * (self.grid.child_order - o)), self.schema) for o in self.task_orders[1:]]
        merged = dataclasses.replace(self.schema, quantiles=False)
        return tuple(levels + [(o, MERGED_CHUNK, merged) for o in self.merged_orders])

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

    @property
    def task_columns(self) -> tuple[int, ...]:
        return tuple(range(len(self.tasks))) if self.columns is None else self.columns

    @property
    def tasks_per_block(self) -> int:
        """Cell-stage tasks per block of a run (one at a time, each with its own record and peak)."""
        return _group_size(len(self.task_columns), self.cell_blocks, MAX_TASKS_PER_BLOCK)

    @cached_property
    def partition_key(self) -> str:
        """What every granule's partition depends on: format, layout, grid and filters (each record also
        names the file it was read from, see `intermediate.source_stamp`)."""
        h = hashlib.sha256(f"{PARTITION_FORMAT}:".encode())
        h.update(np.ascontiguousarray(self.parents, dtype=np.uint64).tobytes())
        h.update(f"{self.split}:{self.grid.parent_order}:{self.grid.child_order}:{self.filters}".encode())
        h.update(f"{self.time}:{self.hemisphere}".encode())
        return h.hexdigest()[:16]

    @cached_property
    def granule_position(self) -> dict[str, int]:
        return {g.granule_id: i for i, g in enumerate(self.granules)}

    def listed(self, index: int) -> tuple[int, ...]:
        """Positions (in `granules`) of the granules task `index` lists, in its listing order."""
        pos = self.granule_position
        return tuple(pos[g.granule_id] for g in self.tasks[index].granules if g.granule_id in pos)

    def partition_job(self, location: Location) -> PartitionJob:
        return PartitionJob(self.layout, location, self.partition_key, self.reader, self.filters,
                            self.storage_options, self.retry, self.time, self.hemisphere)

    def partition(self, position: int, location: Location) -> GranuleRecord:
        """Run the granule stage for the granule at `position` (reusing a record made for this plan)."""
        projected = self.granule_projected_bytes[position] if self.granule_projected_bytes else 0
        granule_bin = self.granule_bins[position] if self.granule_bins else NO_BIN
        return partition_granule(self.granules[position], self.partition_job(location), projected, granule_bin)

    def reduce(self, index: int, entries: np.ndarray, location: Location, every_order: bool = False,
               store: str | None = None, storage_options: dict | None = None) -> TaskResult:
        """Run the cell stage for task `index` from its index entries (one per granule): the child order's
        block, and with `every_order` the block of each of `task_orders` after it."""
        job = ReduceJob(location, self.chunk_cells, self.grid.child_order, self.schema, self.time, self.hemisphere,
                        self.shifts if every_order else (0,), self.bin_groups, self.granule_bins, self.stored_bins,
                        store, storage_options, self.task_orders if every_order else self.task_orders[:1])
        place = self.task_place(index)
        first_cell = (place["parent"] << self.grid.shift) + place["child_lo"]
        return reduce_task(entries, self.granules, self.listed(index), job, first_cell, index)

    def task_place(self, index: int) -> dict[str, int]:
        """Parent cell and first child of the task with a given index (of the whole plan)."""
        return {"parent": int(self.parents[index // self.split]), "child_lo": (index % self.split) * self.chunk_cells}

    def task_index(self, parent: int, child_lo: int) -> int:
        """Index of the task covering children [child_lo, ...) of `parent` (a task of this plan)."""
        pos = int(np.searchsorted(self.parents, np.uint64(parent)))
        if pos >= self.parents.size or int(self.parents[pos]) != int(parent):
            raise KeyError(f"parent cell {parent} is not in the plan")
        return pos * self.split + child_lo // self.chunk_cells

    def with_columns(self, columns: list[int] | tuple[int, ...]) -> "Plan":
        """The plan computing only the given tasks (in that order); the granule stage is unchanged."""
        return dataclasses.replace(self, columns=tuple(int(c) for c in columns))

    def largest_first(self) -> list[int]:
        """Task order for execution: most expected rows first, so the longest tasks do not start last."""
        return sorted(range(len(self.tasks)), key=lambda i: -self.tasks[i].expected_rows)

    @property
    def max_projected_bytes(self) -> int:
        return max((t.projected_bytes for t in self.tasks), default=self.memory.baseline_bytes)

    @property
    def max_granule_projected_bytes(self) -> int:
        return max(self.granule_projected_bytes, default=self.memory.baseline_bytes)


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
    granule_tasks: int | None = None,
    cell_blocks: int | None = None,
    time: TimeBins | None = None,
    coarsest_order: int | None = None,
    stored_bins: int = 0,
    time_chunk: int = 0,
) -> Plan:
    """Tasks for every AOI parent cell (cells without granules too: they come out empty).

    The granule stage runs one task per granule, or `granule_tasks` tasks of equally many granules
    (fewer, larger tasks cost less to dispatch on a few local workers; at most MAX_GRANULES_PER_TASK
    each), balanced by what their reads cost. A run's cell stage likewise runs one task per block, or
    up to `cell_blocks` blocks (of at most MAX_TASKS_PER_BLOCK) of consecutive tasks in execution
    order, largest first, each block running its tasks one after another.

    When the busiest parent's projected memory exceeds `memory_per_task`, every parent's children
    are split into the smallest power-of-two number of equal ranges for which every task fits, before
    dispatch. A split task gets only the granules whose footprint crosses its own child range (exact
    coverage at the range's order) and the rows expected there.
    """
    if catalog.parent_order != grid.parent_order:
        raise ValueError(f"catalog parent order {catalog.parent_order} != grid parent order {grid.parent_order}")
    parents = np.unique(np.asarray(catalog.parents, dtype=np.uint64))
    time = time or Plan.time
    bin_of = granule_bins_of(catalog, time)
    rows, groups, group_share = _time_groups(catalog, time, bin_of, memory, memory_per_task)
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
        if len(groups) > 1:  # a task holds one group of bins at a time: its largest share of the rows
            tasks = _grouped_projection(tasks, group_share, memory)
        worst = max((t.projected_bytes for t in tasks), default=0)
        if memory_per_task is None or worst <= memory_per_task:
            break
        if split >= grid.children_per_parent:
            raise PlanError(f"a task with {max(t.expected_rows for t in tasks):,.0f} expected rows cannot fit "
                            f"in {memory_per_task / 2**20:.0f} MiB even split per child cell")
        split *= 2
    granules, projected, per_block = _granule_order(catalog, tasks, memory, granule_tasks)
    if memory_per_task is not None and max(projected, default=0) > memory_per_task:
        worst = granules[int(np.argmax(projected))]
        raise PlanError(f"granule {worst.granule_id} is projected to need {max(projected) / 2**20:.0f} MiB to "
                        f"partition, above memory per task {memory_per_task / 2**20:.0f} MiB; raise "
                        "executor.memory_per_task")
    granule_bins = tuple(time.granule_bin(bin_cycle) if time.kind == "cycle" else NO_BIN
                         for bin_cycle in (bin_of.get(g.granule_id, (-1, NO_BIN))[0] for g in granules))
    return Plan(grid, parents, tuple(_assign_reports(tasks)), reader, filters, storage_options, split, retry, memory,
                granules, projected, granules_per_task=per_block, cell_blocks=cell_blocks, time=time,
                hemisphere=_hemisphere(parents, grid.parent_order), granule_bins=granule_bins,
                coarsest_order=None if coarsest_order is None or coarsest_order >= grid.child_order else coarsest_order,
                bin_groups=groups if len(groups) > 1 else (), stored_bins=stored_bins, time_chunk=time_chunk)


def granule_bins_of(catalog: Catalog, time: TimeBins) -> dict[str, tuple[int, int]]:
    """Each granule's (cycle, bin): its cycle's bin, or for date bins the bin of its mid time (NO_BIN if none)."""
    cycles, begins, ends = catalog.time_spans()
    ids = catalog.granules.granule_id.astype(str).tolist()
    if time.kind == "cycle":
        bins = [time.granule_bin(int(c)) for c in cycles]
    else:
        mid = np.where(np.isfinite(begins) & np.isfinite(ends), (begins + ends) / 2, np.nan)
        bins = time.row_bins(np.nan_to_num(mid, nan=-1e300)).tolist()
    return {g: (int(c), int(b)) for g, c, b in zip(ids, cycles, bins)}


def _time_groups(catalog: Catalog, time: TimeBins, bin_of: dict[str, tuple[int, int]], memory: MemoryModel,
                 memory_per_task: int | None) -> tuple[dict[int, float], tuple[tuple[int, int], ...], dict[int, float]]:
    """Expected rows per parent, the groups of consecutive bins a task reduces in turn, and each parent's
    largest share of its rows in one group.

    One group (all bins) unless the busiest parent's rows over all bins would not fit `memory_per_task`:
    then consecutive bins are grouped while the most any parent expects in the group fits."""
    rows = catalog.expected_rows()
    whole: tuple[tuple[int, int], ...] = ((0, time.n),)
    busiest = max(rows.values(), default=0.0)
    if memory_per_task is None or time.n < 2 or memory.projected(busiest, busiest) <= memory_per_task:
        return rows, whole, {}
    pairs = catalog.pairs()
    b = np.array([bin_of.get(g, (-1, NO_BIN))[1] for g in pairs.granule_id.astype(str)], np.int64)
    parent_ids = np.unique(pairs.parent.to_numpy(np.uint64))
    p = np.searchsorted(parent_ids, pairs.parent.to_numpy(np.uint64))
    per_bin = np.zeros((parent_ids.size, time.n))
    known = b >= 0
    np.add.at(per_bin, (p[known], b[known]), pairs.expected_rows.to_numpy(np.float64)[known])
    unknown = np.bincount(p[~known], weights=pairs.expected_rows.to_numpy(np.float64)[~known],
                          minlength=parent_ids.size)  # rows of granules of no known bin: in every group
    limit = memory.rows_within(memory_per_task)
    worst = per_bin.max(axis=0) if per_bin.size else np.zeros(time.n)
    groups, lo, acc = [], 0, 0.0
    for k in range(time.n):
        if k > lo and acc + worst[k] + unknown.max(initial=0.0) > limit:
            groups.append((lo, k))
            lo, acc = k, 0.0
        acc += worst[k]
    groups.append((lo, time.n))
    total = per_bin.sum(axis=1) + unknown
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.max([per_bin[:, a:z].sum(axis=1) + unknown for a, z in groups], axis=0) / total
    shares = {int(q): float(v) if np.isfinite(v) else 1.0 for q, v in zip(parent_ids, share)}
    return {k: v * shares.get(k, 1.0) for k, v in rows.items()}, tuple(groups), shares


def _grouped_projection(tasks: list[Task], share: dict[int, float], memory: MemoryModel) -> list[Task]:
    """Tasks' projected memory when they hold one group of bins at a time (their parent's largest share)."""
    held = [t.expected_rows * share.get(t.parent, 1.0) for t in tasks]
    busiest = max(held, default=0.0)
    return [dataclasses.replace(t, projected_bytes=memory.projected(h, busiest)) for t, h in zip(tasks, held)]


def _hemisphere(parents: np.ndarray, order: int) -> str:
    """'south' or 'north': where the plan's parent cells are (a plan in both is refused)."""
    if parents.size == 0:
        return "south"
    import healpix_geo.nested as hpn

    _, lat = hpn.healpix_to_lonlat(np.asarray(parents, np.uint64), order, ellipsoid="WGS84")
    if (lat > 0).all():
        return "north"
    if (lat < 0).all():
        return "south"
    raise PlanError("the AOI has parent cells in both hemispheres; aggregate each pole with its own recipe")


def _granule_order(catalog: Catalog, tasks: list[Task], memory: MemoryModel, granule_tasks: int | None
                   ) -> tuple[tuple[GranuleRef, ...], tuple[int, ...], int]:
    """Every granule some task lists, in granule-stage order, its memory projection, and granules per task.

    One granule per task: most work first (`_read_work`). Grouped: `k` granules per task (`_group_size`;
    the last task holds the rest), each granule, largest first, going to the least-loaded task with room.
    """
    g = catalog.granules
    rows = dict(zip(g.granule_id.astype(str), g.expected_rows.fillna(0).astype(float)))
    seen: dict[str, GranuleRef] = {}
    for t in tasks:
        for ref in t.granules:
            seen.setdefault(ref.granule_id, ref)
    work = _read_work(list(seen.values()), rows)
    order = sorted(seen.values(), key=lambda r: -work[r.granule_id])
    k = _group_size(len(order), granule_tasks, MAX_GRANULES_PER_TASK)
    if k > 1:
        n_blocks = -(-len(order) // k)
        room = [k] * (n_blocks - 1) + [len(order) - k * (n_blocks - 1)]
        blocks: list[list[GranuleRef]] = [[] for _ in range(n_blocks)]
        load = [0.0] * n_blocks
        for ref in order:
            b = min((i for i in range(n_blocks) if len(blocks[i]) < room[i]), key=lambda i: (load[i], i))
            blocks[b].append(ref)
            load[b] += work[ref.granule_id]
        order = [ref for block in blocks for ref in block]
    busiest = max((rows.get(r.granule_id, 0.0) for r in order), default=0.0)
    return tuple(order), tuple(memory.partition(rows.get(r.granule_id, 0.0), busiest) for r in order), k


def _read_work(refs: list[GranuleRef], rows: dict[str, float]) -> dict[str, float]:
    """What partitioning each granule costs, for ordering the granule stage: its file's size where every
    granule is a local file (a read costs the whole file), else its expected rows."""
    sizes = {}
    for ref in refs:
        if "://" in ref.url and not ref.url.startswith("file://"):
            return {r.granule_id: rows.get(r.granule_id, 0.0) for r in refs}
        try:
            sizes[ref.granule_id] = float(os.path.getsize(ref.url.removeprefix("file://")))
        except OSError:
            return {r.granule_id: rows.get(r.granule_id, 0.0) for r in refs}
    return sizes


def _assign_reports(tasks: list[Task]) -> list[Task]:
    """Give each granule's record to one task that lists it to report, spread over the tasks."""
    listing: dict[str, list[int]] = {}
    for t in tasks:
        for g in t.granules:
            listing.setdefault(g.granule_id, []).append(t.index)
    checks: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    load = np.zeros(len(tasks))
    for granule_id, listed in listing.items():
        checker = min(listed, key=lambda i: (load[i], i))  # the least-loaded task listing it
        load[checker] += 1
        checks.setdefault(checker, []).append((granule_id, tuple(listed)))
    return [dataclasses.replace(t, reports=tuple(checks.get(t.index, ()))) for t in tasks]


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


class _Partition:
    """Block function of the granule stage: its granules' index entries for the plan's columns, one
    column per granule (the index is laid out by task, as the cell stage reads it)."""

    def __init__(self, plan: Plan, location: Location) -> None:
        self.plan = plan
        self.location = location

    def __call__(self, *_: object, block_id: tuple[int, int]) -> np.ndarray:
        plan, columns = self.plan, self.plan.task_columns
        if not plan.granules:  # the one entry per task of a plan without granules
            return np.zeros((len(columns), 1), np.int64)
        k = plan.granules_per_task
        positions = range(block_id[1] * k, min((block_id[1] + 1) * k, len(plan.granules)))
        return np.stack([index_row(plan.partition(p, self.location), columns) for p in positions], axis=1)


class _Reduce:
    """Block function of the cell stage: one task's statistics block."""

    def __init__(self, plan: Plan, location: Location) -> None:
        self.plan = plan
        self.location = location

    def __call__(self, entries: np.ndarray, block_id: tuple[int, int]) -> np.ndarray:
        return self.plan.reduce(self.plan.task_columns[block_id[0]], entries, self.location).block


@dataclass(frozen=True)
class RunTarget:
    store: str
    executor: str
    fingerprint: str
    storage_options: dict | None = None
    attempts: dict[tuple[int, int], int] = field(default_factory=dict)  # earlier attempts, when resuming
    run_id: str = ""  # one per dispatch of tasks: tells a task finished in it from an older record


class _ReduceAndStore:
    """Block function of a run: the cell stage's block, stored into its chunk, and its ledger record."""

    def __init__(self, plan: Plan, location: Location, target: RunTarget) -> None:
        self.plan = plan
        self.location = location
        self.target = target

    def __call__(self, entries: np.ndarray, block_id: tuple[int, int]) -> np.ndarray:
        first = block_id[0] * self.plan.tasks_per_block
        columns = self.plan.task_columns[first:first + entries.shape[0]]
        return np.concatenate([self._task(index, row) for index, row in zip(columns, entries)])

    def _task(self, index: int, entries: np.ndarray) -> np.ndarray:
        plan, task = self.plan, self.plan.tasks[index]
        reset_peak()
        start, cpu = time.perf_counter(), time.process_time()
        result = plan.reduce(index, entries, self.location, every_order=True, store=self.target.store,
                             storage_options=self.target.storage_options)
        digests, row = [], 0
        for order, shift in zip(plan.task_orders, plan.shifts):
            n = plan.chunk_cells >> shift
            digests.append(write_block(self.target.store, task.index * n, result.block[row:row + n],
                                       storage_options=self.target.storage_options, schema=plan.schema,
                                       group=None if shift == 0 else str(order), bins_from=plan.stored_bins,
                                       time_chunk=plan.time_chunk))
            row += n
        digest = combine_checksums(digests)
        result = dataclasses.replace(result, seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
        counts = result.block[:plan.chunk_cells, plan.schema.columns("count")]
        record = dataclasses.replace(self._record(task, result, digest),
                                     cells_with_data=int(np.count_nonzero(counts.sum(axis=1))))
        write_record(self.target.store, record, self.target.storage_options)
        summary = [record.observations, record.rows_in_cell, record.granules, record.granules_read,
                   len(record.failures), record.seconds, record.peak_memory_bytes]
        return np.asarray(summary, dtype=np.float64)[None, :]

    def _record(self, task: Task, result: TaskResult, digest: str) -> TaskRecord:
        plan, location, key = self.plan, self.location, self.plan.partition_key
        failures = []
        for granule in result.failed:
            rec = location.record(granule, key)
            failures.append({"granule": granule, "reason": rec.reason if rec else "not read",
                             "transient": bool(rec and rec.transient), "attempts": rec.attempts if rec else 0})
        reports, misses = [], []
        for granule, listed in task.reports:
            rec = location.record(granule, key)
            if rec is None:
                continue
            reports.append({"granule": granule, "status": rec.status, "rows": rec.rows,
                            "rows_invalid": rec.rows_invalid, "rows_filtered": rec.rows_filtered,
                            "rows_outside": rec.rows_outside, "observations": rec.observations,
                            "seconds": rec.seconds, "cpu_seconds": rec.cpu_seconds,
                            "peak_memory_bytes": rec.peak_memory_bytes,
                            "projected_memory_bytes": rec.projected_memory_bytes, "attempts": rec.attempts})
            known = set(listed)
            misses += [{"granule": granule, **plan.task_place(t), "rows": n}
                       for t, _, n in rec.segments if t not in known]
        failed = set(result.failed)
        read = [g.granule_id for g in task.granules if g.granule_id not in failed]
        listed_ok = set(read)
        read += [g for g in result.granules_with_rows if g not in listed_ok]
        if failures:
            status = "failed" if not read else "partial"
        else:
            status = "ok" if result.observations > 0 else "empty"
        return TaskRecord(
            parent=task.parent, child_lo=task.child_lo, child_hi=task.child_hi, status=status,
            observations=result.observations, rows_in_cell=result.observations, granules=len(task.granules),
            granules_read=len(read), failures=failures, seconds=result.seconds, peak_memory_bytes=peak_bytes(),
            executor=self.target.executor, attempt=self.target.attempts.get((task.parent, task.child_lo), 0) + 1,
            fingerprint=self.target.fingerprint,
            rows_filtered=sum(r["rows_filtered"] for r in reports),
            rows_invalid=sum(r["rows_invalid"] for r in reports),
            rows_outside=sum(r["rows_outside"] for r in reports),
            granule_ids=read, footprint_misses=misses, checksum=digest,
            projected_memory_bytes=task.projected_bytes, run_id=self.target.run_id,
            granule_reports=reports, granule_seconds=sum(r["seconds"] for r in reports),
            cpu_seconds=result.cpu_seconds, granule_cpu_seconds=sum(r["cpu_seconds"] for r in reports),
            segments=result.segments,
        )


def _token(plan: Plan, location: Location, *more: object) -> str:
    """A name for Dask keys that differs between plans, partition folders and runs."""
    h = hashlib.sha256(f"{plan.partition_key}:{location.url}:{plan.task_columns}:{more}".encode())
    for g in plan.granules:
        h.update(f"{g.granule_id}\0{g.url}\0".encode())
    return h.hexdigest()[:16]


def _index(plan: Plan, location: Location, chunk_manager: str, spec):
    """The granule stage: (tasks x granules) index entries, one block per granule-stage task.

    Its operation never fuses with the next: it is always the first of the plan (after Cubed creates its
    arrays), which is what lets a run write the store's template while it runs (`StoreGate`)."""
    n, k = len(plan.granules), plan.granules_per_task
    granules = (k,) * (n // k) + ((n % k,) if n % k else ()) if n else (1,)
    chunks = ((len(plan.task_columns),), granules)
    extra = ({"extra_projected_mem": plan.max_granule_projected_bytes, "fusable_with_successors": False}
             if chunk_manager == "cubed" else {})
    return _virtual(_Partition(plan, location), chunks, chunk_manager, spec, np.int64,
                    name=f"polaragg-partition-{_token(plan, location)}", **extra)


def _by_task(index, per_block: int = 1):
    """The index with one block per `per_block` tasks holding every granule's entry for them."""
    return index.rechunk((per_block, index.shape[1]))


def _cell_stage(func, plan: Plan, location: Location, chunks, chunk_manager: str, spec, name: str,
                per_block: int = 1):
    by_task = _by_task(_index(plan, location, chunk_manager, spec), per_block)
    if chunk_manager == "cubed":
        import cubed

        return cubed.map_blocks(func, by_task, dtype=np.float64, chunks=chunks,
                                extra_projected_mem=plan.max_projected_bytes)
    import dask.array as da

    return da.map_blocks(func, by_task, dtype=np.float64, chunks=chunks, meta=np.empty((0, 0)), name=name)


def stats_array(plan: Plan, location: Location, chunk_manager: str = "cubed", spec=None):
    """Lazy (cells x statistics) float64 array, one chunk per task (one parent cell unless split)."""
    chunks = ((plan.chunk_cells,) * len(plan.task_columns), (plan.schema.n_columns,))
    return _cell_stage(_Reduce(plan, location), plan, location, chunks, chunk_manager, spec,
                       f"polaragg-stats-{_token(plan, location)}")


def run_array(plan: Plan, location: Location, target: RunTarget, chunk_manager: str = "cubed", spec=None):
    """Lazy (tasks x summary) array whose computation runs every task and fills the store, in blocks of
    `plan.tasks_per_block` tasks."""
    n, k = len(plan.task_columns), plan.tasks_per_block
    chunks = ((k,) * (n // k) + ((n % k,) if n % k else ()), (len(SUMMARY_FIELDS),))
    return _cell_stage(_ReduceAndStore(plan, location, target), plan, location, chunks, chunk_manager, spec,
                       f"polaragg-run-{_token(plan, location, target.store, target.run_id)}", per_block=k)


def _virtual(func, chunks, chunk_manager: str, spec, dtype, name: str, **kwargs):
    if chunk_manager == "cubed":
        import cubed

        return cubed.map_blocks(func, dtype=dtype, chunks=chunks, spec=spec, **kwargs)
    if chunk_manager == "dask":
        import dask.array as da

        return da.map_blocks(func, dtype=dtype, chunks=chunks, meta=np.empty((0, 0), dtype), name=name)
    raise ValueError(f"chunk_manager must be 'cubed' or 'dask', got {chunk_manager!r}")


def dataset_from_plan(plan: Plan, location: Location, chunk_manager: str = "cubed", spec=None,
                      attrs: dict | None = None) -> xr.Dataset:
    """The lazy Dataset: per-bin variables over (`time`, `cells`), per-cell ones over `cells`.

    The variables are slices of the one statistics array; computing any of them runs the granule
    stage for every granule (reusing partitions already in `location`) and the cell stage for the
    tasks selected. `time` holds bin centres (datetime64) with `time_bounds`; `t_mean` stays seconds
    with its CF units (`xr.decode_cf` turns it into datetimes, as opening a store does).
    """
    from .schema import time_coordinates, variable_attrs

    if plan.columns is not None:
        raise ValueError("a Dataset covers every task of the plan")
    arr = stats_array(plan, location, chunk_manager, spec)
    if chunk_manager == "cubed":
        from cubed.array_api import astype, permute_dims
    else:
        def astype(x, dtype):
            return x.astype(dtype)

        def permute_dims(x, axes):
            return x.transpose(axes)
    schema, variables = plan.schema, {}
    for stat in schema.variables:
        column = arr[:, schema.columns(stat.name)]
        if schema.is_per_bin(stat.name):
            variables[stat.name] = xr.Variable(("time", "cells"), astype(permute_dims(column, (1, 0)),
                                               np.dtype(stat.dtype)), variable_attrs(stat, schema))
        else:
            variables[stat.name] = xr.Variable(("cells",), astype(column[:, 0], np.dtype(stat.dtype)),
                                               variable_attrs(stat, schema))
    coords = {"cell_ids": xr.Variable(("cells",), plan.cell_ids(), plan.grid.cell_id_attrs())}
    centres, bounds, time_attrs = time_coordinates(plan.time)
    epoch = np.datetime64("2018-01-01T00:00:00", "ns")
    coords["time"] = xr.Variable(("time",), epoch + (centres * 1e9).astype("timedelta64[ns]"),
                                 {k: v for k, v in time_attrs.items() if k not in ("units", "calendar")})
    coords["time_bounds"] = xr.Variable(("time", "nv"), epoch + (bounds * 1e9).astype("timedelta64[ns]"))
    return xr.Dataset(variables, coords=coords, attrs=attrs or {})


# Cubed adds the chunk buffers of an operation to its projected memory; polaragg's memory model already
# counts them in a worker's baseline, so Cubed's own check gets this much room above the task bound.
CUBED_BUFFER_SLACK = 16 * 2**20


def default_spec(work_dir: str | None = None, allowed_mem: int = 2 * 10**9, in_process: bool = False,
                 storage_options: dict | None = None):
    """A Cubed Spec with a per-run-safe work directory; `allowed_mem` is the task memory bound.

    `in_process`: every task runs in this process (single-threaded, threads), so Cubed's intermediate
    arrays (the plan's small index) stay in memory instead of going through Zarr files. A remote
    `work_dir` (s3://...) is reached with `storage_options`.
    """
    import cubed

    extra = {}
    if in_process:
        import zarr

        extra["intermediate_store"] = zarr.storage.MemoryStore()
    if storage_options:
        extra["storage_options"] = storage_options
    return cubed.Spec(work_dir=work_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "polaragg-cubed"),
                      allowed_mem=allowed_mem + CUBED_BUFFER_SLACK, **extra)
