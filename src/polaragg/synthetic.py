"""Deterministic generator of realistic synthetic ATL06 granules (HDF5) and their UMM-G records.

No real ATL06 file can be fetched from every machine this project runs on, so the embedded default data
is simulated from the exact-repeat orbit model: a reference ground track per RGT, six beams offset across
track, one row every 20 m, cloud gaps, strong/weak beam error levels, quality flags, fill values and missing
weak beams, all written with the storage layout of real v006 granules. Everything is vectorised per granule
and beam. One or more cycles are simulated: every cycle flies the same RGTs over the same regions, each
granule named with its own cycle and timed from that cycle's start (``cycles.cycle_start``).

Two ice sheets, one per config (``SynthConfig.regions`` lie in one hemisphere): Antarctica in ATL06 regions
10, 11, 12 (59.5S -> 80S descending, the south-pole cap, 80S -> 59.5S ascending), where every row of the
regions is written over one smooth ice sheet centred on the pole; and Greenland in regions 3, 4, 5 (59.5N
-> 80N ascending, the north-pole cap, 80N -> 59.5N descending), where rows are written only inside a rough
analytic outline of Greenland (``in_greenland``; coast and ice alike, as land-ice segments are), over a
surface rising from the coast to ~3.2 km at the summit (72.6N 38.5W). Granules of RGTs that never cross
the outline have no rows and are not written.

Change model: heights vary in time as ``true_height(lat, lon, t) = static surface + true_dhdt(lat, lon) *
(t - T_REF) / YEAR_S + seasonal_height(t)`` (T_REF = start of cycle 22; see those functions; ``true_dhdt``
is one field per hemisphere: ``true_dhdt_south`` and ``true_dhdt_north``), and each
(cycle, RGT) pass flies ``pass_offset_m`` (tens of metres) across track from the nominal RGT (cycle 22 flies
the nominal RGT), so repeat tracks scatter as real ones do. The noise model adds to the true height.

Randomness: per-granule choices (weak-beam dropout, cloud runs) come from a generator seeded by
(seed, cycle, rgt, region), the orientation from (seed, cycle, rgt); per-row values come from a counter-based
hash of (granule key, beam, segment number). A bounding-box subset therefore holds exactly the rows the full
granule has at those segments, and changing the RGT list or the box never changes any other granule.
"""

from __future__ import annotations

import functools
import json
import math
import os
import zlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

from polaragg.cycles import cycle_start, delta_time_of
from polaragg.products.atl06 import (
    BEAM_OFFSETS_M,
    BEAMS,
    CHUNK_ROWS,
    DELTA_TIME_UNITS,
    GPS_EPOCH_2018,
    GZIP_LEVEL,
    SEGMENTS_GROUP,
    SPOTS_BY_ORIENT,
    VARIABLES,
    is_strong,
)

__all__ = [
    "GREENLAND_SUMMIT_LATLON",
    "JAKOBSHAVN_LATLON",
    "MODEL_VERSION",
    "NORTH_REGIONS",
    "PASS_OFFSET_MAX_M",
    "PASS_OFFSET_SD_M",
    "REF_CYCLE",
    "SEASONAL_AMPLITUDE_M",
    "SEASONAL_PHASE_RAD",
    "SOUTH_REGIONS",
    "SUPPORTED_REGIONS",
    "T_REF",
    "YEAR_S",
    "SynthConfig",
    "SynthGranule",
    "cycle_start",
    "delta_time_of",
    "generate",
    "granule_name",
    "greenland_coast_fraction",
    "hemisphere_of_regions",
    "in_greenland",
    "pass_offset_m",
    "region_u_bounds",
    "seasonal_height",
    "true_dhdt",
    "true_dhdt_north",
    "true_dhdt_south",
    "true_height",
]

# Version of the simulated model: bump whenever the same config would write different granules, so caches
# of generated data (sources.synthetic_folder) are not reused across models.
MODEL_VERSION = 2  # 1: static surface, one track per RGT; 2: + elevation change and repeat-pass offsets

# Change model (see true_dhdt, true_height, pass_offset_m). REF_CYCLE's start is T_REF, where the static
# surface holds, and its passes fly the nominal RGTs.
REF_CYCLE = 22
T_REF = delta_time_of(cycle_start(REF_CYCLE))  # 188,169,300 s: 2023-12-18T21:15:00Z
YEAR_S = 365.25 * 86400.0  # the year of dh/dt and of the seasonal term
SEASONAL_AMPLITUDE_M = 0.10
SEASONAL_PHASE_RAD = 0.0  # seasonal term zero (and rising) at T_REF
DHDT_COAST = -3.0  # m/yr at the margin where the coastal term peaks
COAST_MAX_LON = -110.0  # degrees: the Amundsen sector
DHDT_OUTLET = -2.5  # m/yr at the centre of the outlet lobe
OUTLET_LATLON = (-85.5, 90.0)
OUTLET_SIGMA_M = (120e3, 45e3)  # along the meridian, across it
DHDT_INLAND = 0.18  # m/yr at the pole
# Greenland (see true_dhdt_north): margin thinning strongest towards the south-west, a Jakobshavn lobe.
DHDT_COAST_NORTH = -1.2  # m/yr at the margin where the coastal term peaks
COAST_MAX_NORTH_LATLON = (64.0, -50.0)  # the direction (from the summit) of the fastest margin thinning
DHDT_JAKOBSHAVN = -4.0  # m/yr at the centre of the Jakobshavn lobe (its calving front)
JAKOBSHAVN_LATLON = (69.2, -49.8)
JAKOBSHAVN_SIGMA_M = (60e3, 12e3, 18e3)  # inland (east), seaward (west), across (north-south)
PASS_OFFSET_SD_M = 25.0
PASS_OFFSET_MAX_M = 60.0

# Orbit model (see reference/atl06.md).
EARTH_RADIUS_M = 6371000.0
INCLINATION = math.radians(92.0)
K_ROT = 91.0 / 1387.0  # Earth rotations per revolution
NODAL_PERIOD_S = 5657.38
N_RGT = 1387
LON_1 = 0.0  # longitude of the ascending node of RGT 1 (radians); fixed, arbitrary
SEGMENT_M = 20.0
DU = SEGMENT_M / EARTH_RADIUS_M  # radians of argument of latitude per row


# Footprint (UMM-G polygon): swath envelope around the RGT, densely sampled, extended past both ends.
FOOTPRINT_HALF_WIDTH_M = 6300.0
FOOTPRINT_VERTEX_SPACING_M = 4000.0
FOOTPRINT_END_EXTENSION_M = 3000.0

# Size of a real granule per row over all beams (real files carry ~150 variables per beam).
REAL_BYTES_PER_ROW = 140
REAL_FIXED_BYTES = 2_000_000

# zlib level the chunks are deflated with. Files declare gzip level 6 like real ones (GZIP_LEVEL: the level
# is a parameter for writers only, any reader inflates any level); on these data level 1 gives the same
# compressed size (0.2 % smaller) and the same inflate time (zlib and ISA-L) as level 6 for 2.6x less CPU,
# and deflate was ~70 % of the generator's CPU.
DEFLATE_WRITE_LEVEL = 1

# Cloud runs: mean length of a cloudy along-track run, in rows (5 km).
MEAN_CLOUD_ROWS = 250.0

# bbox pre-selection: coarse RGT sampling step and the distance margin that covers beam offsets + step.
COARSE_STEP_M = 2000.0
COARSE_MARGIN_M = 12000.0

NORTH_REGIONS = (3, 4, 5)  # Greenland: 59.5N -> 80N ascending, north-pole cap, 80N -> 59.5N descending
SOUTH_REGIONS = (10, 11, 12)  # Antarctica: 59.5S -> 80S descending, south-pole cap, 80S -> 59.5S ascending
SUPPORTED_REGIONS = NORTH_REGIONS + SOUTH_REGIONS

