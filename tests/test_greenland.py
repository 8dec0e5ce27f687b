"""Greenland (ATL06 regions 3, 4, 5): the synthetic northern granules and recipes/greenland.yaml end to end.

The run's store is checked against a brute-force reference built with tests/reference.py's h5py reader,
healpix-geo cell ids and pandas groupby (never polaragg code) on the offline executors; the recovered
dh/dt against the generator's north truth (`synthetic.true_dhdt`), which the aggregation never sees.
One generated cache (28 granules, ~1.4 M rows) serves every test.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import h5py
import healpix_geo.nested as hpn
import numpy as np
import pandas as pd
import pytest
import shapely
import xarray as xr
from pyproj import Transformer

import polaragg
from helpers import store_positions
from polaragg.cycles import cycle_bounds
from polaragg.ledger import read_records
from polaragg.products.atl06 import BEAMS, FILL_THRESHOLD, is_strong
from polaragg.recipe import load_recipe
from polaragg.runner import plan_recipe
from polaragg.sources import synthetic_folder
from polaragg.synthetic import (
    GREENLAND_SUMMIT_LATLON,
    JAKOBSHAVN_LATLON,
    T_REF,
    YEAR_S,
    SynthConfig,
    generate,
    greenland_coast_fraction,
    hemisphere_of_regions,
    in_greenland,
    region_u_bounds,
    true_dhdt,
    true_dhdt_north,
    true_dhdt_south,
    true_height,
)
from polaragg.validate import validate_store
from reference import kept, observations

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "greenland.yaml"
NAME_RE = re.compile(r"^ATL06_(\d{14})_(\d{4})(\d{2})(\d{2})_(\d{3})_(\d{2})\.h5$")
# Every offline executor; lithops-local (~35 s here) only with `-m slow`: its store equals single-threaded's on
# the demo in tests/test_executors.py, and tests/test_rehearsal.py runs it against S3.
EXECUTORS = ["single-threaded", "threads", "processes", pytest.param("lithops-local", marks=pytest.mark.slow),
             "dask", "dask-distributed"]
TO_3413 = Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True)
STATS = ("h_mean", "h_sigma", "h_var", "h_min", "h_max", "h_q25", "h_q50", "h_q75", "t_mean")


@pytest.fixture(scope="module")
def greenland(tmp_path_factory):
    """(recipe with its synthetic cache in tmp, folder of the generated granules)."""
    recipe = load_recipe(RECIPE)
    source = recipe.source.model_copy(update={"cache_dir": str(tmp_path_factory.mktemp("greenland-cache"))})
    return recipe.model_copy(update={"source": source}), synthetic_folder(source)


@pytest.fixture(scope="module")
def rows(greenland):
    """Every row of the recipe's granules (tests/reference.py), with the order-12 cell of each."""
    df = observations(greenland[1])
    df["cell"] = hpn.lonlat_to_healpix(df.lon.to_numpy(), df.lat.to_numpy(), 12, ellipsoid="WGS84")
    return df


@pytest.fixture(scope="module")
def reference(rows):
    """Per (cycle, cell) statistics of the kept rows, by pandas groupby."""
    df = kept(rows)
    df["w"] = 1.0 / df.s**2
    df["wh"] = df.w * df.h
    g = df.groupby(["cycle", "cell"])
    return pd.DataFrame({
        "count": g.size(), "h_mean": g.wh.sum() / g.w.sum(), "h_sigma": 1.0 / np.sqrt(g.w.sum()),
        "h_var": g.h.var(ddof=0), "h_min": g.h.min(), "h_max": g.h.max(),
        "h_q25": g.h.quantile(0.25), "h_q50": g.h.quantile(0.5), "h_q75": g.h.quantile(0.75),
        "t_mean": g.t.mean(),
    })


_RUNS: dict[str, tuple[str, object]] = {}


@pytest.fixture(scope="module")
def run_on(greenland, tmp_path_factory):
    """run_on(executor) -> (store, summary): the recipe computed once per executor in this module."""
    recipe, _ = greenland

    def run(executor: str):
        if executor not in _RUNS:
            store = str(tmp_path_factory.mktemp(f"greenland-{executor}") / "greenland.zarr")
            _RUNS[executor] = store, polaragg.run(recipe, store=store, executor=executor, progress=False)
        return _RUNS[executor]

    yield run
    _RUNS.clear()


