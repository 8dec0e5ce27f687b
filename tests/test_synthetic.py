"""Synthetic ATL06 generator, checked against independent computations from the orbit model and file spec."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
import shapely
from pyproj import Transformer

from polaragg.cycles import cycle_bounds
from polaragg.products.atl06 import BEAMS, FILL_THRESHOLD, VARIABLES, is_strong
from polaragg.synthetic import (
    PASS_OFFSET_MAX_M,
    SEASONAL_AMPLITUDE_M,
    T_REF,
    YEAR_S,
    SynthConfig,
    SynthGranule,
    cycle_start,
    generate,
    granule_name,
    pass_offset_m,
    region_u_bounds,
    seasonal_height,
    true_dhdt,
    true_height,
)

R_M = 6371000.0
T_NODAL = 5657.38
DU = 20.0 / R_M
NAME_RE = re.compile(r"^ATL06_(\d{14})_(\d{4})(\d{2})(\d{2})_(\d{3})_(\d{2})\.h5$")
POLAR_BBOX = (60.0, -88.0, 120.0, -82.0)
DEMO_BBOX = (70.0, -88.0, 110.0, -83.0)
# A 35 km x 11 km box on the flank of the outlet lobe (85.5S 90E), and RGTs whose region-11 passes cross it
# (found by generating every RGT of region 11 over the box).
REPEAT_BBOX = (86.0, -85.55, 90.0, -85.45)
REPEAT_RGTS = (28, 125, 247, 384, 506, 628, 750, 887)
REPEAT_CYCLES = (10, 14, 18, 22)  # about one year apart: 3 years of change

TO_3031 = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)


def _haversine(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * R_M * np.arcsin(np.sqrt(a))


def _read(g: SynthGranule) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(g.h5_path, "r") as f:
        return {
            b: {v: f[f"{b}/land_ice_segments/{v}"][()] for v in VARIABLES} for b in BEAMS if b in f
        }


def _orient(g: SynthGranule) -> int:
    with h5py.File(g.h5_path, "r") as f:
        return int(f["orbit_info/sc_orient"][0])


def _points(g: SynthGranule) -> list[dict]:
    rec = json.loads(g.umm_path.read_text())
    geom = rec["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]
    return geom["GPolygons"][0]["Boundary"]["Points"]


def _densify_gc(lons: np.ndarray, lats: np.ndarray, per_edge: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Great-circle interpolation of a closed lon/lat ring (slerp between consecutive vertices)."""
    la, lo = np.radians(lats), np.radians(lons)
    v = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)
    a, b = v[:-1], v[1:]
    omega = np.arccos(np.clip((a * b).sum(axis=1), -1, 1))[:, None]
    f = np.linspace(0, 1, per_edge, endpoint=False)[None, :, None]
    so = np.where(omega > 1e-15, np.sin(omega), 1.0)[:, :, None]
    om = omega[:, :, None]
    w_a = np.where(om > 1e-15, np.sin((1 - f) * om) / so, 1 - f)
    w_b = np.where(om > 1e-15, np.sin(f * om) / so, f)
    pts = (w_a * a[:, None, :] + w_b * b[:, None, :]).reshape(-1, 3)
    pts = np.vstack([pts, v[-1:]])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    return np.degrees(np.arctan2(pts[:, 1], pts[:, 0])), np.degrees(np.arcsin(pts[:, 2]))


def _utc_of(delta_time: np.ndarray | float) -> datetime:
    """UTC of a delta_time via GPS seconds: GPS = delta_time + atlas_sdp_gps_epoch, UTC = GPS - 18 s."""
    gps = float(delta_time) + 1198800018.0
    return datetime(1980, 1, 6, tzinfo=UTC) + timedelta(seconds=gps - 18.0)


# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> list[SynthGranule]:
    """Three full granules (regions 10, 11, 12) of one RGT."""
    cfg = SynthConfig(seed=7, cycles=(22,), rgts=(5,), regions=(10, 11, 12), weak_beam_dropout=0.0)
    return generate(tmp_path_factory.mktemp("full"), cfg)


@pytest.fixture(scope="module")
def polar(tmp_path_factory) -> tuple[SynthConfig, list[SynthGranule]]:
    """Region-11 granules clipped to a polar box, every 200th RGT."""
    cfg = SynthConfig(seed=7, cycles=(22,), rgts=tuple(range(1, 1388, 200)), regions=(11,), bbox=POLAR_BBOX)
    return cfg, generate(tmp_path_factory.mktemp("polar"), cfg)


