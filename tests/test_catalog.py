"""The catalog: no missed (parent cell, granule) pairs, CMR and local folders agree, runs need no network."""

import json
import socket
from pathlib import Path

import h5py
import healpix_geo.nested as hpn
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
import xarray as xr

import polaragg
from polaragg.catalog import AccessFallbackWarning, Catalog, CatalogError, build_catalog, read_directory
from polaragg.cli import main
from polaragg.grid import Grid
from polaragg.memory import model_for
from polaragg.plan import _tasks
from polaragg.sources import aoi_geometry, bbox_polygon
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


# --------------------------------------------------------------------------------------------------
# Real CMR records (tests/fixtures, sources and licences in tests/fixtures/SOURCES.md)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V005_NAME = "ATL06_20190221121851_08410203_005_01.h5"  # its DataGranule.Identifiers ProducerGranuleId
ALL_ORDER6 = np.arange(12 * 4**6, dtype=np.uint64)


def _v005_record() -> dict:
    return json.loads((FIXTURES / "umm" / "earthaccess_atl06_v005_umm.json").read_text())["items"][0]


def _v007_footprints() -> list[dict]:
    return json.loads((FIXTURES / "footprints" / "mortie_atl06_v007_region11_footprints.json").read_text())


def _v007_record(entry: dict, serial: int, *, size: dict | None = None, s3: bool = True,
                 https: bool = True) -> dict:
    """A UMM-G record (cloud-era layout, as in reference/cmr.md) around one real v007 footprint ring."""
    name = entry["granule"]
    day = f"{name[6:10]}/{name[10:12]}/{name[12:14]}"
    urls = []
    if https:
        urls.append({"URL": f"https://data.nsidc.earthdatacloud.nasa.gov/nsidc-cumulus-prod-protected/ATLAS/"
                            f"ATL06/007/{day}/{name}", "Type": "GET DATA"})
    if s3:
        urls.append({"URL": f"s3://nsidc-cumulus-prod-protected/ATLAS/ATL06/007/{day}/{name}",
                     "Type": "GET DATA VIA DIRECT ACCESS"})
    ring = [{"Longitude": lon, "Latitude": lat} for lon, lat in zip(entry["lons"], entry["lats"])]
    return {
        "meta": {"concept-id": f"G{3_000_000_000 + serial}-NSIDC_CPRD", "provider-id": "NSIDC_CPRD",
                 "revision-id": 1},
        "umm": {
            "GranuleUR": name,
            "CollectionReference": {"ShortName": "ATL06", "Version": "007"},
            "TemporalExtent": {"RangeDateTime": {"BeginningDateTime": "2024-01-01T00:00:00.000Z",
                                                 "EndingDateTime": "2024-01-01T00:05:00.000Z"}},
            "SpatialExtent": {"HorizontalSpatialDomain": {"Geometry": {"GPolygons": [{"Boundary": {"Points": ring}}]}}},
            "RelatedUrls": urls,
            "DataGranule": {"DayNightFlag": "Unspecified",
                            "Identifiers": [{"Identifier": name, "IdentifierType": "ProducerGranuleId"}],
                            "ArchiveAndDistributionInformation": [
                                {"Name": name, **(size or {"SizeInBytes": 100_000_000 + serial})}]},
        },
    }


def _v007_records() -> list[dict]:
    """One record per footprint entry; the granule listed twice gives the same record twice."""
    entries = _v007_footprints()
    first = {}
    for i, e in enumerate(entries):
        first.setdefault(e["granule"], i)
    return [_v007_record(e, first[e["granule"]]) for e in entries]