# ----------------------------------------------------------------------------------------------------
# The granules


def test_granules_are_northern_regions_over_greenland(greenland, rows):
    recipe, folder = greenland
    names = sorted(p.name for p in folder.glob("*.h5"))
    assert len(names) == 28  # 7 passes x 4 cycles
    regions = set()
    for name in names:
        m = NAME_RE.match(name)
        assert m, name
        rgt, cycle, region = int(m[2]), int(m[3]), int(m[4])
        assert region in (3, 4, 5) and cycle in recipe.source.cycles and (rgt - 7) % 9 == 0
        regions.add(region)
        with h5py.File(folder / name, "r") as f:
            assert (int(f["orbit_info/rgt"][0]), int(f["orbit_info/cycle_number"][0])) == (rgt, cycle)
        record = json.loads((folder / name.replace(".h5", ".umm.json")).read_text())
        umm = record["umm"]
        assert umm["GranuleUR"] == name
        assert record["meta"]["concept-id"][3:9] == f"{rgt:04d}{region:02d}"
        begin, end = cycle_bounds(cycle)
        start = datetime.strptime(umm["TemporalExtent"]["RangeDateTime"]["BeginningDateTime"],
                                  "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert begin <= start < end and start.strftime("%Y%m%d%H%M%S") == m[1]
        ring = umm["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"][0]["Boundary"]
        lats = np.array([p["Latitude"] for p in ring["Points"]])
        assert lats.min() > 59.0 and lats.max() < 80.2  # regions 3 and 5 span 59.5N..80N
    assert regions == {3, 5}  # region 4 (north of 80N) does not reach the box
    assert len(rows) > 1_000_000
    assert rows.lat.min() > 59.0  # every latitude north of 59N, and inside the box:
    lon_min, lat_min, lon_max, lat_max = recipe.source.bbox
    assert rows.lat.between(lat_min, lat_max).all() and rows.lon.between(lon_min, lon_max).all()
    assert in_greenland(rows.lat.to_numpy(), rows.lon.to_numpy()).all()


def _assert_footprint_encloses_rows(h5: Path) -> None:
    """The granule's UMM-G ring is counter-clockwise seen from above the north pole (EPSG:3413) and holds
    every 50th row of every beam (vertices are ~4 km apart, the rows ~3 km inside the edges)."""
    record = json.loads(h5.with_name(h5.name.replace(".h5", ".umm.json")).read_text())
    points = record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]["Geometry"]["GPolygons"][0]
    lon = [p["Longitude"] for p in points["Boundary"]["Points"]]
    lat = [p["Latitude"] for p in points["Boundary"]["Points"]]
    ring = shapely.LinearRing(np.column_stack(TO_3413.transform(lon, lat)))
    assert ring.is_valid and ring.is_ccw
    poly = shapely.Polygon(ring)
    shapely.prepare(poly)
    with h5py.File(h5, "r") as f:
        for beam in (b for b in BEAMS if b in f):
            g = f[f"{beam}/land_ice_segments"]
            x, y = TO_3413.transform(g["longitude"][::50], g["latitude"][::50])
            assert shapely.contains_xy(poly, x, y).all(), (h5.name, beam)


def test_footprints_are_counter_clockwise_and_enclose_every_row(greenland):
    _, folder = greenland
    for h5 in sorted(folder.glob("*.h5"))[::3]:
        _assert_footprint_encloses_rows(h5)


