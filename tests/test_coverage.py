"""Exactness of polaragg.coverage against brute force, independent of the code under test.

Reference sets: dense random points inside the polygon (sampled in EPSG:3031 with shapely ``contains`` on
the projected polygon) plus dense points ON every edge (on the great-circle arc of the authalic sphere, the
edge model of the code), each assigned a cell by ``healpix_geo.nested.lonlat_to_healpix(..., "WGS84")``.
The coverage must contain every reference cell; the extra cells (the boundary only touches them, or the
points missed a thin sliver) are counted, printed and bounded.
"""

from __future__ import annotations

import math
import time

import mortie
import numpy as np
import pytest
import shapely
from healpix_geo.nested import lonlat_to_healpix
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon

from polaragg.coverage import (
    cells_along_line,
    cells_covering,
    cells_of_points,
    footprint_cells,
    orbit_swath,
)

_TO_XY = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
_TO_LL = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True)
R_KM = 6371.0088
FP_BOUND = 0.25


# ----------------------------------------------------------------------------------------------------------
# Independent helpers


def _vec(lon, lat):
    """Geodetic lon/lat degrees -> unit vectors on the authalic sphere."""
    lat = np.asarray(lat, dtype=float)
    beta = np.radians(np.asarray(mortie.geodetic_to_authalic(lat), dtype=float).reshape(lat.shape))
    lo = np.radians(np.asarray(lon, dtype=float))
    return np.stack([np.cos(beta) * np.cos(lo), np.cos(beta) * np.sin(lo), np.sin(beta)], axis=-1)


def _lonlat(v):
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    beta = np.degrees(np.arcsin(np.clip(v[..., 2], -1, 1)))
    lat = np.asarray(mortie.authalic_to_geodetic(beta), dtype=float).reshape(beta.shape)
    return np.degrees(np.arctan2(v[..., 1], v[..., 0])), lat


def _gc_points(lon, lat, spacing_km, closed=True):
    """Points every <= spacing_km along the great-circle arcs (authalic sphere) through the vertices."""
    v = _vec(lon, lat)
    a = v if closed else v[:-1]
    b = np.roll(v, -1, axis=0) if closed else v[1:]
    out = []
    for p, q in zip(a, b):
        w = math.atan2(np.linalg.norm(np.cross(p, q)), float(p @ q))
        n = max(2, int(math.ceil(w * R_KM / spacing_km)) + 1)
        t = np.linspace(0.0, 1.0, n)[:, None]
        if w < 1e-12:
            out.append(p[None, :])
            continue
        out.append((np.sin((1 - t) * w) * p + np.sin(t * w) * q) / math.sin(w))
    return _lonlat(np.concatenate(out))


def _densify_ring(lon, lat, spacing_km):
    """A ring whose vertices lie on the original great-circle edges every <= spacing_km (open ring)."""
    lo, la = _gc_points(lon, lat, spacing_km, closed=True)
    keep = np.ones(len(lo), bool)
    keep[1:] = (np.diff(lo) != 0) | (np.diff(la) != 0)
    lo, la = lo[keep], la[keep]
    if lo[0] == lo[-1] and la[0] == la[-1]:
        lo, la = lo[:-1], la[:-1]
    return lo, la


def _cell_km(order):
    return math.sqrt(4 * math.pi / (12 * 4**order)) * R_KM


def _rings(geom):
    for poly in getattr(geom, "geoms", [geom]):
        yield np.asarray(poly.exterior.coords)
        for r in poly.interiors:
            yield np.asarray(r.coords)


def _reference_cells(geom, order, per_cell=60, max_points=None, seed=0, edge_km=None):
    """Cells of random interior points (EPSG:3031 sampling) and of points on every great-circle edge."""
    rng = np.random.default_rng(seed)
    xy = shapely.transform(geom, lambda c: np.column_stack(_TO_XY.transform(c[:, 0], c[:, 1])))
    cell_area = _cell_km(order) ** 2 * 1e6
    n = int(per_cell * max(1.0, xy.area / cell_area) * 1.5)
    if max_points is not None:
        n = min(n, max_points)
    x0, y0, x1, y1 = xy.bounds
    xs, ys = rng.uniform(x0, x1, 4 * n), rng.uniform(y0, y1, 4 * n)
    shapely.prepare(xy)
    inside = shapely.contains_xy(xy, xs, ys)
    lon, lat = _TO_LL.transform(xs[inside][:n], ys[inside][:n])
    parts = [lonlat_to_healpix(np.asarray(lon), np.asarray(lat), order, ellipsoid="WGS84")]
    spacing = edge_km or _cell_km(order) / 50
    for ring in _rings(geom):
        elon, elat = _gc_points(ring[:, 0], ring[:, 1], spacing)
        parts.append(lonlat_to_healpix(elon, elat, order, ellipsoid="WGS84"))
    return np.unique(np.concatenate(parts).astype(np.uint64)), int(inside.sum())


