"""The command line end to end: a run with a corrupt granule, maps, synthetic data."""

import json
import shutil

import h5py
import healpix_geo.nested as hpn
import numpy as np
import xarray as xr
import yaml

from polaragg.cli import main
from polaragg.ledger import read_records

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]


def _granule_parents(path, order=6):
    with h5py.File(path) as f:
        cells = [hpn.lonlat_to_healpix(f[f"{b}/land_ice_segments/longitude"][:],
                                       f[f"{b}/land_ice_segments/latitude"][:], order, ellipsoid="WGS84")
                 for b in f if b.startswith("gt")]
    return set(np.unique(np.concatenate(cells)).tolist())


def _valid(d) -> np.ndarray:
    """Values of an HDF5 dataset that are not its own _FillValue and not NaN."""
    a = d[:]
    ok = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, dtype=bool)
    fill = d.attrs.get("_FillValue")
    return ok & (a != fill) if fill is not None else ok


def _observations_per_cell(path, order: int, quality_max: int | None) -> dict[int, int]:
    """Observations of one granule per HEALPix cell, straight from its HDF5 with h5py + healpix_geo.

    An observation: valid coordinates, height and time, height sigma > 0 (both valid), and quality flag at
    most `quality_max` (when set).
    """
    counts: dict[int, int] = {}
    with h5py.File(path) as f:
        for beam in (b for b in f if b.startswith("gt")):
            seg = f[f"{beam}/land_ice_segments"]
            lon, lat = seg["longitude"][:], seg["latitude"][:]
            keep = (_valid(seg["longitude"]) & _valid(seg["latitude"]) & (np.abs(lat) <= 90)
                    & (np.abs(lon) <= 360) & _valid(seg["h_li"]) & _valid(seg["h_li_sigma"])
                    & _valid(seg["delta_time"]))
            keep &= np.where(keep, seg["h_li_sigma"][:], 0) > 0
            if quality_max is not None:
                keep &= seg["atl06_quality_summary"][:] <= quality_max
            cells = hpn.lonlat_to_healpix(lon[keep], lat[keep], order, ellipsoid="WGS84")
            for cell, n in zip(*np.unique(np.asarray(cells, dtype=np.uint64), return_counts=True)):
                counts[int(cell)] = counts.get(int(cell), 0) + int(n)
    return counts


def test_run_with_corrupt_granule_records_it_and_keeps_every_other_cell(tmp_path, demo_cache, demo_store, capsys):
    folder, recipe = demo_cache
    store_ref, _ = demo_store
    data = tmp_path / "granules"
    shutil.copytree(folder, data)
    # corrupt the granule that touches the most parent cells of the sub-area: truncate it
    victims = sorted(data.glob("*.h5"))
    victim = max(victims, key=lambda p: len(_granule_parents(p)))
    touched = _granule_parents(victim)
    victim_id = json.loads(victim.with_name(victim.name.removesuffix(".h5") + ".umm.json").read_text())["meta"][
        "concept-id"]
    lost = _observations_per_cell(folder / victim.name, recipe.grid.child_order, recipe.filters.quality_max)
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])

    doc = recipe.model_dump(mode="json")
    doc["source"] = {"kind": "directory", "path": str(data)}
    doc["aoi"] = {"bbox": SUB_BBOX}
    recipe_path = tmp_path / "sub.yaml"
    recipe_path.write_text(yaml.safe_dump(doc))
    store = str(tmp_path / "sub.zarr")

    code = main(["run", str(recipe_path), "--store", store, "--executor", "threads"])
    out = capsys.readouterr().out
    assert code == 3  # completed, with errors recorded
    assert "Errors:" in out and "Total observations:" in out

    records = read_records(store)
    failed = [r for r in records if r.failures]
    assert failed, "the corrupt granule must be recorded"
    assert {r.parent for r in failed} <= touched
    for r in failed:
        assert len(r.failures) == 1
        assert r.failures[0]["granule"] == victim_id
        assert "not a readable HDF5 file" in r.failures[0]["reason"]
        assert r.failures[0]["transient"] is False
        assert r.granules_read == r.granules - 1

    sub = xr.open_zarr(store).load()
    ref = xr.open_zarr(store_ref).load()
    assert sub.sizes["time"] == ref.sizes["time"] == 1  # one cycle: one time bin
    np.testing.assert_array_equal(sub.time.values, ref.time.values)
    sub, ref = sub.isel(time=0), ref.isel(time=0)
    ref = ref.isel(cells=np.flatnonzero(np.isin(ref.cell_ids.values, sub.cell_ids.values)))
    np.testing.assert_array_equal(sub.cell_ids.values, ref.cell_ids.values)
    parent = sub.cell_ids.values >> np.uint64(12)
    failed_parents = np.array([r.parent for r in failed], dtype=np.uint64)
    intact = ~np.isin(parent, failed_parents)
    assert intact.any()
    for name in ("count", "h_mean", "h_q50", "h_var", "t_mean"):
        np.testing.assert_array_equal(sub[name].values[intact], ref[name].values[intact], err_msg=name)
    # cells of the failed parents lost exactly the corrupt granule's observations, nothing else: the count
    # the uncorrupted granule has in each of those cells, counted here from its HDF5 file
    cells = sub.cell_ids.values[~intact]
    expected_loss = np.array([lost.get(int(c), 0) for c in cells], dtype=np.int64)
    loss = ref["count"].values[~intact].astype(np.int64) - sub["count"].values[~intact].astype(np.int64)
    assert expected_loss.sum() > 0, "the corrupt granule must have observations in the failed parents"
    np.testing.assert_array_equal(loss, expected_loss)
    assert int(sub["count"].values[~intact].sum()) > 0  # the other granules of those parents are kept
    shift = 2 * (recipe.grid.child_order - recipe.grid.parent_order)
    ref_obs = {(r.parent, r.child_lo): r.observations for r in read_records(store_ref)}
    for r in failed:  # and each failed task's ledger says so
        in_task = [n for c, n in lost.items()
                   if c >> shift == r.parent and r.child_lo <= c - (r.parent << shift) < r.child_hi]
        assert ref_obs[(r.parent, r.child_lo)] - r.observations == sum(in_task)
    summary = json.loads(xr.open_zarr(store).attrs["run_summary"])
    assert summary["granules_failed"] == 1


def test_map_command(tmp_path, demo_store):
    store, _ = demo_store
    png = tmp_path / "map.png"
    assert main(["map", store, "--var", "h_q50", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["map", store, "--var", "nope", "--out", str(png)]) == 2


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", str(out), "--rgt-step", "200", "--regions", "11", "--bbox", "60", "-88", "120", "-82"]) == 0
    h5 = sorted(out.glob("*.h5"))
    assert h5 and len(h5) == len(sorted(out.glob("*.umm.json")))
    assert f"wrote {len(h5)} granules" in capsys.readouterr().out


def test_run_rejects_invalid_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {kind: directory, path: /nowhere}\naoi: {bbox: [0, -80, 10, -70]}\n"
                   "grid: {parent_order: 7, child_order: 6}\n")
    assert main(["run", str(bad)]) == 2
    assert "grid" in capsys.readouterr().err
