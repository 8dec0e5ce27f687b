"""ICESat-2 repeat cycles and ATL06 time: the cycle table, and delta_time <-> UTC.

Cycles are read from granule names (``..._ttttccnn_...``), never computed from the launch date: the
repeat is 91 nodal days, which drifts from "launch + 91 days x (c - 1)" by ~18 days by cycle 22. The
start dates below were derived from real granule names (+-1 min); each cycle ends where the next
begins; cycles after the table are projected from its last start by whole repeats (`is_projected`).

ATL06 ``delta_time`` is GPS seconds minus ``atlas_sdp_gps_epoch`` (the GPS seconds of 2018-01-01T00:00:00
UTC). No leap second has been added since 2017 (GPS - UTC = 18 s throughout the mission), so
delta_time is also the UTC seconds since 2018-01-01T00:00:00Z: CF units
``seconds since 2018-01-01T00:00:00`` decode it to UTC.

Standard library only: the recipe validates cycle numbers against this table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = [
    "CF_TIME_UNITS", "CYCLES", "EPOCH", "GPS_UTC_OFFSET_S", "MAX_CYCLE", "NOMINAL_REPEAT", "TIME_SCALE_NOTE",
    "cycle_bounds", "cycle_of_time", "cycle_start", "datetime_of", "delta_time_of", "is_projected",
]

EPOCH = datetime(2018, 1, 1, tzinfo=UTC)  # delta_time 0
CF_TIME_UNITS = "seconds since 2018-01-01T00:00:00"
GPS_UTC_OFFSET_S = 18  # GPS - UTC since 2017-01-01
TIME_SCALE_NOTE = ("ATL06 delta_time: GPS seconds minus atlas_sdp_gps_epoch (GPS seconds of 2018-01-01T00:00:00 "
                   "UTC); with GPS - UTC = 18 s throughout the mission it equals UTC seconds since "
                   "2018-01-01T00:00:00Z")
NOMINAL_REPEAT = timedelta(days=90.8193)  # 1387 revolutions of 5657.38 s

# Cycle starts (UTC year, month, day, hour, minute), derived from real granule names (+-1 min).
_STARTS: dict[int, tuple[int, int, int, int, int]] = {
    1: (2018, 9, 28, 16, 19), 2: (2018, 12, 28, 11, 59), 3: (2019, 3, 29, 7, 39),
    4: (2019, 6, 28, 3, 19), 5: (2019, 9, 26, 22, 58), 6: (2019, 12, 26, 18, 38),
    7: (2020, 3, 26, 14, 18), 8: (2020, 6, 25, 9, 58), 9: (2020, 9, 24, 5, 38),
    10: (2020, 12, 24, 1, 17), 11: (2021, 3, 24, 20, 57), 12: (2021, 6, 23, 16, 37),
    13: (2021, 9, 22, 12, 17), 14: (2021, 12, 22, 7, 57), 15: (2022, 3, 23, 3, 36),
    16: (2022, 6, 21, 23, 16), 17: (2022, 9, 20, 18, 56), 18: (2022, 12, 20, 14, 36),
    19: (2023, 3, 21, 10, 15), 20: (2023, 6, 20, 5, 55), 21: (2023, 9, 19, 1, 35),
    22: (2023, 12, 18, 21, 15), 23: (2024, 3, 18, 16, 55), 24: (2024, 6, 17, 12, 34),
    25: (2024, 9, 16, 8, 14), 26: (2024, 12, 16, 3, 54), 27: (2025, 3, 16, 23, 34),
    28: (2025, 6, 15, 19, 14), 29: (2025, 9, 14, 14, 53), 30: (2025, 12, 14, 10, 33),
}
CYCLES: tuple[int, ...] = tuple(sorted(_STARTS))  # cycles whose start was read off real granule names
MAX_CYCLE = 99  # two digits in granule names


def cycle_start(cycle: int) -> datetime:
    """UTC start of an ICESat-2 cycle: from the table, or (cycles after it, up to 99) projected from the
    table's last start by whole repeats (the exact repeat holds to minutes over a few years)."""
    if not 1 <= cycle <= MAX_CYCLE:
        raise ValueError(f"cycle must be in 1..{MAX_CYCLE}, got {cycle}")
    if cycle in _STARTS:
        return datetime(*_STARTS[cycle], tzinfo=UTC)
    last = CYCLES[-1]
    return datetime(*_STARTS[last], tzinfo=UTC) + (cycle - last) * NOMINAL_REPEAT


def is_projected(cycle: int) -> bool:
    """Whether a cycle's dates are projected rather than read off real granule names."""
    return cycle not in _STARTS


def cycle_bounds(cycle: int) -> tuple[datetime, datetime]:
    """[start, end) of a cycle in UTC: it ends where the next begins."""
    return cycle_start(cycle), cycle_start(cycle + 1)


def cycle_of_time(when: datetime) -> int | None:
    """The cycle of the table whose [start, end) holds a UTC instant, or None."""
    for c in range(1, MAX_CYCLE + 1):
        start, end = cycle_bounds(c)
        if start <= when < end:
            return c
    return None


def delta_time_of(when: datetime) -> float:
    """ATL06 delta_time of an instant (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH).total_seconds()


def datetime_of(delta_time: float) -> datetime:
    """The UTC instant of an ATL06 delta_time."""
    return EPOCH + timedelta(seconds=float(delta_time))
