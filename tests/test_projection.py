"""projection.py against PROJ: closed-form polar stereographic (EPSG:3031, EPSG:3413) and HEALPix cell
centres. pyproj is the independent reference here; the module itself never imports it."""

from __future__ import annotations

import healpix_geo.nested as hpn
import numpy as np
import pytest
from pyproj import Transformer

from polaragg.projection import PROJECTIONS, cell_centres_xy, hemisphere_of, polar_stereographic

EPSG = {"south": 3031, "north": 3413}
SIGN = {"south": -1.0, "north": 1.0}
TOL_M = 1e-3


def _pyproj(lon: np.ndarray, lat: np.ndarray, hemisphere: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = Transformer.from_crs(4326, EPSG[hemisphere], always_xy=True).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _points(hemisphere: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random points from 50 degrees to the pole, plus the awkward ones: the pole at several longitudes,
    lon +-180, the central meridian and its antimeridian, lat exactly 50."""
    rng = np.random.default_rng(seed)
    lon0 = PROJECTIONS[hemisphere].lon_0
    special_lon = np.array([-180.0, 180.0, 0.0, lon0, lon0 + 180.0, -180.0, 180.0, 37.5, -123.0, lon0 - 90.0])
    special_lat = np.array([50.0, 50.0, 90.0, 90.0, 90.0, 90.0, 89.9999999, 89.99999999, 70.0, 60.0])
    lon = np.concatenate([special_lon, rng.uniform(-180.0, 180.0, n)])
    # Uniform in area, with extra points close to the pole.
    lat = np.concatenate([special_lat, np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(50.0)), 1.0, n)))])
    lat[-n // 10:] = 90.0 - rng.uniform(0.0, 1e-3, n // 10)
    return lon, SIGN[hemisphere] * lat


@pytest.mark.parametrize("hemisphere", ["south", "north"])
def test_matches_pyproj_over_the_hemisphere(hemisphere):
    lon, lat = _points(hemisphere, 200_000, seed=1 if hemisphere == "south" else 2)
    x, y = polar_stereographic(lon, lat, hemisphere)
    X, Y = _pyproj(lon, lat, hemisphere)
    assert x.dtype == y.dtype == np.float64
    assert np.abs(x - X).max() < TOL_M and np.abs(y - Y).max() < TOL_M
    # The range really reaches 50 degrees (about 4,400 km from the pole) and the pole.
    r = np.hypot(X, Y)
    assert r.max() > 4.0e6 and r.min() < 1e-6


@pytest.mark.parametrize("hemisphere", ["south", "north"])
def test_pole_is_the_origin_and_axes_follow_the_epsg_definition(hemisphere):
    s = SIGN[hemisphere]
    x, y = polar_stereographic(np.array([-180.0, 0.0, 77.0, 180.0]), np.full(4, 90.0 * s), hemisphere)
    assert np.abs(x).max() < 1e-6 and np.abs(y).max() < 1e-6
    # South (3031): lon 0 points to +y, lon 90 to +x. North (3413): lon -45 points to -y, lon 45 to +x.
    lon0 = PROJECTIONS[hemisphere].lon_0
    x, y = polar_stereographic(np.array([lon0, lon0 + 90.0]), np.full(2, 80.0 * s), hemisphere)
    assert x[0] == pytest.approx(0.0, abs=1e-6) and y[0] * -s > 1e6
    assert x[1] > 1e6 and y[1] == pytest.approx(0.0, abs=1e-6)


def test_scalars_and_broadcasting():
    x, y = polar_stereographic(10.0, -80.0, "south")
    X, Y = _pyproj(np.array([10.0]), np.array([-80.0]), "south")
    assert np.ndim(x) == 0 and abs(float(x) - X[0]) < TOL_M and abs(float(y) - Y[0]) < TOL_M
    lat = np.linspace(-89.0, -60.0, 6).reshape(2, 3)
    x, y = polar_stereographic(np.float64(30.0), lat, "south")
    X, Y = _pyproj(np.full(6, 30.0), lat.ravel(), "south")
    assert x.shape == (2, 3) and np.abs(x.ravel() - X).max() < TOL_M and np.abs(y.ravel() - Y).max() < TOL_M


def test_inputs_are_not_modified():
    lon, lat = _points("south", 1000, seed=3)
    lon0, lat0 = lon.copy(), lat.copy()
    polar_stereographic(lon, lat, "south")
    assert np.array_equal(lon, lon0) and np.array_equal(lat, lat0)


def test_unknown_hemisphere_is_refused():
    with pytest.raises(ValueError, match="hemisphere must be"):
        polar_stereographic(np.zeros(2), np.full(2, -80.0), "antarctic")  # type: ignore[arg-type]


def test_hemisphere_of():
    assert hemisphere_of(np.array([-90.0, -51.0, -0.1])) == "south"
    assert hemisphere_of(np.array([60.0, 90.0])) == "north"
    with pytest.raises(ValueError, match=r"not all in one hemisphere \(1 south, 2 north, 0 on the equator"):
        hemisphere_of(np.array([-70.0, 70.0, 80.0]))
    with pytest.raises(ValueError, match="1 on the equator or NaN"):
        hemisphere_of(np.array([-70.0, np.nan]))
    with pytest.raises(ValueError, match="no latitudes"):
        hemisphere_of(np.array([]))


@pytest.mark.parametrize("hemisphere", ["south", "north"])
def test_cell_centres_match_pyproj_of_healpix_centres(hemisphere):
    order = 12
    lon, lat = _points(hemisphere, 20_000, seed=4)
    ids = np.unique(hpn.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84").astype(np.uint64))
    x, y = cell_centres_xy(ids, order, hemisphere)
    assert np.array_equal(x, cell_centres_xy(ids, order)[0])  # the hemisphere found from the cells
    clon, clat = hpn.healpix_to_lonlat(ids, order, ellipsoid="WGS84")
    X, Y = _pyproj(np.asarray(clon), np.asarray(clat), hemisphere)
    assert np.abs(x - X).max() < TOL_M and np.abs(y - Y).max() < TOL_M
    # The centres are those of the cells asked for (the order is passed right): each lies in its cell.
    back = hpn.lonlat_to_healpix(np.asarray(clon), np.asarray(clat), order, ellipsoid="WGS84")
    assert np.array_equal(np.asarray(back, dtype=np.uint64), ids)


def test_points_lie_closer_to_their_cell_centre_than_its_farthest_vertex():
    """Offsets from cell centres, as the fit uses them, are consistent with the cells: a point's distance
    from its own cell's centre, in projected metres, is at most that of the cell's farthest vertex
    (the farthest point of a convex cell is a vertex; 1% slack for the slightly curved projected edges)."""
    order = 12
    lon, lat = _points("south", 50_000, seed=5)
    ids = np.asarray(hpn.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"), dtype=np.uint64)
    cx, cy = cell_centres_xy(ids, order, "south")
    px, py = polar_stereographic(lon, lat, "south")
    vlon, vlat = hpn.vertices(ids, order, ellipsoid="WGS84")
    vx, vy = polar_stereographic(np.asarray(vlon), np.asarray(vlat), "south")
    farthest = np.hypot(vx - cx[:, None], vy - cy[:, None]).max(axis=1)
    assert np.all(np.hypot(px - cx, py - cy) <= 1.01 * farthest)
    assert 1.0e3 < np.median(farthest) < 1.6e3  # order 12: cells ~1.6 km across


def test_cell_centres_refuse_the_wrong_hemisphere_and_accept_none():
    ids = np.asarray(hpn.lonlat_to_healpix(np.array([10.0, 20.0]), np.array([-80.0, -75.0]), 12,
                                           ellipsoid="WGS84"), dtype=np.uint64)
    with pytest.raises(ValueError, match="lie in the south, not the north"):
        cell_centres_xy(ids, 12, "north")
    x, y = cell_centres_xy(np.array([], dtype=np.uint64), 12, "south")
    assert x.shape == y.shape == (0,)