def test_beams_quality_fills_and_clouds_as_in_the_south(greenland):
    _, folder = greenland
    strong, weak, orients = [], [], set()
    n = n_fill = n_flag = 0
    gaps = []
    for h5 in sorted(folder.glob("*.h5")):
        with h5py.File(h5, "r") as f:
            orient = int(f["orbit_info/sc_orient"][0])
            orients.add(orient)
            for beam in (b for b in BEAMS if b in f):
                assert f[beam].attrs["atlas_beam_type"] == ("strong" if is_strong(beam, orient) else "weak")
                g = f[f"{beam}/land_ice_segments"]
                h, s, q = g["h_li"][:], g["h_li_sigma"][:], g["atl06_quality_summary"][:]
                fill = h >= FILL_THRESHOLD
                assert np.array_equal(fill, s >= FILL_THRESHOLD) and (q[fill] == 1).all()
                n, n_fill, n_flag = n + h.size, n_fill + fill.sum(), n_flag + (q[~fill] == 1).sum()
                ok = ~fill & (q == 0)
                (strong if is_strong(beam, orient) else weak).append(s[ok])
                assert 0 < h[~fill].min() and h[~fill].max() < 3300
                seg = g["segment_id"][:]
                gaps.append(np.diff(seg)[np.diff(seg) > 1] - 1)
    assert orients == {0, 1}
    assert np.median(np.concatenate(strong)) < np.median(np.concatenate(weak))
    assert 0.002 < n_fill / n < 0.01 and 0.04 < n_flag / n < 0.12
    assert np.concatenate(gaps).mean() > 20  # cloud runs (and the coast), not scattered rows


def test_heights_rise_inland_and_are_truth_plus_noise(greenland, rows):
    recipe, _ = greenland
    df = kept(rows)
    f = greenland_coast_fraction(df.lat.to_numpy(), df.lon.to_numpy())
    coast, inland = df.h[f > 0.93], df.h[f < 0.55]
    assert len(coast) > 1000 and len(inland) > 1000
    assert coast.median() < 1300 < 2300 < inland.median()
    truth = true_height(df.lat.to_numpy(), df.lon.to_numpy(), df.t.to_numpy(), seed=recipe.source.seed)
    z = (df.h.to_numpy() - truth) / df.s.to_numpy()
    assert 0.95 < z.std() < 1.05 and abs(z.mean()) < 0.03


def test_north_truth_functions():
    summit = GREENLAND_SUMMIT_LATLON
    assert in_greenland(*summit) and in_greenland(*JAKOBSHAVN_LATLON)
    # Iceland, Ellesmere, Baffin Island, Svalbard, the Arctic Ocean, Antarctica: not Greenland
    outside = np.array([(64.9, -18.5), (80.0, -80.0), (70.0, -70.0), (78.0, 16.0), (88.0, 0.0), (-75.0, -45)])
    assert not in_greenland(outside[:, 0], outside[:, 1]).any()
    assert 3150 < float(true_height(*summit, T_REF, seed=3)) < 3300
    assert abs(float(true_dhdt(*summit))) < 0.01 and float(true_dhdt(*JAKOBSHAVN_LATLON)) < -3.5
    lat, lon = np.meshgrid(np.linspace(59.0, 84.0, 126), np.linspace(-75.0, -10.0, 131))
    inside = in_greenland(lat, lon)
    d = true_dhdt(lat[inside], lon[inside])
    assert -4.6 < d.min() < -3.5 and d.max() <= 0.0
    # interior ~0 away from Jakobshavn's lobe (farther than ~200 km: 1.8 degrees of latitude, 5 of longitude)
    jlat, jlon = JAKOBSHAVN_LATLON
    far = (np.abs(lat - jlat) > 1.8) | (np.abs(lon - jlon) > 5.0)
    interior = (greenland_coast_fraction(lat, lon) < 0.5) & far
    assert interior[inside].sum() > 500 and np.abs(true_dhdt(lat[interior], lon[interior])).max() < 0.01
    # the trend is true_dhdt's, in both hemispheres, and true_dhdt is the hemisphere's own field
    h0, h1 = (true_height(69.3, -49.0, T_REF + k * YEAR_S, seed=1) for k in (0, 2))
    assert h1 - h0 == pytest.approx(2 * true_dhdt(69.3, -49.0), abs=1e-6)
    mixed_lat, mixed_lon = np.array([69.2, -85.5, 72.6, -70.0]), np.array([-49.8, 90.0, -38.5, -110.0])
    expected = [true_dhdt_north(69.2, -49.8), true_dhdt_south(-85.5, 90.0), true_dhdt_north(72.6, -38.5),
                true_dhdt_south(-70.0, -110.0)]
    np.testing.assert_array_equal(true_dhdt(mixed_lat, mixed_lon), np.array(expected, dtype=float))


