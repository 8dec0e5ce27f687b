"""Nested HEALPix ids of points in the polar caps, on the WGS84 ellipsoid, in numpy.

Cell assignment is a third of the granule stage's CPU, and healpix-geo spends ~60-80 ns per point
on it (one point at a time, the authalic latitude by a Fourier series). Ice sheets lie in the polar
caps (|authalic z| > 2/3, latitude beyond ~41.9 degrees), where the HEALPix projection is a few
array operations: this module does them over whole arrays for ~32 ns per point.

The ids are healpix-geo's: a point is decided here only where the answer cannot depend on rounding,
and every other point is left to healpix-geo. `z`, the sine of the authalic latitude, is two power
series (`authalic_z`; libm's float64 sine and arctanh, scalar on this CPU, cost twice as much). In the
caps it is within ~3e-16 of the closed form evaluated in 80-bit long double (the closed form in
float64: ~3.5e-16), and within ~1e-15 of healpix-geo's, which moves a face coordinate (in pixels) by
less than 4e-12 x nside anywhere below 89.9 degrees. A point is accepted only when both face coordinates lie
more than `TOLERANCE` x nside pixels (70 times that bound) from a pixel edge, inside the cap and
below 89.9 degrees; about 1 point in 10^6 is not, and goes to healpix-geo, as do NaNs and points
outside the caps.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_ORDER", "TOLERANCE", "authalic_z", "polar_cap_cells"]

MAX_ORDER = 24  # face coordinates of up to 24 bits: two lookups in the 12-bit spread table
TOLERANCE = 2.5e-10  # pixels per nside kept between an accepted point and any pixel edge
_BLOCK = 1 << 14  # points per pass: the temporaries of one block stay in cache

_F = 1 / 298.257223563  # WGS84 flattening
_E2 = _F * (2 - _F)
_E = float(np.sqrt(_E2))


def _q(s: float) -> float:
    """Authalic q(sin phi) / (1 - e^2), closed form: q = (1 - e^2) (s / (1 - e^2 s^2) + atanh(e s) / e)."""
    return s / (1.0 - _E2 * s * s) + float(np.arctanh(_E * s)) / _E


_Q_POLE = _q(1.0)
# z = q(s) / q(1) = s sum_k c_k u^k with u = e^2 s^2: s / (1 - u) and atanh(e s) / e are s sum u^k and
# s sum u^k / (2k + 1). u < 0.0067, so 9 terms leave < 1e-19.
_Z_SERIES = tuple((2 * k + 2) / (2 * k + 1) / _Q_POLE for k in range(9))
# cos(theta) = sum_k (-1)^k theta^2k / (2k)!: 10 terms leave < 1e-17 up to the cap edge (theta < 0.84 rad).
_COS_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(10))


def _horner(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """sum_k coefficients[k] x^k, in place of a new array."""
    acc = np.full_like(x, coefficients[-1])
    for c in coefficients[-2::-1]:
        acc *= x
        acc += c
    return acc


def authalic_z(lat: np.ndarray) -> np.ndarray:
    """The sine of the authalic latitude of geodetic latitudes in degrees (float64): sin phi as the
    cosine of the colatitude (90 - |lat| is exact in degrees over the caps), then q(sin phi) / q(1),
    both by their power series. Accurate to ~3e-16 in the caps; away from them only good enough to tell
    that a point is not in a cap. NaN and inf give NaN or inf."""
    theta = np.abs(lat)
    np.subtract(90.0, theta, out=theta)
    theta *= math.pi / 180.0
    np.square(theta, out=theta)
    s = _horner(_COS_SERIES, theta)
    np.copysign(s, lat, out=s)
    u = np.square(s, out=theta)
    u *= _E2
    z = _horner(_Z_SERIES, u)
    z *= s
    return z

_MAX_LAT = 89.9  # beyond it the cap's sqrt(1 - z) amplifies rounding: healpix-geo decides
_CAP_Z = 2.0 / 3.0 + 1e-9

# Bit i of a 12-bit coordinate moved to bit 2i: nested ids interleave x (even bits) and y (odd bits).
_SPREAD = np.zeros(1 << 12, dtype=np.uint64)
for _bit in range(12):
    _SPREAD |= ((np.arange(1 << 12, dtype=np.uint64) >> np.uint64(_bit)) & np.uint64(1)) << np.uint64(2 * _bit)
del _bit


def polar_cap_cells(lon: np.ndarray, lat: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nested ids at `order` of points given in geodetic degrees (float64, contiguous), and a mask of
    the points decided here; ids of the other points are meaningless and must come from healpix-geo."""
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be within 0..{MAX_ORDER}, got {order}")
    ids = np.empty(lon.size, dtype=np.uint64)
    sure = np.empty(lon.size, dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN, inf and huge values: garbage ids, not `sure`
        for a in range(0, lon.size, _BLOCK):
            b = min(a + _BLOCK, lon.size)
            ids[a:b], sure[a:b] = _block(lon[a:b], lat[a:b], order)
    return ids, sure


def _block(lon: np.ndarray, lat: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    nside = 1 << order
    z = authalic_z(lat)
    north = z >= 0
    za = np.abs(z, out=z)
    sure = (za > _CAP_Z) & (np.abs(lat) <= _MAX_LAT)
    # Longitude in quarter turns, [0, 4): the face column and the position across it.
    tt = lon * (1.0 / 90.0)
    tt -= 4.0 * np.floor(tt * 0.25)
    column = tt.astype(np.int64)
    np.minimum(column, 3, out=column)
    tp = tt - column
    # Distance from the pole in pixels (za is overwritten: it is not needed again).
    span = np.subtract(1.0, za, out=za)
    span *= 3.0
    np.sqrt(span, out=span)
    span *= nside
    u = tp * span
    v = np.subtract(span, u, out=span)
    # Both coordinates further than the tolerance from a pixel edge (False for NaN).
    tol = TOLERANCE * nside
    whole = []
    for c in (u, v):
        w = np.floor(c)
        whole.append(w.astype(np.int64))
        c -= w
        c -= 0.5
        sure &= np.abs(c, out=c) < 0.5 - tol
    iu, iv = whole
    mask = nside - 1
    np.minimum(iu, mask, out=iu)
    np.minimum(iv, mask, out=iv)
    x = np.where(north, mask - iv, iu)
    y = np.where(north, mask - iu, iv)
    x &= mask  # in range for every point, so the table lookups below never fail
    y &= mask
    np.add(column, 8, out=column, where=~north)  # faces 0-3 around the north pole, 8-11 around the south
    ids = column.astype(np.uint64)
    ids <<= np.uint64(2 * order)
    ids |= _interleave(x, order)
    ids |= _interleave(y, order) << np.uint64(1)
    return ids, sure


def _interleave(c: np.ndarray, order: int) -> np.ndarray:
    """Bits of each coordinate (< 2**order) moved to the even bit positions."""
    if order <= 12:
        return _SPREAD[c]
    return _SPREAD[c & 0xFFF] | (_SPREAD[c >> 12] << np.uint64(24))
