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
from .schema import MOMENT_VARIABLES, OutputSchema, assemble_block, block_columns, stats_and_moments
from .stats import merge_segments


def coarser(ids: np.ndarray, values: dict[str, np.ndarray], order: int, schema: OutputSchema,
            hemisphere: str = "south", min_bins: int = 3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ids of order `order - 1` and their variables (`schema`, which has no quantiles), from the
    variables of order `order` (per-bin ones shaped (bins, cells), ids sorted ascending)."""
    ids = np.asarray(ids, np.uint64)
    out_ids, start = np.unique(ids >> np.uint64(2), return_index=True)
    stats = merge_segments(stats_and_moments(values, schema)[0], start)
    moments = None
    if schema.fit:
        m = np.stack([np.asarray(values[MOMENT_VARIABLES[k]], np.float64) for k in MOMENT_NAMES], axis=-1)
        moments = merged_moments(m, ids, order, hemisphere)
    return out_ids, block_columns(assemble_block(schema, stats, moments, min_bins), schema)


def moments_up(m: np.ndarray, first_id: int, order: int, hemisphere: str = "south") -> np.ndarray:
    """The fit's moments (bins, n, 15) of the n cells first_id.. of `order` (whole sibling groups) merged
    into their n/4 parents (see `merged_moments`)."""
    return merged_moments(m, np.uint64(first_id) + np.arange(m.shape[1], dtype=np.uint64), order, hemisphere)


def merged_moments(m: np.ndarray, ids: np.ndarray, order: int, hemisphere: str = "south") -> np.ndarray:
    """The fit's moments (bins, cells, 15) of cells `ids` (sorted) of `order` merged into their parents,
    x and y first moved from each cell's centre to its parent's."""
    parents, start = np.unique(ids >> np.uint64(2), return_index=True)
    seg = np.repeat(np.arange(parents.size), np.diff(np.append(start, ids.size)))
    cx, cy = cell_centres_xy(ids, order, hemisphere, num_threads=1)
    px, py = cell_centres_xy(parents, order - 1, hemisphere, num_threads=1)
    m = m.copy()
    m[..., 1] += (cx - px[seg])[None, :]
    m[..., 2] += (cy - py[seg])[None, :]
    return _merge_segments(m, start, seg)


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
