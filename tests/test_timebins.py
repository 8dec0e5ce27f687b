"""Time bins against hand-made calendars: cycle dates from the reference table, calendar quarters and
months, explicit edges, the date window, and which granules a selection reads."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from polaragg.cycles import cycle_bounds, cycle_start, delta_time_of, is_projected
from polaragg.timebins import NO_BIN, make_time_bins

EPOCH = datetime(2018, 1, 1, tzinfo=UTC)


def dt(*args) -> float:
    return (datetime(*args, tzinfo=UTC) - EPOCH).total_seconds()


def bins(kind, catalog=(), begins=(), ends=(), **kw):
    """Bins over a catalog of granules (their cycles and [begin, end] delta_times); kw as the recipe's."""
    return make_time_bins(kind, catalog_cycles=np.array(catalog, np.int64), catalog_begins=np.array(begins, float),
                          catalog_ends=np.array(ends, float), **kw)


def test_cycle_dates_are_the_reference_table_not_launch_arithmetic():
    # ../shared/reference/atl06.md: 1 2018-09-28 16:19, 22 2023-12-18 21:15, 23 2024-03-18 16:55
    assert cycle_start(1) == datetime(2018, 9, 28, 16, 19, tzinfo=UTC)
    assert cycle_bounds(22) == (datetime(2023, 12, 18, 21, 15, tzinfo=UTC), datetime(2024, 3, 18, 16, 55, tzinfo=UTC))
    naive = datetime(2018, 9, 15, tzinfo=UTC) + 21 * timedelta(days=91)  # launch + 91 d x (c - 1)
    assert abs((naive - cycle_start(22)).days) >= 7  # days off, and growing with the cycle
    # after the table: whole repeats of 90.8193 days from its last start, and said to be projected
    assert not is_projected(30) and is_projected(31)
    assert (cycle_start(33) - cycle_start(30)).total_seconds() == pytest.approx(3 * 90.8193 * 86400)
    with pytest.raises(ValueError, match="1..99"):
        cycle_start(100)
    assert delta_time_of(datetime(2018, 1, 2)) == 86400.0  # naive = UTC


def test_cycle_bins_take_the_catalog_cycles_and_whole_granules():
    b = bins("cycle", catalog=[21, 22, 22, 20], begins=[dt(2023, 10, 1)] * 4, ends=[dt(2023, 10, 1, 0, 5)] * 4)
    assert b.cycles == (20, 21, 22) and b.n == 3 and b.labels == ("cycle 20", "cycle 21", "cycle 22")
    assert b.starts[2] == delta_time_of(cycle_start(22)) and b.ends[2] == delta_time_of(cycle_start(23))
    assert b.fit  # two bins or more: the change is fitted unless the recipe says otherwise
    # every row of a granule of cycle 21 goes to bin 1, whatever its time; cycle 19 is no bin
    t = np.array([0.0, 1e9])
    assert b.granule_bin(21) == 1 and b.granule_bin(19) == NO_BIN
    assert (b.row_bins(t, b.granule_bin(21)) == 1).all()
    # the recipe's cycles select; the window drops rows outside it and granules that cannot reach it
    w = bins("cycle", catalog=[20, 21, 22], begins=[0, 0, 0], ends=[0, 0, 0], cycles=[21, 22],
             start=datetime(2023, 10, 1), end=datetime(2024, 1, 1))
    assert w.cycles == (21, 22)
    rows = w.row_bins(np.array([dt(2023, 9, 30), dt(2023, 10, 1), dt(2023, 12, 31, 23), dt(2024, 1, 1)]), 0)
    assert rows.tolist() == [NO_BIN, 0, 0, NO_BIN]
    sel = w.selects(np.array([20, 21, 22, 22]), np.array([dt(2023, 10, 2), dt(2023, 10, 2), dt(2024, 2, 1), np.nan]),
                    np.array([dt(2023, 10, 2, 0, 5), dt(2023, 10, 2, 0, 5), dt(2024, 2, 1, 0, 5), np.nan]))
    assert sel.tolist() == [False, True, False, True]  # other cycle; in; after the window; time unknown: read


def test_quarter_and_month_bins_follow_the_calendar():
    begins, ends = [dt(2023, 2, 10), dt(2023, 8, 20)], [dt(2023, 2, 10, 0, 5), dt(2023, 8, 20, 0, 5)]
    q = bins("quarter", catalog=[18, 20], begins=begins, ends=ends)
    assert q.labels == ("2023-Q1", "2023-Q2", "2023-Q3")
    assert q.starts == (dt(2023, 1, 1), dt(2023, 4, 1), dt(2023, 7, 1)) and q.ends[-1] == dt(2023, 10, 1)
    t = np.array([dt(2023, 3, 31, 23, 59), dt(2023, 4, 1), dt(2023, 9, 30, 12), dt(2023, 10, 1), dt(2022, 12, 31)])
    assert q.row_bins(t).tolist() == [0, 1, 2, NO_BIN, NO_BIN]
    m = bins("month", catalog=[20], begins=[0.0], ends=[0.0], start=datetime(2023, 11, 15), end=datetime(2024, 2, 1))
    assert m.labels == ("2023-11", "2023-12", "2024-01")
    assert m.row_bins(np.array([dt(2023, 11, 14), dt(2023, 11, 15), dt(2024, 1, 31, 23)])).tolist() == [NO_BIN, 0, 2]
    assert m.cycles == ()  # calendar bins: any cycle unless the recipe lists some


def test_explicit_edges_and_the_fit_switch():
    e = bins([datetime(2020, 1, 1), datetime(2021, 1, 1), datetime(2023, 6, 1)], catalog=[5], begins=[0.0],
             ends=[0.0], fit=False)
    assert e.n == 2 and not e.fit and e.kind == "edges"
    assert e.row_bins(np.array([dt(2019, 12, 31), dt(2020, 6, 1), dt(2022, 1, 1), dt(2023, 6, 1)])).tolist() == \
        [NO_BIN, 0, 1, NO_BIN]
    one = bins("cycle", catalog=[22], begins=[0.0], ends=[0.0])
    assert one.n == 1 and not one.fit  # a single bin: no fit unless asked for
    assert bins("cycle", catalog=[22], begins=[0.0], ends=[0.0], fit=True).fit
    with pytest.raises(ValueError, match="increasing"):
        bins([datetime(2021, 1, 1), datetime(2020, 1, 1)], catalog=[5], begins=[0.0], ends=[0.0])
    with pytest.raises(ValueError, match="no cycle"):
        bins("cycle", catalog=[], begins=[], ends=[])
    # years since the reference, for the fit
    r = bins("cycle", catalog=[22], begins=[0.0], ends=[0.0], reference=datetime(2020, 1, 1))
    assert r.years(np.array([dt(2021, 1, 1)]))[0] == pytest.approx(366 / 365.25)
    # by default t0 is the first bin's start: near the data, and unchanged when bins are appended
    assert one.reference == delta_time_of(cycle_start(22)) == one.starts[0]