def _check(name, cover, ref, bound=FP_BOUND):
    missed = np.setdiff1d(ref, cover)
    extra = np.setdiff1d(cover, ref)
    frac = len(extra) / max(1, len(ref))
    print(f"[coverage] {name}: {len(cover)} cells, reference {len(ref)}, missed {len(missed)}, "
          f"extra {len(extra)} ({100 * frac:.1f}%)")
    assert cover.dtype == np.uint64
    assert np.all(np.diff(cover.astype(np.int64)) > 0), "not sorted unique"
    assert len(missed) == 0, f"{name}: missed cells {missed[:10]}"
    assert frac < bound, f"{name}: {len(extra)} extra cells ({frac:.1%})"
    return len(extra)


def _polar(lat0, lon0, r_km, az_deg):
    """Points at distance r_km and azimuth az from (lon0, lat0) on the authalic sphere (geodetic lon/lat)."""
    c = _vec(lon0, lat0)
    east = np.cross([0.0, 0.0, 1.0], c)
    if np.linalg.norm(east) < 1e-9:
        east = np.array([0.0, 1.0, 0.0])
    east /= np.linalg.norm(east)
    north = np.cross(c, east)
    az = np.radians(np.asarray(az_deg, dtype=float))
    d = np.asarray(r_km, dtype=float) / R_KM
    v = np.cos(d)[..., None] * c + np.sin(d)[..., None] * (
        np.cos(az)[..., None] * north + np.sin(az)[..., None] * east
    )
    return _lonlat(v)


def _star(lat0, lon0, r_out, r_in, n=5, rot=0.0):
    az = rot + np.arange(2 * n) * 180.0 / n
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    return _densify_ring(*_polar(lat0, lon0, r, az), spacing_km=5)


def _poly(lon, lat, holes=()):
    return Polygon(np.column_stack([lon, lat]), [np.column_stack(h) for h in holes])


# ----------------------------------------------------------------------------------------------------------
# Conventions


