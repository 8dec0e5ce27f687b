"""Vectorised per-cell statistics of ATL06 heights, plus mergeable sufficient statistics.

Everything is computed over whole arrays: `np.bincount` for sums, one sort of a packed uint64 key
(cell, height) for minima, maxima and exact quantiles. There is no Python loop over cells or rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fastest import fastest
from .products.atl06 import DELTA_TIME_UNITS


@dataclass(frozen=True)
class StatSpec:
    """How one output variable is stored and described."""

    name: str
    dtype: str
    units: str
    long_name: str
    mergeable: bool = False


QUANTILES: dict[str, float] = {"h_q25": 0.25, "h_q50": 0.50, "h_q75": 0.75}

STATS: tuple[StatSpec, ...] = (
    StatSpec("count", "int64", "1", "number of observations", mergeable=True),
    StatSpec("h_mean", "float64", "m", "inverse-variance weighted mean of h_li (w = 1/h_li_sigma^2)"),
    StatSpec("h_sigma", "float64", "m", "1-sigma error of h_mean, 1/sqrt(sum w)"),
    StatSpec("h_var", "float64", "m2", "population variance of h_li (ddof=0)"),
    StatSpec("h_min", "float64", "m", "minimum h_li", mergeable=True),
    StatSpec("h_max", "float64", "m", "maximum h_li", mergeable=True),
    StatSpec("h_q25", "float64", "m", "25th percentile of h_li (linear)"),
    StatSpec("h_q50", "float64", "m", "median of h_li (linear)"),
    StatSpec("h_q75", "float64", "m", "75th percentile of h_li (linear)"),
    StatSpec("t_mean", "float64", "s", f"mean delta_time, {DELTA_TIME_UNITS}"),
    StatSpec("sum_w", "float64", "m-2", "sum of weights 1/h_li_sigma^2", mergeable=True),
    StatSpec("sum_wh", "float64", "m-1", "sum of w * h_li", mergeable=True),
    StatSpec("sum_h", "float64", "m", "sum of h_li", mergeable=True),
    StatSpec("h_m2", "float64", "m2", "sum of squared deviations of h_li from the cell mean", mergeable=True),
    StatSpec("sum_t", "float64", "s", "sum of delta_time", mergeable=True),
)
STAT_NAMES: tuple[str, ...] = tuple(s.name for s in STATS)
STAT_INDEX: dict[str, int] = {name: i for i, name in enumerate(STAT_NAMES)}
# Statistics whose value for a cell without observations is 0 rather than NaN.
ZERO_WHEN_EMPTY: tuple[str, ...] = ("count", "sum_w", "sum_wh", "sum_h", "h_m2", "sum_t")


def empty_block(n_cells: int) -> np.ndarray:
    """A (n_cells, n_stats) float64 block for cells with no observations: count 0, everything else NaN."""
    block = np.full((n_cells, len(STATS)), np.nan)
    for name in ZERO_WHEN_EMPTY:
        block[:, STAT_INDEX[name]] = 0.0
    return block


def grouped_stats(cell: np.ndarray, h: np.ndarray, sigma: np.ndarray, t: np.ndarray, n_cells: int) -> np.ndarray:
    """Statistics of observations grouped by local cell index (0 <= cell < n_cells); see `grouped_stats_keys`."""
    return grouped_stats_keys(cell, h, sigma, t, n_cells)[0]


def grouped_stats_keys(cell: np.ndarray, h: np.ndarray, sigma: np.ndarray, t: np.ndarray,
                       n_cells: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Statistics of observations grouped by local cell index (0 <= cell < n_cells), and the sorted packed
    (cell, h) keys they were read from (None where the heights took the two-sort path).

    Returns a (n_cells, len(STATS)) float64 block in STAT_NAMES column order; counts are exact
    integers stored as float64 (exact below 2**53). Cells without observations have count 0 and NaN
    finished statistics.

    Sums are `bincount`s over the rows in input order, so they do not depend on how the rows are
    sorted. Minima, maxima and quantiles are read at segment offsets of the heights sorted by
    (cell, h), the order a stable lexsort of (h, cell) gives (see `_heights_by_cell`).
    """
    cell = np.asarray(cell, dtype=np.intp)
    h_in = np.asarray(h)
    h = np.asarray(h_in, dtype=np.float64)
    w = 1.0 / np.square(np.asarray(sigma, dtype=np.float64))
    t = np.asarray(t, dtype=np.float64)
    block = empty_block(n_cells)
    if cell.size == 0:
        return block, np.empty(0, np.uint64)
    col = STAT_INDEX
    count = np.bincount(cell, minlength=n_cells).astype(np.float64)
    has = count > 0
    sum_w = np.bincount(cell, weights=w, minlength=n_cells)
    sum_wh = np.bincount(cell, weights=w * h, minlength=n_cells)
    sum_h = np.bincount(cell, weights=h, minlength=n_cells)
    sum_t = np.bincount(cell, weights=t, minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum_h / count
        m2 = np.bincount(cell, weights=np.square(h - mean[cell]), minlength=n_cells)
        block[:, col["count"]] = count
        block[:, col["sum_w"]] = sum_w
        block[:, col["sum_wh"]] = sum_wh
        block[:, col["sum_h"]] = sum_h
        block[:, col["h_m2"]] = m2
        block[:, col["sum_t"]] = sum_t
        block[has, col["h_mean"]] = sum_wh[has] / sum_w[has]
        block[has, col["h_sigma"]] = 1.0 / np.sqrt(sum_w[has])
        block[has, col["h_var"]] = m2[has] / count[has]
        block[has, col["t_mean"]] = sum_t[has] / count[has]

    pick, key = _heights_by_cell(cell, h_in, h, n_cells)
    _order_statistics(block, count, pick)
    return block, key


def _order_statistics(block: np.ndarray, count: np.ndarray, pick: Callable[[np.ndarray], np.ndarray]) -> None:
    """Minima, maxima and quantiles of every cell with observations, from heights sorted by (cell, h)."""
    col = STAT_INDEX
    has = count > 0
    if not has.any():
        return
    n = count[has].astype(np.intp)
    start = np.concatenate(([0], np.cumsum(n)[:-1]))
    block[has, col["h_min"]] = pick(start)
    block[has, col["h_max"]] = pick(start + n - 1)
    for name, q in QUANTILES.items():
        block[has, col[name]] = _sorted_quantile(pick, start, n, q)


def _key_picker(key: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def pick(pos: np.ndarray) -> np.ndarray:
        kb = (key[pos] & _LOW32).astype(np.uint32)
        unflip = np.where(kb & _SIGN32, _SIGN32, np.uint32(0xFFFFFFFF))
        return (kb ^ unflip).view(np.float32).astype(np.float64)

    return pick


def merge_segments(block: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Statistics (..., n, len(STATS)) of cells merged over contiguous segments starting at `start` along
    the cell axis: sums add, the second moment merges with Chan's formula, minima and maxima take the
    least and the greatest. Quantiles need the observations: NaN here (`coarser_stats` reads them)."""
    col = STAT_INDEX
    block = np.asarray(block, np.float64)
    seg = np.repeat(np.arange(start.size), np.diff(np.append(start, block.shape[-2])))
    out = np.full(block.shape[:-2] + (start.size, block.shape[-1]), np.nan)

    def add(name: str) -> np.ndarray:
        return np.add.reduceat(block[..., col[name]], start, axis=-1)

    for name in ("count", "sum_w", "sum_wh", "sum_h", "sum_t"):
        out[..., col[name]] = add(name)
    count, n_in = out[..., col["count"]], block[..., col["count"]]
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(n_in > 0, n_in * np.square(block[..., col["sum_h"]] / n_in
                                                      - (out[..., col["sum_h"]] / count)[..., seg]), 0.0)
        out[..., col["h_m2"]] = add("h_m2") + np.add.reduceat(spread, start, axis=-1)
        has = count > 0
        sum_w = out[..., col["sum_w"]]
        out[..., col["h_mean"]] = np.where(has, out[..., col["sum_wh"]] / sum_w, np.nan)
        out[..., col["h_sigma"]] = np.where(has, 1.0 / np.sqrt(sum_w), np.nan)
        out[..., col["h_var"]] = np.where(has, out[..., col["h_m2"]] / count, np.nan)
        out[..., col["t_mean"]] = np.where(has, out[..., col["sum_t"]] / count, np.nan)
    out[..., col["h_min"]] = np.fmin.reduceat(block[..., col["h_min"]], start, axis=-1)
    out[..., col["h_max"]] = np.fmax.reduceat(block[..., col["h_max"]], start, axis=-1)
    return out


def coarser_stats(block: np.ndarray, key: np.ndarray, factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The statistics of groups of `factor` consecutive cells merged into one, and their sorted keys.

    `block` and `key` are what `grouped_stats_keys` returned for the finer cells (a key, not None).
    `merge_segments` merges the sums; minima, maxima and quantiles are read from the keys with the cell
    part divided by `factor`, sorted again: the finer sort left them in `factor` sorted runs per coarser
    cell, which the stable merge sort joins in one pass. The result equals `grouped_stats` of the rows
    with their cells divided by `factor` (sums to rounding).
    """
    out = merge_segments(block, np.arange(0, block.shape[0], factor))
    shift = np.uint64(factor.bit_length() - 1)
    coarse = (((key >> np.uint64(32)) >> shift) << np.uint64(32)) | (key & _LOW32)
    coarse.sort(kind="stable")
    _order_statistics(out, out[:, STAT_INDEX["count"]], _key_picker(coarse))
    return out, coarse


_SIGN32 = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)


def _heights_by_cell(cell: np.ndarray, h_in: np.ndarray, h: np.ndarray,
                     n_cells: int) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray | None]:
    """A function that returns the heights at given positions of the rows sorted by (cell, h), and the
    sorted packed keys when it used them.

    The order is exactly that of `np.lexsort((h, cell))`, with equal heights (only +0.0 and -0.0,
    or NaNs, compare equal while differing in bits) in input order, so every value returned has the
    bits the lexsort would give.

    When every height is a float32 (h_li is stored as float32) other than NaN or -0.0 and the cells
    fit 32 bits, one sort of the uint64 key `cell << 32 | order-preserving bits of float32 h`
    does it: the float32 bits order exactly like the float64 values, and only the positions asked
    for are decoded from the key. Otherwise the rows are sorted by height and then stably by cell.

    Equal keys are equal values, so any sort of the keys gives the same result; `key_sort_kind` picks
    the faster one on this machine.
    """
    if n_cells <= 1 << 32:
        if h_in.dtype == np.float32:
            h32 = h_in
        else:
            with np.errstate(over="ignore"):  # out of float32 range: not exact, so not this path
                h32 = h.astype(np.float32)
        bits = h32.view(np.uint32)
        # Exact in float32 (NaN fails this too), and no -0.0, which would sort before +0.0.
        if (h_in.dtype == np.float32 and not np.isnan(h32).any()) or np.array_equal(h32, h):
            if not (bits == _SIGN32).any():
                # Positive floats: set the sign bit; negative ones: flip every bit.
                flip = (bits >> np.uint32(31)) * np.uint32(0xFFFFFFFF) | _SIGN32
                key = cell.astype(np.uint64) << np.uint64(32)
                key |= bits ^ flip
                key.sort(kind=key_sort_kind())
                return _key_picker(key), key
    # Only signed zeros and NaNs compare equal with different bits: keep their input order then.
    ties = bool(np.isnan(h).any() or ((h == 0) & np.signbit(h)).any())
    by_h = np.argsort(h, kind="stable" if ties else None)
    narrow = np.uint16 if n_cells <= 1 << 16 else np.uint32 if n_cells <= 1 << 32 else np.intp
    hs = h[by_h][np.argsort(cell.astype(narrow)[by_h], kind="stable")]
    return (lambda pos: hs[pos]), None


@functools.cache
def key_sort_kind() -> str | None:
    """The faster numpy sort of packed keys here: None (the default) where numpy sorts 64-bit integers
    with SIMD instructions (about 9 ns a key on the demo's tasks, AVX-512), else "stable".

    Without SIMD the default introsort takes about 70 ns a key, the stable merge sort about 35: rows
    arrive in along-track order, so a cell's heights come in runs it finds. Which instructions numpy
    dispatches to is not public, so this times both once per process on keys of that shape (a few ms).
    """
    tracks, per_track = 8, 2048  # a few tracks crossing a task, each in runs of ~32 rows per cell
    scramble = np.arange(tracks * per_track, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**32)
    cells = ((scramble[::per_track, None] % np.uint64(256)) + np.arange(per_track, dtype=np.uint64) // 32) % 256
    steps = (scramble % np.uint64(81)).astype(np.int64).reshape(tracks, per_track) - 40
    heights = (np.cumsum(steps, axis=1) + (1 << 30)).astype(np.uint64)  # slowly varying along a track
    keys = ((cells << np.uint64(32)) | heights).ravel()
    kinds = {"default": None, "stable": "stable"}
    return kinds[fastest({name: (lambda kind=kind: keys.copy().sort(kind=kind)) for name, kind in kinds.items()})]


def _sorted_quantile(pick, start: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """numpy's default ('linear') quantile of each sorted segment [start, start + n), read by `pick`."""
    pos = q * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    a = pick(start + lo)
    b = pick(start + hi)
    # The same two-sided lerp numpy uses, so results agree to the last bit for most inputs.
    return np.where(frac >= 0.5, b - (b - a) * (1.0 - frac), a + (b - a) * frac)


def merge_sufficient(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combine two blocks of the same cells computed from disjoint observations (Chan et al.).

    Only the mergeable statistics and those derived from them are exact after a merge; quantiles
    need the observations and are set to NaN wherever both sides have data.
    """
    col = STAT_INDEX
    out = empty_block(a.shape[0])
    na, nb = a[:, col["count"]], b[:, col["count"]]
    n = na + nb
    for name in ("count", "sum_w", "sum_wh", "sum_h", "sum_t"):
        out[:, col[name]] = a[:, col[name]] + b[:, col[name]]
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = b[:, col["sum_h"]] / nb - a[:, col["sum_h"]] / na
        cross = np.where((na > 0) & (nb > 0), np.square(delta) * na * nb / n, 0.0)
        out[:, col["h_m2"]] = a[:, col["h_m2"]] + b[:, col["h_m2"]] + cross
        has = n > 0
        out[has, col["h_mean"]] = out[has, col["sum_wh"]] / out[has, col["sum_w"]]
        out[has, col["h_sigma"]] = 1.0 / np.sqrt(out[has, col["sum_w"]])
        out[has, col["h_var"]] = out[has, col["h_m2"]] / n[has]
        out[has, col["t_mean"]] = out[has, col["sum_t"]] / n[has]
    out[:, col["h_min"]] = np.fmin(a[:, col["h_min"]], b[:, col["h_min"]])
    out[:, col["h_max"]] = np.fmax(a[:, col["h_max"]], b[:, col["h_max"]])
    only_a, only_b = (na > 0) & (nb == 0), (nb > 0) & (na == 0)
    for name in QUANTILES:
        out[only_a, col[name]] = a[only_a, col[name]]
        out[only_b, col[name]] = b[only_b, col[name]]
    return out
