"""Readers (h5py vs h5coro) and the per-parent task on hand-made and synthetic granules."""

import h5py
import healpix_geo.nested as hpn
import numpy as np
import pytest

from polaragg.aggregate import PartitionJob, ReduceJob, TaskLayout, index_row, partition_granule, reduce_task
from polaragg.domain import Filters, GranuleRef
from polaragg.grid import Grid
from polaragg.intermediate import Location
from polaragg.products import atl06
from polaragg.read import open_granule
from polaragg.stats import STAT_INDEX
from polaragg.synthetic import SynthConfig, generate

GRID = Grid(6, 12)
FILL32 = np.float32(3.4028235e38)


def write_granule(path, beams: dict[str, dict[str, np.ndarray]]):
    """A minimal ATL06-shaped file with the given land_ice_segments arrays per beam."""
    with h5py.File(path, "w") as f:
        for beam, cols in beams.items():
            g = f.create_group(f"{beam}/land_ice_segments")
            for name, values in cols.items():
                dtype, _ = atl06.VARIABLES[name]
                g.create_dataset(name, data=np.asarray(values, dtype=dtype))
    return str(path)


def aggregate_parent(parent: int, refs: list[GranuleRef], work, reader: str = "h5py",
                     filters: Filters = Filters()):
    """Both stages for one parent cell, serially: the granules' records and the task's result."""
    location = Location(str(work / f"parts-{reader}-{filters.quality_max}"))
    job = PartitionJob(TaskLayout(np.array([parent], np.uint64), 1, GRID), location, "test", reader, filters)
    records = [partition_granule(r, job) for r in refs]
    entries = np.array([index_row(r, (0,))[0] for r in records])
    job = ReduceJob(location, GRID.children_per_parent, GRID.child_order)
    result = reduce_task(entries, tuple(refs), tuple(range(len(refs))), job, parent << GRID.shift)
    return records, result


