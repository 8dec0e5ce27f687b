"""Time bins of a run: which granules and rows it uses, and the bin of every row.

Bins are repeat cycles (the default: a granule's cycle is read from its name, so every row of a
granule falls in its cycle's bin), calendar quarters or months, or explicit edges (a row's bin
follows from its delta_time). A date window, when given, also drops the rows outside it. Times are
ATL06 delta_time seconds (UTC seconds since 2018-01-01, see `cycles`); the fit's time is in years of
365.25 days from a reference instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from .cycles import MAX_CYCLE, cycle_bounds, datetime_of, delta_time_of

BinKind = Literal["cycle", "quarter", "month", "edges"]
YEAR_S = 365.25 * 86400.0
NO_BIN = -1


@dataclass(frozen=True)
class TimeBins:
    """The bins of a run, as [start, end) delta_time intervals in ascending order.

    `cycles` names the cycle of each bin when `kind == "cycle"`; `selected_cycles` the cycles read. `window` is the date range rows must
    fall in (None: open). `reference` is t0 of the change fit; `fit` whether it is computed.
    """

    kind: BinKind
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    labels: tuple[str, ...]
    cycles: tuple[int, ...] = ()
    selected_cycles: tuple[int, ...] = ()  # granules of other cycles are not read (empty: any cycle)
    window: tuple[float | None, float | None] = (None, None)
    reference: float = 0.0
    fit: bool = False
    min_bins: int = 3

    @property
    def n(self) -> int:
        return len(self.starts)

    def granule_bin(self, cycle: int) -> int:
        """The bin of every row of a granule of `cycle` (cycle bins), else NO_BIN."""
        return self.cycles.index(cycle) if self.kind == "cycle" and cycle in self.cycles else NO_BIN

    def row_bins(self, t: np.ndarray, granule_bin: int = NO_BIN) -> np.ndarray:
        """The bin of each row (int16; NO_BIN outside every bin or outside the window)."""
        t = np.asarray(t, np.float64)
        if self.kind == "cycle":
            out = np.full(t.shape, granule_bin, np.int16)
        else:
            starts, ends = np.asarray(self.starts), np.asarray(self.ends)
            pos = np.searchsorted(starts, t, side="right") - 1
            inside = (pos >= 0) & (t < ends[np.maximum(pos, 0)])
            out = np.where(inside, pos, NO_BIN).astype(np.int16)
        lo, hi = self.window
        if lo is not None:
            out[t < lo] = NO_BIN
        if hi is not None:
            out[t >= hi] = NO_BIN
        return out

    def selects(self, cycles: np.ndarray, begins: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Which granules (their cycle and [begin, end] delta_times) can hold rows of some bin."""
        cycles, begins, ends = (np.asarray(a) for a in (cycles, begins, ends))
        lo = max(self.starts[0], self.window[0] if self.window[0] is not None else -np.inf)
        hi = min(self.ends[-1], self.window[1] if self.window[1] is not None else np.inf)
        overlaps = ~((ends < lo) | (begins >= hi))  # a granule of unknown time is kept: its rows decide
        if self.kind == "cycle":
            return np.isin(cycles, self.cycles) & overlaps
        return (np.isin(cycles, self.selected_cycles) if self.selected_cycles else True) & overlaps

    def years(self, t: np.ndarray) -> np.ndarray:
        """Time of the fit: years since the reference."""
        return (np.asarray(t, np.float64) - self.reference) / YEAR_S

    def centres(self) -> np.ndarray:
        return (np.asarray(self.starts) + np.asarray(self.ends)) / 2.0

    def bounds(self) -> np.ndarray:
        """(n, 2) [start, end) delta_time of each bin."""
        return np.stack([np.asarray(self.starts), np.asarray(self.ends)], axis=1)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _calendar_edges(lo: datetime, hi: datetime, months: int) -> list[datetime]:
    """Edges every `months` months (aligned to the calendar year) covering [lo, hi]."""
    m = (lo.month - 1) // months * months
    edge = datetime(lo.year, m + 1, 1, tzinfo=UTC)
    edges = [edge]
    while edge <= hi:
        y, mo = divmod(edge.month - 1 + months, 12)
        edge = datetime(edge.year + y, mo + 1, 1, tzinfo=UTC)
        edges.append(edge)
    return edges


