"""One task: read the granules crossing a parent cell and reduce their observations into its children.

For each granule and beam: read latitude, then longitude over the rows within the latitude band of
the task's child range, find the rows whose child cell falls in that range, hyperslice the payload
variables to [first, last] of those rows, filter
(quality, fill values, sigma > 0), and collect. One grouped reduction over all collected
observations gives the task's (children x statistics) block. A granule that cannot be read is
recorded with its reason and the rest of the cell is still aggregated.

Each granule is also checked, by one of the tasks that read it, against the footprint it was
planned from: every row with valid coordinates is placed in its task, and rows that fall in a
task whose granule list lacks the granule are reported as footprint misses (so the runner can
give those tasks the granule). Rows without valid coordinates are counted there too, once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .domain import Filters, FootprintMiss, GranuleFailure, GranuleRef, RetryPolicy
from .fs import EndpointUnreachable
from .grid import Grid, cells_of_points
from .products import atl06
from .read import GranuleError, ReaderName, open_granule
from .retry import retrying
from .stats import grouped_stats


@dataclass(frozen=True)
class TaskLayout:
    """How cells map to task indices: the plan's parents (sorted) and equal child ranges per parent."""

    parents: np.ndarray = field(repr=False)
    split: int
    grid: Grid

    def task_of(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Task index of each point (int64), -1 outside the plan's parent cells."""
        levels = self.split.bit_length() // 2  # 4**levels >= split fine cells tile every range
        cells = cells_of_points(lon, lat, self.grid.parent_order + levels)
        parent = cells >> np.uint64(2 * levels)
        pos = np.searchsorted(self.parents, parent)
        inside = pos < self.parents.size
        inside[inside] = self.parents[pos[inside]] == parent[inside]
        local = (cells & np.uint64(4**levels - 1)).astype(np.int64) // (4**levels // self.split)
        return np.where(inside, pos.astype(np.int64) * self.split + local, -1)


@dataclass(frozen=True)
class TaskResult:
    """What one task produced: the statistics block and what it took to get it."""

    parent: int
    child_lo: int
    child_hi: int
    block: np.ndarray = field(repr=False)
    observations: int
    rows_in_cell: int
    granules_read: int
    granules_with_data: int
    failures: tuple[GranuleFailure, ...]
    seconds: float
    rows_filtered: int = 0
    rows_invalid: int = 0
    granule_ids: tuple[str, ...] = ()
    footprint_misses: tuple[FootprintMiss, ...] = ()

    @property
    def status(self) -> str:
        if self.failures:
            return "failed" if self.granules_read == 0 else "partial"
        return "ok" if self.observations > 0 else "empty"


@dataclass
class _Collected:
    cell: list[np.ndarray] = field(default_factory=list)
    h: list[np.ndarray] = field(default_factory=list)
    sigma: list[np.ndarray] = field(default_factory=list)
    t: list[np.ndarray] = field(default_factory=list)
    rows_in_cell: int = 0
    rows_filtered: int = 0
    rows_invalid: int = 0
    misses: dict[int, int] = field(default_factory=dict)  # task index -> rows (of the granule checked)

    def add(self, other: "_Collected") -> None:
        self.cell += other.cell
        self.h += other.h
        self.sigma += other.sigma
        self.t += other.t
        self.rows_in_cell += other.rows_in_cell
        self.rows_filtered += other.rows_filtered
        self.rows_invalid += other.rows_invalid


def reduce_parent(
    parent: int,
    granules: list[GranuleRef],
    grid: Grid,
    *,
    reader: ReaderName = "h5py",
    filters: Filters = Filters(),
    storage_options: dict | None = None,
    child_range: tuple[int, int] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    check: Mapping[str, frozenset[int]] | None = None,
    layout: TaskLayout | None = None,
) -> TaskResult:
    """Statistics of the children [child_lo, child_hi) (local indices) of one parent cell.

    `check` names granules this task checks against their footprints, each with the tasks that
    list it; `layout` places rows in tasks for that check.
    """
    start = time.perf_counter()
    lo, hi = child_range if child_range is not None else (0, grid.children_per_parent)
    first_child = int(parent) * grid.children_per_parent
    acc = _Collected()
    failures: list[GranuleFailure] = []
    read_ok = with_data = 0
    band = grid.range_lat_band(first_child + lo, first_child + hi)
    job = _ReadJob(first_child + lo, first_child + hi, band, grid, reader, filters, storage_options)
    checks = dict(check or {})
    if checks and layout is None:
        raise ValueError("checking footprints needs the plan's task layout")
    read_ids: list[str] = []
    misses: list[FootprintMiss] = []
    for ref in granules:
        listed = checks.get(ref.granule_id)
        failure, part = _read_with_retries(ref, job, retry, acc, None if listed is None else (listed, layout))
        if failure is None:
            read_ok += 1
            with_data += part.rows_in_cell > 0
            read_ids.append(ref.granule_id)
            misses += [FootprintMiss(ref.granule_id, t, n) for t, n in sorted(part.misses.items())]
        else:
            failures.append(failure)
    if acc.cell:
        cell = np.concatenate(acc.cell)
        local = (cell - np.uint64(first_child + lo)).astype(np.intp)
        block = grouped_stats(local, np.concatenate(acc.h), np.concatenate(acc.sigma), np.concatenate(acc.t), hi - lo)
        n_obs = int(cell.size)
    else:
        block = grouped_stats(np.empty(0, np.intp), np.empty(0), np.empty(0), np.empty(0), hi - lo)
        n_obs = 0
    return TaskResult(
        parent=int(parent),
        child_lo=lo,
        child_hi=hi,
        block=block,
        observations=n_obs,
        rows_in_cell=acc.rows_in_cell,
        granules_read=read_ok,
        granules_with_data=with_data,
        failures=tuple(failures),
        seconds=time.perf_counter() - start,
        rows_filtered=acc.rows_filtered,
        rows_invalid=acc.rows_invalid,
        granule_ids=tuple(read_ids),
        footprint_misses=tuple(misses),
    )


@dataclass(frozen=True)
class _ReadJob:
    """What to read from each granule: child cells [child_lo, child_hi) (global ids) and how."""

    child_lo: int
    child_hi: int
    lat_band: tuple[float, float]
    grid: Grid
    reader: ReaderName
    filters: Filters
    storage_options: dict | None


def _read_with_retries(
    ref: GranuleRef, job: _ReadJob, retry: RetryPolicy, acc: _Collected,
    check: tuple[frozenset[int], TaskLayout] | None = None,
) -> tuple[GranuleFailure | None, _Collected]:
    """Read one granule into `acc`, retrying transient failures under `retry`; only a complete read is kept.

    `EndpointUnreachable` propagates at once (nothing was learnt about the granule: the task stops and
    the run with it); any other failure is returned as a `GranuleFailure` with the tries it took.
    """
    attempt = 0
    part = _Collected()
    try:
        for trial in retrying(retry, _transient_read):
            with trial:
                attempt = trial.retry_state.attempt_number
                part = _Collected()
                _read_granule(ref, job, part, check)
    except EndpointUnreachable:
        raise
    except GranuleError as exc:
        return GranuleFailure(ref.granule_id, exc.reason, exc.transient, attempt), part
    except Exception as exc:  # a corrupt file can fail anywhere inside the HDF5 library
        return GranuleFailure(ref.granule_id, f"{type(exc).__name__}: {exc}", False, attempt), part
    acc.add(part)
    return None, part


def _transient_read(exc: BaseException) -> bool:
    """Whether a failed granule read is worth another try: only a `GranuleError` marked transient."""
    return isinstance(exc, GranuleError) and exc.transient


def _read_granule(ref: GranuleRef, job: _ReadJob, acc: _Collected,
                  check: tuple[frozenset[int], TaskLayout] | None = None) -> None:
    lat_band, child_lo, child_hi = job.lat_band, job.child_lo, job.child_hi
    with open_granule(ref.url, job.reader, job.storage_options) as granule:
        for beam in granule.beams():
            # Latitude first: longitude is read only over the rows within the range's latitude band
            # (all of it for a granule this task checks).
            lat = granule.read(beam, ("latitude",))["latitude"]
            if check is not None:
                lon_all = granule.read(beam, ("longitude",))["longitude"]
                _check_rows(lon_all, lat, *check, acc)
            band = np.flatnonzero((lat >= lat_band[0]) & (lat <= lat_band[1]))
            if band.size == 0:
                continue
            b0, b1 = int(band[0]), int(band[-1]) + 1
            lat = lat[b0:b1]
            lon = lon_all[b0:b1] if check is not None else granule.read(beam, ("longitude",), (b0, b1))["longitude"]
            near = (lat >= lat_band[0]) & (lat <= lat_band[1]) & np.isfinite(lon) & (np.abs(lon) <= 360.0)
            cell = np.zeros(lat.shape, dtype=np.uint64)
            cell[near] = job.grid.child_cells(lon[near], lat[near])
            inside = near & (cell >= np.uint64(child_lo)) & (cell < np.uint64(child_hi))
            rows = np.flatnonzero(inside)
            if rows.size == 0:
                continue
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            cell, inside = cell[r0:r1], inside[r0:r1]
            r0, r1 = r0 + b0, r1 + b0
            payload = granule.read(beam, atl06.PAYLOAD, (r0, r1))
            acc.rows_in_cell += int(rows.size)
            h = payload["h_li"]
            sigma = payload["h_li_sigma"]
            t = payload["delta_time"]
            valid_t = _valid_values(t)
            keep = inside & _valid_values(h) & _valid_values(sigma) & (sigma > 0)
            if job.filters.quality_max is not None:
                keep &= payload["atl06_quality_summary"] <= job.filters.quality_max
            acc.rows_invalid += int(np.count_nonzero(inside & ~valid_t))
            acc.rows_filtered += int(np.count_nonzero(inside & valid_t & ~keep))
            keep &= valid_t
            acc.cell.append(cell[keep])
            acc.h.append(h[keep])
            acc.sigma.append(sigma[keep])
            acc.t.append(t[keep])


def _valid_coordinates(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 360.0)


def _check_rows(lon: np.ndarray, lat: np.ndarray, listed: frozenset[int], layout: TaskLayout,
                acc: _Collected) -> None:
    """Count rows without valid coordinates, and rows in tasks that do not list this granule."""
    valid = _valid_coordinates(lon, lat)
    acc.rows_invalid += int(valid.size - np.count_nonzero(valid))
    task = layout.task_of(lon[valid], lat[valid])
    task = task[task >= 0]
    if task.size == 0:
        return
    ids, counts = np.unique(task, return_counts=True)
    missed = ~np.isin(ids, np.fromiter(listed, dtype=np.int64, count=len(listed)))
    for t, n in zip(ids[missed].tolist(), counts[missed].tolist()):
        acc.misses[t] = acc.misses.get(t, 0) + n


def _valid_values(x: np.ndarray) -> np.ndarray:
    """Finite and below the ATL06 fill threshold."""
    return np.isfinite(x) & (np.abs(x) < atl06.FILL_THRESHOLD)
