"""Many cycles in one store: per-bin statistics and the change fit against brute-force references.

The references use only h5py, healpix-geo, pyproj, pandas and numpy (least squares per cell with
`np.linalg.lstsq`), never polaragg code; the truth of the synthetic change field comes from the
generator (`synthetic.true_dhdt`), which the aggregation never sees.
"""

from __future__ import annotations

import glob
import json
from datetime import UTC, datetime
from pathlib import Path

import healpix_geo.nested as hpn
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

import polaragg
from polaragg.recipe import RecipeError
from helpers import store_positions
from reference import cycle_of, kept, observations

YEAR_S = 365.25 * 86400.0
CYCLES = [15, 16, 17, 18, 19, 20, 21, 22]
BBOX = [80.0, -87.6, 100.0, -85.4]


def _recipe(cache: str, store: str, **time) -> dict:
    return {
        "name": "change",
        "source": {"kind": "synthetic", "seed": 7, "cycles": CYCLES, "rgts": {"start": 1, "stop": 1388, "step": 23},
                   "regions": [11], "bbox": BBOX, "cache_dir": cache},
        "aoi": {"bbox": BBOX},
        "grid": {"parent_order": 6, "child_order": 11},
        "executor": {"name": "single-threaded"},
        "output": {"store": store, "coarsest_order": 4},
        **({"time": time} if time else {}),
    }


def _with_cells(df: pd.DataFrame, order: int) -> pd.DataFrame:
    df = df.copy()
    df["cell"] = hpn.lonlat_to_healpix(df.lon.to_numpy(), df.lat.to_numpy(), order, ellipsoid="WGS84")
    df["w"] = 1.0 / df.s**2
    return df


def _group_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    df = df.assign(wh=df.w * df.h)
    g = df.groupby(keys)
    return pd.DataFrame({
        "count": g.size(), "h_mean": g.wh.sum() / g.w.sum(), "h_sigma": 1.0 / np.sqrt(g.w.sum()),
        "h_var": g.h.var(ddof=0), "h_min": g.h.min(), "h_max": g.h.max(),
        "h_q25": g.h.quantile(0.25), "h_q50": g.h.quantile(0.5), "h_q75": g.h.quantile(0.75),
        "t_mean": g.t.mean(),
    })


@pytest.fixture(scope="module")
def change_run(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("change-cache"))
    store = str(tmp_path_factory.mktemp("change-out") / "change.zarr")
    summary = polaragg.run(_recipe(cache, store), store=store, progress=False)
    folder = glob.glob(f"{cache}/synthetic-*")[0]
    return store, summary, folder


@pytest.fixture(scope="module")
def reference_rows(change_run):
    return _with_cells(kept(observations(change_run[2])), 11)