# Greenland outline (see in_greenland): a rough coast (lon, lat degrees, clockwise seen from above), its
# radius about the summit interpolated in azimuth and smoothed over GREENLAND_SMOOTH_DEG.
GREENLAND_SUMMIT_LATLON = (72.6, -38.5)
GREENLAND_SUMMIT_M = 3200.0  # surface above sea level at the summit (0 at the coast)
GEOID_M = 30.0  # added to every surface: h_li is above the ellipsoid (both ice sheets)
GREENLAND_COAST: tuple[tuple[float, float], ...] = (
    # Cape Farewell, north along the west coast (Nuuk, Disko Bay, Melville Bay, Thule, Nares Strait) ...
    (-43.9, 59.8), (-45.5, 60.4), (-48.0, 61.0), (-49.7, 62.0), (-50.8, 63.2), (-51.9, 64.2), (-52.9, 65.5),
    (-53.7, 66.9), (-53.4, 68.0), (-51.2, 68.7), (-51.1, 69.4), (-52.5, 70.7), (-55.0, 71.5), (-56.0, 72.8),
    (-57.5, 74.5), (-61.0, 75.9), (-66.5, 76.1), (-69.5, 77.0), (-72.5, 78.3), (-67.0, 79.8), (-62.0, 81.2),
    # ... east along the north coast (Cape Morris Jesup, Nordostrundingen), south along the east coast
    (-55.0, 82.2), (-45.0, 82.7), (-33.0, 83.6), (-25.0, 83.2), (-18.0, 82.3), (-11.5, 81.4), (-17.5, 80.0),
    (-18.5, 77.0), (-19.5, 75.0), (-21.5, 72.5), (-22.0, 70.4), (-26.0, 68.8), (-32.0, 68.0), (-37.5, 65.6),
    (-40.5, 64.0), (-42.0, 62.5), (-42.8, 61.0),
)
GREENLAND_SMOOTH_DEG = 2.5
NORTH_LON_0 = -45.0  # central meridian of the north plane (as EPSG:3413's)
# Coarse pre-selection of rows near the outline: a beam row lies within ~4.2 km (north plane) of a coarse
# RGT point at most one coarse step away, and r - R(azimuth) changes by at most sqrt(1 + (R'/R)^2) ~ 3.2 m
# per metre near the coast (|dR/d azimuth| / R <= 3.07 on the smoothed outline), so a row inside the outline
# has such a point within ~14 km of it: a 20 km margin keeps every one.
LAND_MARGIN_M = 20000.0

_UNITS: dict[str, str] = {
    "latitude": "degrees_north",
    "longitude": "degrees_east",
    "h_li": "meters",
    "h_li_sigma": "meters",
    "atl06_quality_summary": "1",
    "delta_time": DELTA_TIME_UNITS,
    "segment_id": "1",
    "sigma_geo_h": "meters",
}


@dataclass(frozen=True)
class SynthConfig:
    """What to simulate: cycles, a set of RGTs and regions of one ice sheet, optionally clipped to a box.

    ``regions`` are ATL06 region numbers of one hemisphere: Antarctic (10, 11, 12) or Greenland (3, 4, 5);
    a config mixing them is an error (simulate each ice sheet with its own config).

    ``cycles`` are cycle numbers of the cycle table (``polaragg.cycles``), stored sorted; a cycle listed twice
    is an error. Every cycle flies the same RGTs over the same regions. ``cycle=N`` (init-only) is shorthand
    for ``cycles=(N,)``. ``rgts=()`` means all 1387 RGTs. ``bbox`` is (lon_min, lat_min, lon_max, lat_max)
    in degrees; when given, only rows inside it are written and granules without such rows are skipped;
    lon_min > lon_max means the box crosses the antimeridian.
    """

    seed: int = 0
    cycles: tuple[int, ...] = (22,)
    rgts: tuple[int, ...] = ()
    regions: tuple[int, ...] = (10, 11, 12)
    bbox: tuple[float, float, float, float] | None = None
    version: str = "006"
    weak_beam_dropout: float = 0.1
    cloud_fraction: float = 0.1
    cycle: InitVar[int | None] = None

    def __post_init__(self, cycle: int | None) -> None:
        if isinstance(self.cycles, int | np.integer):
            raise ValueError("cycles must be a sequence of cycle numbers (use cycle=N for one)")
        cycles = tuple(int(c) for c in self.cycles)
        if cycle is not None:
            if cycles not in ((22,), (int(cycle),)):  # (22,) is the default: cycles was not given
                raise ValueError("give either cycle or cycles, not both")
            cycles = (int(cycle),)
        if not cycles:
            raise ValueError("cycles must list at least one cycle")
        if len(set(cycles)) != len(cycles):
            raise ValueError(f"cycles are listed more than once: {cycles}")
        for c in cycles:
            cycle_start(c)  # validates against the cycle table
        object.__setattr__(self, "cycles", tuple(sorted(cycles)))
        rgts = tuple(int(r) for r in self.rgts)
        regions = tuple(int(r) for r in self.regions)
        object.__setattr__(self, "rgts", rgts)
        object.__setattr__(self, "regions", regions)
        if self.bbox is not None:
            bbox = tuple(float(v) for v in self.bbox)
            if len(bbox) != 4:
                raise ValueError("bbox must be (lon_min, lat_min, lon_max, lat_max)")
            lon_min, lat_min, lon_max, lat_max = bbox
            if not (-90.0 <= lat_min < lat_max <= 90.0):
                raise ValueError(f"bbox latitudes must satisfy -90 <= lat_min < lat_max <= 90, got {bbox}")
            if not (-180.0 <= lon_min <= 180.0 and -180.0 <= lon_max <= 180.0):
                raise ValueError(f"bbox longitudes must lie in [-180, 180], got {bbox}")
            object.__setattr__(self, "bbox", bbox)
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if any(not 1 <= r <= N_RGT for r in rgts):
            raise ValueError("rgts must lie in 1..1387")
        if any(r not in SUPPORTED_REGIONS for r in regions):
            raise ValueError(f"regions must be among {SUPPORTED_REGIONS}")
        hemisphere_of_regions(regions)  # one hemisphere per config
        if not (len(self.version) == 3 and self.version.isdigit()):
            raise ValueError(f"version must be three digits, got {self.version!r}")
        if not 0.0 <= self.weak_beam_dropout <= 1.0:
            raise ValueError("weak_beam_dropout must lie in [0, 1]")
        if not 0.0 <= self.cloud_fraction < 1.0:
            raise ValueError("cloud_fraction must lie in [0, 1)")


@dataclass(frozen=True)
class SynthGranule:
    """One written granule: its HDF5 file, its UMM-G record, its row count over all beams, its beam groups."""

    name: str
    h5_path: Path
    umm_path: Path
    rgt: int
    cycle: int
    region: int
    rows: int
    beams: tuple[str, ...] = field(default=())


def granule_name(
    start: datetime, rgt: int, cycle: int, region: int, version: str = "006", revision: int = 1
) -> str:
    """ATL06 file name ``ATL06_yyyymmddhhmmss_ttttccnn_vvv_rr.h5`` of a granule starting at ``start``.

    A naive ``start`` is taken as UTC.
    """
    if start.tzinfo is not None:
        start = start.astimezone(UTC)
    return f"ATL06_{start:%Y%m%d%H%M%S}_{rgt:04d}{cycle:02d}{region:02d}_{version}_{revision:02d}.h5"


def hemisphere_of_regions(regions: Iterable[int]) -> str:
    """'north' when every region is a Greenland one (3, 4, 5), 'south' when every one is Antarctic (10, 11,
    12); a mix, an empty list or another region is a ValueError naming them."""
    regions = tuple(int(r) for r in regions)
    other = [r for r in regions if r not in SUPPORTED_REGIONS]
    if other or not regions:
        raise ValueError(f"regions must be among {SUPPORTED_REGIONS}, got {list(regions)}")
    north = [r for r in regions if r in NORTH_REGIONS]
    south = [r for r in regions if r in SOUTH_REGIONS]
    if north and south:
        raise ValueError(
            f"regions {list(regions)} mix Greenland ({', '.join(map(str, north))}) and Antarctica "
            f"({', '.join(map(str, south))}): one hemisphere per source; simulate each ice sheet in its own "
            f"source (regions 3, 4, 5 or 10, 11, 12)"
        )
    return "north" if north else "south"


