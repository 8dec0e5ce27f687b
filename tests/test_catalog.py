"""The catalog: no missed (parent cell, granule) pairs, CMR and local folders agree, runs need no network."""

import json
import socket

import h5py
import healpix_geo.nested as hpn
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import polaragg
from polaragg.catalog import Catalog, build_catalog, read_directory
from polaragg.cli import main
from polaragg.grid import Grid
from polaragg.memory import model_for
from polaragg.plan import _tasks
from polaragg.sources import aoi_geometry
from polaragg.coverage import cells_covering
from polaragg.recipe import Aoi
from polaragg.synthetic import SynthConfig, generate


def _observed_parents(h5_path, order):
    """Parent cells of every row of every beam, from the HDF5 coordinates (no polaragg code)."""
    with h5py.File(h5_path) as f:
        cells = [hpn.lonlat_to_healpix(f[f"{b}/land_ice_segments/longitude"][:],
                                       f[f"{b}/land_ice_segments/latitude"][:], order, ellipsoid="WGS84")
                 for b in f if b.startswith("gt")]
    return np.unique(np.concatenate(cells))


def _check_no_missed_pairs(catalog: Catalog, order: int):
    """Every observed (cell, granule) pair inside the AOI parents is in the catalog; returns pair counts."""
    aoi = set(catalog.parents.tolist())
    planned = observed = 0
    for row in catalog.granules.itertuples():
        seen = {int(c) for c in _observed_parents(row.url, order)} & aoi
        listed = {int(c) for c in row.parent_cells}
        missed = seen - listed
        assert not missed, f"{row.name}: cells with data missing from the catalog: {sorted(missed)}"
        planned += len(listed)
        observed += len(seen)
    return planned, observed


@pytest.fixture(scope="module")
def full_granules(tmp_path_factory):
    """Full-length granules (every row of regions 10, 11, 12) for a spread of RGTs."""
    out = tmp_path_factory.mktemp("full")
    generate(out, SynthConfig(seed=11, rgts=(7, 350, 700, 1101), regions=(10, 11, 12)))
    return out


def test_no_missed_pairs_on_full_granules_over_the_outline(full_granules):
    order = 6
    parents = cells_covering(aoi_geometry(Aoi(outline=True)), order)
    catalog = build_catalog(read_directory(full_granules), parents, order)
    planned, observed = _check_no_missed_pairs(catalog, order)
    ratio = 1 - observed / planned
    print(f"\nfull granules over the outline: {planned} pairs planned, {observed} with data, "
          f"over-assignment {ratio:.1%}")
    assert observed > 100
    assert ratio < 0.35


def test_no_missed_pairs_on_the_demo(demo_cache):
    folder, recipe = demo_cache
    order = recipe.grid.parent_order
    catalog = build_catalog(read_directory(folder), cells_covering(aoi_geometry(recipe.aoi), order), order)
    planned, observed = _check_no_missed_pairs(catalog, order)
    print(f"\ndemo: {planned} pairs planned, {observed} with data, over-assignment {1 - observed / planned:.1%}")
    assert observed > 0


@pytest.mark.parametrize("split", [2, 4, 32])
def test_split_tasks_list_every_granule_with_rows_in_their_range(full_granules, split):
    """A split parent's tasks get only the granules crossing their child range, and never miss one."""
    grid = Grid(6, 12)
    parents = cells_covering(aoi_geometry(Aoi(outline=True)), grid.parent_order)
    catalog = build_catalog(read_directory(full_granules), parents, grid.parent_order)
    plan = _tasks(catalog, grid, np.unique(parents), split, model_for("single-threaded"))
    listed = {(t.parent, t.child_lo): {g.granule_id for g in t.granules} for t in plan}
    size = grid.children_per_parent // split
    seen_pairs = assigned = 0
    for row in catalog.granules.itertuples():
        ranges = {(int(c) >> grid.shift, (int(c) % grid.children_per_parent) // size * size)
                  for c in _observed_parents(row.url, grid.child_order)}
        ranges = {r for r in ranges if r[0] in set(catalog.parents.tolist())}
        for key in ranges:
            assert row.granule_id in listed[key], f"{row.name} has rows in task {key} but is not listed there"
        seen_pairs += len(ranges)
    assigned = sum(map(len, listed.values()))
    whole = sum(len(c) for c in catalog.granules.parent_cells)
    print(f"\nsplit x{split}: {assigned} (task, granule) pairs for {whole} parent pairs, {seen_pairs} with data")
    assert seen_pairs > 50
    assert assigned < 0.8 * whole * split  # pruned: far fewer reads than every task reading its whole parent


def test_same_catalog_from_local_cmr_and_from_the_folder(demo_cache, cmr_server_factory, tmp_path):
    folder, recipe = demo_cache
    records = read_directory(folder)
    served = [{k: v for k, v in r.items() if k != "local_path"} for r in records]
    # a granule of another cycle on the server must be filtered out by the cycle name pattern
    other = json.loads(json.dumps(served[0]).replace("2211_006", "2311_006"))  # name, identifiers, URLs
    other["meta"]["concept-id"] = "G9999999999-NSIDC_CPRD"
    server = cmr_server_factory(served + [other])

    doc = recipe.model_dump(mode="json")
    doc["source"] = {"kind": "cmr", "scheme": "http", "host": server.host, "cycles": [22], "timeout": 5,
                     "retries": 1, "access": "direct"}
    cmr_recipe = polaragg.load_recipe(doc)
    out = tmp_path / "cmr.parquet"
    path = tmp_path / "cmr.yaml"
    path.write_text(json.dumps(doc))
    assert main(["catalog", str(path), "--out", str(out)]) == 0
    from_cmr = Catalog.read(out)

    from_dir = build_catalog(records, from_cmr.parents, recipe.grid.parent_order, access="direct")
    assert cmr_recipe.source.kind == "cmr"
    cols = [c for c in from_dir.granules.columns if c not in ("parent_cells", "parent_shares")]
    pd.testing.assert_frame_equal(from_cmr.granules[cols], from_dir.granules[cols])
    for a, b in zip(from_cmr.granules.parent_cells, from_dir.granules.parent_cells):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(from_cmr.parents, from_dir.parents)
    assert from_cmr.granules.url.str.startswith("s3://").all()
    assert len(from_cmr.granules) == len(records)


def test_run_from_a_catalog_makes_no_network_call(demo_cache, tmp_path, monkeypatch):
    folder, recipe = demo_cache
    catalog_path = tmp_path / "demo.parquet"
    order = recipe.grid.parent_order
    parents = cells_covering(aoi_geometry(Aoi(bbox=(85.0, -87.0, 95.0, -85.0))), order)
    build_catalog(read_directory(folder), parents, order).write(catalog_path)
    doc = recipe.model_dump(mode="json")
    doc["source"] = {"kind": "catalog", "path": str(catalog_path)}
    offline = polaragg.load_recipe(doc)

    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network blocked in this test: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, a[0]))
    store = str(tmp_path / "offline.zarr")
    summary = polaragg.run(offline, store=store, executor="threads", progress=False)
    assert attempts == []
    assert summary.cells_total == len(parents)
    assert summary.observations > 0
    assert int(xr.open_zarr(store)["count"].sum()) == summary.observations
