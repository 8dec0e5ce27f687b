"""HEALPix conventions: nested uint64 ids on the WGS84 ellipsoid, parents, child ranges, xdggs attrs."""

from __future__ import annotations

from dataclasses import dataclass

import healpix_geo.nested as hpn
import numpy as np

from .polar_cells import MAX_ORDER, polar_cap_cells

ELLIPSOID = "WGS84"


@dataclass(frozen=True)
class Grid:
    """A two-level HEALPix grid: tasks are parent cells, statistics are per child cell."""

    parent_order: int = 6
    child_order: int = 12

    def __post_init__(self) -> None:
        if not 0 <= self.parent_order <= self.child_order <= 29:
            raise ValueError(
                f"grid orders must satisfy 0 <= parent_order <= child_order <= 29, "
                f"got parent_order={self.parent_order}, child_order={self.child_order}"
            )

    @property
    def shift(self) -> int:
        """Bits between a child id and its parent id."""
        return 2 * (self.child_order - self.parent_order)

    @property
    def children_per_parent(self) -> int:
        return 1 << self.shift

    def child_cells(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Child-order cell ids of points given in geodetic lon/lat degrees."""
        return cells_of_points(lon, lat, self.child_order)

    def parent_of(self, child_ids: np.ndarray) -> np.ndarray:
        return np.asarray(child_ids, dtype=np.uint64) >> np.uint64(self.shift)

    def children_of(self, parents: np.ndarray) -> np.ndarray:
        """All child ids of the given parents: parents ascending, each parent's children contiguous."""
        parents = np.asarray(parents, dtype=np.uint64)
        n = np.uint64(self.children_per_parent)
        return (parents[:, None] * n + np.arange(self.children_per_parent, dtype=np.uint64)[None, :]).ravel()

    def range_lat_band(self, lo: int, hi: int, margin_deg: float = 0.05) -> tuple[float, float]:
        """Geodetic latitude range of the child ids [lo, hi) of one parent, widened by a margin.

        The range is covered exactly by the coarsest aligned cells (a whole parent is one cell, a
        split task's range one or two finer cells), whose boundaries are sampled 16 points per edge.
        Rows outside the band cannot fall in the range, so they need no cell id; the margin covers
        the boundary between samples many times over.
        """
        if not lo < hi or (lo >> self.shift) != ((hi - 1) >> self.shift):
            raise ValueError(f"child range [{lo}, {hi}) is empty or spans more than one parent")
        k = self.child_order - self.parent_order
        while k > 0 and (lo % (1 << 2 * k) or hi % (1 << 2 * k)):
            k -= 1
        if (hi - lo) >> 2 * k > 64:  # an unaligned range: bound it by its whole parent
            k = self.child_order - self.parent_order
            lo = (lo >> self.shift) << self.shift
            hi = lo + self.children_per_parent
        cells = np.arange(lo >> 2 * k, hi >> 2 * k, dtype=np.uint64)
        _, lat = hpn.vertices(cells, self.child_order - k, ellipsoid=ELLIPSOID, step=16)
        lat = np.asarray(lat)
        return float(max(lat.min() - margin_deg, -90.0)), float(min(lat.max() + margin_deg, 90.0))

    def cell_id_attrs(self) -> dict[str, object]:
        """Attributes that let stock xdggs decode the `cell_ids` coordinate."""
        return {
            "grid_name": "healpix",
            "level": self.child_order,
            "indexing_scheme": "nested",
            "ellipsoid": ELLIPSOID,
        }


def cells_of_points(lon: np.ndarray, lat: np.ndarray, order: int, num_threads: int = 0) -> np.ndarray:
    """Nested HEALPix ids (uint64) of points, with latitude made authalic on the WGS84 ellipsoid.

    healpix-geo's ids: points in the polar caps are assigned in numpy where rounding cannot change
    the answer (`polar_cells`), every other point by healpix-geo.

    `num_threads` 0 uses every core; tasks pass 1, since their parallelism belongs to the executor."""
    lon = np.ascontiguousarray(lon, dtype=np.float64).ravel()
    lat = np.ascontiguousarray(lat, dtype=np.float64).ravel()
    if lon.size == 0:
        return np.empty(0, dtype=np.uint64)
    if order <= MAX_ORDER:
        ids, sure = polar_cap_cells(lon, lat, order)
    else:
        ids, sure = np.empty(lon.size, dtype=np.uint64), np.zeros(lon.size, dtype=bool)
    rest = np.flatnonzero(~sure)
    if rest.size:
        ids[rest] = hpn.lonlat_to_healpix(lon[rest], lat[rest], order, ellipsoid=ELLIPSOID, num_threads=num_threads)
    return ids
