"""The north through the same code: region numbers name hemispheres, maps of northern cells are drawn in
EPSG:3413 (checked against a closed-form polar stereographic, not pyproj), and the real v005 record over
west Greenland catalogues to Greenland cells that a plan map shows."""

from __future__ import annotations

import json
from pathlib import Path

import healpix_geo.nested as hpn
import numpy as np
import pytest

from polaragg import viz
from polaragg.catalog import build_catalog, region_hemisphere
from polaragg.coverage import cells_covering
from polaragg.projection import polar_stereographic
from polaragg.sources import bbox_polygon

FIXTURES = Path(__file__).parent / "fixtures"


def test_region_numbers_name_their_hemisphere():
    assert [region_hemisphere(r) for r in (1, 3, 4, 5, 7)] == ["north"] * 5
    assert [region_hemisphere(r) for r in (8, 10, 11, 12, 14)] == ["south"] * 5
    for bad in (0, 15):
        with pytest.raises(ValueError, match="not one of 1-14"):
            region_hemisphere(bad)


def test_northern_cells_are_drawn_in_epsg_3413():
    order = 8
    lon, lat = np.meshgrid(np.linspace(-55, -30, 12), np.linspace(62, 82, 12))
    ids = np.unique(hpn.lonlat_to_healpix(lon.ravel(), lat.ravel(), order, ellipsoid="WGS84"))
    assert viz.hemisphere_of_cells(ids, order) == "north"
    xy = viz.cell_polygons_xy(ids, order, hemisphere="north")
    vlon, vlat = hpn.vertices(ids, order, ellipsoid="WGS84", step=1)
    x, y = polar_stereographic(np.asarray(vlon), np.asarray(vlat), "north")
    np.testing.assert_allclose(xy[..., 0], x, atol=0.01)
    np.testing.assert_allclose(xy[..., 1], y, atol=0.01)
    # EPSG:3413 faces 45 W down: Greenland's west coast (55 W) lies left of its east coast (30 W) at 70 N
    (xw, yw), (xe, ye) = (polar_stereographic(np.array([-55.0]), np.array([70.0]), "north"),
                          polar_stereographic(np.array([-30.0]), np.array([70.0]), "north"))
    assert xw[0] < xe[0] and yw[0] < 0 and ye[0] < 0
    south = np.unique(hpn.lonlat_to_healpix(lon.ravel(), -lat.ravel(), order, ellipsoid="WGS84"))
    assert viz.hemisphere_of_cells(south, order) == "south"


def _v005() -> dict:
    return json.loads((FIXTURES / "umm" / "earthaccess_atl06_v005_umm.json").read_text())["items"][0]


def test_the_real_v005_record_over_greenland_is_on_a_northern_plan_map(tmp_path):
    order = 6
    aoi = cells_covering(bbox_polygon(-65.0, 55.0, -40.0, 84.0), order)  # west Greenland
    catalog = build_catalog([_v005()], aoi, order, access="external")
    assert catalog.hemispheres() == {"north"}
    crossed = np.asarray(catalog.granules.iloc[0].parent_cells, np.uint64)
    clon, clat = hpn.healpix_to_lonlat(crossed, order, ellipsoid="WGS84")
    clon = (np.asarray(clon) + 180.0) % 360.0 - 180.0
    assert (clat > 58).all() and (-70 < clon).all() and (clon < -40).all()  # Greenland's west, not Antarctica
    png = viz.plot_parent_cells(aoi, order, tmp_path / "plan.png", highlight=crossed)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(png)[..., :3]
    orange = np.array([0xfd, 0x8d, 0x3c]) / 255.0  # the highlighted cells' fill
    assert (np.abs(pixels - orange).max(axis=-1) < 0.02).sum() > 500
