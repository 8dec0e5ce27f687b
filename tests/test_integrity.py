"""No silent loss, no silent double count: footprints that lie, duplicate granules, invalid rows,
inputs changed before --resume, chunks missing or edited after a run."""

import json
import shutil
from pathlib import Path

import h5py
import healpix_geo.nested as hpn
import numpy as np
import pytest
import xarray as xr
import yaml

import polaragg
from polaragg.cli import main
from polaragg.ledger import LEDGER_SUFFIX, read_records
from polaragg.stats import STATS
from polaragg.store import schema_of

SUB_BBOX = (85.0, -87.0, 95.0, -85.0)
BEAMS = ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r")
FILL = 3.0e38


def _true_parents(h5_path: Path, order: int = 6) -> set[int]:
    """Parent cells holding rows of a granule, from its HDF5 coordinates (h5py + healpix_geo only)."""
    cells = []
    with h5py.File(h5_path, "r") as f:
        for beam in BEAMS:
            if f"{beam}/land_ice_segments" not in f:
                continue
            lat = f[f"{beam}/land_ice_segments/latitude"][:]
            lon = f[f"{beam}/land_ice_segments/longitude"][:]
            ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90)
            cells.append(np.asarray(hpn.lonlat_to_healpix(lon[ok], lat[ok], order, ellipsoid="WGS84")))
    return set(np.unique(np.concatenate(cells)).tolist())


@pytest.fixture(scope="module")
def sub(demo_cache, demo_store):
    """(granule folder, AOI parent cells, reference Dataset over them, granules crossing them)."""
    folder = demo_cache[0]
    ref = xr.open_zarr(demo_store[0], decode_times=False).load()  # every variable as stored (t_mean in seconds)
    recipe = demo_cache[1].model_copy(update={"aoi": demo_cache[1].aoi.model_copy(update={"bbox": SUB_BBOX})})
    plan = polaragg.runner.plan_recipe(recipe)
    parents = set(int(p) for p in plan.parents)
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values >> np.uint64(12), list(parents))))
    crossing = {}
    for h5 in sorted(folder.glob("*.h5")):
        inside = _true_parents(h5) & parents
        if inside:
            crossing[h5.name.removesuffix(".h5")] = inside
    return folder, parents, ref, crossing, recipe


def _copy_folder(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / f"{name}.umm.json", dst / f"{name}.umm.json")
        (dst / f"{name}.h5").symlink_to(src / f"{name}.h5")
    return dst


def _recipe(tmp_path: Path, folder: Path, base) -> str:
    doc = base.model_dump(mode="json", by_alias=True)
    doc["source"] = {"kind": "directory", "path": str(folder)}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _assert_same(store: str, ref: xr.Dataset) -> None:
    import zarr

    got = xr.open_zarr(store, decode_times=False).load()
    np.testing.assert_array_equal(got.cell_ids.values, ref.cell_ids.values)
    np.testing.assert_array_equal(got.time.values, ref.time.values)
    np.testing.assert_array_equal(got.time_bounds.values, ref.time_bounds.values)
    variables = schema_of(zarr.open_group(store, mode="r")).variables
    assert {s.name for s in STATS} <= {s.name for s in variables}
    assert set(got.data_vars) == set(ref.data_vars) == {s.name for s in variables}
    for spec in variables:
        assert got[spec.name].dims == ref[spec.name].dims, spec.name
        np.testing.assert_allclose(got[spec.name].values, ref[spec.name].values, rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=spec.name)


def _ring(record: dict) -> list[dict]:
    return record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"][0]["Boundary"]["Points"]


def _set_ring(record: dict, points: list[dict]) -> None:
    record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"][0]["Boundary"]["Points"] = points


def _cut_short(points: list[dict], lon: float, lat: float) -> list[dict]:
    """A footprint shrunk to a small triangle around one observation."""
    d = 0.02
    return [{"Longitude": lon - d, "Latitude": lat - d / 4}, {"Longitude": lon + d, "Latitude": lat - d / 4},
            {"Longitude": lon, "Latitude": lat + d / 4}, {"Longitude": lon - d, "Latitude": lat - d / 4}]


def _shifted(points: list[dict], *_: float) -> list[dict]:
    return [{"Longitude": p["Longitude"] + 6.0, "Latitude": p["Latitude"]} for p in points]


def _with_lying_footprint(sub, tmp_path: Path, name: str, lie) -> Path:
    """A copy of the granules crossing the sub-AOI in which granule `name`'s footprint is replaced by
    `lie(ring, lon, lat)`, given one of its observations inside the AOI."""
    folder, parents, _, crossing, _ = sub
    work = _copy_folder(folder, tmp_path / "granules", list(crossing))
    record = json.loads((work / f"{name}.umm.json").read_text())
    with h5py.File(folder / f"{name}.h5", "r") as f:
        lat = f["gt2l/land_ice_segments/latitude"][:]
        lon = f["gt2l/land_ice_segments/longitude"][:]
    cell = np.asarray(hpn.lonlat_to_healpix(lon, lat, 6, ellipsoid="WGS84"))
    k = int(np.flatnonzero(np.isin(cell, list(parents)))[0])
    _set_ring(record, lie(_ring(record), float(lon[k]), float(lat[k])))
    (work / f"{name}.umm.json").write_text(json.dumps(record))
    return work


