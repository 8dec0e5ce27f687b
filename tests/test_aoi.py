"""Bundled Antarctic geometry and user GeoJSON loading (polaragg.aoi)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Geod, Transformer
from shapely.geometry import MultiPolygon, Polygon, mapping

from polaragg import aoi

GEOD = Geod(ellps="WGS84")


def _mortie_source() -> Path | None:
    spec = importlib.util.find_spec("mortie")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "tests" / "Ant_Grounded_DrainageSystem_Polygons.txt"
    return p if p.exists() else None


@pytest.fixture(scope="module")
def source_areas_xy() -> dict[int, float]:
    """Planar EPSG:3031 area (m^2) of each unsimplified basin, read straight from the mortie file."""
    path = _mortie_source()
    if path is None:
        pytest.skip("mortie test data not installed")
    df = pd.read_csv(path, sep=r"\s+", header=None, names=["lat", "lon", "basin"])
    tr = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    out = {}
    for b, g in df.groupby("basin", sort=True):
        x, y = tr.transform(g["lon"].to_numpy(), g["lat"].to_numpy())
        out[int(b)] = shapely.Polygon(np.column_stack([x, y])).area
    return out


def _geodesic_area_m2(geom) -> float:
    """Geodesic area from the stored vertex sequences (pole-safe: no planar lon/lat operation)."""
    total = 0.0
    for p in shapely.get_parts(geom):
        for k, ring in enumerate([p.exterior, *p.interiors]):
            c = np.asarray(ring.coords)
            a = abs(GEOD.polygon_area_perimeter(c[:, 0], c[:, 1])[0])
            total += a if k == 0 else -a
    return total


# --- bundled basins -----------------------------------------------------------------------------------------
def test_27_basins_load():
    names = aoi.basin_names()
    assert names == [f"basin_{i:02d}" for i in range(1, 28)]
    geoms = aoi.basins()
    assert list(geoms) == names
    for name, g in geoms.items():
        assert isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty, name
        xy = aoi.basin(name, polar_stereo=True)
        assert xy.is_valid, name
        assert shapely.get_num_coordinates(g) == shapely.get_num_coordinates(xy)
        for p in shapely.get_parts(xy):  # exterior counter-clockwise in EPSG:3031
            assert p.exterior.is_ccw, name


def test_basin_lookup_aliases():
    g = aoi.basin("basin_07")
    assert aoi.basin(7) is g
    assert aoi.basin("7") is g
    assert aoi.basin("Basin_7") is g
    assert aoi.basin_id("basin_07") == 7
    assert list(aoi.basins([3, "basin_04"])) == ["basin_03", "basin_04"]


@pytest.mark.parametrize("bad", ["basin_28", 0, "nope", "basin_"])
def test_unknown_basin_lists_valid_names(bad):
    with pytest.raises(KeyError) as err:
        aoi.basin(bad)
    assert "basin_01" in str(err.value) and "basin_27" in str(err.value)


def test_simplified_areas_match_source(source_areas_xy):
    for i, name in enumerate(aoi.basin_names(), start=1):
        area = aoi.basin(name, polar_stereo=True).area
        assert area == pytest.approx(source_areas_xy[i], rel=0.01), name


def test_basins_form_a_coverage():
    xy = np.array(list(aoi.basins(polar_stereo=True).values()), dtype=object)
    assert shapely.coverage_is_valid(xy)
    union = shapely.coverage_union_all(xy)
    assert union.geom_type == "Polygon"
    assert union.symmetric_difference(aoi.outline(polar_stereo=True)).area < 1e6  # < 1 km^2


def test_pole_and_antimeridian_facts():
    pole = shapely.Point(0.0, 0.0)
    with_pole = [n for n, g in aoi.basins(polar_stereo=True).items() if g.contains(pole)]
    assert with_pole == ["basin_02"]
    crossing = []
    for name, g in aoi.basins().items():
        lon = np.concatenate([np.asarray(p.exterior.coords)[:, 0] for p in shapely.get_parts(g)])
        if np.any(np.abs(np.diff(lon)) > 180):
            crossing.append(name)
    assert crossing == ["basin_02", "basin_17"]
    assert aoi.outline(polar_stereo=True).contains(pole)
    assert aoi.coastline(polar_stereo=True).contains(pole)
    # the 25 others are plain valid lon/lat polygons
    assert [n for n, g in aoi.basins().items() if not g.is_valid] == ["basin_02", "basin_17"]


def test_outline_geodesic_area_is_grounded_antarctica():
    area_km2 = _geodesic_area_m2(aoi.outline()) / 1e6
    assert area_km2 == pytest.approx(12.0e6, rel=0.05)
    basins_km2 = sum(_geodesic_area_m2(g) for g in aoi.basins().values()) / 1e6
    assert basins_km2 == pytest.approx(area_km2, rel=1e-4)
    # planar EPSG:3031 area is a few % smaller (scale < 1 poleward of 71 S)
    planar_km2 = aoi.outline(polar_stereo=True).area / 1e6
    assert 0.95 < planar_km2 / area_km2 < 0.99


def test_outline_and_coastline_are_valid_in_polar_stereo():
    assert aoi.outline(polar_stereo=True).is_valid
    coast = aoi.coastline(polar_stereo=True)
    assert coast.is_valid
    assert coast.area > 0.9 * aoi.outline(polar_stereo=True).area


def test_polar_stereo_round_trip_keeps_vertices():
    g = aoi.basin(2)
    back = aoi.from_polar_stereo(aoi.to_polar_stereo(g))
    a, b = shapely.get_coordinates(g), shapely.get_coordinates(back)
    assert a.shape == b.shape
    dlon = (a[:, 0] - b[:, 0] + 180.0) % 360.0 - 180.0
    assert np.abs(dlon).max() < 1e-7 and np.abs(a[:, 1] - b[:, 1]).max() < 1e-9
    x, y = shapely.get_coordinates(aoi.to_polar_stereo(shapely.Point(0.0, -70.0)))[0]
    assert abs(x) < 1e-6 and y == pytest.approx(2_194_494.25, abs=1.0)  # lon 0 points up (+y)


# --- load_geojson -------------------------------------------------------------------------------------------
def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _fc(*geoms, crs: dict | None = None) -> dict:
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": g}
                                                    for g in geoms]}
    if crs:
        fc["crs"] = crs
    return fc


def _assert_same(a, b, tol_m: float = 0.01):
    xa, xb = aoi.to_polar_stereo(a), aoi.to_polar_stereo(b)
    assert shapely.get_num_coordinates(xa) == shapely.get_num_coordinates(xb)
    assert np.abs(shapely.get_coordinates(xa) - shapely.get_coordinates(xb)).max() < tol_m


@pytest.mark.parametrize("name", ["basin_02", "basin_17", "basin_09"])
def test_geojson_lonlat_and_polar_stereo_agree(tmp_path, name):
    ll = aoi.basin(name)
    xy = aoi.basin(name, polar_stereo=True)
    f_ll = _write(tmp_path / "ll.geojson", _fc(mapping(ll)))
    f_xy = _write(tmp_path / "xy.geojson", _fc(mapping(xy)))  # detected by magnitude
    f_xy_member = _write(
        tmp_path / "xy_member.geojson",
        _fc(mapping(xy), crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3031"}}),
    )
    g_ll = aoi.load_geojson(f_ll)
    assert isinstance(g_ll, MultiPolygon)
    _assert_same(g_ll, ll)
    _assert_same(aoi.load_geojson(f_xy), ll)
    _assert_same(aoi.load_geojson(f_xy_member), ll)
    _assert_same(aoi.load_geojson(f_xy, crs="EPSG:3031"), ll)


def test_geojson_small_polar_stereo_needs_crs_argument(tmp_path):
    # a 200 m square at the pole has |coords| < 360 so it would be read as lon/lat without a hint
    sq = shapely.box(-100.0, -100.0, 100.0, 100.0)
    f = _write(tmp_path / "sq.geojson", mapping(sq))
    g = aoi.load_geojson(f, crs="EPSG:3031")
    assert shapely.get_coordinates(g)[:, 1].max() < -89.99


def test_geojson_feature_and_bare_geometry_and_multiple_features(tmp_path):
    a, b = aoi.basin(5), aoi.basin(6)
    f1 = _write(tmp_path / "feat.geojson", {"type": "Feature", "properties": {}, "geometry": mapping(a)})
    f2 = _write(tmp_path / "geom.geojson", mapping(a))
    f3 = _write(tmp_path / "two.geojson", _fc(mapping(a), mapping(b)))
    _assert_same(aoi.load_geojson(f1), a)
    _assert_same(aoi.load_geojson(f2), a)
    two = aoi.load_geojson(f3)
    assert len(two.geoms) == 2
    _assert_same(two.geoms[1], b)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not readable as JSON"),
        (json.dumps({"type": "Point", "coordinates": [0, -80]}), "'Point' is not a Polygon"),
        (json.dumps(_fc({"type": "LineString", "coordinates": [[0, -80], [1, -80]]})), "features[0]"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "no (non-empty) Polygon"),
        (json.dumps({"type": "Polygon", "coordinates": []}), "no (non-empty) Polygon"),
        (json.dumps({"foo": 1}), "no 'type' member"),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, -95], [1, -80], [2, -80], [0, -95]]]}),
         "out of lon/lat range"),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, 1], [1, 1], [1]]]}), "malformed Polygon"),
    ],
)
def test_geojson_bad_input_names_file_and_problem(tmp_path, content, message):
    f = tmp_path / "bad.geojson"
    f.write_text(content)
    with pytest.raises(ValueError) as err:
        aoi.load_geojson(f)
    assert str(f) in str(err.value)
    assert message in str(err.value)


def test_geojson_missing_file_and_bad_crs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.geojson"):
        aoi.load_geojson(tmp_path / "nothere.geojson")
    f = _write(tmp_path / "ok.geojson", mapping(aoi.basin(5)))
    with pytest.raises(ValueError, match="unknown CRS"):
        aoi.load_geojson(f, crs="EPSG:99999999")
    with pytest.raises(ValueError, match="out of lon/lat range"):
        aoi.load_geojson(_write(tmp_path / "xy.geojson", mapping(aoi.basin(5, polar_stereo=True))),
                         crs="EPSG:4326")
