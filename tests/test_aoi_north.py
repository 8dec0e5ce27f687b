"""The north's shipped geometry (Greenland outline and sectors, EPSG:3413), northern coverage against brute
force, and the one-hemisphere rule for areas of interest.

Brute force as in test_coverage: the reference cells are those of dense random interior points, sampled in
EPSG:3413 (where every northern test polygon, the pole-containing one too, is an ordinary planar polygon), and
of dense points ON every great-circle edge; ``cells_covering`` must return every one of them.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import shapely
from healpix_geo.nested import healpix_to_lonlat, lonlat_to_healpix
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, mapping

# the Antarctic tests' independent helpers (great circles, the coverage check, pole-safe areas); no test
# function is imported
from test_aoi import _geodesic_area_m2
from test_coverage import _cell_km, _check, _densify_ring, _gc_points, _polar, _rings

from polaragg import aoi
from polaragg.coverage import cells_covering
from polaragg.projection import polar_stereographic
from polaragg.recipe import Aoi, RecipeError, load_recipe
from polaragg.sources import aoi_geometry, aoi_hemisphere, aoi_parents, bbox_polygon

_TO_XY = Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True)
_TO_LL = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)
DATA = Path(aoi.__file__).resolve().parent / "data"
RULE = "one hemisphere per run"


def _reference_cells_north(geom, order, per_cell=40, max_points=None, seed=0, edge_km=None):
    """Cells of random interior points (EPSG:3413 sampling) and of points on every great-circle edge."""
    rng = np.random.default_rng(seed)
    xy = shapely.transform(geom, lambda c: np.column_stack(_TO_XY.transform(c[:, 0], c[:, 1])))
    n = int(per_cell * max(1.0, xy.area / (_cell_km(order) ** 2 * 1e6)) * 1.5)
    if max_points is not None:
        n = min(n, max_points)
    x0, y0, x1, y1 = xy.bounds
    inside_pts = []
    while sum(len(p) for p in inside_pts) < n:  # thin shapes (sectors, fjords) need more than one draw
        xs, ys = rng.uniform(x0, x1, 4 * n), rng.uniform(y0, y1, 4 * n)
        keep = shapely.contains_xy(xy, xs, ys)
        inside_pts.append(np.column_stack([xs[keep], ys[keep]]))
    pts = np.concatenate(inside_pts)[:n]
    lon, lat = _TO_LL.transform(pts[:, 0], pts[:, 1])
    parts = [lonlat_to_healpix(np.asarray(lon), np.asarray(lat), order, ellipsoid="WGS84")]
    spacing = edge_km or _cell_km(order) / 50
    for ring in _rings(geom):
        elon, elat = _gc_points(ring[:, 0], ring[:, 1], spacing)
        parts.append(lonlat_to_healpix(elon, elat, order, ellipsoid="WGS84"))
    return np.unique(np.concatenate(parts).astype(np.uint64))


def _geodesic_km2(geom) -> float:
    return _geodesic_area_m2(geom) / 1e6


# --- brute-force coverage in the north ----------------------------------------------------------------------
def test_greenland_outline_coverage_misses_no_cell():
    g = aoi.greenland_outline()
    cover = cells_covering(g, 8)
    ref = _reference_cells_north(g, 8, edge_km=0.5)
    _check("greenland outline, order 8", cover, ref)
    # the reference is sharp enough to notice a missing sector
    part = aoi.greenland_basins([n for n in aoi.greenland_basin_names() if n != "gl_sector_e"])
    less = cells_covering(MultiPolygon([p for g in part.values() for p in shapely.get_parts(g)]), 8)
    assert len(np.setdiff1d(ref, less)) > 50
    lon, lat = shapely.get_coordinates(g).T
    assert lat.min() > 59 and lat.max() < 84 and -74 < lon.min() and lon.max() < -10


@pytest.mark.parametrize("name, order", [("gl_sector_sw", 9), ("gl_sector_e", 9), ("gl_sector_n", 8)])
def test_greenland_sectors_coverage_misses_no_cell(name, order):
    g = aoi.greenland_basin(name)
    cover = cells_covering(g, order)
    ref = _reference_cells_north(g, order, seed=order, edge_km=0.5)
    _check(f"{name}, order {order}", cover, ref)


def test_polygon_containing_the_north_pole():
    lon, lat = _densify_ring(*_polar(84.0, 30.0, [1200, 700, 1500, 900, 1300, 800],
                                     np.arange(6) * 60.0 + 10.0), spacing_km=5)
    g = Polygon(np.column_stack([lon, lat]))
    assert aoi.to_polar_stereo(g, "north").contains(shapely.Point(0.0, 0.0))  # the pole is inside
    assert aoi.hemisphere_of(g) == "north"
    cover = cells_covering(g, 8)
    ref = _reference_cells_north(g, 8, seed=3)
    _check("star around the north pole, order 8", cover, ref)
    pole = lonlat_to_healpix(np.array([0.0, 90.0, -135.0]), np.array([89.99, 90.0, 89.99]), 8,
                             ellipsoid="WGS84")
    assert np.isin(pole.astype(np.uint64), cover).all()


def test_arctic_polygon_across_the_antimeridian():
    ring = [(165.0, 66.0), (-170.0, 65.5), (-160.0, 71.0), (-175.0, 77.0), (172.0, 75.5), (160.0, 70.0)]
    lon, lat = _densify_ring(*np.array(ring).T, spacing_km=5)
    g = Polygon(np.column_stack([lon, lat]))
    assert np.abs(np.diff(lon)).max() > 180  # stored across the seam, not cut
    cover = cells_covering(g, 9)
    ref = _reference_cells_north(g, 9, seed=4)
    _check("chukchi polygon across the antimeridian, order 9", cover, ref)
    cells_lon = (np.asarray(healpix_to_lonlat(cover, 9, ellipsoid="WGS84")[0]) + 180.0) % 360.0 - 180.0
    assert (cells_lon > 150).any() and (cells_lon < -150).any()  # both sides of the seam


# --- the shipped files --------------------------------------------------------------------------------------
def test_files_are_small_valid_and_oriented():
    for name in (aoi.GREENLAND_OUTLINE_FILE, aoi.GREENLAND_BASINS_FILE):
        assert (DATA / name).stat().st_size < 200_000, name
        fc = json.loads((DATA / name).read_text())
        assert "Natural Earth" in fc["polaragg:source"]
    geoms = {"outline": aoi.greenland_outline(), **aoi.greenland_basins()}
    for name, g in geoms.items():
        xy = aoi.to_polar_stereo(g, "north")
        assert isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty, name
        assert xy.is_valid and g.is_valid, name  # valid in EPSG:3413 and, here, as plain lon/lat too
        for p in shapely.get_parts(xy):
            assert p.exterior.is_ccw, name  # counter-clockwise in EPSG:3413, as Antarctica in EPSG:3031
            c = np.asarray(p.exterior.coords)
            assert np.hypot(*np.diff(c, axis=0).T).max() <= 50_000 * 1.001, name
        assert not xy.contains(shapely.Point(0.0, 0.0)), name
        lon = shapely.get_coordinates(g)[:, 0]
        assert np.abs(np.diff(lon)).max() < 180, name
    assert aoi.greenland_outline(polar_stereo=True) is aoi.greenland_outline(polar_stereo=True)


def test_sectors_form_a_coverage_whose_union_is_the_outline():
    xy = np.array(list(aoi.greenland_basins(polar_stereo=True).values()), dtype=object)
    assert len(xy) == 8
    assert shapely.coverage_is_valid(xy)
    union = shapely.coverage_union_all(xy)
    outline = aoi.greenland_outline(polar_stereo=True)
    assert union.symmetric_difference(outline).area < 1e6  # < 1 km^2
    area = _geodesic_km2(aoi.greenland_outline())
    assert area == pytest.approx(2.15e6, rel=0.01)  # Greenland's land area incl. the larger islands
    assert sum(_geodesic_km2(g) for g in aoi.greenland_basins().values()) == pytest.approx(area, rel=1e-4)
    # the sectors run clockwise from north around Summit
    lon0, lat0 = -38.4592, 72.5796
    cx, cy = _TO_XY.transform(lon0, lat0)
    assert aoi.greenland_basin("gl_sector_n", polar_stereo=True).distance(shapely.Point(cx, cy)) < 1.0
    cent = {n: shapely.centroid(g) for n, g in aoi.greenland_basins().items()}
    assert cent["gl_sector_n"].y > lat0 + 5 and cent["gl_sector_s"].y < lat0 - 5
    assert cent["gl_sector_e"].x > lon0 and cent["gl_sector_w"].x < lon0


def test_polar_stereo_north_matches_the_closed_form_and_round_trips():
    lon = np.array([-45.0, -30.0, -60.0, 10.0, 135.0])
    lat = np.array([70.0, 80.0, 62.0, 85.0, 75.0])
    x, y = polar_stereographic(lon, lat, "north")
    got = shapely.get_coordinates(aoi.to_polar_stereo(shapely.MultiPoint(np.c_[lon, lat]), "north"))
    np.testing.assert_allclose(got, np.c_[x, y], atol=0.01)
    assert aoi.to_polar_stereo_north(shapely.Point(-45.0, 70.0)).x == pytest.approx(0.0, abs=1e-6)
    g = aoi.greenland_basin("gl_sector_se")
    back = aoi.from_polar_stereo_north(aoi.to_polar_stereo_north(g))
    assert np.abs(shapely.get_coordinates(g) - shapely.get_coordinates(back)).max() < 1e-8
    assert aoi.polar_stereo_crs("north") == "EPSG:3413" and aoi.polar_stereo_crs("south") == "EPSG:3031"
    with pytest.raises(ValueError, match="'north' or 'south'"):
        aoi.to_polar_stereo(g, "arctic")


# --- names --------------------------------------------------------------------------------------------------
def test_greenland_names_resolve_and_cannot_clash_with_antarctic_ones():
    names = aoi.greenland_basin_names()
    assert names == [f"gl_sector_{d}" for d in ("n", "ne", "e", "se", "s", "sw", "w", "nw")]
    assert not set(names) & set(aoi.basin_names())
    g = aoi.greenland_basin("gl_sector_sw")
    assert aoi.basin("GL_Sector_SW ") is g and aoi.basins(["gl_sector_sw"])["gl_sector_sw"] is g
    xy = aoi.greenland_basin("gl_sector_sw", polar_stereo=True)
    assert aoi.basin("gl_sector_sw", polar_stereo=True) is xy
    assert aoi.basin_id("gl_sector_n") == 1 and aoi.basin_id("basin_07") == 7
    assert aoi.basin_hemisphere("gl_sector_w") == "north" and aoi.basin_hemisphere(7) == "south"
    assert list(aoi.basins()) == aoi.basin_names()  # all basins still means the 27 Antarctic ones
    with pytest.raises(aoi.UnknownBasinError) as err:
        aoi.basin("gl_sector_x")
    assert "gl_sector_n" in str(err.value) and "basin_27" in str(err.value)
    with pytest.raises(KeyError, match="Antarctic basin"):
        aoi.greenland_basin("basin_07")


def test_recipe_aois_name_greenland_as_antarctica():
    assert aoi_geometry(Aoi(outline="greenland")) is aoi.greenland_outline()
    assert aoi_geometry(Aoi(outline=True)) is aoi.outline()
    assert aoi_geometry(Aoi(outline="antarctica")) is aoi.outline()
    two = aoi_geometry(Aoi(basins=["gl_sector_w", "gl_sector_sw"]))
    assert len(shapely.get_parts(two)) == sum(len(shapely.get_parts(aoi.basin(n)))
                                              for n in ("gl_sector_w", "gl_sector_sw"))
    assert aoi_hemisphere(Aoi(basins=["gl_sector_w"])) == "north"
    assert aoi_hemisphere(Aoi(basins=[7])) == "south"
    assert aoi_hemisphere(Aoi(bbox=(-65.0, 55.0, -40.0, 84.0))) == "north"


# --- one hemisphere per run ---------------------------------------------------------------------------------
def test_hemisphere_of():
    assert aoi.hemisphere_of(aoi.greenland_outline()) == "north"
    assert aoi.hemisphere_of(aoi.outline()) == "south"
    assert aoi.hemisphere_of(bbox_polygon(170.0, 60.0, -170.0, 70.0)) == "north"
    with pytest.raises(aoi.HemisphereError, match=f"the box reaches both hemispheres .*{RULE}"):
        aoi.hemisphere_of(bbox_polygon(-10.0, -10.0, 10.0, 10.0), "the box")
    with pytest.raises(ValueError, match="touches the equator"):
        aoi.hemisphere_of(Polygon([(0, 0), (10, 5), (20, 5)]))
    with pytest.raises(ValueError, match="empty"):
        aoi.hemisphere_of(Polygon())


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_aois_reaching_both_hemispheres_are_refused(tmp_path):
    cases = [
        (Aoi(basins=["basin_01", "gl_sector_n"]),
         r"aoi.basins \['basin_01', 'gl_sector_n'\] mixes Antarctic basins \['basin_01'\] and Greenland"),
        # boxes and polygons are refused when the recipe loads (below); the geometry refuses them as well
        (Aoi.model_construct(bbox=(-10.0, -10.0, 10.0, 10.0)),
         r"aoi.bbox \[-10.0, -10.0, 10.0, 10.0\] reaches both hemisph"),
        (Aoi.model_construct(polygon=[(0.0, -80.0), (20.0, 80.0), (40.0, -80.0)]),
         r"aoi.polygon \(3 points\) reaches both"),
    ]
    base = {"name": "x", "source": {"kind": "synthetic"}}
    for bad, field in (({"bbox": [-10, -10, 10, 10]}, "aoi.bbox"),
                       ({"polygon": [[0, -80], [20, 80], [40, -80]]}, "aoi.polygon")):
        with pytest.raises(RecipeError, match=f"{field}: .*reach both hemispheres"):
            load_recipe({**base, "aoi": bad})
    parts = [*shapely.get_parts(aoi.basin(5)), *shapely.get_parts(aoi.greenland_basin("gl_sector_s"))]
    both = MultiPolygon(parts)
    f = _write(tmp_path / "both.geojson", mapping(both))
    cases.append((Aoi(geojson=str(f)), f"aoi.geojson {re.escape(str(f))} reaches both hemispheres"))
    for a, message in cases:
        with pytest.raises(RecipeError, match=message) as err:
            aoi_geometry(a)
        assert RULE in str(err.value)
    # a box reaches the parent cells by the rectangle path: refused there too, before any cell is computed
    demo = load_recipe(Path(str(resources.files("polaragg").joinpath("recipes", "demo.yaml"))))
    with pytest.raises(RecipeError, match=f"aoi.bbox .* reaches both hemispheres.*{RULE}"):
        aoi_parents(demo.model_copy(update={"aoi": Aoi.model_construct(bbox=(100.0, -5.0, 120.0, 5.0))}))
    north = aoi_parents(demo.model_copy(update={"aoi": Aoi(outline="greenland")}))
    assert north.size > 0