def region_u_bounds(region: int) -> tuple[float, float]:
    """Argument-of-latitude interval [u0, u1) (radians) of a simulated region (3, 4, 5, 10, 11 or 12).

    u = 0 at the ascending node: region 3 runs from 59.5N to 80N ascending, 4 over the north-pole cap (u
    symmetric about pi / 2), 5 from 80N to 59.5N descending; 10, 11, 12 are their mirror images about u = pi.
    """
    u_a = math.asin(math.sin(math.radians(59.5)) / math.sin(INCLINATION))
    u_b = math.asin(math.sin(math.radians(80.0)) / math.sin(INCLINATION))
    if region == 3:
        return u_a, u_b
    if region == 4:
        return u_b, math.pi - u_b
    if region == 5:
        return math.pi - u_b, math.pi - u_a
    if region == 10:
        return math.pi + u_a, math.pi + u_b
    if region == 11:
        return math.pi + u_b, 2 * math.pi - u_b
    if region == 12:
        return 2 * math.pi - u_b, 2 * math.pi - u_a
    raise ValueError(f"only regions {SUPPORTED_REGIONS} are simulated, got {region}")


def _time_offset_s(rgt: int, u: float | np.ndarray) -> float | np.ndarray:
    """Seconds from the cycle start to argument of latitude ``u`` on RGT ``rgt``."""
    return ((rgt - 1) + np.asarray(u) / (2 * math.pi)) * NODAL_PERIOD_S


# ----------------------------------------------------------------------------------------------------
# Geometry


def _lon_node(rgt: int) -> float:
    return (LON_1 - (rgt - 1) * 2 * math.pi * K_ROT) % (2 * math.pi)


def _track(u: np.ndarray, rgt: int) -> tuple[np.ndarray, np.ndarray]:
    """Earth-fixed unit position P and unit along-track tangent T of the RGT at ``u``, each (3, n)."""
    sin_i, cos_i = math.sin(INCLINATION), math.cos(INCLINATION)
    su, cu = np.sin(u), np.cos(u)
    a = _lon_node(rgt) - K_ROT * u
    sa, ca = np.sin(a), np.cos(a)
    qx, qy, qz = cu, cos_i * su, sin_i * su
    px = ca * qx - sa * qy
    py = sa * qx + ca * qy
    pz = qz
    # dP/du = Rz(a) Q'(u) - K z x P
    dqx, dqy, dqz = -su, cos_i * cu, sin_i * cu
    tx = ca * dqx - sa * dqy + K_ROT * py
    ty = sa * dqx + ca * dqy - K_ROT * px
    tz = dqz
    norm = np.sqrt(tx * tx + ty * ty + tz * tz)
    return np.stack([px, py, pz]), np.stack([tx / norm, ty / norm, tz / norm])


