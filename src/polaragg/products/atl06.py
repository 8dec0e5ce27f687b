"""ATL06 (land-ice height) product definition: beams, variables, dtypes, fill values, quality, epoch.

One place for the file-format facts shared by the reader, the synthetic generator and the tests.
"""

from __future__ import annotations

import numpy as np

BEAMS: tuple[str, ...] = ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r")

# Across-track offsets of the beams from the reference ground track, metres (gt2 rides the RGT).
BEAM_OFFSETS_M: dict[str, float] = {
    "gt1l": -3345.0,
    "gt1r": -3255.0,
    "gt2l": -45.0,
    "gt2r": 45.0,
    "gt3l": 3255.0,
    "gt3r": 3345.0,
}

# ATLAS spot numbers by spacecraft orientation (0 backward, 1 forward); spots 1, 3, 5 are strong.
SPOTS_BY_ORIENT: dict[int, dict[str, int]] = {
    0: {"gt1l": 1, "gt1r": 2, "gt2l": 3, "gt2r": 4, "gt3l": 5, "gt3r": 6},
    1: {"gt1l": 6, "gt1r": 5, "gt2l": 4, "gt2r": 3, "gt3l": 2, "gt3r": 1},
}
STRONG_SPOTS = frozenset({1, 3, 5})

SEGMENTS_GROUP = "land_ice_segments"

# Variables of /gtx/land_ice_segments: name -> (dtype, fill value or None).
VARIABLES: dict[str, tuple[np.dtype, float | int | None]] = {
    "latitude": (np.dtype("float64"), 1.7976931348623157e308),
    "longitude": (np.dtype("float64"), 1.7976931348623157e308),
    "h_li": (np.dtype("float32"), np.float32(3.4028235e38).item()),
    "h_li_sigma": (np.dtype("float32"), np.float32(3.4028235e38).item()),
    "atl06_quality_summary": (np.dtype("int8"), 127),
    "delta_time": (np.dtype("float64"), None),
    "segment_id": (np.dtype("int32"), None),
    "sigma_geo_h": (np.dtype("float32"), np.float32(3.4028235e38).item()),
}

# Columns the aggregation reads: coordinates first, then the payload hypersliced to a parent's rows.
COORDINATES: tuple[str, ...] = ("latitude", "longitude")
PAYLOAD: tuple[str, ...] = ("h_li", "h_li_sigma", "atl06_quality_summary", "delta_time")

FILL_THRESHOLD = 3.4e38  # any float at or above this is a fill value
GPS_EPOCH_2018 = 1198800018.0  # /ancillary_data/atlas_sdp_gps_epoch: GPS seconds of 2018-01-01T00:00:00
DELTA_TIME_UNITS = "seconds since 2018-01-01T00:00:00 (GPS)"

CHUNK_ROWS = 10000  # storage convention of real granules: chunks (10000,), gzip 6, shuffle on integers
GZIP_LEVEL = 6


def dataset_path(beam: str, variable: str) -> str:
    """HDF5 path of a land-ice-segments variable of one beam."""
    return f"/{beam}/{SEGMENTS_GROUP}/{variable}"


def is_strong(beam: str, sc_orient: int) -> bool:
    """Whether a beam is strong for a spacecraft orientation (0 backward, 1 forward)."""
    return SPOTS_BY_ORIENT[sc_orient][beam] in STRONG_SPOTS
