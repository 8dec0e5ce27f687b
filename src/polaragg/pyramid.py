"""Coarser orders merged from the sufficient statistics of a finer one: exact, except quantiles.

Counts and sums add; the unweighted second moment and the fit's weighted moments merge with Chan's
formula (the fit's x, y moved to the coarser cell's centre first); minima and maxima take the least
and the greatest. Quantiles cannot be merged, so merged orders have none (`OutputSchema.quantiles`).
Cells are nested ids in ascending order, so each coarser cell's children are contiguous and every
merge is a segment reduction (`np.*.reduceat`) over whole arrays.
"""

from __future__ import annotations

import numpy as np

from .change import MOMENT_NAMES
from .projection import cell_centres_xy
from .schema import MOMENT_VARIABLES, OutputSchema, assemble_block, block_columns
from .stats import STAT_INDEX, STATS


def coarser(ids: np.ndarray, values: dict[str, np.ndarray], order: int, schema: OutputSchema,
            hemisphere: str = "south", min_bins: int = 3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ids of order `order - 1` and their variables (`schema`, which has no quantiles), from the
    variables of order `order` (per-bin ones shaped (bins, cells), ids sorted ascending)."""
    ids = np.asarray(ids, np.uint64)
    up = ids >> np.uint64(2)
    out_ids, start = np.unique(up, return_index=True)
    seg = np.repeat(np.arange(out_ids.size), np.diff(np.append(start, ids.size)))
    n_bins = schema.n_bins

    def add(name: str) -> np.ndarray:
        return np.add.reduceat(np.asarray(values[name], np.float64), start, axis=1)

    stats = np.full((n_bins, out_ids.size, len(STATS)), np.nan)
    col = STAT_INDEX
    count_in = np.asarray(values["count"], np.float64)
    count = add("count")
    for name in ("count", "sum_w", "sum_wh", "sum_h", "sum_t"):
        stats[:, :, col[name]] = add(name)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = values["sum_h"] / count_in
        mean = stats[:, :, col["sum_h"]] / count
        spread = np.where(count_in > 0, count_in * np.square(mean_in - mean[:, seg]), 0.0)
        stats[:, :, col["h_m2"]] = add("h_m2") + np.add.reduceat(spread, start, axis=1)
        has = count > 0
        sum_w = stats[:, :, col["sum_w"]]
        stats[:, :, col["h_mean"]] = np.where(has, stats[:, :, col["sum_wh"]] / sum_w, np.nan)
        stats[:, :, col["h_sigma"]] = np.where(has, 1.0 / np.sqrt(sum_w), np.nan)
        stats[:, :, col["h_var"]] = np.where(has, stats[:, :, col["h_m2"]] / count, np.nan)
        stats[:, :, col["t_mean"]] = np.where(has, stats[:, :, col["sum_t"]] / count, np.nan)
    stats[:, :, col["h_min"]] = np.fmin.reduceat(np.asarray(values["h_min"], np.float64), start, axis=1)
    stats[:, :, col["h_max"]] = np.fmax.reduceat(np.asarray(values["h_max"], np.float64), start, axis=1)

    moments = None
    if schema.fit:
        cx, cy = cell_centres_xy(ids, order, hemisphere, num_threads=1)
        px, py = cell_centres_xy(out_ids, order - 1, hemisphere, num_threads=1)
        m = np.stack([np.asarray(values[MOMENT_VARIABLES[k]], np.float64) for k in MOMENT_NAMES], axis=-1)
        m[..., 1] += (cx - px[seg])[None, :]
        m[..., 2] += (cy - py[seg])[None, :]
        moments = _merge_segments(m, start, seg)
    return out_ids, block_columns(assemble_block(schema, stats, moments, min_bins), schema)


def moments_up(m: np.ndarray, first_id: int, order: int, hemisphere: str = "south") -> np.ndarray:
    """The fit's moments (bins, n, 15) of the n cells first_id.. of `order` (n a multiple of 4, whole
    sibling groups) merged into their n/4 parents, x and y moved to each parent's centre."""
    n = m.shape[1]
    ids = np.uint64(first_id) + np.arange(n, dtype=np.uint64)
    cx, cy = cell_centres_xy(ids, order, hemisphere, num_threads=1)
    px, py = cell_centres_xy(ids[::4] >> np.uint64(2), order - 1, hemisphere, num_threads=1)
    seg = np.arange(n) // 4
    m = m.copy()
    m[..., 1] += (cx - px[seg])[None, :]
    m[..., 2] += (cy - py[seg])[None, :]
    return _merge_segments(m, np.arange(0, n, 4), seg)


def _merge_segments(m: np.ndarray, start: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Weighted moments (bins, cells, 15) merged over contiguous segments of cells (Chan's formula)."""
    w = m[..., 0]
    has = w > 0
    out = np.zeros((m.shape[0], start.size, m.shape[2]))
    W = np.add.reduceat(w, start, axis=1)
    out[..., 0] = W
    mu_in = np.where(has[..., None], m[..., 1:5], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.add.reduceat(w[..., None] * mu_in, start, axis=1) / W[..., None]
    dev = np.where(has[..., None], mu_in - mu[:, seg], 0.0)
    out[..., 1:5] = np.where((W > 0)[..., None], mu, np.nan)
    names = ("x", "y", "t", "h")
    for j, key in enumerate(MOMENT_NAMES[5:], start=5):
        u, v = names.index(key[0]), names.index(key[1])
        out[..., j] = np.add.reduceat(m[..., j] + w * dev[..., u] * dev[..., v], start, axis=1)
    return out