@pytest.mark.parametrize("lie", [_cut_short, _shifted], ids=["cut-short", "shifted"])
def test_rows_outside_a_lying_footprint_are_found_and_aggregated(lie, sub, tmp_path, capsys):
    folder, parents, ref, crossing, base = sub
    name = max(crossing, key=lambda n: len(crossing[n]))  # the granule crossing the most AOI parents
    assert len(crossing[name]) >= 3
    work = _with_lying_footprint(sub, tmp_path, name, lie)

    recipe = _recipe(tmp_path, work, base)
    catalog = polaragg.runner.load_catalog(polaragg.load_recipe(recipe))
    row = catalog.granules.set_index("name").loc[f"{name}.h5"]
    listed = set(np.asarray(row.parent_cells).tolist())
    assert crossing[name] - listed, "the lie must hide parent cells that hold rows of the granule"
    assert listed & parents, "the lying footprint still touches the AOI (the granule is read somewhere)"

    store = str(tmp_path / "out.zarr")
    assert main(["run", recipe, "--store", store, "--executor", "single-threaded"]) == 0
    _assert_same(store, ref)  # nothing lost
    misses = [m for r in read_records(store) for m in r.footprint_misses]
    assert {m["parent"] for m in misses} == crossing[name] - listed
    assert {m["granule"] for m in misses} == {str(row.granule_id)}
    capsys.readouterr()
    assert main(["status", store]) == 0
    out = capsys.readouterr().out
    assert "1 granule(s) had rows outside their footprint" in out and "0 not" in out
    assert main(["validate", store]) == 0

    # Drop the repaired read from a record: validate must now fail, naming the granule.
    ledger = Path(store + LEDGER_SUFFIX)
    miss = misses[0]
    path = ledger / f"{miss['parent']:020d}-{miss['child_lo']:05d}.json"
    data = json.loads(path.read_text())
    data["granule_ids"] = [g for g in data["granule_ids"] if g != miss["granule"]]
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["validate", store]) == 1
    assert miss["granule"] in capsys.readouterr().out


def test_resume_after_a_failed_granule_reaches_the_tasks_its_footprint_missed(sub, tmp_path):
    """A granule with a cut-short footprint fails on the first run; tasks its footprint does not list
    finish ok without its rows. Once it reads again, --resume must give those tasks its rows too."""
    folder, parents, ref, crossing, base = sub
    name = max(crossing, key=lambda n: len(crossing[n]))
    work = _with_lying_footprint(sub, tmp_path, name, _cut_short)
    (work / f"{name}.h5").unlink()
    (work / f"{name}.h5").write_bytes(b"not an HDF5 file")  # unreadable on the first run

    recipe = _recipe(tmp_path, work, base)
    store = str(tmp_path / "out.zarr")
    assert main(["run", recipe, "--store", store, "--executor", "single-threaded"]) == 3  # finished, with failures
    first = read_records(store)
    assert {r.status for r in first} >= {"partial", "ok"}
    assert sum(r.observations for r in first) < int(ref["count"].sum())

    shutil.copyfile(folder / f"{name}.h5", work / f"{name}.h5")  # readable again, at the same path
    assert main(["run", recipe, "--store", store, "--resume", "--executor", "single-threaded"]) == 0
    _assert_same(store, ref)
    assert main(["validate", store]) == 0
    assert not Path(store + ".partitions").exists()


def test_a_granule_listed_twice_or_in_two_revisions_is_counted_once(sub, tmp_path):
    folder, parents, ref, crossing, base = sub
    work = _copy_folder(folder, tmp_path / "granules", list(crossing))
    name = sorted(crossing)[0]
    record = json.loads((work / f"{name}.umm.json").read_text())
    newer = name.replace("_01", "_02")
    assert newer != name
    record["umm"]["GranuleUR"] = f"{newer}.h5"
    record["meta"]["concept-id"] = record["meta"]["concept-id"] + "0"
    (work / f"{newer}.umm.json").write_text(json.dumps(record))
    (work / f"{newer}.h5").symlink_to(folder / f"{name}.h5")
    store = str(tmp_path / "out.zarr")
    assert main(["run", _recipe(tmp_path, work, base), "--store", store, "--executor", "single-threaded"]) == 0
    _assert_same(store, ref)  # the same rows once, not twice
    read = [g for r in read_records(store) for g in r.granule_ids]
    assert record["meta"]["concept-id"] in read and json.loads(
        (work / f"{name}.umm.json").read_text())["meta"]["concept-id"] not in read  # the newest revision