def _offset_latlon(p: np.ndarray, n: np.ndarray, offset_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (degrees, lon in [-180, 180)) of P cos(d/R) + N sin(d/R)."""
    c, s = math.cos(offset_m / EARTH_RADIUS_M), math.sin(offset_m / EARTH_RADIUS_M)
    bx = c * p[0] + s * n[0]
    by = c * p[1] + s * n[1]
    bz = c * p[2] + s * n[2]
    lat = np.degrees(np.arcsin(np.clip(bz, -1.0, 1.0)))
    lon = np.degrees(np.arctan2(by, bx))
    lon[lon >= 180.0] -= 360.0
    return lat, lon


def _cross(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """P x T for (3, n) arrays: the unit vector pointing left of the direction of flight."""
    return np.stack([p[1] * t[2] - p[2] * t[1], p[2] * t[0] - p[0] * t[2], p[0] * t[1] - p[1] * t[0]])


def _lon_distance_to_interval(lon: np.ndarray, lon_min: float, lon_max: float) -> np.ndarray:
    """Angular distance (degrees) from longitudes to [lon_min, lon_max] (wrapping if min > max)."""
    inside = _lon_inside(lon, lon_min, lon_max)
    d_min = np.abs((lon - lon_min + 180.0) % 360.0 - 180.0)
    d_max = np.abs((lon - lon_max + 180.0) % 360.0 - 180.0)
    return np.where(inside, 0.0, np.minimum(d_min, d_max))


def _lon_inside(lon: np.ndarray, lon_min: float, lon_max: float) -> np.ndarray:
    if lon_min <= lon_max:
        return (lon >= lon_min) & (lon <= lon_max)
    return (lon >= lon_min) | (lon <= lon_max)


def _in_bbox(lat: np.ndarray, lon: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    lon_min, lat_min, lon_max, lat_max = bbox
    return (lat >= lat_min) & (lat <= lat_max) & _lon_inside(lon, lon_min, lon_max)


def _rows_near_bbox(j0: int, j1: int, rgt: int, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Segment indices j in [j0, j1) whose rows (any beam) may fall inside ``bbox``.

    Conservative: the RGT is sampled every 2 km and kept wherever it comes within a margin covering the beam
    offsets; the exact per-beam test follows.
    """
    step = max(1, int(COARSE_STEP_M / SEGMENT_M))
    jc = _coarse_points(j0, j1, step)
    p, _ = _track(jc * DU, rgt)
    lat = np.degrees(np.arcsin(np.clip(p[2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(p[1], p[0]))
    lon_min, lat_min, lon_max, lat_max = bbox
    m_rad = COARSE_MARGIN_M / EARTH_RADIUS_M
    m_deg = math.degrees(m_rad)
    lat_ok = (lat >= lat_min - m_deg) & (lat <= lat_max + m_deg)
    # Points within distance m of each other, both at |lat| <= |lat_c| + m, differ in longitude by at most
    # ~m / (R cos(|lat_c| + m)); use twice that, or every longitude close to the pole.
    cos_pole = np.cos(np.radians(np.minimum(np.abs(lat) + m_deg, 90.0)))
    with np.errstate(divide="ignore"):
        lon_margin = np.where(cos_pole > 2 * m_rad, np.degrees(2 * m_rad / cos_pole), 360.0)
    near = lat_ok & (_lon_distance_to_interval(lon, lon_min, lon_max) <= lon_margin)
    return _rows_around(jc, near, step, j0, j1)


def _coarse_points(j0: int, j1: int, step: int) -> np.ndarray:
    """Coarse segment indices every ``step`` rows from j0, the last one clipped to j1 - 1."""
    jc = np.arange(j0, j1 + step, step, dtype=np.int64)
    jc[-1] = min(jc[-1], j1 - 1)
    return jc


def _rows_around(jc: np.ndarray, near: np.ndarray, step: int, j0: int, j1: int) -> np.ndarray:
    """Sorted segment indices in [j0, j1) within one coarse ``step`` of the flagged coarse points ``jc``."""
    if not near.any():
        return np.empty(0, dtype=np.int64)
    idx = np.flatnonzero(near)
    # Each flagged coarse point covers the fine rows within one coarse step on either side.
    starts = np.maximum(jc[idx] - step, j0)
    ends = np.minimum(jc[idx] + step + 1, j1)
    # Merge overlapping intervals (starts and ends are both increasing).
    new_run = np.ones(len(idx), dtype=bool)
    new_run[1:] = starts[1:] > ends[:-1]
    run_starts = starts[new_run]
    run_ends = ends[np.flatnonzero(np.append(new_run[1:], True))]
    lengths = run_ends - run_starts
    total = int(lengths.sum())
    offsets = np.repeat(run_starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _rows_near_greenland(j0: int, j1: int, rgt: int) -> tuple[np.ndarray, int]:
    """Segment indices j in [j0, j1) whose rows (any beam) may fall inside the Greenland outline, and an
    estimate of the RGT's rows inside it (for the size of a full granule).

    Conservative like ``_rows_near_bbox``: the RGT sampled every 2 km is kept wherever it comes within
    LAND_MARGIN_M of the outline; the exact per-beam test follows.
    """
    step = max(1, int(COARSE_STEP_M / SEGMENT_M))
    jc = _coarse_points(j0, j1, step)
    p, _ = _track(jc * DU, rgt)
    lat = np.degrees(np.arcsin(np.clip(p[2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(p[1], p[0]))
    _, _, r, r_coast = _greenland_polar(lat, lon)
    land_rows = int(np.count_nonzero(r < r_coast)) * step
    return _rows_around(jc, r - r_coast <= LAND_MARGIN_M, step, j0, j1), land_rows


@functools.lru_cache(maxsize=64)
def _footprint_points(u0: float, u1: float, rgt: int) -> list[dict[str, float]]:
    """Closed counter-clockwise ring of the +-6.3 km swath envelope over [u0, u1], extended past both ends.

    Cached (the same for every cycle): callers must not modify the returned list.
    """
    ext = FOOTPRINT_END_EXTENSION_M / EARTH_RADIUS_M
    ua, ub = u0 - ext, u1 + ext
    n = int(math.ceil((ub - ua) / (FOOTPRINT_VERTEX_SPACING_M / EARTH_RADIUS_M))) + 1
    u = np.linspace(ua, ub, n)
    p, t = _track(u, rgt)
    nrm = _cross(p, t)  # points left of the direction of flight
    lat_r, lon_r = _offset_latlon(p, nrm, -FOOTPRINT_HALF_WIDTH_M)
    lat_l, lon_l = _offset_latlon(p, nrm, +FOOTPRINT_HALF_WIDTH_M)
    # Forward along the right edge, back along the left edge: interior on the left, i.e. counter-clockwise.
    lats = np.concatenate([lat_r, lat_l[::-1], lat_r[:1]])
    lons = np.concatenate([lon_r, lon_l[::-1], lon_r[:1]])
    return [{"Longitude": round(float(lo), 6), "Latitude": round(float(la), 6)} for lo, la in zip(lons, lats)]


# ----------------------------------------------------------------------------------------------------
# Randomness

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _hash(j: np.ndarray, key: np.uint64) -> np.ndarray:
    """splitmix64 of (key + j * golden): independent 64-bit words per segment index."""
    x = j.astype(np.uint64) * _GOLDEN
    x += key
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _uniform_pair(j: np.ndarray, key: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in (0, 1) per segment index."""
    x = _hash(j, key)
    scale = 1.0 / 4294967296.0
    hi = ((x >> np.uint64(32)).astype(np.float64) + 0.5) * scale
    lo = ((x & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * scale
    return hi, lo


def _normal_pair(j: np.ndarray, key: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals per segment index (Box-Muller)."""
    u1, u2 = _uniform_pair(j, key)
    r = np.sqrt(-2.0 * np.log(u1))
    ang = 2.0 * math.pi * u2
    return r * np.cos(ang), r * np.sin(ang)


def _keys(seed: int, cycle: int, rgt: int, region: int, beam_index: int) -> tuple[np.uint64, ...]:
    state = np.random.SeedSequence([seed, cycle, rgt, region, 1000 + beam_index]).generate_state(4, np.uint64)
    return tuple(np.uint64(s) for s in state)


# ----------------------------------------------------------------------------------------------------
# Greenland outline


def _north_plane(lat: np.ndarray | float, lon: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal equidistant x, y (m) about the north pole, central meridian NORTH_LON_0 pointing down (-y).

    rho = R (90 - lat) in radians; x = rho sin(lon - lon_0), y = -rho cos(lon - lon_0) (EPSG:3413's axes).
    Distances are true along meridians and at most ~5 % long across them down to 59N.
    """
    rho = EARTH_RADIUS_M * np.radians(90.0 - np.asarray(lat, dtype=np.float64))
    a = np.radians(np.asarray(lon, dtype=np.float64) - NORTH_LON_0)
    return rho * np.sin(a), -rho * np.cos(a)


@functools.lru_cache(maxsize=1)
def _greenland_table() -> tuple[float, float, np.ndarray, np.ndarray]:
    """(summit x, summit y, azimuths in degrees [-180, 180) every 0.25, coast radius there in metres).

    The coast's radius about the summit, linear between GREENLAND_COAST's vertices in azimuth, then smoothed
    by a circular Gaussian of GREENLAND_SMOOTH_DEG: a smooth star-shaped outline about the summit.
    """
    xs, ys = (float(v) for v in _north_plane(*GREENLAND_SUMMIT_LATLON))
    lon, lat = np.array(GREENLAND_COAST, dtype=np.float64).T
    x, y = _north_plane(lat, lon)
    az = np.degrees(np.arctan2(y - ys, x - xs))
    radius = np.hypot(x - xs, y - ys)
    order = np.argsort(az)
    grid = np.arange(-180.0, 180.0, 0.25)
    raw = np.interp(grid, az[order], radius[order], period=360.0)
    half = int(round(3 * GREENLAND_SMOOTH_DEG / 0.25))
    k = np.arange(-half, half + 1) * 0.25
    kernel = np.exp(-0.5 * (k / GREENLAND_SMOOTH_DEG) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([raw[-half:], raw, raw[:half]])
    smooth = np.convolve(padded, kernel, mode="valid")
    return xs, ys, grid, smooth


def _greenland_polar(
    lat: np.ndarray | float, lon: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) in the north plane, the distance r from the summit and the coast's radius in its azimuth (m)."""
    xs, ys, grid, coast = _greenland_table()
    x, y = _north_plane(lat, lon)
    dx, dy = x - xs, y - ys
    r = np.hypot(dx, dy)
    r_coast = np.interp(np.degrees(np.arctan2(dy, dx)), grid, coast, period=360.0)
    return x, y, r, r_coast


def greenland_coast_fraction(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Distance from the summit over the coast's distance in the same azimuth (north plane): 0 at the summit
    (GREENLAND_SUMMIT_LATLON), 1 on the simulated coast, > 1 outside Greenland (and everywhere south)."""
    lat = np.asarray(lat, dtype=np.float64)
    _, _, r, r_coast = _greenland_polar(lat, lon)
    return np.where(lat > 0.0, r / r_coast, np.inf)


def in_greenland(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Whether points (degrees) lie inside the simulator's rough Greenland outline, where it writes rows.

    The outline is smooth and star-shaped about the summit (72.6N 38.5W), following GREENLAND_COAST (a coarse
    coast from Cape Farewell 59.8N to Cape Morris Jesup 83.6N; ~2.2 million km^2, like the real island with
    its ice sheet): islands, fjords and the ice-free margin are not modelled.
    """
    return greenland_coast_fraction(lat, lon) < 1.0


# ----------------------------------------------------------------------------------------------------
# Surface model


@dataclass(frozen=True)
class _Surface:
    """Smooth ice sheets plus plane-wave undulations; fixed by the seed alone.

    Antarctica (``height``) rises inland to ~3.7 km at the pole, Greenland (``height_north``) to ~3.2 km at
    the summit; both share the seed's undulations. A function of position only, so crossing tracks and
    different cycles see the same surface.
    """

    wave_k: np.ndarray  # (n, 2) wave vectors, rad/m
    wave_phase: np.ndarray
    wave_amp: np.ndarray
    edge_phase: tuple[float, float]

    @classmethod
    def from_seed(cls, seed: int) -> _Surface:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED5]))
        wavelengths = np.array([3e3, 8e3, 20e3, 60e3, 150e3])
        amps = np.array([0.3, 0.6, 1.5, 4.0, 10.0])
        theta = rng.uniform(0, 2 * np.pi, len(wavelengths))
        k = (2 * np.pi / wavelengths)[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        phase = rng.uniform(0, 2 * np.pi, len(wavelengths))
        edge = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
        return cls(k, phase, amps, edge)

    def height(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Antarctic surface height (m) and a coastal factor in [0, 1] (0 deep interior, 1 at and beyond the
        margin)."""
        lon_r = np.radians(lon)
        colat = 90.0 + lat  # degrees from the south pole
        edge = 20.0 + 3.0 * np.sin(lon_r + self.edge_phase[0]) + 2.0 * np.cos(2 * lon_r + self.edge_phase[1])
        frac = np.clip(colat / edge, 0.0, 1.0)
        # Vialov-like profile 3700 (1 - f^(4/3))^(3/8), written with cheap roots.
        y = 1.0 - frac * np.cbrt(frac)
        profile = 3700.0 * np.sqrt(np.sqrt(np.sqrt(y * y * y)))
        coastal = frac * frac
        rho = EARTH_RADIUS_M * np.radians(colat)
        x, y = rho * np.sin(lon_r), rho * np.cos(lon_r)
        und = np.zeros_like(x)
        for (kx, ky), ph, amp in zip(self.wave_k, self.wave_phase, self.wave_amp):
            und += amp * np.cos(kx * x + ky * y + ph)
        h = 30.0 + profile + und * (0.3 + 1.7 * coastal)
        return h, coastal

    def height_north(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Greenland surface height (m) and coastal factor, as ``height`` with the summit for the pole.

        With f = greenland_coast_fraction (0 at the summit, 1 on the coast): a Vialov-like profile
        GREENLAND_SUMMIT_M (1 - f^(4/3))^(3/8), 0 at and beyond the coast, plus GEOID_M and the seed's
        undulations in the north plane, larger towards the coast (coastal factor f^2, clipped to 1).
        """
        x, y, r, r_coast = _greenland_polar(lat, lon)
        frac = np.clip(r / r_coast, 0.0, 1.0)
        z = 1.0 - frac * np.cbrt(frac)
        profile = GREENLAND_SUMMIT_M * np.sqrt(np.sqrt(np.sqrt(z * z * z)))
        coastal = frac * frac
        und = np.zeros_like(x)
        for (kx, ky), ph, amp in zip(self.wave_k, self.wave_phase, self.wave_amp):
            und += amp * np.cos(kx * x + ky * y + ph)
        h = GEOID_M + profile + und * (0.3 + 1.7 * coastal)
        return h, coastal

    def static(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Surface height (m) of either ice sheet: Greenland's where lat > 0, Antarctica's elsewhere."""
        lat, lon = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
        north = lat > 0.0
        if not north.any():
            return self.height(lat, lon)[0]
        if north.all():
            return self.height_north(lat, lon)[0]
        out = np.empty(lat.shape, dtype=np.float64)
        out[north] = self.height_north(lat[north], lon[north])[0]
        out[~north] = self.height(lat[~north], lon[~north])[0]
        return out


@functools.lru_cache(maxsize=8)
def _surface_of(seed: int) -> _Surface:
    return _Surface.from_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Change model: elevation change in time, the same for every seed


def true_dhdt(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Imposed rate of elevation change (m/yr) at each point; the same for every seed.

    ``true_dhdt_north`` (Greenland) where lat > 0, ``true_dhdt_south`` (Antarctica) elsewhere.
    """
    lat, lon = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    north = lat > 0.0
    if not north.any():
        return true_dhdt_south(lat, lon)
    if north.all():
        return true_dhdt_north(lat, lon)
    out = np.empty(lat.shape, dtype=np.float64)
    out[north] = true_dhdt_north(lat[north], lon[north])
    out[~north] = true_dhdt_south(lat[~north], lon[~north])
    return out


def true_dhdt_south(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Antarctica's imposed rate of elevation change (m/yr); the same for every seed.

    With colat = 90 + lat (degrees from the south pole) and (x, y) = rho (sin lon, cos lon),
    rho = R colat (azimuthal equidistant about the pole), the sum of three smooth terms:

    - coastal thinning ``DHDT_COAST * (0.6 + 0.4 cos(lon - COAST_MAX_LON)) * (1 - exp(-(colat / 15)^4))``:
      -3.0 m/yr at the margin of the Amundsen sector (lon 110W), -0.6 m/yr on the opposite coast (70E),
      fading inland (0.18 of that at 80S, 0.05 at 83S);
    - an "outlet" lobe ``DHDT_OUTLET * exp(-a^2 / 2 sa^2 - b^2 / 2 sb^2)`` centred at OUTLET_LATLON
      (85.5S, 90E, inside the demo box), with a along the meridian (sa = 120 km) and b across it (sb = 45 km);
    - weak inland thickening ``DHDT_INLAND * exp(-(colat / 12)^2)`` (+0.18 m/yr at the pole).

    Range over the ice sheet about -3.0 .. +0.175 m/yr; inside the demo box (70E-110E, 83S-88S) about
    -2.35 .. +0.15 m/yr.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    colat = 90.0 + lat
    lon_r = np.radians(lon)
    coast = (0.6 + 0.4 * np.cos(lon_r - math.radians(COAST_MAX_LON))) * -np.expm1(-((colat / 15.0) ** 4))
    rho = EARTH_RADIUS_M * np.radians(colat)
    x, y = rho * np.sin(lon_r), rho * np.cos(lon_r)
    c_lat, c_lon = OUTLET_LATLON
    c_rho = EARTH_RADIUS_M * math.radians(90.0 + c_lat)
    er = (math.sin(math.radians(c_lon)), math.cos(math.radians(c_lon)))  # along the meridian, seaward
    dx, dy = x - c_rho * er[0], y - c_rho * er[1]
    a = dx * er[0] + dy * er[1]
    b = dx * er[1] - dy * er[0]
    outlet = np.exp(-0.5 * (a / OUTLET_SIGMA_M[0]) ** 2 - 0.5 * (b / OUTLET_SIGMA_M[1]) ** 2)
    inland = np.exp(-((colat / 12.0) ** 2))
    return DHDT_COAST * coast + DHDT_OUTLET * outlet + DHDT_INLAND * inland


@functools.lru_cache(maxsize=1)
def _north_change_geometry() -> tuple[float, float, float, float, float]:
    """(azimuth of the fastest margin thinning from the summit (rad), Jakobshavn's x, y in the north plane,
    and the plane's east unit vector there)."""
    xs, ys, _, _ = _greenland_table()
    cx, cy = (float(v) for v in _north_plane(*COAST_MAX_NORTH_LATLON))
    jx, jy = (float(v) for v in _north_plane(*JAKOBSHAVN_LATLON))
    a = math.radians(JAKOBSHAVN_LATLON[1] - NORTH_LON_0)
    return math.atan2(cy - ys, cx - xs), jx, jy, math.cos(a), math.sin(a)


def true_dhdt_north(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Greenland's imposed rate of elevation change (m/yr); the same for every seed.

    With f = greenland_coast_fraction clipped to 1 (0 at the summit, 1 on the coast and beyond), x, y in
    the north plane (azimuthal equidistant about the pole, 45W down) and az the azimuth about the summit,
    the sum of two smooth terms, ~0 in the interior:

    - margin thinning ``DHDT_COAST_NORTH * (0.5 + 0.5 cos(az - az_sw)) * f^8``: -1.2 m/yr on the coast in
      the direction of COAST_MAX_NORTH_LATLON (64N 50W, the south-west), 0 on the opposite (north-east)
      coast, fading inland (0.43 of that at f = 0.9, 0.17 at 0.8, < 0.01 inside f = 0.55);
    - a Jakobshavn lobe ``DHDT_JAKOBSHAVN * exp(-a^2 / 2 sa^2 - b^2 / 2 sb^2)`` centred at JAKOBSHAVN_LATLON
      (69.2N 49.8W, -4.0 m/yr), a along the local east (inland, sa = 60 km; seaward, sa = 12 km) and b
      along the local north (sb = 18 km).

    Range over the simulated Greenland about -4.1 .. 0 m/yr; the interior (f < 0.5) is within 0.01 m/yr of 0
    farther than ~200 km from Jakobshavn, whose lobe reaches ~150 km inland at -0.15 m/yr.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    xs, ys, _, _ = _greenland_table()
    az_sw, jx, jy, ex, ey = _north_change_geometry()
    x, y, r, r_coast = _greenland_polar(lat, lon)
    f = np.clip(r / r_coast, 0.0, 1.0)
    f2 = f * f
    f4 = f2 * f2
    sector = 0.5 + 0.5 * np.cos(np.arctan2(y - ys, x - xs) - az_sw)
    coast = sector * (f4 * f4)
    dx, dy = x - jx, y - jy
    a = dx * ex + dy * ey
    b = dy * ex - dx * ey
    sa = np.where(a > 0.0, JAKOBSHAVN_SIGMA_M[0], JAKOBSHAVN_SIGMA_M[1])
    lobe = np.exp(-0.5 * (a / sa) ** 2 - 0.5 * (b / JAKOBSHAVN_SIGMA_M[2]) ** 2)
    return DHDT_COAST_NORTH * coast + DHDT_JAKOBSHAVN * lobe


def seasonal_height(delta_time: np.ndarray | float) -> np.ndarray:
    """Seasonal height anomaly (m), the same everywhere.

    ``SEASONAL_AMPLITUDE_M * sin(2 pi (t - T_REF) / YEAR_S + SEASONAL_PHASE_RAD)``: zero at T_REF (phase 0).
    """
    t = np.asarray(delta_time, dtype=np.float64)
    return SEASONAL_AMPLITUDE_M * np.sin(2.0 * np.pi * (t - T_REF) / YEAR_S + SEASONAL_PHASE_RAD)


def _change(lat: np.ndarray, lon: np.ndarray, delta_time: np.ndarray, north: bool = False) -> np.ndarray:
    """Height change from T_REF to ``delta_time`` (m): one hemisphere's trend plus the seasonal term."""
    dhdt = true_dhdt_north(lat, lon) if north else true_dhdt_south(lat, lon)
    return dhdt * ((delta_time - T_REF) / YEAR_S) + seasonal_height(delta_time)


def true_height(
    lat: np.ndarray | float, lon: np.ndarray | float, delta_time: np.ndarray | float, *, seed: int
) -> np.ndarray:
    """Noise-free surface height (m) at each point and ATL06 delta_time, for the generator's ``seed``.

    Greenland's surface and change where lat > 0 (meaningful inside ``in_greenland``), Antarctica's elsewhere.

    ``h = static(lat, lon) + true_dhdt(lat, lon) * (t - T_REF) / YEAR_S + seasonal_height(t)``: the static
    surface (depending on the seed) is the surface at T_REF. A written ``h_li`` is this plus the noise model.
    """
    lat, lon, t = np.broadcast_arrays(
        np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64),
        np.asarray(delta_time, dtype=np.float64),
    )
    static = _surface_of(int(seed)).static(lat, lon)
    trend = true_dhdt(lat, lon) * ((t - T_REF) / YEAR_S)
    return static + (trend + seasonal_height(t))


def pass_offset_m(seed: int, cycle: int, rgt: int) -> float:
    """Across-track shift (m, positive left of the direction of flight) of the pass of ``rgt`` in ``cycle``.

    All beams and all regions of the pass share it. The nominal RGT of this simulator is the track flown in
    REF_CYCLE (shift 0); other cycles are shifted by a normal draw of sd PASS_OFFSET_SD_M clipped to
    +-PASS_OFFSET_MAX_M, a function of (seed, cycle, rgt) only.
    """
    if cycle == REF_CYCLE:
        return 0.0
    z = np.random.default_rng(np.random.SeedSequence([seed, cycle, rgt, 0x0FF5E7])).standard_normal()
    return float(np.clip(PASS_OFFSET_SD_M * z, -PASS_OFFSET_MAX_M, PASS_OFFSET_MAX_M))


# ----------------------------------------------------------------------------------------------------
# Generation


@dataclass(frozen=True)
class _GranulePlan:
    cycle: int
    rgt: int
    region: int
    u0: float
    u1: float
    j0: int  # first segment index (segment_id = j + 1)
    j1: int  # one past the last
    sc_orient: int
    beams: tuple[str, ...]
    cloud_starts: np.ndarray
    cloud_ends: np.ndarray


def _orientation(seed: int, cycle: int, rgt: int) -> int:
    """Cycle-wide orientation, flipped for ~15 % of the RGTs so both beam layouts occur."""
    base = int(np.random.default_rng(np.random.SeedSequence([seed, cycle, 0x0C1E])).integers(2))
    flip = np.random.default_rng(np.random.SeedSequence([seed, cycle, rgt, 0x0F11])).random() < 0.15
    return base ^ int(flip)


def _plan(config: SynthConfig, cycle: int, rgt: int, region: int) -> _GranulePlan:
    """Per-granule choices, drawn in a fixed order whatever the bbox: beams present and cloud runs."""
    u0, u1 = region_u_bounds(region)
    j0, j1 = math.ceil(u0 / DU), math.ceil(u1 / DU)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, cycle, rgt, region]))
    orient = _orientation(config.seed, cycle, rgt)
    strong_only = rng.random() < config.weak_beam_dropout
    beams = tuple(b for b in BEAMS if not strong_only or is_strong(b, orient))
    n = j1 - j0
    f = config.cloud_fraction
    if f > 0:
        # Alternating clear and cloudy runs with exponential lengths; the cloudy share is f on average.
        clear_mean = MEAN_CLOUD_ROWS * (1 - f) / f
        n_pairs = int(n / (MEAN_CLOUD_ROWS + clear_mean) * 2) + 20
        clear = rng.exponential(clear_mean, n_pairs)
        cloud = rng.exponential(MEAN_CLOUD_ROWS, n_pairs)
        while (clear.sum() + cloud.sum()) < n:  # practically never: the draw covers twice the mean need
            clear = np.append(clear, rng.exponential(clear_mean, n_pairs))
            cloud = np.append(cloud, rng.exponential(MEAN_CLOUD_ROWS, n_pairs))
        clear[0] *= rng.uniform(0, 1)  # random phase of the first run
        ends_of_clear = np.cumsum(clear + cloud) - cloud
        starts = j0 + np.floor(ends_of_clear).astype(np.int64)
        ends = j0 + np.floor(ends_of_clear + cloud).astype(np.int64) + 1
        keep = starts < j1
        cloud_starts, cloud_ends = starts[keep], np.minimum(ends[keep], j1)
    else:
        cloud_starts = cloud_ends = np.empty(0, dtype=np.int64)
    return _GranulePlan(cycle, rgt, region, u0, u1, j0, j1, orient, beams, cloud_starts, cloud_ends)


def _cloudy(j: np.ndarray, plan: _GranulePlan) -> np.ndarray:
    """Whether segment indices fall in one of the granule's cloudy runs [start, end)."""
    if len(plan.cloud_starts) == 0:
        return np.zeros(len(j), dtype=bool)
    idx = np.searchsorted(plan.cloud_starts, j, side="right") - 1
    return (idx >= 0) & (j < plan.cloud_ends[np.maximum(idx, 0)])


def _beam_rows(
    config: SynthConfig,
    plan: _GranulePlan,
    beam: str,
    j: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    surface: _Surface,
    t_base: float,
) -> dict[str, np.ndarray]:
    """All land-ice-segment variables of one beam for the given rows."""
    strong = is_strong(beam, plan.sc_orient)
    k_sig, k_flag, k_geo, _ = _keys(config.seed, plan.cycle, plan.rgt, plan.region, BEAMS.index(beam))
    delta_time = t_base + _time_offset_s(plan.rgt, j * DU)
    north = plan.region in NORTH_REGIONS
    h, coastal = surface.height_north(lat, lon) if north else surface.height(lat, lon)
    h = h + _change(lat, lon, delta_time, north)
    z_sig, z_h = _normal_pair(j, k_sig)
    u_flag, u_fill = _uniform_pair(j, k_flag)
    u_geo, u_extra = _uniform_pair(j, k_geo)
    base = 0.025 if strong else 0.06
    sigma = base * np.exp(0.35 * z_sig) * (1.0 + 1.5 * coastal)
    flagged = (z_sig > 1.6) | (u_flag < 0.012)
    # Flagged segments (~6 %, mostly the large-sigma ones) carry an extra error of up to +-4 m.
    h_li = h + z_h * sigma + np.where(flagged, 8.0 * (u_extra - 0.5), 0.0)
    fill = u_fill < 0.005  # ~0.5 % of rows: h_li and h_li_sigma set to the fill value, quality 1
    fill_f32 = VARIABLES["h_li"][1]
    h_li = np.where(fill, fill_f32, h_li).astype(np.float32)
    sigma32 = np.where(fill, fill_f32, sigma).astype(np.float32)
    quality = (flagged | fill).astype(np.int8)
    sigma_geo = (0.03 + 0.07 * u_geo * (0.5 + 0.5 * coastal)).astype(np.float32)
    return {
        "latitude": lat,
        "longitude": lon,
        "h_li": h_li,
        "h_li_sigma": sigma32,
        "atl06_quality_summary": quality,
        "delta_time": np.asarray(delta_time, dtype=np.float64),
        "segment_id": (j + 1).astype(np.int32),
        "sigma_geo_h": sigma_geo,
    }


def _chunk_bytes(arr: np.ndarray, start: int, pad_value: float | int, shuffle: bool) -> bytes:
    """One full-size chunk of ``arr`` from ``start``, padded at the end, shuffled if asked, deflated."""
    chunk = arr[start : start + CHUNK_ROWS]
    if len(chunk) < CHUNK_ROWS and len(arr) > CHUNK_ROWS:
        chunk = np.concatenate([chunk, np.full(CHUNK_ROWS - len(chunk), pad_value, dtype=arr.dtype)])
    raw = chunk.view(np.uint8).reshape(len(chunk), arr.itemsize)
    raw = np.ascontiguousarray(raw.T) if shuffle else raw
    return zlib.compress(raw.tobytes(), DEFLATE_WRITE_LEVEL)


def _compress_beams(
    beam_data: dict[str, dict[str, np.ndarray]], pool: ThreadPoolExecutor
) -> dict[tuple[str, str], list[Future[bytes]]]:
    """Deflate every chunk of every dataset on the thread pool (zlib releases the GIL)."""
    jobs: dict[tuple[str, str], list[Future[bytes]]] = {}
    for beam, data in beam_data.items():
        for var, (dtype, fill) in VARIABLES.items():
            arr = np.ascontiguousarray(data[var], dtype=dtype)
            shuffle = bool(np.issubdtype(dtype, np.integer))
            pad = 0 if fill is None else fill
            starts = range(0, len(arr), CHUNK_ROWS)
            jobs[beam, var] = [pool.submit(_chunk_bytes, arr, start, pad, shuffle) for start in starts]
    return jobs


# Low-level HDF5 writes of the per-beam datasets and their attributes: the same calls and property lists
# as h5py's create_dataset / attrs[...] = (the files are byte-identical), without their per-call
# overhead (dtype guessing, property-list and type building), which was ~20 % of the writing thread.
_VLEN_STR = h5py.string_dtype()


@functools.lru_cache(maxsize=256)
def _segment_dcpl(dtype_str: str, chunk_rows: int, shuffle: bool, fill: float | None) -> h5py.h5p.PropDCID:
    """Creation property list of a (n,) segment dataset: chunked, gzip GZIP_LEVEL, shuffle, fill value."""
    dtype = np.dtype(dtype_str)
    dcpl = h5py.filters.fill_dcpl(
        h5py.h5p.create(h5py.h5p.DATASET_CREATE), (chunk_rows,), dtype, (chunk_rows,), "gzip", GZIP_LEVEL,
        shuffle, None, None, None, None, False, fill_time=None,
    )
    if fill is not None:
        dcpl.set_fill_value(np.array(fill, dtype=dtype))
    dcpl.set_obj_track_times(False)
    return dcpl


@functools.lru_cache(maxsize=32)
def _h5_types(key: str) -> tuple[h5py.h5t.TypeID, h5py.h5t.TypeID]:
    """(file type, memory type) h5py uses for a value of numpy dtype ``key``, or 'str' (vlen UTF-8)."""
    dtype = _VLEN_STR if key == "str" else np.dtype(key)
    return h5py.h5t.py_create(dtype, logical=True), h5py.h5t.py_create(dtype)


def _set_attr(obj_id: h5py.h5o.ObjectID, name: str, value: str | np.ndarray) -> None:
    """``obj.attrs[name] = value`` for a new attribute (a str or a numpy scalar array)."""
    if isinstance(value, str):
        data, (htype, mtype) = np.asarray(value, dtype=_VLEN_STR), _h5_types("str")
    else:
        data, (htype, mtype) = value, _h5_types(value.dtype.str)
    attr = h5py.h5a.create(obj_id, name.encode(), htype, h5py.h5s.create_simple(data.shape))
    attr.write(data, mtype=mtype)
    attr.close()


def _write_h5(
    path: Path,
    config: SynthConfig,
    plan: _GranulePlan,
    beam_data: dict[str, dict[str, np.ndarray]],
    chunks: dict[tuple[str, str], list[Future[bytes]]],
    t_begin: datetime,
    t_end: datetime,
) -> None:
    """Write the granule with the storage layout of real files: chunks (10000,), gzip 6, shuffle on integers.

    Chunks are deflated beforehand (in parallel) and stored with direct chunk writes; the declared filter
    pipeline is the one a reader needs to decode them.
    """
    with h5py.File(path, "w") as f:
        f.attrs["short_name"] = "ATL06"
        f.attrs["title"] = "SYNTHETIC ATLAS/ICESat-2 L3A Land Ice Height (polaragg simulator)"
        f.attrs["time_coverage_start"] = _iso(t_begin)
        f.attrs["time_coverage_end"] = _iso(t_end)
        for beam, data in beam_data.items():
            g = f.create_group(beam)
            g.attrs["atlas_beam_type"] = "strong" if is_strong(beam, plan.sc_orient) else "weak"
            g.attrs["atlas_spot_number"] = SPOTS_BY_ORIENT[plan.sc_orient][beam]
            g.attrs["sc_orientation"] = "Forward" if plan.sc_orient == 1 else "Backward"
            g.attrs["groundtrack_id"] = beam
            seg = g.create_group(SEGMENTS_GROUP)
            for var, (dtype, fill) in VARIABLES.items():
                n = len(data[var])
                dt = np.dtype(dtype)
                dcpl = _segment_dcpl(dt.str, min(CHUNK_ROWS, n), bool(np.issubdtype(dt, np.integer)), fill)
                dsid = h5py.h5d.create(seg.id, var.encode(), _h5_types(dt.str)[0],
                                       h5py.h5s.create_simple((n,), None), dcpl=dcpl, dapl=None)
                for i, fut in enumerate(chunks[beam, var]):
                    dsid.write_direct_chunk((i * CHUNK_ROWS,), fut.result(), 0)
                if fill is not None:
                    _set_attr(dsid, "_FillValue", np.array(fill, dtype=dtype))
                _set_attr(dsid, "units", _UNITS[var])
                dsid.close()
        orbit = f.create_group("orbit_info")
        orbit_number = (plan.cycle - 1) * N_RGT + plan.rgt
        for key, value, dtype in (
            ("sc_orient", plan.sc_orient, np.int8),
            ("rgt", plan.rgt, np.int16),
            ("cycle_number", plan.cycle, np.int8),
            ("orbit_number", orbit_number, np.uint16),
        ):
            orbit.create_dataset(key, data=np.array([value], dtype=dtype), track_times=False)
        anc = f.create_group("ancillary_data")
        ds = anc.create_dataset(
            "atlas_sdp_gps_epoch", data=np.array([GPS_EPOCH_2018], dtype=np.float64), track_times=False
        )
        ds.attrs["units"] = "seconds since 1980-01-06T00:00:00.000000Z"
        for key, when in (("start_delta_time", t_begin), ("end_delta_time", t_end)):
            ds = anc.create_dataset(key, data=np.array([delta_time_of(when)]), track_times=False)
            ds.attrs["units"] = DELTA_TIME_UNITS


def _iso(when: datetime) -> str:
    when = when.astimezone(UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"


def _concept_id(cycle: int, rgt: int, region: int, version: str) -> str:
    return f"G{cycle:02d}{rgt:04d}{region:02d}{int(version) % 100:02d}-NSIDC_CPRD"


def _umm_record(
    name: str,
    config: SynthConfig,
    plan: _GranulePlan,
    t_begin: datetime,
    t_end: datetime,
    local_size: int,
    rows: int,
    full_rows_per_beam: int | None = None,
) -> dict:
    """UMM-G record of a granule; the footprint and times cover the full granule, not only the written rows.

    ``ArchiveAndDistributionInformation[0].SizeInBytes`` is the size a real full granule would have (full rows
    of the present beams x 140 B + 2 MB). The local synthetic file's size and row count are in
    ``AdditionalAttributes`` (LOCAL_SIZE_IN_BYTES, LOCAL_ROWS), where size-summing clients do not count them.
    ``full_rows_per_beam`` is a full granule's rows per beam when not every segment of the region has rows
    (Greenland: the RGT's segments inside the outline); by default all of the region's segments.
    """
    day = f"{t_begin:%Y/%m/%d}"
    key = f"nsidc-cumulus-prod-protected/ATLAS/ATL06/{config.version}/{day}/{name}"
    n_full = plan.j1 - plan.j0 if full_rows_per_beam is None else full_rows_per_beam
    full_rows = n_full * len(plan.beams) * (1 - config.cloud_fraction)
    est_size = int(REAL_FIXED_BYTES + full_rows * REAL_BYTES_PER_ROW)
    return {
        "meta": {
            "concept-id": _concept_id(plan.cycle, plan.rgt, plan.region, config.version),
            "provider-id": "NSIDC_CPRD",
            "revision-id": 1,
        },
        "umm": {
            "GranuleUR": name,
            "CollectionReference": {"ShortName": "ATL06", "Version": config.version},
            "TemporalExtent": {
                "RangeDateTime": {"BeginningDateTime": _iso(t_begin), "EndingDateTime": _iso(t_end)}
            },
            "SpatialExtent": {
                "HorizontalSpatialDomain": {
                    "Geometry": {
                        "GPolygons": [
                            {"Boundary": {"Points": _footprint_points(plan.u0, plan.u1, plan.rgt)}}
                        ]
                    }
                }
            },
            "RelatedUrls": [
                {"URL": f"https://data.nsidc.earthdatacloud.nasa.gov/{key}", "Type": "GET DATA"},
                {"URL": f"s3://{key}", "Type": "GET DATA VIA DIRECT ACCESS"},
            ],
            "DataGranule": {
                "DayNightFlag": "Unspecified",
                "Identifiers": [{"Identifier": name, "IdentifierType": "ProducerGranuleId"}],
                "ArchiveAndDistributionInformation": [{"Name": name, "SizeInBytes": est_size}],
            },
            "AdditionalAttributes": [
                {"Name": "LOCAL_SIZE_IN_BYTES", "Values": [str(local_size)]},
                {"Name": "LOCAL_ROWS", "Values": [str(rows)]},
            ],
            "MetadataSpecification": {
                "URL": "https://cdn.earthdata.nasa.gov/umm/granule/v1.6.6",
                "Name": "UMM-G",
                "Version": "1.6.6",
            },
        },
    }


@dataclass
class _Computed:
    """A granule's rows, computed and queued for compression, not yet written."""

    plan: _GranulePlan
    name: str
    beam_data: dict[str, dict[str, np.ndarray]]
    t_begin: datetime
    t_end: datetime
    chunks: dict[tuple[str, str], list[Future[bytes]]] = field(default_factory=dict)
    full_rows_per_beam: int | None = None

    @property
    def rows(self) -> int:
        return sum(len(d["segment_id"]) for d in self.beam_data.values())


@dataclass
class _Track:
    """Segment indices of a (RGT, region) that may hold rows, with the RGT's position and left normal there.

    The same for every cycle; computed on first use. In Greenland's regions only segments near the outline
    may hold rows (``land_rows``: the RGT's rows inside it, whatever the bbox).
    """

    j: np.ndarray
    p: np.ndarray | None = None
    nrm: np.ndarray | None = None
    land_rows: int | None = None

    @classmethod
    def near(cls, config: SynthConfig, rgt: int, region: int) -> _Track:
        u0, u1 = region_u_bounds(region)
        j0, j1 = math.ceil(u0 / DU), math.ceil(u1 / DU)
        if region in NORTH_REGIONS:
            j, land_rows = _rows_near_greenland(j0, j1, rgt)
            if config.bbox is not None and j.size:
                j = np.intersect1d(j, _rows_near_bbox(j0, j1, rgt, config.bbox), assume_unique=True)
            return cls(j, land_rows=land_rows)
        if config.bbox is None:
            return cls(np.arange(j0, j1, dtype=np.int64))
        return cls(_rows_near_bbox(j0, j1, rgt, config.bbox))

    def at(self, keep: np.ndarray, rgt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(j, P, N) of the kept rows (a boolean mask over ``self.j``)."""
        if self.p is None:
            p, t = _track(self.j * DU, rgt)
            self.p, self.nrm = p, _cross(p, t)
        assert self.nrm is not None
        return self.j[keep], self.p[:, keep], self.nrm[:, keep]


def _compute(
    config: SynthConfig, cycle: int, rgt: int, region: int, surface: _Surface, track: _Track | None = None
) -> _Computed | None:
    """Rows of one granule (all beams), or None when it has none (inside the bbox).

    ``track`` (from ``_Track.near`` for this RGT and region) may be shared by the cycles of a pass.
    """
    plan = _plan(config, cycle, rgt, region)
    c0 = cycle_start(cycle)
    t_begin = c0 + timedelta(seconds=float(_time_offset_s(rgt, plan.u0)))
    t_end = c0 + timedelta(seconds=float(_time_offset_s(rgt, plan.u1)))
    t_base = delta_time_of(c0)

    if track is None:
        track = _Track.near(config, rgt, region)
    keep = ~_cloudy(track.j, plan)
    if not keep.any():
        return None
    j, p, nrm = track.at(keep, rgt)
    shift = pass_offset_m(config.seed, cycle, rgt)
    north = region in NORTH_REGIONS
    beam_data: dict[str, dict[str, np.ndarray]] = {}
    for beam in plan.beams:
        lat, lon = _offset_latlon(p, nrm, BEAM_OFFSETS_M[beam] + shift)
        if config.bbox is not None or north:
            inside = _in_bbox(lat, lon, config.bbox) if config.bbox is not None else None
            if north:  # land-ice segments: only over the Greenland outline
                land = in_greenland(lat, lon)
                inside = land if inside is None else inside & land
            if not inside.any():
                continue
            jb, lat, lon = j[inside], lat[inside], lon[inside]
        else:
            jb = j
        beam_data[beam] = _beam_rows(config, plan, beam, jb, lat, lon, surface, t_base)
    if not beam_data:
        return None
    name = granule_name(t_begin, rgt, cycle, region, config.version)
    return _Computed(plan, name, beam_data, t_begin, t_end, full_rows_per_beam=track.land_rows)


def _finish(out_dir: Path, config: SynthConfig, item: _Computed) -> SynthGranule:
    """Write the HDF5 file and the UMM-G record of a computed granule."""
    h5_path = out_dir / item.name
    umm_path = out_dir / (item.name.removesuffix(".h5") + ".umm.json")
    _write_h5(h5_path, config, item.plan, item.beam_data, item.chunks, item.t_begin, item.t_end)
    rows = item.rows
    record = _umm_record(
        item.name, config, item.plan, item.t_begin, item.t_end, h5_path.stat().st_size, rows,
        item.full_rows_per_beam,
    )
    umm_path.write_text(json.dumps(record))
    plan = item.plan
    return SynthGranule(
        item.name, h5_path, umm_path, plan.rgt, plan.cycle, plan.region, rows, tuple(item.beam_data)
    )


def generate(out_dir: Path | str, config: SynthConfig) -> list[SynthGranule]:
    """Write the configured granules (HDF5 + UMM-G JSON) into ``out_dir``; return them sorted by name.

    Every (cycle, RGT, region) of the config is one granule. With a bbox, granules without any row inside it
    are not written; in Greenland's regions, neither are granules without any row over the outline. Chunks
    are deflated on a thread pool while the next granule is computed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    surface = _surface_of(config.seed)
    rgts: Iterable[int] = config.rgts or range(1, N_RGT + 1)
    # The cycles of one (RGT, region) in a row: they share its track geometry.
    jobs = [
        (cycle, rgt, region)
        for rgt in sorted(set(rgts))
        for region in sorted(set(config.regions))
        for cycle in config.cycles
    ]
    written: list[SynthGranule] = []
    if hasattr(os, "sched_getaffinity"):
        workers = max(1, len(os.sched_getaffinity(0)))
    else:
        workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: _Computed | None = None
        track, track_key = None, None
        for cycle, rgt, region in jobs:
            if track_key != (rgt, region):
                track, track_key = _Track.near(config, rgt, region), (rgt, region)
            item = _compute(config, cycle, rgt, region, surface, track)
            if item is not None:
                item.chunks = _compress_beams(item.beam_data, pool)
            if pending is not None:
                written.append(_finish(out, config, pending))
            pending = item
        if pending is not None:
            written.append(_finish(out, config, pending))
    return sorted(written, key=lambda g: g.name)
