"""Exact HEALPix coverage: which nested cells a polygon, line or UMM-G granule footprint touches.

Conventions
-----------
Cell ids are nested HEALPix ids (uint64) on the WGS84 ellipsoid, identical to
``healpix_geo.nested.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84")``: the geodetic latitude is mapped
to its authalic latitude and the spherical HEALPix formulas are applied on the authalic sphere.

Geometry is given in geodetic lon/lat degrees. Every edge, of a polygon ring or of a line, is the
**great-circle arc on the authalic sphere** between consecutive vertices (the shorter arc). Rings are used as
vertex sequences: they may wind around a pole or cross the antimeridian, and no planar lon/lat operation is
applied to them. So a lon/lat rectangle that reaches a pole or spans 360 degrees of longitude is not a polar
cap: give such an area as a ring around the pole. The project's polygons are densely sampled (basin edges
<= 90 km, footprint vertices every few km), so reading their edges as great circles rather than as straight
EPSG:3031 lines or rhumb lines moves them by metres only.

Covering means: every cell holding at least one point of the closed polygon (interior or boundary) under the
point -> cell assignment above. No such cell is ever missing. The cells added beyond them are cells that the
boundary only touches: it passes through their corner or along their edge (polar-cap meridians at longitudes
such as 0, 90 or 150 degrees run through HEALPix cell corners), or within ~1e-6 cell widths of them.

Algorithm
---------
1. Boundary cells, exactly. Each edge is cut into pieces of at most a quarter cell and every piece end is
   mapped to continuous (face, x, y) coordinates in its HEALPix base cell, where the cells of any order are
   the unit squares of a regular grid. Each piece is replaced by its straight chord, widened by three times
   the measured offset of the arc midpoint from the chord plus a rounding margin, and every grid square this
   capsule meets is taken. Pieces that cross a base-cell edge are cut until tiny and take the cells on both
   sides (plus the cells sharing a cell corner they pass). Nothing is point-sampled: an edge that crosses a
   cell with no vertex in it is always found.
2. Interior cells, hierarchically. A cell of any coarser order that contains no boundary cell lies entirely
   inside or entirely outside the polygon, so one point-in-polygon test of its centre decides for all its
   descendants at the target order; cells that do contain boundary cells are split into their four children.
   The test is exact on the sphere: each polygon (part) must fit in a hemisphere, and in the gnomonic
   projection about its centre great-circle edges are straight lines, so a planar test applies.

mortie's ``morton_coverage`` (the suggested engine) gives the same ids on densely sampled polygons, but on
polygons with long edges it was measured to miss cells (four order-6 cells crossed by a 100-degree triangle,
a whole order-1 cell in another case), so it is not used here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import healpix_geo.nested as hpn
import mortie
import numpy as np
import shapely

from . import grid

__all__ = [
    "EARTH_RADIUS_M",
    "ELLIPSOID",
    "ORBIT_INCLINATION_DEG",
    "ORBIT_K",
    "SWATH_HALF_WIDTH_M",
    "cells_along_line",
    "cells_covering",
    "cells_of_points",
    "footprint_cells",
    "orbit_swath",
]

ELLIPSOID = grid.ELLIPSOID
EARTH_RADIUS_M = 6371008.8  # mean (authalic) Earth radius, used to turn metres into angles
SWATH_HALF_WIDTH_M = 7000.0  # ATL06 beams span +-3.35 km about the RGT; the rest is margin
ORBIT_INCLINATION_DEG = 92.0
ORBIT_K = 91.0 / 1387.0  # Earth rotations per orbit revolution of the exact-repeat orbit
MAX_ORDER = 29

_N_BASE = 12
_SAMPLES_PER_CELL = 4.0  # edge samples per nominal cell width
_DEV_REFINE = 0.05  # bisect a piece whose arc departs from its chord by more than this (grid units)
_CROSS_SPLIT = 32  # a piece crossing a base-cell edge is cut into this many
_EDGE_DIRS = {(-1, -1): 0, (-1, 0): 1, (-1, 1): 2, (0, 1): 3, (1, 1): 4, (1, 0): 5, (1, -1): 6, (0, -1): 7}
_RECT_STEP_DEG = 0.25  # densification of lon/lat rectangle edges that follow parallels


# ----------------------------------------------------------------------------------------------------------
# Public API


def cells_of_points(lon: Any, lat: Any, order: int) -> np.ndarray:
    """Nested ids (uint64, one per point, input order) of points in geodetic lon/lat degrees."""
    order = _check_order(order)
    lon = np.ascontiguousarray(np.ravel(lon), dtype=np.float64)
    lat = np.ascontiguousarray(np.ravel(lat), dtype=np.float64)
    if lon.shape != lat.shape:
        raise ValueError(f"lon and lat differ in length ({lon.size} vs {lat.size})")
    _check_lonlat(lon, lat, "points")
    return grid.cells_of_points(lon, lat, order)


def cells_along_line(lon: Any, lat: Any, order: int) -> np.ndarray:
    """Sorted unique nested ids of every cell crossed by a polyline (great-circle arcs between the vertices).

    The cells are found exactly (see the module notes), not by sampling points along the line.
    """
    order = _check_order(order)
    v = _vectors(lon, lat, "line")
    return _boundary_cells([(_dedupe(v, closed=False), False)], order)


def cells_covering(geometry: Any, order: int) -> np.ndarray:
    """Sorted unique nested ids (uint64) of every cell that intersects a (multi)polygon in lon/lat degrees.

    ``geometry`` is a shapely Polygon or MultiPolygon (or a collection of them); interior rings are holes.
    Edges are great-circle arcs on the authalic sphere; rings may contain a pole or cross the antimeridian.
    Each part must fit in a hemisphere (ValueError otherwise). No intersecting cell is missed; cells that the
    boundary merely touches are included.
    """
    order = _check_order(order)
    parts = []
    for i, poly in enumerate(_polygons(geometry)):
        ext = _ring_vectors(np.asarray(poly.exterior.coords), f"polygon {i} exterior")
        holes = [
            _ring_vectors(np.asarray(r.coords), f"polygon {i} interior ring {j}")
            for j, r in enumerate(poly.interiors)
        ]
        parts.append((ext, holes))
    return _cover_parts(parts, order)


def footprint_cells(geometry: Mapping[str, Any], order: int) -> np.ndarray:
    """Sorted unique nested ids of the cells touched by a UMM-G granule footprint.

    ``geometry`` is ``umm.SpatialExtent.HorizontalSpatialDomain.Geometry`` (or the ``HorizontalSpatialDomain``
    itself, whose ``Orbit`` block is then used too). Supported members, all unioned:

    - ``GPolygons``: ``Boundary.Points`` ``[{Longitude, Latitude}]`` and optional ``ExclusiveZone.Boundaries``
      holes; covered exactly as spherical polygons.
    - ``Lines``: ``Points``; every cell a great-circle segment crosses (exact, not sampled).
    - ``BoundingRectangles``: ``West/East/North/SouthBoundingCoordinate``; East < West crosses the
      antimeridian; the north and south edges follow parallels (covered conservatively).
    - ``Points``: the cell of each point.
    - ``Orbit``: ``AscendingCrossing, StartLatitude, StartDirection, EndLatitude, EndDirection``; the ground
      track of the exact-repeat orbit model from start to end, buffered by ``SWATH_HALF_WIDTH_M``
      (see ``orbit_swath``).

    Raises ValueError naming the missing or invalid member.
    """
    order = _check_order(order)
    if not isinstance(geometry, Mapping):
        raise ValueError(f"footprint geometry must be a dict, got {type(geometry).__name__}")
    geom: Mapping[str, Any] = geometry
    orbit = geometry.get("Orbit")
    if "Geometry" in geometry:
        geom = geometry["Geometry"] or {}
        if not isinstance(geom, Mapping):
            raise ValueError(f"footprint 'Geometry' must be a dict, got {type(geom).__name__}")
        orbit = orbit if orbit is not None else geom.get("Orbit")
    known = ("GPolygons", "Lines", "BoundingRectangles", "Points")
    if not any(geom.get(k) for k in known) and not orbit:
        raise ValueError(
            "footprint geometry has none of GPolygons, Lines, BoundingRectangles, Points or Orbit "
            f"(keys present: {sorted(geometry)})"
        )
    out: list[np.ndarray] = []
    parts: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for i, gp in enumerate(_as_list(geom.get("GPolygons"), "GPolygons")):
        where = f"GPolygons[{i}]"
        boundary = _member(gp, "Boundary", where)
        points = _umm_points(_member(boundary, "Points", f"{where}.Boundary"), f"{where}.Boundary")
        ext = _ring_vectors(points, where)
        holes = []
        zone = gp.get("ExclusiveZone") if isinstance(gp, Mapping) else None
        if zone:
            bounds = _as_list(_member(zone, "Boundaries", f"{where}.ExclusiveZone"), "Boundaries")
            for j, b in enumerate(bounds):
                w = f"{where}.ExclusiveZone.Boundaries[{j}]"
                holes.append(_ring_vectors(_umm_points(_member(b, "Points", w), w), w))
        parts.append((ext, holes))
    for i, rect in enumerate(_as_list(geom.get("BoundingRectangles"), "BoundingRectangles")):
        r_parts, r_lines = _rectangle(rect, f"BoundingRectangles[{i}]")
        parts += r_parts
        out += [_boundary_cells([(v, False)], order) for v in r_lines]
    if orbit:
        parts += [(_ring_vectors(np.column_stack(r), "Orbit swath"), []) for r in orbit_swath(orbit)]
    if parts:
        out.append(_cover_parts(parts, order))
    for i, line in enumerate(_as_list(geom.get("Lines"), "Lines")):
        w = f"Lines[{i}]"
        pts = _umm_points(_member(line, "Points", w), w)
        out.append(cells_along_line(pts[:, 0], pts[:, 1], order))
    if geom.get("Points"):
        pts = _umm_points(geom["Points"], "Points")
        out.append(cells_of_points(pts[:, 0], pts[:, 1], order))
    return _union(out)


def orbit_swath(
    orbit: Mapping[str, Any],
    half_width_m: float = SWATH_HALF_WIDTH_M,
    step_m: float = 2000.0,
    max_piece_deg: float = 60.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Swath polygons (list of (lon, lat) degree arrays, open rings) of a UMM-G ``Orbit`` block.

    Exact-repeat model (reference/atl06.md): argument of latitude u, 0 at the ascending node whose longitude
    is ``AscendingCrossing``; lat = asin(sin i sin u); lon = node + atan2(cos i sin u, cos u) - K u.
    ``StartDirection``/``EndDirection`` ("A"scending or "D"escending) pick the branch of each latitude; the
    arc runs forward in u from start to end. The node is the first ascending crossing inside the arc if
    there is one, otherwise the one before it. The arc is extended by ``half_width_m`` at both ends and offset
    by +-``half_width_m`` across track; long arcs come back as several pieces of at most ``max_piece_deg``
    of u. Latitudes of the model are taken as geodetic.
    """
    where = "Orbit"
    if not isinstance(orbit, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(orbit).__name__}")
    node = _number(_member(orbit, "AscendingCrossing", where), f"{where}.AscendingCrossing")
    u0 = _orbit_u(orbit, "Start")
    u1 = _orbit_u(orbit, "End")
    two_pi = 2.0 * math.pi
    u0 %= two_pi
    u1 = u0 + ((u1 - u0) % two_pi)
    if u1 >= two_pi:  # the arc contains an ascending crossing: that one is the node
        u0, u1 = u0 - two_pi, u1 - two_pi
    ext = half_width_m / EARTH_RADIUS_M
    u0, u1 = u0 - ext, u1 + ext
    n_pieces = max(1, math.ceil(math.degrees(u1 - u0) / max_piece_deg))
    edges = np.linspace(u0, u1, n_pieces + 1)
    rings = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = max(2, math.ceil((b - a) * EARTH_RADIUS_M / step_m) + 1)
        u = np.linspace(a, b, n)
        p, t = _orbit_track(math.radians(node), u)
        nrm = np.cross(p, t)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        d = half_width_m / EARTH_RADIUS_M
        left = p * math.cos(d) + nrm * math.sin(d)
        right = p * math.cos(d) - nrm * math.sin(d)
        ring = np.vstack([right, left[::-1]])
        lon = np.degrees(np.arctan2(ring[:, 1], ring[:, 0]))
        lat = np.degrees(np.arcsin(np.clip(ring[:, 2], -1.0, 1.0)))
        rings.append((lon, lat))
    return rings