def _points_in_parent(parent: int, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n random points inside one order-6 parent cell (rejection sampling around its centre)."""
    lon0, lat0 = hpn.healpix_to_lonlat(np.array([parent], np.uint64), 6, ellipsoid="WGS84")
    lons, lats = [], []
    while sum(map(len, lons)) < n:
        lo = lon0[0] + rng.uniform(-3, 3, 4 * n)
        la = np.clip(lat0[0] + rng.uniform(-0.6, 0.6, 4 * n), -89.9, 89.9)
        inside = hpn.lonlat_to_healpix(lo, la, 6, ellipsoid="WGS84") == parent
        lons.append(lo[inside])
        lats.append(la[inside])
    return np.concatenate(lons)[:n], np.concatenate(lats)[:n]


@pytest.fixture(scope="module")
def parent():
    return int(hpn.lonlat_to_healpix(np.array([100.0]), np.array([-75.0]), 6, ellipsoid="WGS84")[0])


def _cols(lon, lat, h, sigma, q=None, t=None):
    n = len(lon)
    return {
        "latitude": lat, "longitude": lon, "h_li": h, "h_li_sigma": sigma,
        "atl06_quality_summary": np.zeros(n) if q is None else q,
        "delta_time": np.linspace(1e8, 1e8 + 10, n) if t is None else t,
    }


def test_fill_values_quality_and_missing_beams(tmp_path, parent):
    rng = np.random.default_rng(0)
    lon, lat = _points_in_parent(parent, 400, rng)
    h = rng.normal(1500, 10, 400).astype(np.float32)
    sigma = rng.uniform(0.02, 0.1, 400).astype(np.float32)
    q = np.zeros(400, np.int8)
    h[:20] = FILL32            # fill heights
    sigma[20:30] = FILL32      # fill sigma
    sigma[30:35] = 0.0         # sigma must be > 0
    q[35:60] = 1               # flagged
    q[60:65] = 127             # quality fill
    # only gt2l present: a granule missing beams is valid
    path = write_granule(tmp_path / "g.h5", {"gt2l": _cols(lon, lat, h, sigma, q)})
    (record,), result = aggregate_parent(parent, [GranuleRef("g", path)], tmp_path)
    assert record.status == "ok" and result.failed == ()
    assert result.observations == record.observations == 400 - 65
    assert (record.rows, record.rows_filtered, record.rows_invalid, record.rows_outside) == (400, 65, 0, 0)
    block = result.block
    assert block[:, STAT_INDEX["count"]].sum() == 335
    keep = np.arange(400) >= 65
    assert block[:, STAT_INDEX["h_max"]][np.isfinite(block[:, STAT_INDEX["h_max"]])].max() == pytest.approx(
        float(h[keep].max()))
    # without the quality filter, flagged rows count too (fills never do)
    _, loose = aggregate_parent(parent, [GranuleRef("g", path)], tmp_path, filters=Filters(quality_max=None))
    assert loose.observations == 400 - 35


def test_cell_whose_observations_are_all_filtered(tmp_path, parent):
    rng = np.random.default_rng(1)
    lon, lat = _points_in_parent(parent, 50, rng)
    path = write_granule(tmp_path / "g.h5", {"gt1l": _cols(lon, lat, np.full(50, 100.0), np.full(50, 0.05),
                                                            q=np.ones(50))})
    (record,), result = aggregate_parent(parent, [GranuleRef("g", path)], tmp_path)
    assert record.status == "ok" and record.rows_filtered == 50
    assert result.observations == 0 and result.granules_with_rows == ()
    assert (result.block[:, STAT_INDEX["count"]] == 0).all()
    assert np.isnan(result.block[:, STAT_INDEX["h_mean"]]).all()
    assert np.isnan(result.block[:, STAT_INDEX["h_q50"]]).all()


def test_corrupt_and_truncated_granules_are_recorded_and_the_rest_aggregated(tmp_path, parent):
    rng = np.random.default_rng(2)
    lon, lat = _points_in_parent(parent, 100, rng)
    good = write_granule(tmp_path / "good.h5", {"gt3r": _cols(lon, lat, np.full(100, 7.0), np.full(100, 0.1))})
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    no_var = write_granule(tmp_path / "novar.h5", {"gt1l": {"latitude": lat, "longitude": lon}})
    refs = [GranuleRef("good", good), GranuleRef("truncated", str(truncated)), GranuleRef("garbage", str(garbage)),
            GranuleRef("novar", no_var), GranuleRef("missing", str(tmp_path / "absent.h5"))]
    for reader in ("h5py", "h5coro"):
        records, result = aggregate_parent(parent, refs, tmp_path, reader=reader)
        failed = {r.granule: r for r in records if r.status == "failed"}
        assert set(failed) == {"truncated", "garbage", "novar", "missing"}, reader
        assert set(result.failed) == set(failed)
        assert "h_li" in failed["novar"].reason
        assert "not found" in failed["missing"].reason
        assert all(not f.transient for f in failed.values())
        assert result.observations == 100 and result.granules_with_rows == ("good",)
        cells = result.block[:, STAT_INDEX["count"]] > 0
        assert np.allclose(result.block[cells, STAT_INDEX["h_mean"]], 7.0)


@pytest.fixture(scope="module")
def synthetic_granules(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    granules = generate(out, SynthConfig(seed=3, rgts=tuple(range(1, 1388, 97)), regions=(11,),
                                         bbox=(60, -88, 120, -82), weak_beam_dropout=0.0))
    return granules[:3]


def test_h5coro_and_h5py_read_identical_hyperslices(synthetic_granules):
    assert synthetic_granules
    variables = atl06.COORDINATES + atl06.PAYLOAD + ("segment_id",)
    for g in synthetic_granules:
        with open_granule(str(g.h5_path), "h5py") as a, open_granule(str(g.h5_path), "h5coro") as b:
            assert a.beams() == b.beams()
            for beam in a.beams():
                n = len(a.read(beam, ("latitude",))["latitude"])
                for rows in (None, (0, 1), (n // 3, min(n, n // 3 + 12345)), (max(n - 7, 0), n), (9990, min(10010, n))):
                    if rows is not None and rows[0] >= rows[1]:
                        continue
                    ra, rb = a.read(beam, variables, rows), b.read(beam, variables, rows)
                    for name in variables:
                        assert ra[name].dtype == rb[name].dtype, name
                        np.testing.assert_array_equal(ra[name], rb[name], err_msg=f"{beam}/{name}{rows}")


def test_strong_only_granule_is_aggregated(tmp_path):
    granules = generate(tmp_path, SynthConfig(seed=4, rgts=tuple(range(1, 1388, 97)), regions=(11,),
                                              bbox=(60, -88, 120, -82), weak_beam_dropout=1.0))
    g = max(granules, key=lambda g: len(g.beams))
    with h5py.File(g.h5_path) as f:
        sc_orient = int(f["orbit_info/sc_orient"][0])
    with open_granule(str(g.h5_path)) as f:
        beams = f.beams()
        lat = np.concatenate([f.read(b, ("latitude",))["latitude"] for b in beams])
        lon = np.concatenate([f.read(b, ("longitude",))["longitude"] for b in beams])
    assert len(beams) == 3
    assert all(atl06.is_strong(b, sc_orient) for b in beams)
    parents, counts = np.unique(hpn.lonlat_to_healpix(lon, lat, 6, ellipsoid="WGS84"), return_counts=True)
    busiest = int(parents[np.argmax(counts)])
    with h5py.File(g.h5_path) as f:
        kept = 0
        for b in beams:
            seg = f[f"{b}/land_ice_segments"]
            cell = hpn.lonlat_to_healpix(seg["longitude"][:], seg["latitude"][:], 6, ellipsoid="WGS84")
            h, s, q = seg["h_li"][:], seg["h_li_sigma"][:], seg["atl06_quality_summary"][:]
            ok = (cell == busiest) & (q == 0) & (np.abs(h) < 3.4e38) & (s > 0) & (s < 3.4e38)
            kept += int(np.count_nonzero(ok))
    (record,), result = aggregate_parent(busiest, [GranuleRef(g.name, str(g.h5_path))], tmp_path)
    assert record.status == "ok"
    assert 0 < result.observations == kept <= counts.max()


@pytest.mark.parametrize("lat0", [-89.0, -85.0, -75.0, -60.0])
@pytest.mark.parametrize("splits", [1, 2, 4, 8, 32, 6])
def test_range_lat_band_holds_every_point_of_its_child_range(lat0, splits):
    """Dense points around a parent: every one whose child id is in a task's range lies inside its band."""
    rng = np.random.default_rng(int(-lat0) * 100 + splits)
    parent = int(hpn.lonlat_to_healpix(np.array([33.0]), np.array([lat0]), 6, ellipsoid="WGS84")[0])
    lon = rng.uniform(-180, 180, 400_000) if lat0 < -88 else 33.0 + rng.uniform(-6, 6, 400_000)
    lat = np.clip(lat0 + rng.uniform(-1.5, 1.5, lon.size), -90, 90)
    child = GRID.child_cells(lon, lat)
    first = parent * GRID.children_per_parent
    edges = np.linspace(0, GRID.children_per_parent, splits + 1).astype(np.int64)
    parent_band = GRID.range_lat_band(first, first + GRID.children_per_parent)
    for lo, hi in zip(edges[:-1], edges[1:]):
        south, north = GRID.range_lat_band(first + int(lo), first + int(hi))
        inside = (child >= np.uint64(first + lo)) & (child < np.uint64(first + hi))
        assert inside.sum() > 0
        assert south <= lat[inside].min() and lat[inside].max() <= north
        assert parent_band[0] <= south and north <= parent_band[1]
        if splits >= 8 and lat0 > -88:  # a split task prefilters far fewer rows than its whole parent
            assert north - south < 0.75 * (parent_band[1] - parent_band[0])
    with pytest.raises(ValueError, match="spans more than one parent"):
        GRID.range_lat_band(first, first + GRID.children_per_parent + 1)