def _label(start: datetime, months: int) -> str:
    return f"{start.year}-Q{(start.month - 1) // 3 + 1}" if months == 3 else f"{start:%Y-%m}"


def make_time_bins(
    bins: str | list[datetime],
    *,
    catalog_cycles: np.ndarray,
    catalog_begins: np.ndarray,
    catalog_ends: np.ndarray,
    cycles: list[int] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    reference: datetime | None = None,
    fit: bool | None = None,
    min_bins: int = 3,
) -> TimeBins:
    """The bins of a recipe's `time` section over a catalog (its granules' cycles and delta_time spans).

    Cycle bins: the listed cycles, else every cycle of the catalog (within the window). Quarters and
    months: calendar bins over the window, else over the catalog's time span. `fit=None` fits when
    there are at least two bins.
    """
    window = (delta_time_of(_utc(start)) if start else None, delta_time_of(_utc(end)) if end else None)
    catalog_cycles = np.asarray(catalog_cycles, np.int64)
    begins, ends = np.asarray(catalog_begins, np.float64), np.asarray(catalog_ends, np.float64)
    in_window = np.ones(begins.shape, bool)
    if window[0] is not None:
        in_window &= ~(ends < window[0])
    if window[1] is not None:
        in_window &= ~(begins >= window[1])
    if bins == "cycle":
        chosen = sorted(set(cycles)) if cycles else sorted({int(c) for c in catalog_cycles[in_window]})
        unknown = [c for c in chosen if not 1 <= c <= MAX_CYCLE]
        if unknown:
            raise ValueError(f"cycle(s) {unknown} are not ICESat-2 cycles (1..{MAX_CYCLE})")
        if not chosen:
            raise ValueError("no cycle to bin: the catalog holds no granule in the selected time")
        b = [cycle_bounds(c) for c in chosen]
        starts = tuple(delta_time_of(s) for s, _ in b)
        stops = tuple(delta_time_of(e) for _, e in b)
        labels = tuple(f"cycle {c}" for c in chosen)
        kind: BinKind = "cycle"
    elif bins in ("quarter", "month"):
        months = 3 if bins == "quarter" else 1
        known = in_window & np.isfinite(begins) & np.isfinite(ends)
        lo = window[0] if window[0] is not None else (begins[known].min() if known.any() else None)
        hi = window[1] if window[1] is not None else (ends[known].max() if known.any() else None)
        if lo is None or hi is None:
            raise ValueError(f"no {bins} to bin: the catalog holds no granule in the selected time")
        edges = _calendar_edges(datetime_of(lo), datetime_of(hi if window[1] is None else hi - 1e-3), months)
        starts = tuple(delta_time_of(e) for e in edges[:-1])
        stops = tuple(delta_time_of(e) for e in edges[1:])
        labels = tuple(_label(e, months) for e in edges[:-1])
        chosen, kind = [], bins  # type: ignore[assignment]
    else:
        edges = [_utc(e) for e in bins]
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError("time.bins edges must be at least two instants in increasing order")
        starts = tuple(delta_time_of(e) for e in edges[:-1])
        stops = tuple(delta_time_of(e) for e in edges[1:])
        labels = tuple(f"{a:%Y-%m-%dT%H:%M:%S}/{b:%Y-%m-%dT%H:%M:%S}" for a, b in zip(edges, edges[1:]))
        chosen, kind = [], "edges"
    do_fit = (len(starts) >= 2) if fit is None else bool(fit)
    # t0 of the fit: given, or the first bin's start (near the data, and the same when bins are appended)
    ref = delta_time_of(_utc(reference)) if reference else starts[0]
    selected = tuple(chosen) if kind == "cycle" else tuple(sorted(set(cycles or ())))
    return TimeBins(kind, starts, stops, labels, tuple(chosen), selected, window, ref, do_fit, min_bins)