def _icesat2_track(node_lon: float, lat: np.ndarray) -> np.ndarray:
    """Longitude of the ascending ground track at `lat` (deg) for an ascending node at `node_lon`:
    circular orbit, inclination 92 deg, exact repeat of 1387 revolutions in 91 days (Earth turns 91/1387
    of a revolution under the orbit per revolution)."""
    inc = np.radians(92.0)
    u = np.arcsin(np.sin(np.radians(lat)) / np.sin(inc))  # argument of latitude, ascending branch
    lon = node_lon + np.degrees(np.arctan2(np.cos(inc) * np.sin(u), np.cos(u))) - 360.0 * 91 / 1387 * u / (2 * np.pi)
    return (lon + 180.0) % 360.0 - 180.0


def test_real_v005_record_is_catalogued():
    """GranuleUR `SC:ATL06.005:...`, name in ProducerGranuleId, Orbit footprint, `SizeUnit: NA`, https only."""
    record = _v005_record()
    order = 6
    aoi = cells_covering(bbox_polygon(-65.0, 55.0, -40.0, 84.0), order)  # west Greenland
    catalog = build_catalog([record], aoi, order, access="external")
    assert len(catalog.granules) == 1 and catalog.skipped == () and catalog.duplicates == ()
    row = catalog.granules.iloc[0]
    assert row["name"] == V005_NAME
    assert row.granule_id == "G2159085058-NSIDC_ECS"
    assert (row.rgt, row.cycle, row.region, row.version) == (841, 2, 3, "005")  # _0841 02 03_005
    assert row.size_bytes == 0  # Size 59.19 with SizeUnit "NA": unknown, not 59.19 MB
    assert row.url == row.https_url == record["umm"]["RelatedUrls"][0]["URL"]
    assert row.s3_url is None
    # the ground track between the record's start and end latitudes lies inside the footprint's cells
    lat = np.linspace(59.6, 79.9, 400)
    lon = _icesat2_track(record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Orbit"]["AscendingCrossing"], lat)
    assert -58.0 < lon.min() and lon.max() < -47.0  # west Greenland, as the record's browse images show
    track_cells = np.unique(hpn.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84"))
    parents = set(int(c) for c in row.parent_cells)
    assert parents and set(track_cells.tolist()) <= parents
    assert parents <= set(aoi.tolist())
    # and nothing far from it: every parent cell's centre is within ~1.5 cells (~150 km) of the track
    clon, clat = hpn.healpix_to_lonlat(np.asarray(row.parent_cells, np.uint64), order, ellipsoid="WGS84")
    track = np.radians(np.column_stack([lon, lat]))
    centres = np.radians(np.column_stack([clon, clat]))
    cos_d = (np.sin(centres[:, None, 1]) * np.sin(track[None, :, 1])
             + np.cos(centres[:, None, 1]) * np.cos(track[None, :, 1]) * np.cos(centres[:, None, 0] - track[None, :, 0]))
    km = 6371.0 * np.arccos(np.clip(cos_d, -1, 1)).min(axis=1)
    assert km.max() < 150.0


def test_real_v007_footprints_are_catalogued_once_each():
    """Nine real region-11 footprints, one granule twice: eight rows, each holding its vertices' cells."""
    entries = _v007_footprints()
    order = 6
    catalog = build_catalog(_v007_records(), ALL_ORDER6, order, access="direct")
    names = sorted({e["granule"] for e in entries})
    assert len(entries) == 9 and len(names) == 8
    assert catalog.granules.name.tolist() == names
    assert [d.name for d in catalog.duplicates] == ["ATL06_20240217120052_09262211_007_01.h5"]
    assert catalog.duplicates[0].kept == catalog.duplicates[0].name
    transformer = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    for entry in entries:
        row = catalog.granules[catalog.granules.name == entry["granule"]].iloc[0]
        rgt, cycle = int(entry["granule"][21:25]), int(entry["granule"][25:27])
        assert (row.rgt, row.cycle, row.region, row.version) == (rgt, cycle, 11, "007")
        assert row.url.startswith("s3://") and row.url.endswith(entry["granule"])
        lon, lat = np.asarray(entry["lons"]), np.asarray(entry["lats"])
        vertex_cells = set(hpn.lonlat_to_healpix(lon, lat, order, ellipsoid="WGS84").tolist())
        parents = set(int(c) for c in row.parent_cells)
        assert vertex_cells <= parents, f"{entry['granule']}: vertex cells missing"
        # no cell far from the footprint (polar stereographic distance, shapely)
        ring = shapely.Polygon(np.column_stack(transformer.transform(lon, lat)))
        clon, clat = hpn.healpix_to_lonlat(np.asarray(row.parent_cells, np.uint64), order, ellipsoid="WGS84")
        cx, cy = transformer.transform(clon, clat)
        far = max(ring.distance(shapely.Point(x, y)) for x, y in zip(cx, cy))
        assert far < 150_000.0, f"{entry['granule']}: a parent cell {far / 1e3:.0f} km from the footprint"


def _write_folder(folder: Path, records: list[dict]) -> None:
    for record in records:
        (folder / (record["umm"]["GranuleUR"].removesuffix(".h5") + ".umm.json")).write_text(json.dumps(record))


def test_bad_records_in_a_folder_are_skipped_and_listed(tmp_path):
    good = [_v007_records()[i] for i in (0, 1, 2, 4)]  # 3 is 2 again
    _write_folder(tmp_path, good)
    (tmp_path / "broken.umm.json").write_text('{"meta": {"concept-id": "G1-X"}, "umm": ')  # cut short
    (tmp_path / "list.umm.json").write_text("[1, 2]")
    nameless = json.loads(json.dumps(good[0]))
    nameless["meta"]["concept-id"] = "G9000000001-NSIDC_CPRD"
    nameless["umm"].update(GranuleUR="SC:ATL06.007:1", RelatedUrls=[])
    nameless["umm"]["DataGranule"]["Identifiers"] = []
    (tmp_path / "nameless.umm.json").write_text(json.dumps(nameless))
    shapeless = json.loads(json.dumps(_v007_records()[5]))
    del shapeless["umm"]["SpatialExtent"]
    _write_folder(tmp_path, [shapeless])
    catalog = build_catalog(read_directory(tmp_path), ALL_ORDER6, 6)
    assert catalog.granules.name.tolist() == sorted(r["umm"]["GranuleUR"] for r in good)
    reasons = {s.record: s.reason for s in catalog.skipped}
    assert set(reasons) == {str(tmp_path / "broken.umm.json"), str(tmp_path / "list.umm.json"),
                            "G9000000001-NSIDC_CPRD", shapeless["meta"]["concept-id"]}
    assert "not valid JSON" in reasons[str(tmp_path / "broken.umm.json")]
    assert "not a JSON object" in reasons[str(tmp_path / "list.umm.json")]
    assert "no ATL06 granule name" in reasons["G9000000001-NSIDC_CPRD"]
    assert "HorizontalSpatialDomain" in reasons[shapeless["meta"]["concept-id"]]
    assert any("4 unusable granule record(s) skipped" in line for line in catalog.notes())
    # the list survives the Parquet file
    again = Catalog.read(catalog.write(tmp_path / "out" / "c.parquet"))
    assert again.skipped == catalog.skipped
    assert again.granules.name.tolist() == catalog.granules.name.tolist()


def test_a_record_without_a_url_for_the_access_is_skipped():
    records = _v007_records()[:3]
    records[1] = _v007_record(_v007_footprints()[1], 1, https=False)
    catalog = build_catalog(records, ALL_ORDER6, 6, access="external")
    assert len(catalog.granules) == 2
    assert [(s.record, "no URL for access 'external'" in s.reason) for s in catalog.skipped] == [
        (records[1]["meta"]["concept-id"], True)]


def test_no_usable_record_at_all_is_an_error(tmp_path):
    (tmp_path / "broken.umm.json").write_text("{")
    with pytest.raises(CatalogError, match="no usable granule record: all 1 skipped"):
        build_catalog(read_directory(tmp_path), ALL_ORDER6, 6)


def test_duplicates_and_revisions_give_one_row_the_newest(tmp_path):
    records = _v007_records()  # one granule twice already
    first = records[0]
    newer = json.loads(json.dumps(first).replace("_007_01", "_007_02"))
    newer["meta"]["concept-id"] = "G3999999999-NSIDC_CPRD"
    newer["umm"]["DataGranule"]["ArchiveAndDistributionInformation"][0]["SizeInBytes"] = 123_456_789
    catalog = build_catalog([newer] + records + [first], ALL_ORDER6, 6, access="direct")
    old_name, new_name = first["umm"]["GranuleUR"], newer["umm"]["GranuleUR"]
    names = catalog.granules.name.tolist()
    assert len(names) == len(set(names)) == 8
    assert new_name in names and old_name not in names
    assert catalog.granules.granule_id.is_unique
    row = catalog.granules[catalog.granules.name == new_name].iloc[0]
    assert row.granule_id == "G3999999999-NSIDC_CPRD" and row.url.endswith(new_name)
    assert sorted((d.name, d.kept) for d in catalog.duplicates) == sorted([
        (old_name, new_name), (old_name, new_name),
        ("ATL06_20240217120052_09262211_007_01.h5", "ATL06_20240217120052_09262211_007_01.h5")])
    assert catalog.notes()[0].startswith("3 duplicate granule record(s) removed")
    again = Catalog.read(catalog.write(tmp_path / "c.parquet"))
    assert again.duplicates == catalog.duplicates
    # the resume fingerprint's inputs: one row per granule, by name, with its size
    sizes = {r["umm"]["GranuleUR"]: r["umm"]["DataGranule"]["ArchiveAndDistributionInformation"][0]["SizeInBytes"]
             for r in records + [newer] if r["umm"]["GranuleUR"] != old_name}
    inputs = again.inputs()
    assert list(inputs.columns) == ["name", "size_bytes"]
    assert inputs.name.tolist() == sorted(sizes)
    assert inputs.size_bytes.tolist() == [sizes[n] for n in sorted(sizes)]


SIZE_CASES = [  # ArchiveAndDistributionInformation entry -> bytes in the catalog (0 = unknown)
    ({"SizeInBytes": 41_234_567}, 41_234_567),
    ({"Size": 39.5, "SizeUnit": "MB"}, round(39.5 * 1024**2)),
    ({"Size": 40448.0, "SizeUnit": "KB"}, 40448 * 1024),
    ({"Size": 0.25, "SizeUnit": "GB"}, 1024**3 // 4),
    ({"Size": 59.1940822601, "SizeUnit": "NA"}, 0),  # the real v005 record's: unknown
    ({"Size": 59.19}, 0),  # no unit: unknown
]


def test_sizes_with_their_units():
    entry = _v007_footprints()[0]
    records = [_v007_record({**entry, "granule": entry["granule"].replace("_01.h5", f"_{i + 1:02d}.h5")}, i, size=info)
               for i, (info, _) in enumerate(SIZE_CASES)]
    got = [int(build_catalog([r], ALL_ORDER6, 6, access="direct").granules.size_bytes.iat[0]) for r in records]
    assert got == [expected for _, expected in SIZE_CASES]


def test_direct_access_falls_back_to_https_with_a_warning():
    records = [_v005_record(), _v007_records()[0]]
    with pytest.warns(AccessFallbackWarning, match=f"1 granule.*https.*{V005_NAME}"):
        catalog = build_catalog(records, ALL_ORDER6, 6, access="direct")
    urls = dict(zip(catalog.granules.name, catalog.granules.url))
    assert urls[V005_NAME] == records[0]["umm"]["RelatedUrls"][0]["URL"]
    assert urls[records[1]["umm"]["GranuleUR"]].startswith("s3://")