def test_one_hemisphere_per_source(tmp_path):
    assert hemisphere_of_regions([3, 4, 5]) == "north" and hemisphere_of_regions([11]) == "south"
    with pytest.raises(ValueError, match="one hemisphere per source"):
        SynthConfig(regions=(3, 4, 5, 10))
    recipe = {"name": "mixed", "aoi": {"bbox": [-52.0, 68.0, -46.0, 71.0]},
              "source": {"kind": "synthetic", "regions": [5, 12], "rgts": [7], "cache_dir": str(tmp_path)}}
    with pytest.raises(ValueError, match="(?i)hemisphere"):
        polaragg.run(recipe, store=str(tmp_path / "out.zarr"), progress=False)
    assert not list(tmp_path.glob("*/*.h5")) and not list(tmp_path.glob("*/.complete"))


def test_full_granules_hold_every_row_over_greenland(tmp_path):
    """Full granules (no box, no clouds): every row is inside the outline and each run of rows ends at the
    coast or at the region's end (the row before and after a run, extrapolated 20 m along track, is outside),
    so the coarse pre-selection drops nothing; a box selects exactly the full granule's rows inside it."""
    # RGT 582's region 3 crosses Greenland's coast four times, 925's region 4 the north coast twice
    cfgs = [dict(seed=11, cycles=(22,), rgts=(rgt,), regions=(region,), cloud_fraction=0.0,
                 weak_beam_dropout=0.0) for rgt, region in ((582, 3), (925, 4))]
    full = [g for k, cfg in enumerate(cfgs) for g in generate(tmp_path / f"full{k}", SynthConfig(**cfg))]
    assert [(g.rgt, g.region) for g in full] == [(582, 3), (925, 4)]
    runs = 0
    for g in full:
        j0, j1 = (int(np.ceil(u / (20.0 / 6371000.0))) for u in region_u_bounds(g.region))
        with h5py.File(g.h5_path, "r") as f:
            assert {b for b in BEAMS if b in f} == set(BEAMS)
            for beam in BEAMS:
                d = f[f"{beam}/land_ice_segments"]
                lat, lon, seg = d["latitude"][:], d["longitude"][:], d["segment_id"][:].astype(np.int64)
                assert in_greenland(lat, lon).all() and lat.min() > 59.5 and lat.max() < 88.05
                cut = np.flatnonzero(np.diff(seg) > 1)
                first, last = np.r_[0, cut + 1], np.r_[cut, seg.size - 1]
                for a, b in zip(first, last):
                    assert b - a > 10
                    runs += 1
                    for end, inner, edge in ((a, a + 1, j0 + 1), (b, b - 1, j1)):
                        if seg[end] == edge:  # the run reaches the end of the region
                            continue
                        nxt_lat, nxt_lon = 2 * lat[end] - lat[inner], 2 * lon[end] - lon[inner]
                        assert not in_greenland(nxt_lat, nxt_lon), (g.name, beam, int(seg[end]))
        assert g.region == 4 or np.ptp(lat) > 5
        _assert_footprint_encloses_rows(g.h5_path)  # region 4's ring runs around the pole hole (88N)
    assert runs == 3 * 6
    bbox = (-60.0, 75.0, -30.0, 82.0)
    boxed = {g.name: g for k, cfg in enumerate(cfgs)
             for g in generate(tmp_path / f"box{k}", SynthConfig(**cfg, bbox=bbox))}
    assert len(boxed) == 2
    for g in full:
        want = {b: s for b, s in _segments(g.h5_path, bbox).items() if s.size}
        assert want and _segments(boxed[g.name].h5_path).keys() == want.keys()
        for beam, seg in _segments(boxed[g.name].h5_path).items():
            np.testing.assert_array_equal(seg, want[beam])
        # the same record but for the local file (the footprint, times and full size do not depend on the box)
        assert boxed[g.name].umm_path.read_text().split('"AdditionalAttributes"')[0] == \
            g.umm_path.read_text().split('"AdditionalAttributes"')[0]