@pytest.fixture(scope="module")
def repeat(tmp_path_factory) -> tuple[SynthConfig, list[SynthGranule]]:
    """Four cycles of a handful of RGTs over a small box where the imposed dh/dt is about -2 m/yr."""
    cfg = SynthConfig(seed=5, cycles=REPEAT_CYCLES, rgts=REPEAT_RGTS, regions=(11,), bbox=REPEAT_BBOX)
    return cfg, generate(tmp_path_factory.mktemp("repeat"), cfg)


def _rows(granules: list[SynthGranule]) -> dict[str, np.ndarray]:
    """All rows of the granules, one array per variable, plus the granule's cycle and RGT per row."""
    parts: dict[str, list[np.ndarray]] = {}
    for g in granules:
        for d in _read(g).values():
            n = len(d["segment_id"])
            for var, arr in {**d, "cycle": np.full(n, g.cycle), "rgt": np.full(n, g.rgt)}.items():
                parts.setdefault(var, []).append(arr)
    return {var: np.concatenate(arrs) for var, arrs in parts.items()}


def test_cycle_start_table():
    assert cycle_start(22) == datetime(2023, 12, 18, 21, 15, tzinfo=UTC)
    assert cycle_start(1) == datetime(2018, 9, 28, 16, 19, tzinfo=UTC)
    # Consecutive cycles are one exact repeat (1387 revolutions) apart, within the table's minute rounding.
    for c in range(1, 30):
        gap = (cycle_start(c + 1) - cycle_start(c)).total_seconds()
        assert abs(gap - 1387 * T_NODAL) < 90
    with pytest.raises(ValueError):
        cycle_start(0)


def test_granule_name_format():
    name = granule_name(datetime(2024, 1, 14, 15, 33, 19, 700000, tzinfo=UTC), 409, 22, 11, "007")
    assert name == "ATL06_20240114153319_04092211_007_01.h5"
    assert granule_name(datetime(2019, 3, 2, 1, 2, 3), 1, 2, 10, revision=3) == (
        "ATL06_20190302010203_00010210_006_03.h5"
    )


def test_region_bounds_match_reference():
    # Boundaries are where the RGT crosses 59.5S and 80S: lat = asin(sin i sin u).
    inc = math.radians(92.0)
    lat = {
        r: [math.degrees(math.asin(math.sin(inc) * math.sin(u))) for u in region_u_bounds(r)]
        for r in (10, 11, 12)
    }
    assert lat[10] == pytest.approx([-59.5, -80.0], abs=1e-9)
    assert lat[11] == pytest.approx([-80.0, -80.0], abs=1e-9)
    assert lat[12] == pytest.approx([-80.0, -59.5], abs=1e-9)
    deg = [tuple(math.degrees(x) for x in region_u_bounds(r)) for r in (10, 11, 12)]
    assert deg[0][0] == pytest.approx(180 + 59.55, abs=0.01)
    assert deg[0][1] == deg[1][0] and deg[1][1] == deg[2][0]
    assert 180 < deg[0][1] < 270 < deg[1][1] < 360
    assert deg[1][0] + deg[1][1] == pytest.approx(540.0)  # symmetric about the southernmost point


def test_config_validation():
    with pytest.raises(ValueError):
        SynthConfig(rgts=(0,))
    with pytest.raises(ValueError):
        SynthConfig(regions=(2,))  # not an ice-sheet region
    with pytest.raises(ValueError, match="hemisphere"):
        SynthConfig(regions=(3, 10))  # Greenland and Antarctica in one source
    with pytest.raises(ValueError):
        SynthConfig(bbox=(0, -60, 10, -70))
    assert SynthConfig(rgts=range(1, 4)).rgts == (1, 2, 3)


def test_config_cycles():
    assert SynthConfig().cycles == (22,)
    assert SynthConfig(cycles=[21, 19, 20]).cycles == (19, 20, 21)  # stored sorted
    assert SynthConfig(cycle=5).cycles == (5,)  # shorthand for one cycle
    assert SynthConfig(cycles=(5,), cycle=5).cycles == (5,)
    for bad in ((), (19, 19), (0,), (22, 100)):  # cycle_start decides which cycles exist
        with pytest.raises(ValueError):
            SynthConfig(cycles=bad)
    with pytest.raises(ValueError):
        SynthConfig(cycles=(19, 20), cycle=21)
    with pytest.raises(ValueError):
        SynthConfig(cycles=22)


