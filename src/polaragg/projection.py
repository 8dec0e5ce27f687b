"""Polar stereographic metres in closed form: EPSG:3031 (south) and EPSG:3413 (north), on WGS84.

Snyder's ellipsoidal polar stereographic with a standard parallel (Map Projections - A Working Manual,
1987, eqs. 15-9, 21-33, 21-34, 21-35) evaluated over whole arrays: two tangents and a power per point,
about 12 ns against pyproj's 110 ns (1e6 points, CPU time), so each observation's offset from its cell
centre costs little inside a task. Agrees with PROJ to a few nanometres from 50 degrees to the pole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import healpix_geo.nested as hpn
import numpy as np

from .grid import ELLIPSOID

Hemisphere = Literal["south", "north"]

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
_E = float(np.sqrt(WGS84_F * (2.0 - WGS84_F)))  # first eccentricity


@dataclass(frozen=True)
class PolarStereographic:
    """One polar stereographic CRS (variant B: a standard parallel, no false easting or northing)."""

    epsg: int
    lat_ts: float  # standard parallel, signed degrees
    lon_0: float  # central meridian, degrees

    @property
    def scale_m(self) -> float:
        """a * m_c / t_c: the factor turning Snyder's t into the radius rho in metres (eqs. 14-15, 15-9)."""
        phi_c = np.radians(abs(self.lat_ts))
        s, c = np.sin(phi_c), np.cos(phi_c)
        m_c = c / np.sqrt(1.0 - (_E * s) ** 2)
        return float(WGS84_A * m_c / _t(s, c))


PROJECTIONS: dict[str, PolarStereographic] = {
    "south": PolarStereographic(epsg=3031, lat_ts=-71.0, lon_0=0.0),
    "north": PolarStereographic(epsg=3413, lat_ts=70.0, lon_0=-45.0),
}


def _t(s: np.ndarray | float, c: np.ndarray | float) -> np.ndarray | float:
    """Snyder's t = tan(pi/4 - phi/2) / ((1 - e sin phi) / (1 + e sin phi))^(e/2) (eq. 15-9), from the
    sine and cosine of phi."""
    es = _E * s
    return c / (1.0 + s) * ((1.0 + es) / (1.0 - es)) ** (0.5 * _E)


def polar_stereographic(lon: np.ndarray, lat: np.ndarray,
                        hemisphere: Hemisphere) -> tuple[np.ndarray, np.ndarray]:
    """x, y in metres (float64) of geodetic lon, lat degrees: EPSG:3031 for "south", EPSG:3413 for "north".

    lon and lat broadcast against each other (scalars allowed); the result has their broadcast shape.

    Three transcendental calls per point: two tangents of half angles and a power. tau = tan(pi/4 - phi/2)
    gives t and sin(phi) rationally, with full relative precision at the pole; u = tan(dlon/2) gives sin
    and cos of dlon (numpy's float64 tan is SIMD-vectorised on this hardware, its sin and cos are not:
    about 1.4 against 9 ns a call). The south is the north's formula with latitude and the axes negated
    (Snyder p. 161). Points of the other hemisphere are projected by the same formula, as PROJ does; the
    opposite pole has no finite image.
    """
    proj = _projection(hemisphere)
    lon, lat = np.broadcast_arrays(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    shape = lon.shape
    lon, lat = lon.reshape(-1), lat.reshape(-1)  # 1-d (a copy only if broadcast), so `out=` always works
    half = np.pi / 360.0  # degrees to radians, halved
    tau = np.multiply(lat, half if hemisphere == "south" else -half)
    tau += 0.25 * np.pi
    np.tan(tau, out=tau)
    tau2 = np.square(tau)
    # (1 + e sin phi) / (1 - e sin phi) with sin phi = (1 - tau^2) / (1 + tau^2)
    ratio = ((1.0 + _E) + (1.0 - _E) * tau2) / ((1.0 - _E) + (1.0 + _E) * tau2)
    rho = np.power(ratio, 0.5 * _E, out=ratio)
    rho *= tau
    rho *= proj.scale_m
    u = np.subtract(lon, proj.lon_0)
    u *= half
    np.tan(u, out=u)
    u2 = np.square(u, out=tau2)
    inv = np.add(u2, 1.0)
    np.divide(rho, inv, out=rho)  # rho / (1 + u^2)
    x = np.multiply(u, rho, out=u)
    x *= 2.0  # rho sin(dlon) = rho 2u / (1 + u^2)
    y = np.subtract(u2, 1.0, out=inv) if hemisphere == "north" else np.subtract(1.0, u2, out=inv)
    y *= rho  # -+ rho cos(dlon) = -+ rho (1 - u^2) / (1 + u^2)
    return x.reshape(shape), y.reshape(shape)


def hemisphere_of(lat: np.ndarray) -> Hemisphere:
    """The one hemisphere all latitudes lie in: "south" if all are < 0, "north" if all are > 0.

    A polar projection is chosen per set of points, so a set on both sides of (or on) the equator, an
    empty set or NaN latitudes are refused with a ValueError saying which."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("hemisphere_of: no latitudes given")
    south, north = int(np.count_nonzero(lat < 0)), int(np.count_nonzero(lat > 0))
    if south == lat.size:
        return "south"
    if north == lat.size:
        return "north"
    other = lat.size - south - north
    raise ValueError(
        f"hemisphere_of: latitudes are not all in one hemisphere ({south} south, {north} north, "
        f"{other} on the equator or NaN); a polar stereographic projection needs one"
    )


def cell_centres_xy(cell_ids: np.ndarray, order: int, hemisphere: Hemisphere | None = None,
                    num_threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Polar stereographic x, y (m) of the centres of nested HEALPix cells on the WGS84 ellipsoid.

    `hemisphere` None picks it from the centres (`hemisphere_of`); a given hemisphere that some centre
    is not in is refused, since its coordinates would be meaningless. `num_threads` as in
    `grid.cells_of_points` (0: every core; tasks pass 1)."""
    ids = np.ascontiguousarray(cell_ids, dtype=np.uint64)
    if ids.size == 0:
        return np.empty(0), np.empty(0)
    lon, lat = hpn.healpix_to_lonlat(ids, order, ellipsoid=ELLIPSOID, num_threads=num_threads)
    found = hemisphere_of(lat)
    if hemisphere is not None and found != hemisphere:
        raise ValueError(f"cell_centres_xy: the cells lie in the {found}, not the {hemisphere}")
    return polar_stereographic(np.asarray(lon), np.asarray(lat), found)


def _projection(hemisphere: str) -> PolarStereographic:
    try:
        return PROJECTIONS[hemisphere]
    except KeyError:
        raise ValueError(f"hemisphere must be 'south' or 'north', got {hemisphere!r}") from None