def test_rows_with_invalid_coordinates_or_times_are_counted_in_the_ledger(sub, tmp_path):
    folder, parents, ref, crossing, base = sub
    work = _copy_folder(folder, tmp_path / "granules", list(crossing))
    name = sorted(crossing)[0]
    (work / f"{name}.h5").unlink()
    shutil.copy(folder / f"{name}.h5", work / f"{name}.h5")
    expected_invalid = 0
    lost_observations = 0
    with h5py.File(work / f"{name}.h5", "r+") as f:
        for beam in BEAMS:
            if f"{beam}/land_ice_segments" not in f:
                continue
            g = f[f"{beam}/land_ice_segments"]
            lat, lon = g["latitude"][:], g["longitude"][:]
            cell = np.asarray(hpn.lonlat_to_healpix(lon, lat, 6, ellipsoid="WGS84"))
            rows = np.flatnonzero(np.isin(cell, list(parents)))
            if rows.size < 60:
                continue
            h, sigma, q = g["h_li"][:], g["h_li_sigma"][:], g["atl06_quality_summary"][:]
            kept = (q == 0) & np.isfinite(h) & (np.abs(h) < FILL) & np.isfinite(sigma) & (np.abs(sigma) < FILL) \
                & (sigma > 0)
            bad_lat, bad_lon, bad_t = rows[:10], rows[20:25], rows[40:50]
            lat[bad_lat] = np.nan
            lon[bad_lon] = np.float64(3.4028234663852886e38)
            t = g["delta_time"][:]
            t[bad_t] = np.nan
            g["latitude"][:], g["longitude"][:], g["delta_time"][:] = lat, lon, t
            expected_invalid += 25
            lost_observations += int(kept[np.concatenate([bad_lat, bad_lon, bad_t])].sum())
    assert expected_invalid > 0
    store = str(tmp_path / "out.zarr")
    assert main(["run", _recipe(tmp_path, work, base), "--store", store, "--executor", "single-threaded"]) == 0
    records = read_records(store)
    assert sum(r.rows_invalid for r in records) == expected_invalid
    assert sum(r.observations for r in records) == int(ref["count"].sum()) - lost_observations


@pytest.fixture
def finished(sub, tmp_path):
    """A finished run over a copied granule folder: (recipe path, store, folder, reference)."""
    folder, parents, ref, crossing, base = sub
    work = _copy_folder(folder, tmp_path / "granules", list(crossing))
    recipe = _recipe(tmp_path, work, base)
    store = str(tmp_path / "out.zarr")
    assert main(["run", recipe, "--store", store, "--executor", "single-threaded"]) == 0
    return recipe, store, work, ref, sorted(crossing)


def test_resume_refuses_inputs_that_changed_saying_what(finished, sub, tmp_path, capsys):
    recipe, store, work, ref, names = finished
    folder = sub[0]
    gone = names[1]
    (work / f"{gone}.umm.json").unlink()
    capsys.readouterr()
    assert main(["run", recipe, "--store", store, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "inputs changed" in err and "1 granule(s) removed" in err
    record = json.loads((folder / f"{gone}.umm.json").read_text())
    assert record["meta"]["concept-id"] in err
    record["umm"]["DataGranule"]["ArchiveAndDistributionInformation"][0]["SizeInBytes"] = 12345
    (work / f"{gone}.umm.json").write_text(json.dumps(record))
    assert main(["run", recipe, "--store", store, "--resume"]) == 2
    assert "1 granule(s) changed" in capsys.readouterr().err
    shutil.copy(folder / f"{gone}.umm.json", work / f"{gone}.umm.json")
    assert main(["run", recipe, "--store", store, "--resume"]) == 0  # the same inputs again: nothing to redo
    _assert_same(store, ref)


def test_resume_reruns_a_task_whose_chunk_went_missing(finished, capsys):
    recipe, store, work, ref, _ = finished
    records = read_records(store)
    with_data = [i for i, r in enumerate(records) if r.observations > 0]
    chunk = Path(store) / "h_mean" / "c" / "0" / str(with_data[0])  # bin 0 (the one time bin), the task's chunk
    assert chunk.exists()
    chunk.unlink()
    seconds = {(r.parent, r.child_lo): r.seconds for r in records}
    capsys.readouterr()
    assert main(["run", recipe, "--store", store, "--resume"]) == 0
    assert "run again" in capsys.readouterr().err
    _assert_same(store, ref)
    again = [r for r in read_records(store) if r.attempt > 1]
    assert [(r.parent, r.child_lo) for r in again] == [(records[with_data[0]].parent, records[with_data[0]].child_lo)]
    assert len(seconds) == len(records)


def test_validate_detects_edited_values(finished, capsys):
    import zarr

    recipe, store, *_ = finished
    assert main(["validate", store]) == 0
    root = zarr.open_group(store, mode="r+")
    h = root["h_mean"][0]  # the one time bin
    k = int(np.flatnonzero(np.isfinite(h))[0])
    root["h_mean"][0, k] = h[k] + 0.5  # counts untouched: only the checksum can tell
    capsys.readouterr()
    assert main(["validate", store]) == 1
    assert "checksum" in capsys.readouterr().out
