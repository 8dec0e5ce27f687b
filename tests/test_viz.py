"""Polar stereographic maps (polaragg.viz)."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from healpix_geo.nested import healpix_to_lonlat, lonlat_to_healpix

from polaragg import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"  # complete file: ends with the IEND chunk
    return width, height


def _children(parents: np.ndarray, parent_level: int, child_level: int) -> np.ndarray:
    n = 4 ** (child_level - parent_level)
    return (parents.astype(np.uint64)[:, None] * np.uint64(n) + np.arange(n, dtype=np.uint64)).ravel()


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    """Order-12 children of three order-6 cells near -85 lat (12,288 cells) and their latitudes."""
    parents = np.unique(
        lonlat_to_healpix(np.array([0.0, 40.0, 100.0]), np.array([-85.0, -85.0, -85.0]), 6, ellipsoid="WGS84")
    )
    ids = _children(parents, 6, 12)
    _lon, lat = healpix_to_lonlat(ids, 12, ellipsoid="WGS84")
    return ids, np.asarray(lat)


def test_plot_cells_writes_png(tmp_path, cells):
    ids, lat = cells
    vals = lat.copy()
    vals[::97] = np.nan
    out = viz.plot_cells(ids, 12, vals, out=tmp_path / "sub" / "lat.png", title="latitude", label="lat (deg)")
    assert out == tmp_path / "sub" / "lat.png"
    w, h = _png_size(out)
    assert 400 < w < 2000 and 400 < h < 2000
    assert out.stat().st_size > 10_000
    # whole-continent view, NaN cells dropped, no context lines
    out2 = viz.plot_cells(
        ids, 12, vals, out=tmp_path / "all.png", title="t", label="l", whole_continent=True, nan_color=None,
        outline=False, basins=False,
    )
    _png_size(out2)


def test_projection_orientation():
    # a cell touching the South Pole: one vertex at (0, 0), all within a cell size of it
    pole = lonlat_to_healpix(np.array([0.0]), np.array([-90.0]), 12, ellipsoid="WGS84")
    v = viz.cell_polygons_xy(pole, 12)
    assert v.shape == (1, 4, 2)
    assert np.hypot(v[0, :, 0], v[0, :, 1]).min() < 1.0  # metres
    assert np.abs(v).max() < 5_000
    # EPSG:3031: lon 0 points up (+y), lon 90 E right (+x), lon 180 down
    for lon, sx, sy in [(0.0, 0, 1), (90.0, 1, 0), (180.0, 0, -1), (-90.0, -1, 0)]:
        c = lonlat_to_healpix(np.array([lon]), np.array([-70.0]), 12, ellipsoid="WGS84")
        xy = viz.cell_polygons_xy(c, 12)[0].mean(axis=0)
        r = np.hypot(*xy)
        assert 2_150_000 < r < 2_240_000  # 70 S is ~2,194 km from the pole
        if sx:
            assert np.sign(xy[0]) == sx and abs(xy[1]) < 5_000
        if sy:
            assert np.sign(xy[1]) == sy and abs(xy[0]) < 5_000


def test_cell_polygons_densified_edges():
    v = viz.cell_polygons_xy(np.array([100], dtype=np.uint64), 3, step=4)
    assert v.shape == (1, 16, 2)
    assert np.all(np.isfinite(v))


def _store(tmp_path: Path, cells, with_count: bool = True) -> Path:
    ids, lat = cells
    h = 2000.0 + 10 * (lat + 85.0)
    h[:100] = np.nan
    data = {
        "h_mean": ("cells", h, {"units": "m", "long_name": "weighted mean height"}),
        # not a CF calendar: must not be decoded as a datetime
        "t_mean": ("cells", np.full(ids.shape, 1.9e8), {"units": "s"}),
    }
    if with_count:
        count = np.full(ids.shape, 3, dtype=np.int64)
        count[:200] = 0  # 100 more empty cells whose (stale) h_mean must not be drawn
        data["count"] = ("cells", count)
    ds = xr.Dataset(
        data,
        coords={
            "cell_ids": (
                "cells",
                ids,
                {"grid_name": "healpix", "level": 12, "indexing_scheme": "nested", "ellipsoid": "WGS84"},
            )
        },
    )
    path = tmp_path / "out.zarr"
    ds.to_zarr(path, consolidated=False)
    return path


def test_plot_store(tmp_path, cells):
    path = _store(tmp_path, cells)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata / side-file / time-decoding warnings
        out = viz.plot_store(path, "h_mean")
        assert out == tmp_path / "out_h_mean.png"
        _png_size(out)
        _png_size(viz.plot_store(path, "t_mean", out=tmp_path / "t.png"))
    ds = xr.open_zarr(path, consolidated=False)
    out2 = viz.plot_store(ds, "count", out=tmp_path / "count.png", basins=False)
    _png_size(out2)


@pytest.mark.parametrize("store, var, expected", [
    ("polaragg-out/demo.zarr", "h_mean", "polaragg-out/demo_h_mean.png"),
    ("polaragg-out/demo.zarr/", "h_q50", "polaragg-out/demo_h_q50.png"),
    ("/data/runs/basin2.zarr", "count", "/data/runs/basin2_count.png"),
    ("run.zarr", "h_mean", "run_h_mean.png"),
    ("runs/plain", "h_mean", "runs/plain_h_mean.png"),      # no .zarr suffix: nothing to strip
    ("file:///tmp/x/a.zarr", "h_mean", "/tmp/x/a_h_mean.png"),
    ("s3://bucket/out/basin2.zarr", "h_mean", "basin2_h_mean.png"),  # remote: a local file named after it
    ("s3://bucket/out/basin2.zarr/", "h_sigma", "basin2_h_sigma.png"),
    ("gs://b/c.zarr", "h_mean", "c_h_mean.png"),
    ("runs/demo.zarr", "../../etc/x", "runs/demo_etc_x.png"),  # the variable cannot leave the folder
])
def test_default_map_path(store, var, expected):
    assert Path(viz.default_map_path(store, var)) == Path(expected)


def test_default_map_path_is_beside_the_store_never_inside_it(tmp_path):
    store = tmp_path / "deep" / "my.run.zarr"
    out = Path(viz.default_map_path(str(store), "h_mean"))
    assert out.parent == store.parent and out.name == "my.run_h_mean.png"
    assert store not in out.parents
    for remote in ("s3://bucket/my.run.zarr", "s3://bucket/deep/my.run.zarr/"):
        assert Path(viz.default_map_path(remote, "h_mean")) == Path("my.run_h_mean.png")


def test_plot_store_unknown_variable(tmp_path, cells):
    path = _store(tmp_path, cells)
    with pytest.raises(KeyError, match=r"'h_nope'.*available variables: count, h_mean, t_mean"):
        viz.plot_store(path, "h_nope", out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="h_nope"):
        viz.plot_store(path, "h_nope", out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_store_missing_level(tmp_path, cells):
    ids, lat = cells
    ds = xr.Dataset({"h_mean": ("cells", lat)}, coords={"cell_ids": ("cells", ids)})
    with pytest.raises(ValueError, match="level"):
        viz.plot_store(ds, out=tmp_path / "x.png")


def test_plot_cells_bad_input(tmp_path, cells):
    ids, lat = cells
    with pytest.raises(ValueError, match="shape"):
        viz.plot_cells(ids, 12, lat[:-1], out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="out of range"):
        viz.plot_cells(ids, 3, lat, out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="level"):
        viz.plot_cells(ids, 30, lat, out=tmp_path / "x.png")


def test_plot_parent_cells(tmp_path):
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, -0.95, 5000)))
    parents = np.unique(lonlat_to_healpix(rng.uniform(-180, 180, 5000), lat, 6, ellipsoid="WGS84"))
    out = viz.plot_parent_cells(parents, 6, tmp_path / "plan.png", "plan", highlight=parents[:10])
    _png_size(out)
    every_other = np.arange(parents.size) % 2 == 0
    out2 = viz.plot_parent_cells(parents, 6, tmp_path / "plan2.png", highlight=every_other)
    _png_size(out2)
    with pytest.raises(ValueError, match="highlight"):
        viz.plot_parent_cells(parents, 6, tmp_path / "bad.png", highlight=np.ones(3, dtype=bool))