def test_ids_agree_with_healpix_geo_and_mortie():
    rng = np.random.default_rng(1)
    lon = rng.uniform(-180, 180, 200_000)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 200_000)))
    for order in (0, 6, 12):
        ids = cells_of_points(lon, lat, order)
        assert ids.dtype == np.uint64
        assert np.array_equal(ids, lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"))
        m_ids, m_order = mortie.mort2healpix(mortie.geo2mort(lat, lon, order))
        assert m_order == order
        # same convention; a point within ~1e-10 rad of a cell edge may land on either side (~1 in 200k at
        # order 12)
        differ = int(np.count_nonzero(np.asarray(m_ids).astype(np.uint64) != ids))
        print(f"[coverage] mortie vs healpix_geo ids at order {order}: {differ} of {ids.size} points differ")
        assert differ <= 1e-5 * ids.size


def test_cell_of_point_equals_cover_of_tiny_polygon_around_it():
    rng = np.random.default_rng(2)
    for lon0, lat0 in zip(rng.uniform(-180, 180, 50), rng.uniform(-89.9, -50, 50)):
        for order in (6, 12):
            cell = cells_of_points([lon0], [lat0], order)
            d = 1e-6
            tiny = _poly([lon0 - d, lon0 + d, lon0 + d, lon0 - d], [lat0 - d, lat0 - d, lat0 + d, lat0 + d])
            cover = cells_covering(tiny, order)
            assert cell[0] in cover
            m = mortie.morton_coverage(
                [lat0 - d, lat0 - d, lat0 + d, lat0 + d], [lon0 - d, lon0 + d, lon0 + d, lon0 - d], order
            )
            assert cell[0] in np.asarray(mortie.mort2healpix(m)[0]).astype(np.uint64)


# ----------------------------------------------------------------------------------------------------------
# Polygons


@pytest.mark.parametrize("order", [6, 8])
def test_non_convex_star(order):
    geom = _poly(*_star(-72.0, 60.0, 700, 250))
    ref, _ = _reference_cells(geom, order)
    _check(f"star order {order}", cells_covering(geom, order), ref)


@pytest.mark.parametrize("order", [6, 7])
def test_c_shape_spanning_300_degrees(order):
    lons = np.arange(0.0, 300.0 + 1e-9, 0.25)  # <= 7 km between vertices on the parallels
    lon = np.concatenate([lons, lons[::-1]])
    lat = np.concatenate([np.full(lons.size, -80.0), np.full(lons.size, -75.0)])
    lon = np.where(lon > 180, lon - 360, lon)
    geom = _poly(*_densify_ring(lon, lat, 5))
    ref, _ = _reference_cells(geom, order)
    _check(f"C-shape order {order}", cells_covering(geom, order), ref)


@pytest.mark.parametrize("order", [6, 8])
def test_circle_around_south_pole(order):
    az = np.arange(0.0, 360.0, 0.5)
    geom = _poly(*_densify_ring(*_polar(-90.0, 0.0, np.full(az.size, 5.0 * math.pi / 180 * R_KM), az), 5))
    ref, _ = _reference_cells(geom, order)
    cover = cells_covering(geom, order)
    _check(f"pole circle order {order}", cover, ref)
    assert cells_of_points([0.0], [-90.0], order)[0] in cover


def test_star_around_south_pole():
    geom = _poly(*_star(-90.0, 0.0, 900, 350, n=7, rot=10.0))
    ref, _ = _reference_cells(geom, 6)
    _check("pole star order 6", cells_covering(geom, 6), ref)


@pytest.mark.parametrize("order", [6, 7])
def test_antimeridian_crossing(order):
    lon_c = [165.0, -170.0, -165.0, 175.0, 170.0]
    lat_c = [-70.0, -69.0, -76.0, -74.0, -77.0]
    geom = _poly(*_densify_ring(lon_c, lat_c, 5))
    assert geom.bounds[2] - geom.bounds[0] > 300  # as a planar lon/lat polygon it would span the globe
    ref, _ = _reference_cells(geom, order)
    _check(f"antimeridian order {order}", cells_covering(geom, order), ref)


def test_polygon_with_hole():
    az = np.arange(0.0, 360.0, 1.0)
    outer = _densify_ring(*_polar(-75.0, 100.0, np.full(az.size, 800.0), az), 5)
    hole = _densify_ring(*_polar(-75.0, 100.0, np.full(az.size, 350.0), az[::-1]), 5)
    geom = _poly(*outer, holes=[hole])
    ref, _ = _reference_cells(geom, 6)
    cover = cells_covering(geom, 6)
    _check("hole order 6", cover, ref)
    centre = cells_of_points([100.0], [-75.0], 6)[0]
    assert centre not in cover, "a cell deep inside the hole must not be covered"


def test_multipolygon():
    a = _poly(*_star(-70.0, -60.0, 500, 200))
    b = _poly(*_star(-78.0, 140.0, 300, 150, n=4))
    az = np.arange(0.0, 360.0, 2.0)
    c = _poly(*_densify_ring(*_polar(-86.0, 45.0, np.full(az.size, 120.0), az), 5))
    geom = MultiPolygon([a, b, c])
    ref, _ = _reference_cells(geom, 7)
    cover = cells_covering(geom, 7)
    _check("multipolygon order 7", cover, ref)
    union = np.unique(np.concatenate([cells_covering(p, 7) for p in (a, b, c)]))
    assert np.array_equal(cover, union)


def test_long_edge_triangles_on_the_sphere():
    """Few vertices, edges of tens of degrees: cells crossed far from any vertex (mortie missed some)."""
    cases = [
        ([56.597, 20.777, 49.425], [-90.46, 173.152, -155.178], 6),
        ([8.936, 55.524, 37.949], [-16.305, -91.571, -42.089], 1),
        ([-60.0, -75.0, -70.0], [10.0, 40.0, 100.0], 7),
        ([-50.0, -84.0, -80.0], [-170.0, 150.0, 10.0], 6),
    ]
    rng = np.random.default_rng(3)
    for beta, lon, order in cases:
        b, lo = np.radians(beta), np.radians(lon)
        v = np.stack([np.cos(b) * np.cos(lo), np.cos(b) * np.sin(lo), np.sin(b)], axis=-1)  # authalic sphere
        w = -np.log(rng.random((300_000, 3)))
        pts = (w / w.sum(1, keepdims=True)) @ v  # inside the spherical triangle
        t = np.linspace(0, 1, 30_000)[:, None]
        pts = np.concatenate([pts] + [(1 - t) * v[i] + t * v[(i + 1) % 3] for i in range(3)])
        plon, plat = _lonlat(pts)
        ref = np.unique(lonlat_to_healpix(plon, plat, order, ellipsoid="WGS84"))
        glat = np.asarray(mortie.authalic_to_geodetic(np.asarray(beta, float)))
        cover = cells_covering(_poly(np.asarray(lon, float), glat), order)
        _check(f"long-edge triangle {beta} order {order}", cover, ref)


def _random_thin_triangles(n_trials, seed):
    """Random thin spherical triangles (edges 0.05-120 deg) anywhere on the globe vs barycentric sampling."""
    rng = np.random.default_rng(seed)
    missed_total = extra_total = ref_total = 0
    for trial in range(n_trials):
        order = int(rng.integers(1, 11))
        c = _vec(rng.uniform(-180, 180), rng.uniform(-89, 89))
        east = np.cross([0.0, 0.0, 1.0], c)
        east /= np.linalg.norm(east)
        north = np.cross(c, east)
        ang = rng.uniform(0, 2 * np.pi)
        d = math.cos(ang) * east + math.sin(ang) * north
        half = math.radians((rng.uniform(0.5, 120) if trial % 2 else rng.uniform(0.05, 5)) / 2)
        v = np.array([c + math.tan(half) * d, c - math.tan(half) * d,
                      c + math.radians(rng.uniform(0.001, 0.5)) * np.cross(c, d)])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        w = -np.log(rng.random((100_000, 3)))
        t = np.linspace(0, 1, 10_000)[:, None]
        edges = [(1 - t) * v[i] + t * v[(i + 1) % 3] for i in range(3)]
        pts = np.concatenate([(w / w.sum(1, keepdims=True)) @ v] + edges)
        ref = np.unique(lonlat_to_healpix(*_lonlat(pts), order, ellipsoid="WGS84"))
        cover = cells_covering(_poly(*_lonlat(v)), order)
        missed_total += len(np.setdiff1d(ref, cover))
        extra_total += len(np.setdiff1d(cover, ref))
        ref_total += len(ref)
    print(f"[coverage] {n_trials} random thin triangles: reference {ref_total} cells, missed {missed_total}, "
          f"extra {extra_total}")
    assert missed_total == 0
    assert extra_total < 0.05 * ref_total


def test_random_thin_triangles():
    _random_thin_triangles(30, seed=11)


@pytest.mark.slow
def test_random_thin_triangles_many():
    _random_thin_triangles(1000, seed=12)


def test_polygon_larger_than_a_hemisphere_is_refused():
    lon = np.arange(-180.0, 180.0, 10.0)
    lat = 10 * np.sin(np.radians(3 * lon))  # a wavy ring near the equator
    with pytest.raises(ValueError, match="hemisphere"):
        cells_covering(_poly(lon, lat), 4)


def test_bad_input():
    with pytest.raises(TypeError):
        cells_covering(shapely.Point(0, 0), 6)
    with pytest.raises(ValueError, match="order"):
        cells_covering(_poly([0, 1, 1], [-70, -70, -71]), 30)
    with pytest.raises(ValueError, match="latitude"):
        cells_covering(_poly([0, 1, 1], [-70, -70, -91]), 6)
    assert cells_covering(MultiPolygon(), 6).size == 0


# ----------------------------------------------------------------------------------------------------------
# The 27 drainage basins


def _basins():
    try:
        from polaragg import aoi

        return {name: aoi.basin(name) for name in aoi.basin_names()}
    except ImportError:  # pragma: no cover - aoi.py is part of the package
        pytest.skip("polaragg.aoi not available")


def test_basins_order6_exact_and_timed():
    basins = _basins()
    assert len(basins) == 27
    cells_covering(basins["basin_01"], 6)  # warm-up (imports, caches)
    t0 = time.perf_counter()
    covers = {name: cells_covering(g, 6) for name, g in basins.items()}
    elapsed = time.perf_counter() - t0
    print(f"[coverage] 27 basins at order 6: {elapsed:.3f} s, {sum(map(len, covers.values()))} cells")
    assert elapsed < 5.0
    total_extra = total_ref = 0
    for i, (name, g) in enumerate(basins.items()):
        ref, _ = _reference_cells(g, 6, max_points=20_000, seed=i, edge_km=2.0)
        missed = np.setdiff1d(ref, covers[name])
        assert len(missed) == 0, f"{name}: missed {missed}"
        total_extra += len(np.setdiff1d(covers[name], ref))
        total_ref += len(ref)
        # mortie, on these densely sampled rings, gives the same ids (same WGS84 authalic convention)
        xy = np.asarray(g.exterior.coords)
        words = mortie.morton_coverage(xy[:, 1], xy[:, 0], 6)
        m = np.asarray(mortie.mort2healpix(words)[0]).astype(np.uint64)
        assert len(np.setdiff1d(m, covers[name])) <= 0.01 * len(m)
    print(f"[coverage] 27 basins: reference {total_ref} cells, extra {total_extra}")
    assert total_extra < FP_BOUND * total_ref
    union = np.unique(np.concatenate(list(covers.values())))
    # the basins tile the grounded ice: each shared-edge cell is counted by both neighbours
    assert len(union) < sum(map(len, covers.values()))


# ----------------------------------------------------------------------------------------------------------
# Footprints

CMR_RING = [
    (-178.689, -79.890), (170.309, -84.594), (102.285, -87.943), (34.262, -84.594), (23.260, -79.890),
    (22.628, -79.914), (33.143, -84.637), (102.286, -88.057), (171.428, -84.637), (-178.057, -79.914),
    (-178.689, -79.890),
]


def _gpolygon(lon, lat, holes=()):
    pts = [{"Longitude": float(a), "Latitude": float(b)} for a, b in zip(lon, lat)]
    gp = {"Boundary": {"Points": pts}}
    if holes:
        gp["ExclusiveZone"] = {
            "Boundaries": [{"Points": [{"Longitude": float(a), "Latitude": float(b)} for a, b in zip(*h)]}
                           for h in holes]
        }
    return gp


@pytest.mark.parametrize("order", [6, 9])
def test_cmr_example_gpolygon(order):
    lon, lat = np.array(CMR_RING).T
    cover = footprint_cells({"GPolygons": [_gpolygon(lon, lat)]}, order)
    # the reference polygon follows the same great-circle edges, densified so EPSG:3031 sampling matches them
    dense = _poly(*_densify_ring(lon[:-1], lat[:-1], 2))
    ref, _ = _reference_cells(dense, order, per_cell=80, edge_km=min(2.0, _cell_km(order) / 50))
    _check(f"CMR region-11 GPolygon order {order}", cover, ref)
    assert np.array_equal(cover, cells_covering(_poly(lon, lat), order))


def test_thin_swath_cells_crossed_by_edges_only():
    """12 km x 2000 km swath given by its 4 corners: most cells it crosses contain no vertex."""
    order = 10  # ~6.4 km cells, narrower than the swath
    # the two ends of the swath axis, 1000 km either side of (30E, 72S)
    c_lon, c_lat = _polar(-72.0, 30.0, np.array([1000.0, 1000.0]), np.array([100.0, 280.0]))
    a, b = _vec(c_lon[0], c_lat[0]), _vec(c_lon[1], c_lat[1])
    n = np.cross(a, b)
    n /= np.linalg.norm(n)
    d = 6.0 / R_KM
    corners = np.array([a * math.cos(d) + n * math.sin(d), b * math.cos(d) + n * math.sin(d),
                        b * math.cos(d) - n * math.sin(d), a * math.cos(d) - n * math.sin(d)])
    lon, lat = _lonlat(corners)
    fp = {"GPolygons": [_gpolygon(np.append(lon, lon[0]), np.append(lat, lat[0]))]}
    cover = footprint_cells(fp, order)
    # an explicit cell on the swath axis, half way along, far from every vertex
    mid = (a + b) / np.linalg.norm(a + b)
    mlon, mlat = _lonlat(mid[None, :])
    cell = cells_of_points(mlon, mlat, order)[0]
    assert cell not in cells_of_points(lon, lat, order)
    assert cell in cover
    # and the whole swath against brute force (points on the great-circle edges and inside)
    dense = _poly(*_densify_ring(lon, lat, 1.0))
    ref, _ = _reference_cells(dense, order, per_cell=60, edge_km=0.1)
    _check("thin swath order 10", cover, ref)
    vertex_cells = cells_of_points(lon, lat, order)
    # cells with no vertex inside, the ones a vertex-based assignment would miss
    assert len(np.setdiff1d(ref, vertex_cells)) > 100


def test_lines_geometry():
    lon = np.array([20.0, 60.0, 120.0, -170.0])
    lat = np.array([-70.0, -82.0, -85.0, -75.0])
    for order in (5, 8):
        fp = {"Lines": [{"Points": [{"Longitude": a, "Latitude": b} for a, b in zip(lon, lat)]}]}
        cover = footprint_cells(fp, order)
        plon, plat = _gc_points(lon, lat, _cell_km(order) / 200, closed=False)
        ref = np.unique(lonlat_to_healpix(plon, plat, order, ellipsoid="WGS84"))
        _check(f"Lines order {order}", cover, ref, bound=0.1)
        assert np.array_equal(cover, cells_along_line(lon, lat, order))


def test_bounding_rectangle_across_antimeridian():
    rect = {"WestBoundingCoordinate": 170.0, "EastBoundingCoordinate": -170.0,
            "NorthBoundingCoordinate": -72.0, "SouthBoundingCoordinate": -78.0}
    for order in (5, 7):
        cover = footprint_cells({"BoundingRectangles": [rect]}, order)
        rng = np.random.default_rng(order)
        n = 400_000
        lon = 170.0 + rng.uniform(0, 20, n)
        lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-78)), np.sin(np.radians(-72)), n)))
        edge = np.linspace(0, 1, 20_001)
        lon = np.concatenate([lon, 170 + 20 * edge, 170 + 20 * edge, np.full(edge.size, 170.0),
                              np.full(edge.size, 190.0)])
        lat = np.concatenate([lat, np.full(edge.size, -72.0), np.full(edge.size, -78.0), -78 + 6 * edge,
                              -78 + 6 * edge])
        lon = np.where(lon > 180, lon - 360, lon)
        ref = np.unique(lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"))
        _check(f"BoundingRectangle order {order}", cover, ref)
        assert np.isin(cells_of_points([175.0, -175.0, 180.0], [-75.0, -75.0, -75.0], order), cover).all()


def _model_beams(node_deg, u):
    """Independent ground track (reference/atl06.md) and the six ATL06 beam offsets."""
    inc, k = math.radians(92.0), 91.0 / 1387.0
    lat = np.arcsin(math.sin(inc) * np.sin(u))
    lon = math.radians(node_deg) + np.arctan2(math.cos(inc) * np.sin(u), np.cos(u)) - k * u
    p = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)
    t = np.gradient(p, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    nrm = np.cross(p, t)
    out = []
    for d in (-3345.0, -3255.0, -45.0, 45.0, 3255.0, 3345.0):
        q = p * math.cos(d / 6371e3) + nrm * math.sin(d / 6371e3)
        out.append(q)
    q = np.concatenate(out)
    return np.degrees(np.arctan2(q[:, 1], q[:, 0])), np.degrees(np.arcsin(q[:, 2]))


@pytest.mark.parametrize("order", [6, 9])
def test_orbit_block_region_11(order):
    orbit = {"AscendingCrossing": 23.6, "StartLatitude": -80.0, "StartDirection": "D",
             "EndLatitude": -80.0, "EndDirection": "A"}
    cover = footprint_cells({"Geometry": {}, "Orbit": orbit}, order)
    s = math.sin(math.radians(-80)) / math.sin(math.radians(92))
    u = np.linspace(math.pi - math.asin(s), 2 * math.pi + math.asin(s), 200_000)
    lon, lat = _model_beams(23.6, u)
    beams = np.unique(lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"))
    # every cell with beam data; the extra cells come mostly from the 7 km buffer around the 3.35 km beams
    _check(f"Orbit region 11 order {order} vs beam points", cover, beams, bound=0.6)
    rings = orbit_swath(orbit)
    assert len(rings) == 1 and np.all(rings[0][1] < -79.0)
    swath = _poly(*rings[0])
    ref, _ = _reference_cells(swath, order, edge_km=0.2)
    _check(f"Orbit region 11 order {order} vs swath polygon", cover, ref)


def test_orbit_block_long_arc_with_node():
    orbit = {"AscendingCrossing": -100.0, "StartLatitude": -60.0, "StartDirection": "A",
             "EndLatitude": 10.0, "EndDirection": "D"}
    cover = footprint_cells({"Orbit": orbit}, 5)
    s0 = math.asin(math.sin(math.radians(-60)) / math.sin(math.radians(92)))
    s1 = math.pi - math.asin(math.sin(math.radians(10)) / math.sin(math.radians(92)))
    lon, lat = _model_beams(-100.0, np.linspace(s0, s1, 100_000))
    ref = np.unique(lonlat_to_healpix(lon, lat, 5, ellipsoid="WGS84"))
    _check("Orbit A->D through the node order 5 vs beam points", cover, ref)
    assert len(orbit_swath(orbit)) > 1


def test_footprint_union_points_and_holes():
    az = np.arange(0.0, 360.0, 2.0)
    outer = _densify_ring(*_polar(-75.0, -100.0, np.full(az.size, 600.0), az), 5)
    hole = _densify_ring(*_polar(-75.0, -100.0, np.full(az.size, 250.0), az[::-1]), 5)
    geom = {"GPolygons": [_gpolygon(*outer, holes=[hole])],
            "Points": [{"Longitude": 0.0, "Latitude": -89.0}]}
    cover = footprint_cells(geom, 6)
    assert np.array_equal(
        cover,
        np.union1d(cells_covering(_poly(*outer, holes=[hole]), 6), cells_of_points([0.0], [-89.0], 6)),
    )
    assert cells_of_points([-100.0], [-75.0], 6)[0] not in cover


@pytest.mark.parametrize(
    "geom, match",
    [
        ({}, "none of GPolygons"),
        ({"GPolygons": [{"Boundary": {}}]}, "Points"),
        ({"GPolygons": [{}]}, "Boundary"),
        ({"GPolygons": [{"Boundary": {"Points": [{"Longitude": 1.0}]}}]}, "Latitude"),
        ({"Lines": [{"Points": [{"Latitude": 1.0, "Longitude": "x"}]}]}, "Longitude"),
        ({"BoundingRectangles": [{"WestBoundingCoordinate": 0.0}]}, "EastBoundingCoordinate"),
        ({"Orbit": {"AscendingCrossing": 1.0, "StartLatitude": -80.0, "StartDirection": "D",
                    "EndLatitude": -80.0}}, "EndDirection"),
        ({"Orbit": {"AscendingCrossing": 1.0, "StartLatitude": -89.5, "StartDirection": "D",
                    "EndLatitude": -80.0, "EndDirection": "X"}}, "Latitude|Direction"),
        ("not a dict", "dict"),
    ],
)
def test_footprint_errors_name_the_member(geom, match):
    with pytest.raises(ValueError, match=match):
        footprint_cells(geom, 6)


def test_degenerate_rectangles_and_lines():
    point = {"WestBoundingCoordinate": 10.0, "EastBoundingCoordinate": 10.0,
             "NorthBoundingCoordinate": -70.0, "SouthBoundingCoordinate": -70.0}
    cover = footprint_cells({"BoundingRectangles": [point]}, 6)
    assert np.array_equal(cover, cells_of_points([10.0], [-70.0], 6))
    meridian = dict(point, NorthBoundingCoordinate=-60.0)
    assert np.array_equal(footprint_cells({"BoundingRectangles": [meridian]}, 6),
                          cells_along_line([10.0, 10.0], [-70.0, -60.0], 6))
    assert np.array_equal(cells_along_line([5.0, 5.0], [-80.0, -80.0], 6), cells_of_points([5.0], [-80.0], 6))
    with pytest.raises(ValueError, match="antipodal"):
        cells_along_line([0.0, 180.0], [0.0, 0.0], 6)
