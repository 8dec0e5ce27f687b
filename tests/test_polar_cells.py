"""The numpy polar-cap cell assignment gives healpix-geo's ids, on random points and on points within
rounding distance of cell edges, where only healpix-geo may decide."""

from __future__ import annotations

import healpix_geo.nested as hpn
import numpy as np
import pytest

from polaragg.grid import cells_of_points
from polaragg.polar_cells import MAX_ORDER, authalic_z, polar_cap_cells


def _reference(lon: np.ndarray, lat: np.ndarray, order: int) -> np.ndarray:
    return np.asarray(hpn.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"), dtype=np.uint64)


def test_authalic_z_matches_the_closed_form_in_long_double():
    """The power series of `authalic_z` against sin phi and q = s / (1 - e^2 s^2) + atanh(e s) / e
    evaluated in 80-bit long double, over both caps up to the poles: within 5e-16 (the float64
    closed form is within 3.5e-16; the tolerance of the fast path allows 1e-15)."""
    ld = np.longdouble
    if np.finfo(ld).eps >= np.finfo(np.float64).eps:
        pytest.skip("long double is float64 on this platform")
    rng = np.random.default_rng(3)
    lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(41.0)), 1.0, 200_000))) * rng.choice([-1.0, 1.0], 200_000)
    lat = np.concatenate([lat, [90.0, -90.0, 45.0, -41.9, 89.9999]])
    pi = ld("3.14159265358979323846264338327950288")
    f = ld(1) / ld("298.257223563")
    e2 = f * (2 - f)
    e = np.sqrt(e2)
    s = np.sin(lat.astype(ld) * (pi / 180))

    def q(x):
        return x / (1 - e2 * x * x) + np.arctanh(e * x) / e

    reference = q(s) / q(ld(1))
    assert float(np.max(np.abs(authalic_z(lat).astype(ld) - reference))) < 5e-16
    z = authalic_z(np.array([np.nan, np.inf, -np.inf]))
    assert not np.isfinite(z).any()
    with np.errstate(all="raise"):  # a fill value where a latitude should be: no warning, not decided here
        _, sure = polar_cap_cells(np.array([10.0, 10.0]), np.array([1.797e308, -1e30]), 12)
    assert not sure.any()


@pytest.mark.parametrize("order", [0, 3, 6, 12, 13, 18, 24])
def test_random_points_in_both_caps(order):
    rng = np.random.default_rng(order)
    n = 400_000
    lon = rng.uniform(-360.0, 360.0, n)
    # Uniform on the sphere above 40 degrees (cap edge ~41.9), both hemispheres, up to the poles.
    lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(40.0)), 1.0, n))) * rng.choice([-1.0, 1.0], n)
    got = cells_of_points(lon, lat, order)
    np.testing.assert_array_equal(got, _reference(lon, lat, order))
    _, sure = polar_cap_cells(lon, lat, order)
    assert sure.mean() > 0.9  # the fast path does decide the caps (the rest is healpix-geo's)


@pytest.mark.parametrize("order", [6, 12, 20])
def test_points_on_and_next_to_cell_edges(order):
    """Vertices and edge points of cap cells, nudged by 0 to 1e-6 degrees: rounding decides their
    cells, so these are the points the fast path must leave to healpix-geo (or get right)."""
    rng = np.random.default_rng(100 + order)
    nside = 1 << order
    faces = rng.choice([0, 1, 2, 3, 8, 9, 10, 11], 3000)
    cells = (faces.astype(np.uint64) << np.uint64(2 * order)) + rng.integers(0, nside * nside, 3000).astype(np.uint64)
    lon, lat = hpn.vertices(cells, order, ellipsoid="WGS84", step=4)
    lon, lat = np.asarray(lon).ravel(), np.asarray(lat).ravel()
    keep = np.abs(lat) < 89.95
    lon, lat = lon[keep], lat[keep]
    for scale in (0.0, 1e-13, 1e-10, 1e-7, 1e-6):
        dlon, dlat = rng.uniform(-scale, scale, (2, lon.size))
        a, b = lon + dlon, lat + dlat
        np.testing.assert_array_equal(cells_of_points(a, b, order), _reference(a, b, order), err_msg=f"nudge {scale}")


def test_cap_boundary_poles_and_bad_values_go_to_healpix_geo():
    cap_edge = np.degrees(np.arcsin(2 / 3))  # authalic; the geodetic edge is a little further out
    lat = np.concatenate([np.linspace(cap_edge - 0.5, cap_edge + 0.5, 20_001), [89.95, 90.0, -90.0, -89.9999],
                          np.linspace(-89.9, -89.99, 1001)])
    lat = np.concatenate([lat, -lat])
    lon = np.linspace(-180.0, 540.0, lat.size)
    for order in (6, 12):
        np.testing.assert_array_equal(cells_of_points(lon, lat, order), _reference(lon, lat, order))
    lon_bad = np.array([0.0, np.nan, 10.0, np.inf])
    lat_bad = np.array([np.nan, 80.0, -np.inf, 70.0])
    _, sure = polar_cap_cells(lon_bad, lat_bad, 12)
    assert not sure.any()  # never decided here: healpix-geo says what these are


def test_quadrant_edges_and_longitude_wrap():
    """Longitudes on and next to the cap's face boundaries (multiples of 90 degrees), and the same
    meridians written as lon, lon + 360 and lon - 360."""
    base = np.repeat(np.arange(-360.0, 361.0, 90.0), 41) + np.tile(np.linspace(-1e-9, 1e-9, 41), 9)
    for lat0 in (-85.0, -70.0, 50.0, 88.0):
        lat = np.full(base.size, lat0)
        np.testing.assert_array_equal(cells_of_points(base, lat, 12), _reference(base, lat, 12))
    lon = np.random.default_rng(7).uniform(-180.0, 180.0, 50_000)
    lat = np.random.default_rng(8).uniform(60.0, 89.0, 50_000)
    ref = _reference(lon, lat, 12)
    for shift in (-360.0, 360.0):
        np.testing.assert_array_equal(cells_of_points(lon + shift, lat, 12), _reference(lon + shift, lat, 12))
    np.testing.assert_array_equal(cells_of_points(lon, lat, 12), ref)


def test_order_limit():
    with pytest.raises(ValueError):
        polar_cap_cells(np.zeros(1), np.full(1, 80.0), MAX_ORDER + 1)
    lon, lat = np.array([10.0, 200.0]), np.array([-80.0, 75.0])
    np.testing.assert_array_equal(cells_of_points(lon, lat, 29), _reference(lon, lat, 29))