def test_every_per_bin_statistic_matches_brute_force(change_run, reference_rows):
    store, summary, _ = change_run
    ref = _group_stats(reference_rows, ["cycle", "cell"])
    ds = xr.open_zarr(store, decode_times=False).load()
    assert ds.sizes["time"] == len(CYCLES)
    b, pos = store_positions(ds, CYCLES, ref.index)
    np.testing.assert_array_equal(ds["count"].values[b, pos], ref["count"].to_numpy())
    assert int(ds["count"].sum()) == len(reference_rows) == summary.observations  # nothing else anywhere
    for name in ("h_mean", "h_sigma", "h_var", "h_min", "h_max", "h_q25", "h_q50", "h_q75", "t_mean"):
        np.testing.assert_allclose(ds[name].values[b, pos], ref[name].to_numpy(), rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    empty = np.ones(ds["count"].shape, bool)
    empty[b, pos] = False
    assert (ds["count"].values[empty] == 0).all() and np.isnan(ds["h_mean"].values[empty]).all()


def _at_order(df: pd.DataFrame, order: int) -> pd.DataFrame:
    """The reference rows with their cell at a coarser order (nested ids: drop two bits per order)."""
    return df.assign(cell=df.cell.to_numpy() >> np.uint64(2 * (11 - order)))


def _brute_fit(df: pd.DataFrame, order: int) -> dict[int, dict]:
    """Per cell: weighted lstsq of h = a + b x + c y + d (t - t0), x, y in EPSG:3031 metres about the cell
    centre, t in years since the first bin's start (cycle 15, from the reference table); errors scaled by
    the residuals (observations and bins); dh per cycle."""
    to_ps = pyproj.Transformer.from_crs(4326, 3031, always_xy=True)
    x, y = to_ps.transform(df.lon.to_numpy(), df.lat.to_numpy())
    cells = df.cell.to_numpy()
    uniq = np.unique(cells)
    clon, clat = hpn.healpix_to_lonlat(uniq, order, ellipsoid="WGS84")
    cx, cy = to_ps.transform(np.asarray(clon), np.asarray(clat))
    k = np.searchsorted(uniq, cells)
    t0 = (datetime(2022, 3, 23, 3, 36, tzinfo=UTC) - datetime(2018, 1, 1, tzinfo=UTC)).total_seconds()  # cycle 15
    df = df.assign(x=x - cx[k], y=y - cy[k], ty=(df.t - t0) / YEAR_S)  # t0: the first bin's start
    out = {}
    for cell, g in df.groupby("cell"):
        if g.cycle.nunique() < 3 or len(g) < 5:
            continue
        A = np.column_stack([np.ones(len(g)), g.x, g.y, g.ty])
        sw = np.sqrt(g.w.to_numpy())
        h0 = g.h.to_numpy()[0]  # about one observed height, for lstsq's precision
        beta, *_ = np.linalg.lstsq(A * sw[:, None], (g.h.to_numpy() - h0) * sw, rcond=None)
        beta[0] += h0
        r = g.h.to_numpy() - A @ beta
        rss = float(np.sum(g.w * r**2))
        formal = np.linalg.inv((A * g.w.to_numpy()[:, None]).T @ A)
        # bins as samples: each cycle's weighted mean residual, regressed on the cycles' mean times
        w, cyc = g.w.to_numpy(), g.cycle.to_numpy()
        r_k = np.array([np.sum(w[cyc == c] * r[cyc == c]) / w[cyc == c].sum() for c in np.unique(cyc)])
        t_k = np.array([np.sum(w[cyc == c] * A[cyc == c, 3]) / w[cyc == c].sum() for c in np.unique(cyc)])
        s_bins = np.sum(r_k**2) / (r_k.size - 2) / np.sum((t_k - t_k.mean()) ** 2) / formal[3, 3]
        cov = formal * max(1.0, rss / (len(g) - 4), s_bins)
        surface = g.h.to_numpy() - (A[:, :3] @ beta[:3])
        dh = {c: float(np.sum(gg.w * surface[g.cycle.to_numpy() == c]) / gg.w.sum())
              for c, gg in g.groupby("cycle")}
        out[int(cell)] = {"dhdt": beta[3], "dhdt_sigma": np.sqrt(cov[3, 3]), "h_fit": beta[0],
                          "slope_x": beta[1], "slope_y": beta[2], "h_rms": np.sqrt(rss / g.w.sum()), "dh": dh,
                          "bins": g.cycle.nunique()}
    return out


def test_change_fit_matches_brute_force_least_squares(change_run, reference_rows):
    store, summary, _ = change_run
    ds = xr.open_zarr(store, decode_times=False).load()
    ref = _brute_fit(reference_rows, 11)
    ids = ds.cell_ids.values
    ok = ds["fit_status"].values == 0
    fitted = set(ids[ok].tolist())
    assert len(fitted) >= 50
    assert fitted <= set(ref)  # every fitted cell has >= 3 bins and 5 observations
    checked = 0
    for cell in sorted(fitted):
        i = int(np.searchsorted(ids, cell))
        want = ref[cell]
        for name in ("dhdt", "dhdt_sigma", "h_fit", "slope_x", "slope_y", "h_rms"):
            got = float(ds[name].values[i])
            assert got == pytest.approx(want[name], rel=1e-6, abs=1e-9), (cell, name)
        for c, dh in want["dh"].items():
            assert float(ds["dh"].values[CYCLES.index(c), i]) == pytest.approx(dh, rel=1e-6, abs=1e-8), (cell, c)
        assert int(ds["fit_bins"].values[i]) == want["bins"]
        checked += 1
    assert checked == len(fitted)
    # cells not fitted carry NaN, never a number
    for name in ("dhdt", "dhdt_sigma", "h_fit", "h_rms"):
        assert np.isnan(ds[name].values[~ok]).all()
    assert np.isnan(ds["dh"].values[:, ~ok]).all()
    outcomes = summary.fit_outcomes
    assert outcomes.get("ok") == len(fitted)
    assert sum(outcomes.values()) == int((ds["count"].values.sum(axis=0) > 0).sum())


def test_recovered_dhdt_agrees_with_the_imposed_truth(change_run):
    from polaragg.synthetic import true_dhdt

    store, _, _ = change_run
    ds = xr.open_zarr(store, decode_times=False).load()
    sel = (ds["fit_status"].values == 0) & (ds["fit_bins"].values >= 4)
    assert sel.sum() >= 50
    lon, lat = hpn.healpix_to_lonlat(ds.cell_ids.values[sel], 11, ellipsoid="WGS84")
    truth = true_dhdt(np.asarray(lat), np.asarray(lon))
    z = np.abs(ds["dhdt"].values[sel] - truth) / ds["dhdt_sigma"].values[sel]
    assert np.mean(z <= 3) >= 0.95, np.quantile(z, [0.5, 0.9, 0.95, 0.99])
    assert np.ptp(truth) > 0.1  # the area has structure to recover


def test_store_decodes_time_and_opens_with_xdggs(change_run):
    import xdggs

    store, _, _ = change_run
    ds = xr.open_zarr(store)
    assert np.issubdtype(ds["time"].dtype, np.datetime64)
    assert np.issubdtype(ds["t_mean"].dtype, np.datetime64)
    assert "time_bounds" in ds.coords and ds["time"].attrs.get("bounds") == "time_bounds" or \
        ds["time"].encoding.get("bounds") == "time_bounds"
    starts = {15: datetime(2022, 3, 23, 3, 36), 16: datetime(2022, 6, 21, 23, 16), 17: datetime(2022, 9, 20, 18, 56),
              18: datetime(2022, 12, 20, 14, 36), 19: datetime(2023, 3, 21, 10, 15), 20: datetime(2023, 6, 20, 5, 55),
              21: datetime(2023, 9, 19, 1, 35), 22: datetime(2023, 12, 18, 21, 15),
              23: datetime(2024, 3, 18, 16, 55)}
    bounds = ds["time_bounds"].values
    for i, c in enumerate(CYCLES):
        assert bounds[i, 0] == np.datetime64(starts[c]) and bounds[i, 1] == np.datetime64(starts[c + 1])
        assert bounds[i, 0] < ds["time"].values[i] < bounds[i, 1]
    # t_mean of each bin's cells lies inside the bin
    t = ds["t_mean"].values
    for i in range(len(CYCLES)):
        ti = t[i][~np.isnat(t[i])]
        assert ti.size and (ti >= bounds[i, 0]).all() and (ti < bounds[i, 1]).all()
    decoded = ds.dggs.decode()
    assert decoded.dggs.grid_info.level == 11


def test_time_selection_and_month_bins_match_brute_force(change_run, reference_rows, tmp_path):
    """Two cycles selected and binned by calendar month, within a date window: granules of other cycles
    are not read, rows outside the window are counted as outside, and each month matches the reference."""
    _, _, folder = change_run
    cache = str(Path(folder).parent)  # the same source: its granules are generated already
    recipe = _recipe(cache, str(tmp_path / "m.zarr"), cycles=[20, 21], bins="month", start="2023-07-01",
                     end="2023-10-01")
    summary = polaragg.run(recipe, store=str(tmp_path / "m.zarr"), progress=False)
    ds = xr.open_zarr(str(tmp_path / "m.zarr"), decode_times=False).load()
    df = reference_rows[reference_rows.cycle.isin([20, 21])]
    lo = (datetime(2023, 7, 1, tzinfo=UTC) - datetime(2018, 1, 1, tzinfo=UTC)).total_seconds()
    hi = (datetime(2023, 10, 1, tzinfo=UTC) - datetime(2018, 1, 1, tzinfo=UTC)).total_seconds()
    df = df[(df.t >= lo) & (df.t < hi)]
    when = pd.to_datetime(df.t.to_numpy(), unit="s", origin=pd.Timestamp("2018-01-01"))
    df = df.assign(month=when.month.to_numpy())
    ref = _group_stats(df, ["month", "cell"])
    assert ds.sizes["time"] == 3  # July, August, September
    months = ref.index.get_level_values("month").to_numpy() - 7
    pos = np.searchsorted(ds.cell_ids.values, ref.index.get_level_values("cell").to_numpy())
    np.testing.assert_array_equal(ds["count"].values[months, pos], ref["count"].to_numpy())
    np.testing.assert_allclose(ds["h_q50"].values[months, pos], ref["h_q50"].to_numpy(), rtol=1e-9)
    assert int(ds["count"].sum()) == len(df) == summary.observations
    # only granules of cycles 20 and 21 were read
    inputs = json.loads(xr.open_zarr(str(tmp_path / "m.zarr")).attrs["recipe"])["time"]
    assert inputs["cycles"] == [20, 21]
    starts = {p: (datetime.strptime(Path(p).name[6:20], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                  - datetime(2018, 1, 1, tzinfo=UTC)).total_seconds()
              for p in glob.glob(f"{folder}/*.h5") if cycle_of(p) in (20, 21)}
    assert not [p for p, t in starts.items() if lo - 900 <= t < lo]  # none straddles the window's start
    assert summary.granules == sum(lo <= t < hi for t in starts.values()) < len(starts)


@pytest.mark.parametrize("time, message", [
    ({"cycles": [0]}, "time.cycles"),
    ({"cycles": {"start": 22, "stop": 20}}, "stop must be >= start"),
    ({"start": "2024-01-01", "end": "2023-01-01"}, "end must be after start"),
    ({"bins": ["2024-01-01", "2023-01-01"]}, "increase"),
    ({"bins": "decade"}, "time.bins"),
    ({"min_bins": 1}, "time.min_bins"),
])
def test_bad_time_sections_are_refused_with_the_field(tmp_path, time, message):
    with pytest.raises(RecipeError, match=message):
        polaragg.load_recipe(_recipe(str(tmp_path), str(tmp_path / "x.zarr"), **time))


@pytest.mark.parametrize("order", [10, 9, 8, 7, 6, 5, 4])
def test_every_pyramid_order_equals_brute_force_at_that_order(change_run, reference_rows, order):
    """Orders 10-6 are computed inside the tasks (parents are order 6), quantiles included; 5 and 4 are merged
    from the sufficient statistics and have no quantiles. Each equals the reference computed directly there."""
    import xdggs  # noqa: F401 - the .dggs accessor

    store, _, _ = change_run
    df = _at_order(reference_rows, order)
    ref = _group_stats(df, ["cycle", "cell"])
    ds = xr.open_zarr(store, group=str(order), decode_times=False).load()
    assert int(ds.cell_ids.attrs["level"]) == order
    ids = ds.cell_ids.values
    b = np.searchsorted(CYCLES, ref.index.get_level_values("cycle").to_numpy())
    pos = np.searchsorted(ids, ref.index.get_level_values("cell").to_numpy())
    assert np.array_equal(ids[pos], ref.index.get_level_values("cell").to_numpy())
    np.testing.assert_array_equal(ds["count"].values[b, pos], ref["count"].to_numpy())
    assert int(ds["count"].sum()) == len(df)
    exact = ["h_mean", "h_sigma", "h_var", "h_min", "h_max", "t_mean"]
    quantiles = ["h_q25", "h_q50", "h_q75"]
    if order >= 6:
        exact += quantiles
    else:
        assert not set(quantiles) & set(ds.data_vars)
        assert "absent" in xr.open_zarr(store, group=str(order)).attrs["quantiles"]
    for name in exact:
        np.testing.assert_allclose(ds[name].values[b, pos], ref[name].to_numpy(), rtol=1e-6, atol=1e-9,
                                   err_msg=f"order {order} {name}")
    fits = _brute_fit(df, order)
    ok = ds["fit_status"].values == 0
    assert ok.any()
    for i in np.flatnonzero(ok):
        want = fits[int(ids[i])]
        for name in ("dhdt", "dhdt_sigma", "h_fit", "slope_x", "slope_y", "h_rms"):
            assert float(ds[name].values[i]) == pytest.approx(want[name], rel=1e-6, abs=1e-9), (order, name)
        for c, dh in want["dh"].items():
            assert float(ds["dh"].values[CYCLES.index(c), i]) == pytest.approx(dh, rel=1e-6, abs=1e-8)
    assert xr.open_zarr(store, group=str(order)).dggs.decode().dggs.grid_info.level == order


def test_root_lists_the_pyramid_in_the_multiscales_convention(change_run):
    import zarr

    store, _, _ = change_run
    attrs = zarr.open_group(store, mode="r").attrs
    assert attrs["zarr_conventions"][0]["name"] == "multiscales"
    layout = attrs["multiscales"]["layout"]
    assert [e["order"] for e in layout] == list(range(11, 3, -1))
    assert layout[0]["asset"] == "." and all(e["derived_from"] == p["asset"] for p, e in zip(layout, layout[1:]))
    assert [e["transform"]["scale"][0] for e in layout] == [2.0**k for k in range(8)]


def _same_store(a: str, b: str, groups: tuple[str, ...] = ()) -> None:
    for group in (None, *groups):
        x = xr.open_zarr(a, group=group, decode_times=False).load()
        y = xr.open_zarr(b, group=group, decode_times=False).load()
        assert set(x.data_vars) == set(y.data_vars)
        np.testing.assert_array_equal(x.cell_ids.values, y.cell_ids.values)
        for name in x.data_vars:
            if np.issubdtype(x[name].dtype, np.integer):
                np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=f"{group} {name}")
            else:
                np.testing.assert_allclose(x[name].values, y[name].values, rtol=1e-12, atol=0, equal_nan=True,
                                           err_msg=f"{group} {name}")


def test_time_split_run_equals_the_unsplit_one(change_run, tmp_path):
    """A memory bound below a parent's rows over all bins but above its rows in a few bins: each task reduces
    its bins in groups, one group's rows at a time, and the store equals the unsplit one."""
    from polaragg.memory import model_for
    from polaragg.runner import plan_recipe

    store0, _, folder = change_run
    recipe = _recipe(str(Path(folder).parent), str(tmp_path / "split.zarr"))
    unsplit = plan_recipe(recipe)
    model = model_for("single-threaded")
    busiest = max(t.expected_rows for t in unsplit.tasks)
    recipe["executor"]["memory_per_task"] = str(int(model.baseline_bytes + model.bytes_per_row * busiest * 0.45))
    plan = plan_recipe(recipe)
    assert plan.split == 1 and len(plan.bin_groups) >= 3
    assert plan.bin_groups[0][0] == 0 and plan.bin_groups[-1][1] == len(CYCLES)
    assert all(a[1] == b[0] for a, b in zip(plan.bin_groups, plan.bin_groups[1:]))
    assert max(t.projected_bytes for t in plan.tasks) <= int(recipe["executor"]["memory_per_task"])
    polaragg.run(recipe, store=str(tmp_path / "split.zarr"), progress=False)
    _same_store(str(tmp_path / "split.zarr"), store0, ("10", "6", "4"))


def test_append_of_a_cycle_equals_a_full_recompute(change_run, tmp_path):
    """Cycles 15-21 first, then `polaragg run --append` with the recipe extended to cycle 22: only cycle 22's
    granules are read, and the store (every order, the fit, dh of the old bins) equals the full run's."""
    from polaragg.cli import main
    from polaragg.ledger import read_records

    store0, summary0, folder = change_run
    cache = str(Path(folder).parent)
    store = str(tmp_path / "grow.zarr")
    first = _recipe(cache, store, cycles=CYCLES[:-1])
    polaragg.run(first, store=store, progress=False)
    assert xr.open_zarr(store).sizes["time"] == len(CYCLES) - 1
    full = _recipe(cache, store, cycles=CYCLES)
    path = tmp_path / "grow.yaml"
    path.write_text(__import__("yaml").safe_dump(full))
    assert main(["run", str(path), "--append"]) == 0
    _same_store(store, store0, ("10", "8", "6", "5", "4"))
    records = read_records(store)
    read_now = {rep["granule"] for r in records for rep in r.granule_reports}  # partitioned by the append
    assert read_now and all(int(g[1:3]) == CYCLES[-1] for g in read_now)  # synthetic ids: G<cycle><rgt>...
    assert sum(r.observations for r in records) == summary0.observations
    assert "appending" not in xr.open_zarr(store).attrs
    # the summary's cells with data (summed from the tasks' records) count every bin, old and new
    with_data = int((xr.open_zarr(store)["count"].sum("time") > 0).sum())
    assert json.loads(xr.open_zarr(store).attrs["run_summary"])["child_cells_with_data"] == with_data
    assert with_data == summary0.child_cells_with_data
    from polaragg.validate import validate_store

    assert validate_store(store) == []
    # nothing left to add, and a recipe that changes more than its time section, are refused with a reason
    assert main(["run", str(path), "--append"]) == 2
    other = dict(full, filters={"quality_max": 1})
    path.write_text(__import__("yaml").safe_dump(other))
    assert main(["run", str(path), "--append"]) == 2