def _segments(path: Path, bbox: tuple[float, float, float, float] | None = None) -> dict[str, np.ndarray]:
    """segment_id of each beam's rows (inside ``bbox``, edges included, when given)."""
    out = {}
    with h5py.File(path, "r") as f:
        for beam in (b for b in BEAMS if b in f):
            d = f[f"{beam}/land_ice_segments"]
            keep = slice(None)
            if bbox is not None:
                lat, lon = d["latitude"][:], d["longitude"][:]
                keep = (lon >= bbox[0]) & (lat >= bbox[1]) & (lon <= bbox[2]) & (lat <= bbox[3])
            out[beam] = d["segment_id"][:][keep]
    return out


# ----------------------------------------------------------------------------------------------------
# The recipe end to end


def test_no_row_falls_in_a_cell_whose_task_does_not_list_its_granule(greenland):
    recipe, folder = greenland
    plan = plan_recipe(recipe)
    listed: dict[tuple[int, int], set[str]] = {}
    for task in plan.tasks:
        listed[task.parent, task.child_lo] = {Path(g.url).name for g in task.granules}
    chunk = plan.tasks[0].child_hi - plan.tasks[0].child_lo
    parents = set(int(p) for p in plan.parents)
    pairs = 0
    for h5 in sorted(folder.glob("*.h5")):
        cells = []
        with h5py.File(h5, "r") as f:
            for beam in (b for b in BEAMS if b in f):
                g = f[f"{beam}/land_ice_segments"]
                lon, lat = g["longitude"][:], g["latitude"][:]
                cells.append(hpn.lonlat_to_healpix(lon, lat, 12, ellipsoid="WGS84"))
        cells = np.unique(np.concatenate(cells))
        parent, child = cells >> np.uint64(12), cells & np.uint64(4095)
        for p, lo in set(zip(parent.tolist(), (child // np.uint64(chunk) * np.uint64(chunk)).tolist())):
            assert p in parents  # the box's rows lie in the AOI's parents
            assert h5.name in listed[p, lo], (h5.name, p, lo)
            pairs += 1
    assert pairs >= 50


@pytest.mark.parametrize("executor", EXECUTORS)
def test_run_equals_brute_force(executor, run_on, reference):
    store, summary = run_on(executor)
    assert summary.executor == executor
    ds = xr.open_zarr(store, decode_times=False)[["count", *STATS]].load()
    cycles = sorted(reference.index.get_level_values("cycle").unique())
    assert ds.sizes["time"] == len(cycles) == 4
    ids = ds.cell_ids.values
    b, pos = store_positions(ds, cycles, reference.index)
    np.testing.assert_array_equal(ds["count"].values[b, pos], reference["count"].to_numpy())
    assert int(ds["count"].sum()) == int(reference["count"].sum()) == summary.observations
    for name in STATS:
        np.testing.assert_allclose(ds[name].values[b, pos], reference[name].to_numpy(), rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    lon, lat = hpn.healpix_to_lonlat(ids, 12, ellipsoid="WGS84")
    assert np.asarray(lat).min() > 59.0
    records = read_records(store)
    assert records and not [m for r in records for m in r.footprint_misses]  # zero missed (cell, granule)
    if executor == "threads":  # the whole store's checks (~2 s), once
        assert validate_store(store) == []


def test_recovered_dhdt_is_the_north_truth(run_on):
    store, summary = run_on("threads")
    ds = xr.open_zarr(store, decode_times=False)[["fit_status", "fit_bins", "dhdt", "dhdt_sigma"]].load()
    sel = (ds["fit_status"].values == 0) & (ds["fit_bins"].values >= 4)
    assert sel.sum() >= 1000
    lon, lat = hpn.healpix_to_lonlat(ds.cell_ids.values[sel], 12, ellipsoid="WGS84")
    truth = true_dhdt(np.asarray(lat), np.asarray(lon))
    got, sigma = ds["dhdt"].values[sel], ds["dhdt_sigma"].values[sel]
    assert truth.min() < -3.5 and (truth < -2.0).sum() >= 50  # the run samples the Jakobshavn lobe
    z = np.abs(got - truth) / sigma
    assert np.mean(z <= 3) >= 0.95, np.quantile(z, [0.5, 0.9, 0.95, 0.99])
    assert np.median(np.abs(got - truth)) < 0.25  # measured: 0.10 m/yr
    assert np.corrcoef(got, truth)[0, 1] > 0.95
    assert summary.fit_outcomes.get("ok", 0) >= sel.sum()