def test_file_layout(full):
    g = full[1]
    with h5py.File(g.h5_path, "r") as f:
        assert set(f) >= {"orbit_info", "ancillary_data", *BEAMS}
        assert f["ancillary_data/atlas_sdp_gps_epoch"].dtype == np.float64
        assert f["ancillary_data/atlas_sdp_gps_epoch"][()].tolist() == [1198800018.0]
        orient = int(f["orbit_info/sc_orient"][0])
        orbit_dtypes = {"sc_orient": "int8", "rgt": "int16", "cycle_number": "int8", "orbit_number": "uint16"}
        for key, dtype in orbit_dtypes.items():
            ds = f[f"orbit_info/{key}"]
            assert ds.dtype == np.dtype(dtype) and ds.shape == (1,)
        for beam in BEAMS:
            grp = f[beam]
            strong = is_strong(beam, orient)
            assert grp.attrs["atlas_beam_type"] == ("strong" if strong else "weak")
            assert (int(grp.attrs["atlas_spot_number"]) in (1, 3, 5)) == strong
            assert grp.attrs["sc_orientation"] == ("Forward" if orient == 1 else "Backward")
            assert grp.attrs["groundtrack_id"] == beam
            lengths = set()
            for var, (dtype, fill) in VARIABLES.items():
                ds = grp[f"land_ice_segments/{var}"]
                lengths.add(ds.shape[0])
                assert ds.dtype == dtype
                assert ds.chunks == (10000,)
                assert ds.compression == "gzip" and ds.compression_opts == 6
                assert ds.shuffle == np.issubdtype(dtype, np.integer)
                assert not ds.fletcher32
                assert "units" in ds.attrs
                if fill is None:
                    assert "_FillValue" not in ds.attrs
                else:
                    assert ds.attrs["_FillValue"] == np.array(fill, dtype=dtype)
                    assert ds.attrs["_FillValue"].dtype == dtype
            assert len(lengths) == 1 and lengths.pop() > 10000


def test_names_match_orbit_info(full, polar):
    for g in full + polar[1]:
        m = NAME_RE.match(g.name)
        assert m, g.name
        rgt, cycle, region = int(m[2]), int(m[3]), int(m[4])
        assert (rgt, cycle, region) == (g.rgt, g.cycle, g.region)
        assert g.h5_path.name == g.name and g.umm_path.name == g.name[:-3] + ".umm.json"
        with h5py.File(g.h5_path, "r") as f:
            assert int(f["orbit_info/rgt"][0]) == rgt
            assert int(f["orbit_info/cycle_number"][0]) == cycle
        assert g.rows == sum(len(d["segment_id"]) for d in _read(g).values())
    names = [g.name for g in polar[1]]
    assert names == sorted(names)


def test_region_latitudes(full):
    limits = {10: (-80.05, -59.45), 11: (-88.05, -79.95), 12: (-80.05, -59.45)}
    for g in full:
        lo, hi = limits[g.region]
        lats = np.concatenate([d["latitude"] for d in _read(g).values()])
        assert lo <= lats.min() and lats.max() <= hi
    lat11 = np.concatenate([d["latitude"] for d in _read(full[1]).values()])
    assert lat11.min() < -87.9  # the turn near the pole hole


def test_along_track_spacing_and_beam_separation(full):
    for g in full:
        data = _read(g)
        for d in data.values():
            seg = d["segment_id"]
            assert np.all(np.diff(seg) > 0)
            step = np.diff(seg) == 1
            dist = _haversine(d["latitude"][:-1], d["longitude"][:-1], d["latitude"][1:], d["longitude"][1:])
            assert np.median(dist[step]) == pytest.approx(20.0, rel=0.01)
        for other, expected, tol in (("gt1r", 90.0, 1.0), ("gt2l", 3300.0, 10.0), ("gt3r", 6690.0, 15.0)):
            a, b = data["gt1l"], data[other]
            common, i1, i2 = np.intersect1d(a["segment_id"], b["segment_id"], return_indices=True)
            assert len(common) > 1000
            sep = _haversine(a["latitude"][i1], a["longitude"][i1], b["latitude"][i2], b["longitude"][i2])
            assert np.median(sep) == pytest.approx(expected, abs=tol)