# ----------------------------------------------------------------------------------------------------------
# Input handling


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in 0..{MAX_ORDER}, got {order!r}")
    return int(order)


def _check_lonlat(lon: np.ndarray, lat: np.ndarray, where: str) -> None:
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise ValueError(f"{where}: coordinates contain NaN or infinity")
    if np.any(np.abs(lat) > 90.0):
        raise ValueError(f"{where}: latitude outside [-90, 90] (max |lat| = {np.abs(lat).max():g})")


def _polygons(geometry: Any) -> list[Any]:
    if not isinstance(geometry, shapely.Geometry):
        raise TypeError(f"expected a shapely Polygon or MultiPolygon, got {type(geometry).__name__}")
    polys = []
    for g in shapely.get_parts(geometry):
        if isinstance(g, shapely.GeometryCollection):
            polys += _polygons(g)
        elif isinstance(g, shapely.Polygon):
            if not g.is_empty:
                polys.append(g)
        else:
            raise TypeError(f"expected Polygon or MultiPolygon parts, got {g.geom_type}")
    return polys


def _vectors(lon: Any, lat: Any, where: str) -> np.ndarray:
    """Geodetic lon/lat degrees -> unit vectors (n, 3) on the authalic sphere."""
    lon = np.asarray(lon, dtype=np.float64).ravel()
    lat = np.asarray(lat, dtype=np.float64).ravel()
    if lon.shape != lat.shape:
        raise ValueError(f"{where}: lon and lat differ in length ({lon.size} vs {lat.size})")
    if lon.size == 0:
        raise ValueError(f"{where}: no vertices")
    _check_lonlat(lon, lat, where)
    beta = np.asarray(mortie.geodetic_to_authalic(lat), dtype=np.float64).reshape(lat.shape)
    return _unit(lon, beta)


