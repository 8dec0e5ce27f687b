"""The tests' independent reference reader: every observation of a folder's ATL06 granules, with h5py.

h5py, numpy and pandas only, never polaragg code, so the brute-force references built on it
(tests/test_demo_exact.py, tests/test_time.py) check polaragg against something it did not compute.
"""

from __future__ import annotations

import glob
import re

import h5py
import numpy as np
import pandas as pd

BEAMS = ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r")
FILL = 3.4e38  # any float at or above this is a fill value
NAME = re.compile(r"ATL06_\d{14}_\d{4}(\d{2})\d{2}_")  # the cycle is the 2 digits after the RGT


def cycle_of(path: str) -> int:
    """The cycle of a granule, from its file name."""
    return int(NAME.search(path).group(1))


def observations(folder) -> pd.DataFrame:
    """Every row of every beam of the folder's granules (sorted by path): lat, lon, h, s (h_li_sigma), q
    (atl06_quality_summary), t (delta_time), the granule's cycle and its file (position in path order);
    nothing dropped."""
    frames = []
    for file, path in enumerate(sorted(glob.glob(f"{folder}/*.h5"))):
        cycle = cycle_of(path)
        with h5py.File(path, "r") as f:
            for beam in BEAMS:
                if f"{beam}/land_ice_segments" not in f:
                    continue
                g = f[f"{beam}/land_ice_segments"]
                frames.append(pd.DataFrame({
                    "lat": g["latitude"][:], "lon": g["longitude"][:],
                    "h": g["h_li"][:].astype(np.float64), "s": g["h_li_sigma"][:].astype(np.float64),
                    "q": g["atl06_quality_summary"][:], "t": g["delta_time"][:], "cycle": cycle,
                    "file": np.int32(file),
                }))
    return pd.concat(frames, ignore_index=True)


def kept(df: pd.DataFrame) -> pd.DataFrame:
    """The observations an aggregation keeps: quality 0, height and sigma not fill values, sigma positive,
    height and time finite (index reset)."""
    ok = ((df.q == 0) & (df.h.abs() < FILL) & (df.s.abs() < FILL) & (df.s > 0)
          & np.isfinite(df.h) & np.isfinite(df.t))
    return df[ok].reset_index(drop=True)