def test_delta_time_matches_orbit_model(full):
    c0 = (cycle_start(22) - datetime(2018, 1, 1, tzinfo=UTC)).total_seconds()
    for g in full:
        u0, _ = region_u_bounds(g.region)
        name_time = datetime.strptime(NAME_RE.match(g.name)[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        for d in _read(g).values():
            dt = d["delta_time"]
            assert np.all(np.diff(dt) > 0)
            u = (d["segment_id"].astype(np.float64) - 1) * DU
            assert u.min() >= u0 - 1e-12
            expected = c0 + ((g.rgt - 1) + u / (2 * np.pi)) * T_NODAL
            np.testing.assert_allclose(dt, expected, rtol=0, atol=1e-3)
            first = _utc_of(dt[0])
            assert name_time <= first
            if d["segment_id"][0] - 1 - math.ceil(u0 / DU) < 10:  # no cloud at the very start
                assert first - name_time < timedelta(seconds=1.01)


def test_heights_sigmas_quality(full):
    strong_sig, weak_sig = [], []
    n_rows = n_fill = n_flag = 0
    for g in full:
        orient = _orient(g)
        for beam, d in _read(g).items():
            h, s, q = d["h_li"], d["h_li_sigma"], d["atl06_quality_summary"]
            fill = h >= FILL_THRESHOLD
            assert np.array_equal(fill, s >= FILL_THRESHOLD)
            assert np.all(np.isfinite(h)) and np.all(s > 0)
            assert np.all((q == 0) | (q == 1))
            assert np.all(q[fill] == 1)
            n_rows += len(h)
            n_fill += int(fill.sum())
            n_flag += int((q[~fill] == 1).sum())
            ok = ~fill
            assert -100 < h[ok].min() and h[ok].max() < 4500
            assert np.median(s[ok & (q == 1)]) > np.median(s[ok & (q == 0)])
            (strong_sig if is_strong(beam, orient) else weak_sig).append(s[ok])
            geo = d["sigma_geo_h"]
            assert geo.dtype == np.float32 and 0.02 < geo.min() and geo.max() <= 0.11
            inland = ok & (d["latitude"] < -85)
            if inland.any():
                assert np.median(h[inland]) > 2500
    strong, weak = np.concatenate(strong_sig), np.concatenate(weak_sig)
    assert 0.01 < np.median(strong) < 0.06
    assert np.median(strong) < np.median(weak) < 0.12
    assert 0.002 < n_fill / n_rows < 0.01
    assert 0.04 < n_flag / n_rows < 0.12


def test_cloud_gaps_are_runs(full):
    for g in full:
        u0, u1 = region_u_bounds(g.region)
        n_full = math.ceil(u1 / DU) - math.ceil(u0 / DU)
        seg = _read(g)["gt2l"]["segment_id"]
        missing = 1 - len(seg) / n_full
        assert 0.02 < missing < 0.25
        gaps = np.diff(seg)[np.diff(seg) > 1] - 1
        assert gaps.mean() > 20  # whole runs removed, not scattered rows
        # All beams share the cloud gaps (clouds are kilometres wide).
        assert np.array_equal(seg, _read(g)["gt3r"]["segment_id"])


def test_umm_record(full, polar):
    concept_ids = set()
    for g in full + polar[1]:
        rec = json.loads(g.umm_path.read_text())
        meta, umm = rec["meta"], rec["umm"]
        assert re.fullmatch(r"G\d{10}-NSIDC_CPRD", meta["concept-id"])
        concept_ids.add(meta["concept-id"])
        assert meta["provider-id"] == "NSIDC_CPRD"
        assert umm["GranuleUR"] == g.name
        assert umm["CollectionReference"] == {"ShortName": "ATL06", "Version": "006"}
        rng = umm["TemporalExtent"]["RangeDateTime"]
        begin = datetime.strptime(rng["BeginningDateTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        end = datetime.strptime(rng["EndingDateTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        u0, u1 = region_u_bounds(g.region)
        assert (end - begin).total_seconds() == pytest.approx((u1 - u0) / (2 * np.pi) * T_NODAL, abs=0.01)
        assert g.name[6:20] == begin.strftime("%Y%m%d%H%M%S")
        times = np.concatenate([d["delta_time"] for d in _read(g).values()])
        assert begin <= _utc_of(times.min()) and _utc_of(times.max()) <= end
        day = begin.strftime("%Y/%m/%d")
        urls = {u["Type"]: u["URL"] for u in umm["RelatedUrls"]}
        path = f"nsidc-cumulus-prod-protected/ATLAS/ATL06/006/{day}/{g.name}"
        assert urls["GET DATA"] == f"https://data.nsidc.earthdatacloud.nasa.gov/{path}"
        assert urls["GET DATA VIA DIRECT ACCESS"] == f"s3://{path}"
        archive = umm["DataGranule"]["ArchiveAndDistributionInformation"]
        assert len(archive) == 1 and archive[0]["Name"] == g.name
        assert 30e6 < archive[0]["SizeInBytes"] < 130e6
        extra = {a["Name"]: a["Values"][0] for a in umm["AdditionalAttributes"]}
        assert int(extra["LOCAL_SIZE_IN_BYTES"]) == g.h5_path.stat().st_size
        assert int(extra["LOCAL_ROWS"]) == g.rows
    assert len(concept_ids) == len(full) + len(polar[1])


def test_footprint_encloses_all_rows(full, polar):
    for g in full + polar[1]:
        pts = _points(g)
        assert pts[0] == pts[-1]
        lons = np.array([p["Longitude"] for p in pts])
        lats = np.array([p["Latitude"] for p in pts])
        # Vertices every <= ~5 km along both edges.
        step = _haversine(lats[:-1], lons[:-1], lats[1:], lons[1:])
        assert step.max() < 13000 and np.median(step) <= 5000
        dlon, dlat = _densify_gc(lons, lats)
        x, y = TO_3031.transform(dlon, dlat)
        ring = shapely.LinearRing(np.column_stack([x, y]))
        assert ring.is_valid
        assert ring.is_ccw  # EPSG:3031 is viewed from above the south pole: ccw here is ccw from above
        poly = shapely.Polygon(ring)
        shapely.prepare(poly)
        for d in _read(g).values():
            px, py = TO_3031.transform(d["longitude"], d["latitude"])
            assert shapely.contains_xy(poly, px, py).all()
            sub = slice(None, None, 400)
            dist = shapely.distance(ring, shapely.points(px[sub], py[sub]))
            assert dist.min() > 2000  # ~2.9 km true clearance, 3031 scale within a few %


def test_footprint_covers_full_granule_in_bbox_mode(full, tmp_path):
    cfg = SynthConfig(
        seed=7, cycles=(22,), rgts=(5,), regions=(11,), bbox=(-180, -88, 180, -86), weak_beam_dropout=0.0
    )
    (g,) = generate(tmp_path, cfg)
    full11 = next(f for f in full if f.region == 11)
    assert _points(g) == _points(full11)
    assert g.rows < full11.rows


def test_bbox_rows_are_the_full_granule_rows_inside(full, tmp_path):
    # Region 11 of RGT 5 crosses ~-80..-88; a box over part of it, crossing the antimeridian or not.
    full11 = next(f for f in full if f.region == 11)
    ref = _read(full11)
    lat_all = np.concatenate([d["latitude"] for d in ref.values()])
    lon_all = np.concatenate([d["longitude"] for d in ref.values()])
    mid = np.argmin(np.abs(lat_all + 86.0))
    lon_c = lon_all[mid]
    lo, hi = ((lon_c - 10 + 180) % 360) - 180, ((lon_c + 10 + 180) % 360) - 180
    boxes = [
        (lo, -87.0, hi, -84.0),
        (170.0, -89.0, -170.0, -60.0),  # crosses the antimeridian
        (lon_c - 0.001, -90.0, lon_c + 0.001, -60.0),  # a sliver near the pole: coarse pre-selection
    ]
    for k, bbox in enumerate(boxes):
        cfg = SynthConfig(seed=7, cycles=(22,), rgts=(5,), regions=(11,), bbox=bbox, weak_beam_dropout=0.0)
        out = generate(tmp_path / str(k), cfg)
        sub = _read(out[0]) if out else {}
        for beam, d in ref.items():
            lon_min, lat_min, lon_max, lat_max = bbox
            lon = d["longitude"]
            if lon_min <= lon_max:
                lon_ok = (lon >= lon_min) & (lon <= lon_max)
            else:
                lon_ok = (lon >= lon_min) | (lon <= lon_max)
            inside = lon_ok & (d["latitude"] >= lat_min) & (d["latitude"] <= lat_max)
            if not inside.any():
                assert beam not in sub
                continue
            for var in VARIABLES:
                np.testing.assert_array_equal(sub[beam][var], d[var][inside], err_msg=f"{bbox} {beam} {var}")
        if out:
            assert out[0].name == full11.name


def test_polar_bbox_mode(polar):
    cfg, granules = polar
    assert granules, "some RGTs must cross the polar box"
    lon_min, lat_min, lon_max, lat_max = cfg.bbox
    for g in granules:
        data = _read(g)
        assert data and all(len(d["segment_id"]) > 0 for d in data.values())
        for d in data.values():
            assert np.all((d["latitude"] >= lat_min) & (d["latitude"] <= lat_max))
            assert np.all((d["longitude"] >= lon_min) & (d["longitude"] <= lon_max))
    # Both spacecraft orientations occur across the RGTs.
    assert {_orient(g) for g in granules} == {0, 1}


def test_deterministic_and_independent_of_rgt_list(tmp_path):
    bbox = (60.0, -88.0, 120.0, -84.0)
    a = generate(tmp_path / "a", SynthConfig(seed=3, rgts=(101, 301, 501), regions=(11,), bbox=bbox))
    b = generate(tmp_path / "b", SynthConfig(seed=3, rgts=(301, 501, 101, 901), regions=(11,), bbox=bbox))
    c = generate(tmp_path / "c", SynthConfig(seed=4, rgts=(101, 301, 501), regions=(11,), bbox=bbox))
    assert a, "the chosen RGTs must cross the box"
    by_name_b = {g.name: g for g in b}
    for g in a:
        other = by_name_b[g.name]
        da, db = _read(g), _read(other)
        assert da.keys() == db.keys()
        for beam in da:
            for var in VARIABLES:
                assert da[beam][var].tobytes() == db[beam][var].tobytes()
        assert g.h5_path.read_bytes() == other.h5_path.read_bytes()
        assert g.umm_path.read_text() == other.umm_path.read_text()
    # Another seed changes the values, not the geometry of present rows.
    dc = _read(c[0])
    da = _read(a[0])
    beam = next(iter(set(da) & set(dc)))
    assert not np.array_equal(da[beam]["h_li"][:100], dc[beam]["h_li"][:100])


def test_strong_only_granules(tmp_path):
    cfg = SynthConfig(
        seed=2, rgts=tuple(range(1, 1388, 150)), regions=(11,), bbox=(0, -88, 180, -86), weak_beam_dropout=1.0
    )
    granules = generate(tmp_path, cfg)
    assert granules
    for g in granules:
        orient = _orient(g)
        with h5py.File(g.h5_path, "r") as f:
            present = [b for b in BEAMS if b in f]
            assert present and all(is_strong(b, orient) for b in present)
            assert all(f[b].attrs["atlas_beam_type"] == "strong" for b in present)
        assert g.beams == tuple(present)


def test_cycles_write_one_granule_per_cycle(tmp_path):
    bbox = (60.0, -88.0, 120.0, -84.0)
    kw = dict(seed=3, rgts=(101, 301), regions=(11,), bbox=bbox)
    multi = generate(tmp_path / "m", SynthConfig(cycles=(19, 22), **kw))
    one = {g.name: g for g in generate(tmp_path / "one", SynthConfig(cycles=(22,), **kw))}
    assert one and {g.cycle for g in multi} == {19, 22}
    for g in multi:
        m = NAME_RE.match(g.name)
        assert int(m[3]) == g.cycle
        begin, end = cycle_bounds(g.cycle)
        with h5py.File(g.h5_path, "r") as f:
            assert int(f["orbit_info/cycle_number"][0]) == g.cycle
            assert int(f["orbit_info/orbit_number"][0]) == (g.cycle - 1) * 1387 + g.rgt
        times = np.concatenate([d["delta_time"] for d in _read(g).values()])
        assert begin <= _utc_of(times.min()) and _utc_of(times.max()) < end
        name_time = datetime.strptime(m[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        assert begin <= name_time < end
        if g.cycle == 22:  # a cycle's granules do not depend on the other cycles listed
            assert g.h5_path.read_bytes() == one[g.name].h5_path.read_bytes()
            assert g.umm_path.read_text() == one[g.name].umm_path.read_text()
    assert {(g.rgt, g.region) for g in multi if g.cycle == 19} == {(g.rgt, g.region) for g in one.values()}


def test_no_rows_no_granule(tmp_path):
    # A box north of the Antarctic regions: nothing to write.
    assert generate(tmp_path, SynthConfig(rgts=(1, 2), bbox=(-180, 0, 180, 10))) == []
    assert list(Path(tmp_path).iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# Repeat cycles and the change model


def test_repeat_cycles_names_and_times(repeat):
    cfg, granules = repeat
    assert {(g.cycle, g.rgt) for g in granules} == {(c, r) for c in REPEAT_CYCLES for r in REPEAT_RGTS}
    for g in granules:
        m = NAME_RE.match(g.name)
        assert (int(m[2]), int(m[3]), int(m[4])) == (g.rgt, g.cycle, 11)
        begin, end = cycle_bounds(g.cycle)
        name_time = datetime.strptime(m[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        assert begin <= name_time < end
        times = np.concatenate([d["delta_time"] for d in _read(g).values()])
        assert begin <= _utc_of(times.min()) and _utc_of(times.max()) < end
        # the pass is at the same point of the orbit in every cycle: same offset from the cycle start
        u0, _ = region_u_bounds(11)
        expected_start = cycle_start(g.cycle) + timedelta(seconds=((g.rgt - 1) + u0 / (2 * np.pi)) * T_NODAL)
        assert abs((name_time - expected_start).total_seconds()) < 1.0


def test_repeat_passes_are_offset_across_track(repeat):
    _, granules = repeat
    by_key = {(g.cycle, g.rgt): _read(g) for g in granules}
    shifts = {}
    for rgt in REPEAT_RGTS:
        ref = by_key[22, rgt]
        for cycle in REPEAT_CYCLES[:-1]:
            other = by_key[cycle, rgt]
            per_beam = []
            for beam in set(ref) & set(other):
                a, b = ref[beam], other[beam]
                _, ia, ib = np.intersect1d(a["segment_id"], b["segment_id"], return_indices=True)
                if len(ia) < 20:
                    continue
                dist = _haversine(
                    a["latitude"][ia], a["longitude"][ia], b["latitude"][ib], b["longitude"][ib]
                )
                assert dist.std() < 0.05  # one rigid shift across track, not a scatter of rows
                per_beam.append(np.median(dist))
            assert per_beam
            assert np.ptp(per_beam) < 0.05  # the same shift for every beam of the pass
            shifts[cycle, rgt] = per_beam[0]
            # the same segment is the same point along track: the shift is across track, as modelled
            expected = abs(pass_offset_m(5, cycle, rgt) - pass_offset_m(5, 22, rgt))
            assert per_beam[0] == pytest.approx(expected, abs=0.05)
    values = np.array(list(shifts.values()))
    assert values.max() <= PASS_OFFSET_MAX_M + 0.05  # cycle 22 flies the nominal track, others <= 60 m off
    assert 5.0 < np.median(values) and values.max() > 30.0  # tens of metres
    assert len(np.unique(np.round(values, 3))) == len(values)  # different for every cycle and RGT
    assert pass_offset_m(5, 22, 28) == 0.0  # cycle 22 flies the nominal RGT
    draws = np.array([pass_offset_m(5, c, r) for c in range(1, 31) if c != 22 for r in range(1, 60)])
    assert np.abs(draws).max() <= PASS_OFFSET_MAX_M and 18.0 < draws.std() < 30.0 and abs(draws.mean()) < 5.0


def test_heights_are_truth_plus_noise(repeat):
    cfg, granules = repeat
    r = _rows(granules)
    ok = (r["atl06_quality_summary"] == 0) & (r["h_li"] < FILL_THRESHOLD)
    assert ok.sum() > 30000
    truth = true_height(r["latitude"][ok], r["longitude"][ok], r["delta_time"][ok], seed=cfg.seed)
    res = r["h_li"][ok].astype(np.float64) - truth
    z = res / r["h_li_sigma"][ok].astype(np.float64)
    assert abs(res.mean()) < 0.003
    assert 0.95 < z.std() < 1.05 and abs(z.mean()) < 0.03 and np.abs(z).max() < 7
    # flagged rows carry extra error: far from the truth in units of their sigma
    bad = (r["atl06_quality_summary"] == 1) & (r["h_li"] < FILL_THRESHOLD)
    zb = (r["h_li"][bad] - true_height(r["latitude"][bad], r["longitude"][bad], r["delta_time"][bad],
                                       seed=cfg.seed)) / r["h_li_sigma"][bad]
    assert np.abs(zb).mean() > 3 * np.abs(z).mean()
    # another seed's surface is another surface: the truth really depends on the seed
    other = true_height(r["latitude"][ok], r["longitude"][ok], r["delta_time"][ok], seed=cfg.seed + 1)
    assert np.abs(r["h_li"][ok] - other).mean() > 1.0


def test_plane_fit_recovers_dhdt(repeat):
    _, granules = repeat
    r = _rows(granules)
    ok = (r["atl06_quality_summary"] == 0) & (r["h_li"] < FILL_THRESHOLD)
    lat, lon = r["latitude"][ok], r["longitude"][ok]
    h, t, cyc = r["h_li"][ok].astype(np.float64), r["delta_time"][ok], r["cycle"][ok]
    x, y = TO_3031.transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    # 3 km square areas; fit h = a + b x + c y + dhdt (t - t0) by least squares in each
    area = (np.floor(x / 3000.0).astype(np.int64) * 100003 + np.floor(y / 3000.0).astype(np.int64))
    fitted, expected = [], []
    for key in np.unique(area):
        m = area == key
        if m.sum() < 200 or len(np.unique(cyc[m])) < len(REPEAT_CYCLES):
            continue
        xm, ym = x[m] - x[m].mean(), y[m] - y[m].mean()
        tm = (t[m] - t[m].mean()) / YEAR_S
        design = np.column_stack([np.ones(m.sum()), xm, ym, tm])
        coef, *_ = np.linalg.lstsq(design, h[m], rcond=None)
        fitted.append(coef[3])
        expected.append(true_dhdt(lat[m], lon[m]).mean())
    fitted, expected = np.array(fitted), np.array(expected)
    assert len(fitted) >= 15
    assert expected.min() < -1.5 and np.ptp(expected) > 0.3  # the box is on the flank of the outlet lobe
    err = fitted - expected
    assert np.median(np.abs(err)) < 0.02 and np.abs(err).max() < 0.05  # measured: 0.003 and 0.007 m/yr
    assert np.corrcoef(fitted, expected)[0, 1] > 0.9  # the recovered map has the imposed structure


def test_true_dhdt_field():
    lat, lon = np.meshgrid(np.linspace(-88.0, -60.0, 141), np.linspace(-180.0, 180.0, 361))
    d = true_dhdt(lat, lon)
    assert d.shape == lat.shape
    assert -3.5 < d.min() < -2.5 and 0.05 < d.max() <= 0.25  # realistic magnitudes
    # several m/yr of thinning at the coast fading inland
    assert true_dhdt(-68.0, -110.0) < -2.0 and abs(true_dhdt(-80.0, -110.0)) < 0.6
    far = np.arange(-180.0, 180.0, 10.0)
    far = far[np.abs(far - 90.0) > 30]  # away from the outlet lobe
    assert np.all(np.abs(true_dhdt(np.full(len(far), -87.0), far)) < 0.2)
    # structure inside the demo box, where the coastal term is small
    lon_min, lat_min, lon_max, lat_max = DEMO_BBOX
    la, lo = np.meshgrid(np.linspace(lat_min, lat_max, 51), np.linspace(lon_min, lon_max, 41))
    demo = true_dhdt(la, lo)
    assert np.ptp(demo) >= 1.0 and demo.min() < -2.0 and demo.max() > 0.0
    # smooth: neighbouring points 1 km apart differ by little
    step = np.abs(np.diff(demo, axis=1)).max()  # grid step 0.1 deg of latitude = 11 km
    assert step < 0.3
    # seasonal term: zero at T_REF, amplitude SEASONAL_AMPLITUDE_M, period one year
    tt = T_REF + np.linspace(0, YEAR_S, 1001)
    s = seasonal_height(tt)
    assert s[0] == 0.0 and s.max() == pytest.approx(SEASONAL_AMPLITUDE_M, rel=1e-4)
    assert s[-1] == pytest.approx(0.0, abs=1e-9)
    # the truth: change from T_REF is the trend plus the seasonal term
    h0 = true_height(-85.5, 90.0, T_REF, seed=1)
    h1 = true_height(-85.5, 90.0, T_REF + 2 * YEAR_S, seed=1)
    assert h1 - h0 == pytest.approx(2 * true_dhdt(-85.5, 90.0), abs=1e-6)