def _unit(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    lo = np.radians(lon_deg)
    la = np.radians(lat_deg)
    c = np.cos(la)
    return np.column_stack([c * np.cos(lo), c * np.sin(lo), np.sin(la)])


def _dedupe(v: np.ndarray, closed: bool) -> np.ndarray:
    """Drop consecutive repeated vertices (and the closing repeat of a ring)."""
    keep = np.ones(len(v), dtype=bool)
    keep[1:] = np.any(v[1:] != v[:-1], axis=1)
    v = v[keep]
    if closed and len(v) > 1 and np.all(v[0] == v[-1]):
        v = v[:-1]
    return v


def _ring_vectors(coords: np.ndarray, where: str) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"{where}: expected an (n, 2) array of lon/lat coordinates")
    v = _dedupe(_vectors(coords[:, 0], coords[:, 1], where), closed=True)
    if len(v) < 3:
        raise ValueError(f"{where}: a ring needs at least 3 distinct vertices, got {len(v)}")
    return v


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{where} must be a list, got {type(value).__name__}")
    return list(value)


def _member(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(obj).__name__}")
    if key not in obj or obj[key] is None:
        raise ValueError(f"{where}: missing '{key}'")
    return obj[key]


def _number(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: not a number: {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: not a finite number: {value!r}")
    return x


def _umm_points(points: Any, where: str) -> np.ndarray:
    pts = _as_list(points, f"{where}.Points")
    if not pts:
        raise ValueError(f"{where}.Points is empty")
    try:
        out = np.array([(p["Longitude"], p["Latitude"]) for p in pts], dtype=np.float64)
        ok = out.shape == (len(pts), 2) and bool(np.all(np.isfinite(out)))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:  # find the offending point for the message
        out = np.empty((len(pts), 2))
        for k, p in enumerate(pts):
            w = f"{where}.Points[{k}]"
            out[k, 0] = _number(_member(p, "Longitude", w), f"{w}.Longitude")
            out[k, 1] = _number(_member(p, "Latitude", w), f"{w}.Latitude")
    if np.any(np.abs(out[:, 1]) > 90.0) or np.any(np.abs(out[:, 0]) > 360.0):
        raise ValueError(f"{where}.Points: coordinates out of range (|lon| <= 360, |lat| <= 90)")
    return out


def _union(arrays: Iterable[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(a, dtype=np.uint64).ravel() for a in arrays]
    if not arrays:
        return np.empty(0, dtype=np.uint64)
    a = np.sort(np.concatenate(arrays), kind="stable")  # merges the sorted runs the callers mostly pass
    if a.size > 1:
        a = a[np.concatenate([[True], a[1:] != a[:-1]])]
    return a


# ----------------------------------------------------------------------------------------------------------
# HEALPix geometry on the authalic sphere


def _face_xy(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base cell (0-11) and continuous coordinates x, y in [0, 1] within it of unit vectors (n, 3).

    floor(x * 2**k), floor(y * 2**k) are the in-face indices of the order-k cell (x on the even bits of the
    nested id), exactly as HEALPix assigns points.
    """
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    phi = np.arctan2(y, x)
    phi = np.where(phi < 0.0, phi + 2.0 * np.pi, phi)
    tt = phi / (0.5 * np.pi)
    tt = np.where(tt >= 4.0, tt - 4.0, tt)
    za = np.abs(z)
    # equatorial zone
    jp = 0.5 + tt - 0.75 * z
    jm = 0.5 + tt + 0.75 * z
    ifp = np.floor(jp)
    ifm = np.floor(jm)
    f_eq = np.where(ifp == ifm, ifp % 4 + 4, np.where(ifp < ifm, ifp % 4, ifm % 4 + 8))
    x_eq = jm - ifm
    y_eq = 1.0 - (jp - ifp)
    # polar caps
    ntt = np.minimum(np.floor(tt), 3.0)
    tp = tt - ntt
    s = np.sqrt(3.0 * (x * x + y * y) / (1.0 + za))  # sqrt(3 (1 - |z|)), accurate near the poles
    north = z > 0
    x_p = np.where(north, 1.0 - (1.0 - tp) * s, tp * s)
    y_p = np.where(north, 1.0 - tp * s, (1.0 - tp) * s)
    f_p = np.where(north, ntt, ntt + 8)
    eq = za <= 2.0 / 3.0
    face = np.where(eq, f_eq, f_p).astype(np.int64)
    return face, np.where(eq, x_eq, x_p), np.where(eq, y_eq, y_p)


def _spread_bits(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64)
    for shift, mask in (
        (16, 0x0000FFFF0000FFFF),
        (8, 0x00FF00FF00FF00FF),
        (4, 0x0F0F0F0F0F0F0F0F),
        (2, 0x3333333333333333),
        (1, 0x5555555555555555),
    ):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact_bits(v: np.ndarray) -> np.ndarray:
    v = v & np.uint64(0x5555555555555555)
    for shift, mask in (
        (1, 0x3333333333333333),
        (2, 0x0F0F0F0F0F0F0F0F),
        (4, 0x00FF00FF00FF00FF),
        (8, 0x0000FFFF0000FFFF),
        (16, 0x00000000FFFFFFFF),
    ):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def _centres(cells: np.ndarray, order: int) -> np.ndarray:
    """Unit vectors (n, 3) of cell centres on the authalic sphere (inverse of ``_face_xy``)."""
    cells = np.asarray(cells, dtype=np.uint64)
    face = (cells >> np.uint64(2 * order)).astype(np.int64)
    local = cells & np.uint64((1 << (2 * order)) - 1)
    scale = 1.0 / (1 << order)
    x = (_compact_bits(local).astype(np.float64) + 0.5) * scale
    y = (_compact_bits(local >> np.uint64(1)).astype(np.float64) + 0.5) * scale
    row = face // 4  # 0 north, 1 equatorial, 2 south
    col = face % 4
    s_n = 2.0 - (x + y)  # sqrt(3 (1 - |z|)) in the caps
    s_s = x + y
    z = np.where(row == 0, (x + y) / 1.5, np.where(row == 1, (x + y - 1.0) / 1.5, (x + y - 2.0) / 1.5))
    tt = (x - y) / 2.0 + col + np.where(row == 1, 0.0, 0.5)
    cap_n = (row == 0) & (z > 2.0 / 3.0)
    cap_s = (row == 2) & (z < -2.0 / 3.0)
    s = np.where(cap_n, s_n, np.where(cap_s, s_s, 1.0))
    tp = np.where(cap_n | cap_s, ((x - y) / np.where(s > 0, s, 1.0) + 1.0) / 2.0, 0.0)
    tt = np.where(cap_n | cap_s, col + tp, tt)
    one_minus = np.where(cap_n | cap_s, s * s / 3.0, 1.0 - np.abs(z))  # 1 - |z|
    z = np.where(cap_n, 1.0 - one_minus, np.where(cap_s, one_minus - 1.0, z))
    phi = tt * (0.5 * np.pi)
    r = np.sqrt(np.maximum(0.0, one_minus * (2.0 - one_minus)))  # sqrt(1 - z^2), accurate near the poles
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def _nested(face: np.ndarray, ix: np.ndarray, iy: np.ndarray, order: int) -> np.ndarray:
    return (np.asarray(face).astype(np.uint64) << np.uint64(2 * order)) | _spread_bits(ix) | (
        _spread_bits(iy) << np.uint64(1)
    )


def _cells_of_vectors(v: np.ndarray, order: int) -> np.ndarray:
    face, x, y = _face_xy(v)
    n = 1 << order
    ix = np.clip(np.floor(x * n), 0, n - 1).astype(np.int64)
    iy = np.clip(np.floor(y * n), 0, n - 1).astype(np.int64)
    return _union([_nested(face, ix, iy, order)])


def _cell_rad(order: int) -> float:
    """Nominal cell width (radians): square root of the cell area on the unit sphere."""
    return math.sqrt(math.pi / 3.0) / (1 << order)


def _slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at fraction t along the minor great-circle arcs a -> b (rows)."""
    cross = np.cross(a, b)
    sin_w = np.linalg.norm(cross, axis=1)
    w = np.arctan2(sin_w, np.einsum("ij,ij->i", a, b))
    small = sin_w < 1e-12
    safe = np.where(small, 1.0, sin_w)
    ca = np.where(small, 1.0 - t, np.sin((1.0 - t) * w) / safe)
    cb = np.where(small, t, np.sin(t * w) / safe)
    p = ca[:, None] * a + cb[:, None] * b
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _edge_pieces(paths: Sequence[tuple[np.ndarray, bool]], order: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points of the great-circle pieces (about a quarter cell long) of all path edges."""
    starts, ends = [], []
    for v, closed in paths:
        if len(v) == 1:  # a single point: one zero-length piece
            starts.append(v)
            ends.append(v)
            continue
        a = v if closed else v[:-1]
        b = np.roll(v, -1, axis=0) if closed else v[1:]
        dot = np.einsum("ij,ij->i", a, b)
        ang = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), dot)
        if np.any(ang > math.pi - 1e-9):
            raise ValueError("an edge joins two antipodal vertices: its great-circle arc is undefined")
        m = np.maximum(1, np.ceil(ang / (_cell_rad(order) / _SAMPLES_PER_CELL))).astype(np.int64)
        e = np.repeat(np.arange(len(a)), m)
        j = np.arange(e.size) - np.repeat(np.cumsum(m) - m, m)
        mm = m[e].astype(np.float64)
        starts.append(_slerp(a[e], b[e], j / mm))
        ends.append(_slerp(a[e], b[e], (j + 1) / mm))
    if not starts:
        return np.empty((0, 3)), np.empty((0, 3))
    return np.concatenate(starts), np.concatenate(ends)


def _boundary_cells(paths: Sequence[tuple[np.ndarray, bool]], order: int) -> np.ndarray:
    """Every cell of ``order`` that a great-circle path (closed ring or open line) passes through."""
    n = 1 << order
    eps = 1e-6 + n * 1e-10  # grid units: float rounding, authalic-latitude conversions of other libraries
    tiny = max(_cell_rad(order) * 1e-7, 1e-13)  # radians: a face-crossing piece this short stops splitting
    tiny_grid = 2.0 * tiny / _cell_rad(order)

    a, b = _edge_pieces(paths, order)
    same_a, same_b, same_dev = [], [], []  # pieces inside one base cell
    cross_a, cross_b = [], []  # tiny pieces across a base-cell edge
    for _ in range(200):
        if len(a) == 0:
            break
        mid = a + b
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        fa, xa, ya = _face_xy(a)
        fb, xb, yb = _face_xy(b)
        fm, xm, ym = _face_xy(mid)
        gxa, gya, gxb, gyb, gxm, gym = xa * n, ya * n, xb * n, yb * n, xm * n, ym * n
        one_face = (fa == fb) & (fa == fm)
        dx, dy = gxb - gxa, gyb - gya
        length = np.hypot(dx, dy)
        safe = np.where(length > 0, length, 1.0)
        off = np.abs(dx * (gym - gya) - dy * (gxm - gxa)) / safe  # arc midpoint's distance from the chord
        dev = np.where(length > 0, off, np.hypot(gxm - gxa, gym - gya))
        ok = one_face & (np.abs(dx) < 0.5) & (np.abs(dy) < 0.5) & (dev < _DEV_REFINE)
        if np.any(ok):
            same_a.append(np.column_stack([fa[ok], gxa[ok], gya[ok]]))
            same_b.append(np.column_stack([gxb[ok], gyb[ok]]))
            same_dev.append(dev[ok])
        short = ~ok & ~one_face & (np.linalg.norm(a - b, axis=1) < tiny)
        if np.any(short):
            cross_a.append(a[short])
            cross_b.append(b[short])
        split = ~ok & ~short
        if not np.any(split):
            a = a[:0]
            break
        # halve pieces that are too long or too curved; cut face-crossing pieces finely to reach the edge fast
        halve = split & one_face
        cut = split & ~one_face
        a_new = [a[halve], mid[halve]]
        b_new = [mid[halve], b[halve]]
        if np.any(cut):
            k = _CROSS_SPLIT
            ac, bc = np.repeat(a[cut], k, axis=0), np.repeat(b[cut], k, axis=0)
            j = np.tile(np.arange(k, dtype=np.float64), int(cut.sum()))
            a_new.append(_slerp(ac, bc, j / k))
            b_new.append(_slerp(ac, bc, (j + 1) / k))
        a, b = np.concatenate(a_new), np.concatenate(b_new)
    if len(a):
        raise RuntimeError("boundary refinement did not converge")  # pragma: no cover - defensive

    cells = []
    if same_a:
        fa_g = np.concatenate(same_a)
        gb = np.concatenate(same_b)
        margin = 3.0 * np.concatenate(same_dev) + eps
        face = fa_g[:, 0].astype(np.int64)
        cells.append(_capsule_cells(face, fa_g[:, 1], fa_g[:, 2], gb[:, 0], gb[:, 1], margin, order))
    if cross_a:
        ca, cb = np.concatenate(cross_a), np.concatenate(cross_b)
        ends = np.concatenate([ca, cb])
        cells.append(_cells_of_vectors(ends, order))
        # a piece crossing a base-cell edge right at a cell corner also touches the cells sharing that corner
        face, x, y = _face_xy(ends)
        fx, fy = x * n, y * n
        rx, ry = np.round(fx), np.round(fy)
        corner = (np.abs(fx - rx) <= tiny_grid + eps) & (np.abs(fy - ry) <= tiny_grid + eps)
        if np.any(corner):
            ix = np.clip(np.floor(fx[corner]), 0, n - 1).astype(np.int64)
            iy = np.clip(np.floor(fy[corner]), 0, n - 1).astype(np.int64)
            sx = np.where(rx[corner] > ix, 1, -1)
            sy = np.where(ry[corner] > iy, 1, -1)
            cells.append(_corner_cells(_nested(face[corner], ix, iy, order), sx, sy, order))
    return _union(cells)


def _step(cells: np.ndarray, di: np.ndarray, dj: np.ndarray, order: int) -> np.ndarray:
    """Neighbours of cells one step (di, dj) in {-1, 0, 1} away in face coordinates, via HEALPix neighbours.

    Where a diagonal step does not exist (a corner where only three base cells meet), both edge neighbours on
    that side are returned instead.
    """
    nb = np.asarray(hpn.neighbours(cells, order, connectivity="all", num_threads=1), dtype=np.int64)
    out = []
    for (ddi, ddj), col in _EDGE_DIRS.items():
        sel = (di == ddi) & (dj == ddj)
        if not np.any(sel):
            continue
        got = nb[sel, col]
        out.append(got[got >= 0])
        if ddi != 0 and ddj != 0 and np.any(got < 0):
            for side in (_EDGE_DIRS[(ddi, 0)], _EDGE_DIRS[(0, ddj)]):
                alt = nb[sel, side][got < 0]
                out.append(alt[alt >= 0])
    return _union(out)


def _corner_cells(cells: np.ndarray, sx: np.ndarray, sy: np.ndarray, order: int) -> np.ndarray:
    """The cells sharing corner (sx, sy) (each +-1) of the given cells, the cells themselves included."""
    zero = np.zeros_like(sx)
    return _union([cells, _step(np.concatenate([cells] * 3), np.concatenate([sx, zero, sx]),
                                np.concatenate([zero, sy, sy]), order)])


def _capsule_cells(
    face: np.ndarray,
    ax: np.ndarray,
    ay: np.ndarray,
    bx: np.ndarray,
    by: np.ndarray,
    m: np.ndarray,
    order: int,
) -> np.ndarray:
    """Cells whose square lies within ``m`` (grid units) of segments a-b shorter than half a cell."""
    n = 1 << order
    i0 = np.floor(np.minimum(ax, bx) - m).astype(np.int64)
    i1 = np.floor(np.maximum(ax, bx) + m).astype(np.int64)
    j0 = np.floor(np.minimum(ay, by) - m).astype(np.int64)
    j1 = np.floor(np.maximum(ay, by) + m).astype(np.int64)
    simple = (i0 == i1) & (j0 == j1) & (i0 >= 0) & (i0 < n) & (j0 >= 0) & (j0 < n)
    out = [_nested(face[simple], i0[simple], j0[simple], order)]

    hard = ~simple
    if np.any(hard):
        f, ax, ay, bx, by, m = face[hard], ax[hard], ay[hard], bx[hard], by[hard], m[hard]
        i0, i1, j0, j1 = i0[hard], i1[hard], j0[hard], j1[hard]
        rows = []
        for di in (0, 1):
            for dj in (0, 1):
                i, j = i0 + di, j0 + dj
                valid = (i <= i1) & (j <= j1)
                hit = valid & _segment_hits_box(ax, ay, bx, by, i - m, i + 1 + m, j - m, j + 1 + m)
                rows.append((f[hit], i[hit], j[hit]))
        f = np.concatenate([r[0] for r in rows])
        i = np.concatenate([r[1] for r in rows])
        j = np.concatenate([r[2] for r in rows])
        inside = (i >= 0) & (i < n) & (j >= 0) & (j < n)
        out.append(_nested(f[inside], i[inside], j[inside], order))
        if np.any(~inside):
            out.append(_across_face(f[~inside], i[~inside], j[~inside], order))
    return _union(out)


def _across_face(face: np.ndarray, i: np.ndarray, j: np.ndarray, order: int) -> np.ndarray:
    """Cells just outside a base cell, given by in-face indices -1 or 2**order, via HEALPix neighbours."""
    n = 1 << order
    ci, cj = np.clip(i, 0, n - 1), np.clip(j, 0, n - 1)
    return _step(_nested(face, ci, cj, order), i - ci, j - cj, order)


def _segment_hits_box(ax, ay, bx, by, x0, x1, y0, y1) -> np.ndarray:
    """Whether segments a-b meet the axis-aligned boxes [x0, x1] x [y0, y1] (Liang-Barsky)."""
    lo = np.zeros_like(ax)
    hi = np.ones_like(ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        for p0, d, q0, q1 in ((ax, bx - ax, x0, x1), (ay, by - ay, y0, y1)):
            moving = d != 0.0
            ta = np.where(moving, (q0 - p0) / np.where(moving, d, 1.0), 0.0)
            tb = np.where(moving, (q1 - p0) / np.where(moving, d, 1.0), 0.0)
            inside = (p0 >= q0) & (p0 <= q1)
            t_lo = np.where(moving, np.minimum(ta, tb), np.where(inside, -np.inf, np.inf))
            t_hi = np.where(moving, np.maximum(ta, tb), np.where(inside, np.inf, -np.inf))
            lo = np.maximum(lo, t_lo)
            hi = np.minimum(hi, t_hi)
    return lo <= hi


# ----------------------------------------------------------------------------------------------------------
# Polygons


def _cover_parts(parts: Sequence[tuple[np.ndarray, list[np.ndarray]]], order: int) -> np.ndarray:
    return _union(_cover_part(ext, holes, order) for ext, holes in parts)


def _cover_part(ext: np.ndarray, holes: list[np.ndarray], order: int) -> np.ndarray:
    inside = _inside_test(ext, holes)
    boundary = _boundary_cells([(ext, True)] + [(h, True) for h in holes], order)
    return _fill(boundary, order, inside)


def _inside_test(ext: np.ndarray, holes: list[np.ndarray]):
    """Exact point-in-polygon for unit vectors: a planar test in the gnomonic projection about the centre."""
    nxt = np.roll(ext, -1, axis=0)
    mid = ext + nxt
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    w = np.arctan2(np.linalg.norm(np.cross(ext, nxt), axis=1), np.einsum("ij,ij->i", ext, nxt))
    c = (mid * w[:, None]).sum(axis=0)
    if np.linalg.norm(c) < 1e-12:
        c = ext.sum(axis=0)
    c /= np.linalg.norm(c)
    rings = [ext] + holes
    if min(float(np.min(r @ c)) for r in rings) <= 1e-6:
        raise ValueError(
            "a polygon part does not fit in a hemisphere; split it into smaller parts "
            "(edges are great-circle arcs)"
        )
    ref = np.array([0.0, 0.0, 1.0]) if abs(c[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(ref, c)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(c, e1)

    def project(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = p @ c
        return (p @ e1) / d, (p @ e2) / d

    poly = shapely.Polygon(np.column_stack(project(ext)), [np.column_stack(project(h)) for h in holes])
    shapely.prepare(poly)

    def inside(p: np.ndarray) -> np.ndarray:
        res = np.zeros(len(p), dtype=bool)
        front = (p @ c) > 1e-9
        if np.any(front):
            x, y = project(p[front])
            res[front] = shapely.contains_xy(poly, x, y)
        return res

    return inside


def _fill(boundary: np.ndarray, order: int, inside) -> np.ndarray:
    """Boundary cells plus every cell entirely inside: top-down over the orders, one test per uniform cell."""
    out = [boundary]
    cand = np.arange(_N_BASE, dtype=np.uint64)
    for depth in range(order + 1):
        shift = np.uint64(2 * (order - depth))
        anc = _union([boundary >> shift])
        pos = np.minimum(np.searchsorted(anc, cand), max(len(anc) - 1, 0))
        straddle = (anc[pos] == cand) if len(anc) else np.zeros(len(cand), dtype=bool)
        uniform = cand[~straddle]
        if uniform.size:
            full = uniform[inside(_centres(uniform, depth))]
            if full.size:
                count = 1 << (2 * (order - depth))
                out.append(((full << shift)[:, None] + np.arange(count, dtype=np.uint64)[None, :]).ravel())
        cand = ((cand[straddle] << np.uint64(2))[:, None] + np.arange(4, dtype=np.uint64)[None, :]).ravel()
    return _union(out)


def _rectangle(rect: Any, where: str) -> tuple[list[tuple[np.ndarray, list[np.ndarray]]], list[np.ndarray]]:
    """A UMM-G bounding rectangle as hemisphere-sized polygon parts (or lines, when degenerate)."""
    w = _number(_member(rect, "WestBoundingCoordinate", where), f"{where}.WestBoundingCoordinate")
    e = _number(_member(rect, "EastBoundingCoordinate", where), f"{where}.EastBoundingCoordinate")
    nth = _number(_member(rect, "NorthBoundingCoordinate", where), f"{where}.NorthBoundingCoordinate")
    sth = _number(_member(rect, "SouthBoundingCoordinate", where), f"{where}.SouthBoundingCoordinate")
    if not -90.0 <= sth <= nth <= 90.0:
        raise ValueError(f"{where}: need -90 <= South <= North <= 90, got South={sth}, North={nth}")
    if not (-180.0 <= w <= 180.0 and -180.0 <= e <= 180.0):
        raise ValueError(f"{where}: West/East must lie in [-180, 180], got West={w}, East={e}")
    span = e - w if e >= w else e - w + 360.0
    b_s, b_n = (float(mortie.geodetic_to_authalic(x)) for x in (sth, nth))
    if span == 0.0 or sth == nth:  # degenerate: a meridian segment, a parallel or a point
        n = max(2, math.ceil(span / _RECT_STEP_DEG) + 1)
        lons = w + np.linspace(0.0, span, n)
        line = np.vstack([_unit(lons, np.full(n, b_s)), _unit(np.full(1, w + span), np.full(1, b_n))])
        return [], [_dedupe(line, closed=False)]
    lat_cuts = [b_s, b_n] if not b_s < 0.0 < b_n else [b_s, 0.0, b_n]
    n_lon = max(1, math.ceil(span / 90.0))
    lon_cuts = w + np.linspace(0.0, span, n_lon + 1)
    parts = []
    for lo_a, lo_b in zip(lon_cuts[:-1], lon_cuts[1:]):
        n = max(2, math.ceil((lo_b - lo_a) / _RECT_STEP_DEG) + 1)
        lons = np.linspace(lo_a, lo_b, n)
        half = math.radians((lo_b - lo_a) / (n - 1)) / 2.0
        for la_a, la_b in zip(lat_cuts[:-1], lat_cuts[1:]):
            # a chord between two points of a parallel bulges poleward: move equator-facing edges outward
            s_lat = la_a if la_a <= 0.0 else _chord_safe_lat(la_a, half)
            n_lat = la_b if la_b >= 0.0 else _chord_safe_lat(la_b, half)
            ring = np.vstack([_unit(lons, np.full(n, s_lat)), _unit(lons[::-1], np.full(n, n_lat))])
            ring = _dedupe(ring, closed=True)
            if len(ring) >= 3:
                parts.append((ring, []))
    return parts, []


# ----------------------------------------------------------------------------------------------------------
# Orbit model


def _chord_safe_lat(lat_deg: float, half_step_rad: float) -> float:
    """Latitude whose great-circle chords, between points half_step apart in longitude, reach lat_deg."""
    return math.degrees(math.atan(math.tan(math.radians(lat_deg)) * math.cos(half_step_rad)))


def _orbit_u(orbit: Mapping[str, Any], which: str) -> float:
    """Argument of latitude (radians, in [-pi/2, 3pi/2)) of the Start or End of an Orbit block."""
    lat = _number(_member(orbit, f"{which}Latitude", "Orbit"), f"Orbit.{which}Latitude")
    direction = str(_member(orbit, f"{which}Direction", "Orbit")).strip().upper()
    if direction not in ("A", "D"):
        raise ValueError(f"Orbit.{which}Direction must be 'A' or 'D', got {direction!r}")
    s = math.sin(math.radians(lat)) / math.sin(math.radians(ORBIT_INCLINATION_DEG))
    if abs(s) > 1.0 + 1e-12:
        raise ValueError(
            f"Orbit.{which}Latitude={lat} is beyond the orbit's reach "
            f"(|lat| <= {180 - ORBIT_INCLINATION_DEG})"
        )
    u = math.asin(max(-1.0, min(1.0, s)))
    return u if direction == "A" else math.pi - u


def _orbit_track(node_rad: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Earth-fixed unit positions and along-track unit tangents (n, 3) of the ground track at u."""
    inc = math.radians(ORBIT_INCLINATION_DEG)
    su, cu = np.sin(u), np.cos(u)
    a = node_rad - ORBIT_K * u
    sa, ca = np.sin(a), np.cos(a)
    qx, qy, qz = cu, math.cos(inc) * su, math.sin(inc) * su
    p = np.column_stack([ca * qx - sa * qy, sa * qx + ca * qy, qz])
    dqx, dqy, dqz = -su, math.cos(inc) * cu, math.sin(inc) * cu
    tx = ca * dqx - sa * dqy + ORBIT_K * p[:, 1]
    ty = sa * dqx + ca * dqy - ORBIT_K * p[:, 0]
    t = np.column_stack([tx, ty, dqz])
    return p, t / np.linalg.norm(t, axis=1, keepdims=True)
