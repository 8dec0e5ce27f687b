"""The demo store against an independent brute-force reference: h5py + healpix-geo + pandas only."""

import glob

import healpix_geo.nested as hpn
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from reference import kept, observations


def _brute_force(folder, child_order):
    df = observations(folder)
    raw = len(df)
    df = kept(df)
    df["cell"] = hpn.lonlat_to_healpix(df.lon.to_numpy(), df.lat.to_numpy(), child_order, ellipsoid="WGS84")
    df["w"] = 1.0 / df.s**2
    df["wh"] = df.w * df.h
    g = df.groupby("cell")
    ref = pd.DataFrame({
        "count": g.size(),
        "h_mean": g.wh.sum() / g.w.sum(),
        "h_sigma": 1.0 / np.sqrt(g.w.sum()),
        "h_var": g.h.var(ddof=0),
        "h_min": g.h.min(),
        "h_max": g.h.max(),
        "h_q25": g.h.quantile(0.25),
        "h_q50": g.h.quantile(0.50),
        "h_q75": g.h.quantile(0.75),
        "t_mean": g.t.mean(),
    })
    return ref, raw, df[["cell", "file"]]


@pytest.fixture(scope="module")
def reference(demo_cache):
    folder, recipe = demo_cache
    return _brute_force(folder, recipe.grid.child_order)


def test_demo_has_realistic_density(demo_cache, demo_store, reference):
    folder, recipe = demo_cache
    store, summary = demo_store
    _, raw, _ = reference
    ds = xr.open_zarr(store)
    parents = np.unique(ds.cell_ids.values >> np.uint64(2 * (recipe.grid.child_order - recipe.grid.parent_order)))
    assert len(parents) >= 20
    # some parent cells lie poleward of 85S, where tracks converge
    lon, lat = hpn.healpix_to_lonlat(parents, recipe.grid.parent_order, ellipsoid="WGS84")
    assert (np.asarray(lat) < -85).sum() >= 3
    assert len(glob.glob(f"{folder}/*.h5")) >= 50
    assert raw >= 5_000_000


def test_every_statistic_matches_brute_force(demo_store, reference):
    store, summary = demo_store
    ref, _, _ = reference
    full = xr.open_zarr(store, decode_times=False).load()  # t_mean as stored: seconds, like delta_time
    assert full.sizes["time"] == 1  # the demo is one cycle: one time bin
    ds = full.isel(time=0)
    ids = ds.cell_ids.values
    # every cell with data in the reference is in the store, and none of the store's other cells has data
    assert np.isin(ref.index.to_numpy(), ids).all()
    pos = np.searchsorted(ids, ref.index.to_numpy())
    np.testing.assert_array_equal(ds["count"].values[pos], ref["count"].to_numpy())
    assert int(ds["count"].sum()) == int(ref["count"].sum()) == summary.observations
    for name in ref.columns.drop("count"):
        np.testing.assert_allclose(ds[name].values[pos], ref[name].to_numpy(), rtol=1e-6, err_msg=name)
    empty = np.setdiff1d(np.arange(ids.size), pos)
    assert (ds["count"].values[empty] == 0).all()
    assert np.isnan(ds["h_mean"].values[empty]).all()


def test_store_decodes_with_stock_xdggs(demo_store):
    import xdggs  # noqa: F401  (registers the .dggs accessor)

    store, _ = demo_store
    ds = xr.open_zarr(store).dggs.decode()
    info = ds.dggs.grid_info
    assert info.level == 12
    centers = ds.dggs.cell_centers()
    assert -89.0 < float(centers.latitude.min()) and float(centers.latitude.max()) < -81.5
    raw = xr.open_zarr(store)
    assert raw.attrs["recipe_fingerprint"]
    assert raw.cell_ids.attrs == {"grid_name": "healpix", "level": 12, "indexing_scheme": "nested",
                                  "ellipsoid": "WGS84"}
    # chunking: one time bin and one parent cell (4096 children) per chunk
    assert ds["h_mean"].dims == ("time", "cells")
    assert ds["h_mean"].encoding["chunks"] == (1, 4096)


def test_each_task_read_one_segment_per_granule_with_rows_in_its_cells(demo_cache, demo_store, reference):
    """The ledger's `segments` (what the request model prices as the cell stage's ranged GETs) is, per task,
    the number of granules with kept rows in the task's cells, counted here by brute force."""
    from polaragg.ledger import read_records

    folder, recipe = demo_cache
    store, _ = demo_store
    _, _, rows = reference
    shift = np.uint64(2 * (recipe.grid.child_order - recipe.grid.parent_order))
    cells = rows.cell.to_numpy(dtype=np.uint64)
    parent, local = cells >> shift, (cells & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    records = read_records(store)
    assert records and sum(r.segments for r in records) > len(records)  # several granules per task
    for r in records:
        inside = (parent == np.uint64(r.parent)) & (local >= r.child_lo) & (local < r.child_hi)
        assert r.segments == len(np.unique(rows.file.to_numpy()[inside])), (r.parent, r.child_lo)
