"""The two kinds of task: partition one granule (read once), reduce one output chunk.

Granule stage: read the six columns of every beam once, whole; drop rows without valid coordinates
or time and rows the filters reject (quality, fill values, sigma <= 0) before any cell is computed;
one HEALPix call per beam; place each row in its task (the plan's parents, `split` equal child
ranges each) and write the rows, sorted by task, to the intermediate. Every row lands in the task
of its own cell, whatever the granule's footprint said. A granule that cannot be read is recorded
with its reason; it fails only the tasks that list it.

Cell stage: read the task's segment of every granule with rows in it and reduce them with one
packed-key sort (`stats.grouped_stats`) into the (cells x statistics) block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .credentials import CredentialError, redact
from .domain import Filters, GranuleFailure, GranuleRef, RetryPolicy
from .fs import EndpointUnreachable
from .grid import Grid, cells_of_points
from .intermediate import MAX_SEGMENT_ROWS, GranuleRecord, Location, row_columns, row_dtype, source_stamp
from .memory import keep_freed_memory, peak_bytes, reset_peak
from .products import atl06
from .read import GranuleError, ReaderName, open_granule
from .retry import retrying
from .change import group_moments
from .projection import cell_centres_xy, polar_stereographic
from .pyramid import moments_up
from .schema import OutputSchema, assemble_block, stats_and_moments
from .stats import coarser_stats, grouped_stats_keys
from .timebins import NO_BIN, TimeBins

COLUMNS: tuple[str, ...] = atl06.COORDINATES + atl06.PAYLOAD

# Index entries: rows of a (granule, task) segment in the low bits, its first row above them.
_COUNT_BITS = 24
FAILED = -1  # every entry of a granule that could not be read


@dataclass(frozen=True)
class TaskLayout:
    """How cells map to tasks: the plan's parents (sorted), `split` equal child ranges per parent."""

    parents: np.ndarray = field(repr=False)
    split: int
    grid: Grid

    @property
    def chunk_cells(self) -> int:
        return self.grid.children_per_parent // self.split

    @property
    def n_tasks(self) -> int:
        return self.parents.size * self.split

    def task_runs(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of consecutive points in one task: (first, stop, task index or -1 outside the plan).

        Along a track, points stay in one task for hundreds of rows, so tasks are looked up per run.
        """
        if cells.size == 0:
            empty = np.empty(0, np.int64)
            return empty, empty, empty
        chunk_bits = self.chunk_cells.bit_length() - 1  # chunk_cells is a power of two
        tkey = cells >> np.uint64(chunk_bits)  # parent * split + range within the parent
        first = np.concatenate(([0], np.flatnonzero(tkey[1:] != tkey[:-1]) + 1))
        stop = np.append(first[1:], cells.size)
        key = tkey[first]
        parent = key // np.uint64(self.split)
        pos = np.minimum(np.searchsorted(self.parents, parent), max(self.parents.size - 1, 0))
        inside = (self.parents[pos] == parent) if self.parents.size else np.zeros(key.shape, bool)
        task = pos.astype(np.int64) * self.split + (key % np.uint64(self.split)).astype(np.int64)
        return first, stop, np.where(inside, task, -1)

    def local_cells(self, cells: np.ndarray) -> np.ndarray:
        """Index of each child cell within its task's chunk."""
        return (cells & np.uint64(self.chunk_cells - 1)).astype(row_dtype(self.chunk_cells))


def pack(first: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index entries of segments: (first row << 24) | rows."""
    return (np.asarray(first, np.int64) << _COUNT_BITS) | np.asarray(rows, np.int64)


def unpack(entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    entries = np.asarray(entries, np.int64)
    return entries >> _COUNT_BITS, entries & ((1 << _COUNT_BITS) - 1)


# --------------------------------------------------------------------------------------------------
# Granule stage


@dataclass(frozen=True)
class PartitionJob:
    """What the granule stage needs besides the granule: layout, reader, filters, where rows go."""

    layout: TaskLayout
    location: Location
    key: str  # partition key: records made for another key are not reused
    reader: ReaderName = "h5py"
    filters: Filters = Filters()
    storage_options: dict | None = field(default=None, repr=False)
    retry: RetryPolicy = RetryPolicy()
    bins: TimeBins = TimeBins("edges", (-1e300,), (1e300,), ("all",))
    hemisphere: str = "south"  # of the polar stereographic x, y the change fit uses


def partition_granule(ref: GranuleRef, job: PartitionJob, projected_bytes: int = 0,
                      granule_bin: int = NO_BIN) -> GranuleRecord:
    """The granule's record, reusing one made for the same key; otherwise read, partition and write it.

    Transient read failures are retried under the job's policy; `EndpointUnreachable` propagates
    (nothing was learnt about the granule, and the run must stop).
    """
    source = source_stamp(ref.url)
    done = job.location.record(ref.granule_id, job.key, source)
    if done is not None and done.status == "ok":
        return done
    keep_freed_memory()
    reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    attempt = 0
    try:
        for trial in retrying(job.retry, _transient_read):
            with trial:
                attempt = trial.retry_state.attempt_number
                counts, rows, segments = _partition(ref, job, granule_bin)
    except (EndpointUnreachable, CredentialError):  # the run stops: no granule after it could be read either
        raise
    except GranuleError as exc:
        failure = GranuleFailure(ref.granule_id, _redacted(exc.reason, job), exc.transient, attempt)
        return _failed(ref, job, failure, (start, cpu), projected_bytes, source)
    except Exception as exc:  # a corrupt file can fail anywhere inside the HDF5 library
        failure = GranuleFailure(ref.granule_id, _redacted(f"{type(exc).__name__}: {exc}", job), False, attempt)
        return _failed(ref, job, failure, (start, cpu), projected_bytes, source)
    job.location.write_rows(ref.granule_id, segments, rows)
    record = GranuleRecord(granule=ref.granule_id, key=job.key, status="ok", source=source, segments=segments,
                           attempts=attempt,
                           seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu,
                           peak_memory_bytes=peak_bytes(), projected_memory_bytes=projected_bytes, **counts)
    job.location.write_record(record)
    return record


def _redacted(reason: str, job: PartitionJob) -> str:
    """A failure reason without any secret of the credentials the task carries."""
    secrets = []
    for options in (job.storage_options, job.location.storage_options):
        creds = getattr(options, "credentials", None)
        if creds is not None:
            secrets += creds.secrets()
    return redact(reason, secrets) if secrets else reason


def _failed(ref: GranuleRef, job: PartitionJob, failure: GranuleFailure, started: tuple[float, float],
            projected_bytes: int, source: str) -> GranuleRecord:
    record = GranuleRecord(granule=ref.granule_id, key=job.key, status="failed", source=source, reason=failure.reason,
                           transient=failure.transient, attempts=failure.attempts,
                           seconds=time.perf_counter() - started[0], cpu_seconds=time.process_time() - started[1],
                           peak_memory_bytes=peak_bytes(), projected_memory_bytes=projected_bytes)
    job.location.write_record(record)
    return record


def index_row(record: GranuleRecord, columns: tuple[int, ...]) -> np.ndarray:
    """The granule's index entries for the given tasks (FAILED everywhere for a failed granule)."""
    if record.status != "ok":
        return np.full(len(columns), FAILED, np.int64)
    entries = np.zeros(record.segments[-1][0] + 1 if record.segments else 0, np.int64)
    if record.segments:
        seg = np.asarray(record.segments, np.int64)
        entries[seg[:, 0]] = pack(seg[:, 1], seg[:, 2])
    wanted = np.asarray(columns, np.int64)
    out = np.zeros(wanted.size, np.int64)
    have = wanted < entries.size
    out[have] = entries[wanted[have]]
    return out


def _transient_read(exc: BaseException) -> bool:
    """Whether a failed granule read is worth another try: only a `GranuleError` marked transient."""
    return isinstance(exc, GranuleError) and exc.transient


def _partition(ref: GranuleRef, job: PartitionJob, granule_bin: int
               ) -> tuple[dict, dict[str, np.ndarray], list[list[int]]]:
    """Counts, the kept rows grouped by task (beam then row order within a task), and segments.

    Rows outside every time bin (or the date window) count as outside the plan, like rows outside
    its cells."""
    layout, quality_max, bins = job.layout, job.filters.quality_max, job.bins
    columns = row_columns(layout.chunk_cells, bins.fit)
    beams: list[tuple[np.ndarray, ...]] = []  # kept rows of each beam in the plan, in `columns` order
    runs: list[tuple[int, int, int, int]] = []  # (task, beam, first, stop) into those rows
    counts = {"rows": 0, "rows_invalid": 0, "rows_filtered": 0, "rows_outside": 0}
    with open_granule(ref.url, job.reader, job.storage_options) as granule:
        for beam in granule.beams():
            d = granule.read(beam, COLUMNS)
            lat, lon, h, sigma, t = d["latitude"], d["longitude"], d["h_li"], d["h_li_sigma"], d["delta_time"]
            for name in ("h_li", "h_li_sigma"):  # partitions hold them as stored: float32
                if d[name].dtype != np.float32:
                    raise GranuleError(ref.url, f"/{beam}/{atl06.SEGMENTS_GROUP}/{name} is {d[name].dtype}, "
                                                "ATL06 stores it as float32")
            # |x| < limit is False for NaN and inf, so each test also checks finiteness.
            valid = (np.abs(lat) <= 90.0) & (np.abs(lon) <= 360.0) & (np.abs(t) < atl06.FILL_THRESHOLD)
            keep = valid & (np.abs(h) < atl06.FILL_THRESHOLD) & (sigma > 0) & (sigma < atl06.FILL_THRESHOLD)
            if quality_max is not None:
                keep &= d["atl06_quality_summary"] <= quality_max
            n_valid, idx = int(np.count_nonzero(valid)), np.flatnonzero(keep)
            counts["rows"] += int(lat.size)
            counts["rows_invalid"] += int(lat.size) - n_valid
            counts["rows_filtered"] += n_valid - int(idx.size)
            t_kept = t[idx]
            row_bin = bins.row_bins(t_kept, granule_bin)
            if (row_bin == NO_BIN).any():
                counts["rows_outside"] += int(np.count_nonzero(row_bin == NO_BIN))
                inside = row_bin != NO_BIN
                idx, row_bin, t_kept = idx[inside], row_bin[inside], t_kept[inside]
            if idx.size == 0:
                continue
            cells = cells_of_points(lon[idx], lat[idx], layout.grid.child_order, num_threads=1)
            first, stop, task = layout.task_runs(cells)
            counts["rows_outside"] += int((stop - first)[task < 0].sum())
            if (task < 0).all():
                continue
            k = len(beams)
            kept = [t_kept, h[idx], sigma[idx], layout.local_cells(cells), row_bin.astype(np.uint16)]
            if bins.fit:
                kept += list(polar_stereographic(lon[idx], lat[idx], job.hemisphere))
            beams.append(tuple(kept))
            runs += [(tk, k, a, b) for tk, a, b in zip(task.tolist(), first.tolist(), stop.tolist()) if tk >= 0]
    if not runs:
        return counts, {n: np.empty(0, dt) for n, dt in columns}, []
    runs.sort(key=lambda r: r[0])  # stable: beam then row order within a task
    rows = {n: np.concatenate([beams[k][c][a:b] for _, k, a, b in runs]).astype(dt, copy=False)
            for c, (n, dt) in enumerate(columns)}
    task = np.fromiter((r[0] for r in runs), np.int64, len(runs))
    length = np.fromiter((r[3] - r[2] for r in runs), np.int64, len(runs))
    start = np.concatenate(([0], np.cumsum(length)[:-1]))
    new = np.concatenate(([True], task[1:] != task[:-1]))  # first run of each task
    seg = np.stack([task[new], start[new], np.add.reduceat(length, np.flatnonzero(new))], axis=1)
    if seg[:, 2].max() > MAX_SEGMENT_ROWS or int(seg[-1, 1]) >= 2**39:
        raise GranuleError(ref.url, f"a task would get {int(seg[:, 2].max()):,} rows of this granule, more than the "
                                    f"{MAX_SEGMENT_ROWS:,} a partition index entry holds; use a finer grid.parent_order")
    return counts, rows, seg.tolist()


# --------------------------------------------------------------------------------------------------
# Cell stage


@dataclass(frozen=True)
class TaskResult:
    """What one cell-stage task produced: the statistics block and where its rows came from."""

    block: np.ndarray = field(repr=False)
    observations: int
    granules_with_rows: tuple[str, ...]
    failed: tuple[str, ...]  # granules the task lists whose read failed
    seconds: float
    cpu_seconds: float
    segments: int = 0  # partition segments read


@dataclass(frozen=True)
class ReduceJob:
    """What the cell stage needs besides its index entries: where rows are and what to make of them.

    `bin_groups` are reduced one after another (time split: a task holds one group's rows at a time);
    bins before `stored_bins` are not computed but read back from the task's own chunks of `store`
    (appending bins to a store), so the fit covers every bin either way.
    """

    location: Location
    chunk_cells: int
    child_order: int
    schema: OutputSchema = OutputSchema()
    bins: TimeBins = PartitionJob.bins
    hemisphere: str = "south"
    shifts: tuple[int, ...] = (0,)  # the orders computed, as bits below the child order (2 per order)
    bin_groups: tuple[tuple[int, int], ...] = ()  # () : all computed bins at once
    granule_bins: tuple[int, ...] = field(default=(), repr=False)  # per plan granule: its bin, or NO_BIN
    stored_bins: int = 0
    store: str | None = None
    storage_options: dict | None = field(default=None, repr=False)
    orders: tuple[int, ...] = ()  # the order of each shift (names the store's groups)

    def rows(self) -> int:
        """Rows of a task's block: its cells at every order computed, child order first."""
        return sum(self.chunk_cells >> s for s in self.shifts)

    def groups(self) -> tuple[tuple[int, int], ...]:
        return self.bin_groups or ((self.stored_bins, self.bins.n),)


def reduce_task(entries: np.ndarray, granules: tuple[GranuleRef, ...], listed: tuple[int, ...],
                job: ReduceJob, first_cell: int, task_index: int = 0) -> TaskResult:
    """The block of one task (cells `first_cell` + 0..chunk_cells-1, chunk `task_index`) from its index
    entries (one per granule of the plan, plan order), at each order of `job.shifts`.

    Segments are concatenated with the task's listed granules first, in listing order, then the
    rest in plan order: the order a footprint-true read would see them, so sums are reproducible.
    """
    keep_freed_memory()
    start, cpu = time.perf_counter(), time.process_time()
    entries = np.asarray(entries, np.int64).ravel()
    first, rows = unpack(np.maximum(entries, 0))
    has = np.flatnonzero((entries > 0) & (rows > 0))
    failed = np.flatnonzero(entries == FAILED)
    rank = np.full(entries.size, len(listed), np.int64) + np.arange(entries.size)
    rank[np.asarray(listed, np.int64)] = np.arange(len(listed))
    has = has[np.argsort(rank[has], kind="stable")]
    columns = row_columns(job.chunk_cells, job.bins.fit)
    parts: list[list[tuple[np.ndarray, np.ndarray | None]]] = [[] for _ in job.shifts]
    n_obs, n_segments, groups = 0, 0, job.groups()
    for lo, hi in groups:
        mine = has
        if len(groups) > 1 and job.granule_bins:  # a granule of one bin is read only for its group
            gb = np.asarray(job.granule_bins, np.int64)[has]
            mine = has[(gb == NO_BIN) | ((gb >= lo) & (gb < hi))]
        n_segments += int(mine.size)
        segs = [job.location.read_segment(granules[g].granule_id, int(first[g]), int(rows[g]), columns) for g in mine]
        cols = {name: (np.concatenate([p[name] for p in segs]) if segs else np.empty(0, dtype))
                for name, dtype in columns}
        del segs
        b = cols["bin"].astype(np.intp)
        if lo > 0 or hi < job.bins.n:
            inside = (b >= lo) & (b < hi)
            cols = {k: v[inside] for k, v in cols.items()}
            b = b[inside]
        cols["bin"] = b - lo
        n_obs += int(b.size)
        finer = None
        for i, shift in enumerate(job.shifts):
            finer = level_parts(cols, job, first_cell, shift, hi - lo, finer if i else None)
            parts[i].append(finer)
        del cols, b
    blocks = []
    for i, shift in enumerate(job.shifts):
        stats = np.concatenate([p[0] for p in parts[i]])
        moments = np.concatenate([p[1] for p in parts[i]]) if job.schema.fit else None
        if job.stored_bins:
            old_stats, old_moments = stored_parts(job, i, task_index)
            if shift == 0:  # the task's observations: those stored before and those added now
                n_obs += int(np.nansum(old_stats[:, :, 0]))
            stats = np.concatenate([old_stats, stats])
            moments = np.concatenate([old_moments, moments]) if job.schema.fit else None
        blocks.append(assemble_block(job.schema, stats, moments, job.bins.min_bins))
    listed_set = set(listed)
    return TaskResult(
        block=np.concatenate(blocks),
        observations=n_obs,
        granules_with_rows=tuple(granules[g].granule_id for g in has),
        failed=tuple(granules[g].granule_id for g in failed if int(g) in listed_set),
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
        segments=n_segments,
    )


def level_parts(cols: dict[str, np.ndarray], job: ReduceJob, first_cell: int, shift: int, n_bins: int,
                finer: tuple | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Statistics (n_bins, cells, len(STATS)), with the fit moments (n_bins, cells, 15), and the sorted
    height keys, of rows whose `bin` is 0..n_bins-1, at the child order coarsened by `shift` bits (2 per
    order). From the rows at the child order; at coarser orders merged from the next finer order's
    (`finer`): sums and moments add up, quantiles are read from its keys sorted again (exact)."""
    chunk = job.chunk_cells >> shift
    n_groups = n_bins * chunk
    if finer is None or finer[2] is None:  # from the rows (the child order, or heights off the key path)
        cell = cols["cell"].astype(np.intp) >> shift
        group = cols["bin"] * chunk + cell
        flat, key = grouped_stats_keys(group, cols["h"], cols["sigma"], cols["t"], n_groups)
    else:
        flat, key = coarser_stats(finer[0].reshape(n_groups * 4, -1), finer[2])
    stats = flat.reshape(n_bins, chunk, -1)
    moments = None
    if job.schema.fit and finer is not None:
        moments = moments_up(finer[1], first_cell >> (shift - 2), job.child_order - shift // 2 + 1, job.hemisphere)
    elif job.schema.fit:
        cx, cy = cell_centres_xy(np.uint64(first_cell) + np.arange(chunk, dtype=np.uint64), job.child_order,
                                 job.hemisphere, num_threads=1)
        w = 1.0 / np.square(cols["sigma"].astype(np.float64))
        moments = group_moments(group, n_groups, w, cols["x"] - cx[cell], cols["y"] - cy[cell],
                                job.bins.years(cols["t"]), cols["h"].astype(np.float64)).reshape(n_bins, chunk, -1)
    return stats, moments, key


def stored_parts(job: ReduceJob, level: int, task_index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The statistics and moments of the bins before `job.stored_bins` of this task's chunk at one order,
    read back from the store."""
    from .store import read_chunk

    shift = job.shifts[level]
    n = job.chunk_cells >> shift
    group = None if shift == 0 else str(job.orders[level])
    values = read_chunk(job.store, group, task_index * n, n, job.schema, job.stored_bins, job.storage_options)
    return stats_and_moments(values, job.schema)
