"""Build the shipped Antarctic geometry in this directory (one-off; never run at install or import time).

Usage (from the repository root)::

    .venv/bin/python src/polaragg/data/build_basins.py            # defaults: 1000 m tolerance, 4 decimals
    .venv/bin/python src/polaragg/data/build_basins.py --tolerance 1500 --source /path/to/file.txt

Inputs
------
* ``Ant_Grounded_DrainageSystem_Polygons.txt`` from the ``mortie`` wheel (``mortie/tests/``, MIT): the 27 GSFC
  (Zwally et al. 2012) grounded drainage systems, whitespace columns ``lat lon basin_id``, one row per vertex,
  basins in id order. In mortie 1.0.0 every basin is a single ring; 25 rings are closed (last vertex == first)
  and the rings of basins 2 and 17 are left open, their closing segment being the same ~1.6 km edge near
  88.3 S shared by the two basins. The reader below still copes with several rings per basin (a ring ends
  where it returns to its first vertex, or at a jump > ``JUMP_M`` between consecutive vertices).
* The Natural Earth 110m "Antarctica" feature from pyogrio's test fixtures (public domain), for map
  coastlines.

Method
------
1. Project every vertex to EPSG:3031 (polar stereographic south, WGS84) and build planar polygons there; a
   polygon that contains the South Pole is an ordinary planar polygon in this projection.
2. ``shapely.coverage_clean`` (gap width ``GAP_WIDTH_M``) makes the 27 polygons an exact coverage: the source
   has metre-scale slivers/overlaps along a few shared boundaries.
3. Topology-consistent Douglas-Peucker: the coverage's boundaries are merged into arcs between junctions, all
   arcs are simplified together (``shapely.simplify(..., preserve_topology=True)``, so arcs cannot cross each
   other), and the arcs are polygonised back into 27 faces. Every shared boundary is simplified once, so
   neighbouring basins stay gap- and overlap-free and the Hausdorff distance to the source is <= the
   tolerance.
4. Make valid, orient every exterior ring counter-clockwise in EPSG:3031 (this projection preserves
   orientation as seen from outside the Earth, so the interior is on the left of the direction of travel on
   the sphere too).
5. The outline is the coverage union of the simplified basins.
6. Transform every vertex back to lon/lat (vertex-wise, ring structure kept), round, and write GeoJSON.

Representation of the output: see ``polaragg.aoi`` and ``SOURCES.md``. Rings are NOT cut at the antimeridian
and pole-containing rings are stored as their plain vertex sequence, so some are not valid planar lon/lat
polygons.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import shapely
from pyproj import Geod, Transformer

HERE = Path(__file__).resolve().parent
SOURCE_NAME = "Ant_Grounded_DrainageSystem_Polygons.txt"
N_BASINS = 27
JUMP_M = 50_000.0  # a step longer than this between consecutive vertices starts a new ring
GAP_WIDTH_M = 200.0  # slivers narrower than this (metres) are merged into a neighbour by coverage_clean

_FWD = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
_INV = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True)


def default_source() -> Path:
    spec = importlib.util.find_spec("mortie")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mortie is not installed; pass --source")
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / SOURCE_NAME


def read_source(path: Path) -> dict[int, list[np.ndarray]]:
    """Return {basin id: [ring (n, 2) lon/lat array, ...]} in file order."""
    data = np.loadtxt(path, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 3:
        raise ValueError(f"{path}: expected 3 columns (lat lon basin), got shape {data.shape}")
    lat, lon, bid = data[:, 0], data[:, 1], data[:, 2].astype(np.int64)
    x, y = _FWD.transform(lon, lat)
    out: dict[int, list[np.ndarray]] = {}
    for b in np.unique(bid):
        idx = np.flatnonzero(bid == b)
        if np.any(np.diff(idx) != 1):
            raise ValueError(f"{path}: rows of basin {b} are not contiguous")
        rings: list[np.ndarray] = []
        start = 0
        px, py = x[idx], y[idx]
        steps = np.hypot(np.diff(px), np.diff(py))
        for k in range(1, len(idx) + 1):
            end_of_ring = k == len(idx)
            if not end_of_ring:
                closed_here = k - start >= 3 and px[k] == px[start] and py[k] == py[start]
                if closed_here:  # vertex k closes the ring that began at `start`
                    rings.append(np.c_[lon[idx[start : k + 1]], lat[idx[start : k + 1]]])
                    start = k + 1
                    continue
                if steps[k - 1] > JUMP_M and k > start:
                    end_of_ring = True
            if end_of_ring and k > start:
                rings.append(np.c_[lon[idx[start:k]], lat[idx[start:k]]])
                start = k
        out[int(b)] = [r for r in rings if len(r) >= 3]
    if sorted(out) != list(range(1, N_BASINS + 1)):
        raise ValueError(f"{path}: expected basin ids 1..{N_BASINS}, got {sorted(out)}")
    return out


def _ring_xy(ring_lonlat: np.ndarray) -> np.ndarray:
    x, y = _FWD.transform(ring_lonlat[:, 0], ring_lonlat[:, 1])
    return np.c_[x, y]


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """Keep only the polygonal part of a geometry (make_valid can return collections)."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
    if not parts:
        return shapely.Polygon()
    return shapely.union_all(parts) if len(parts) > 1 else parts[0]


def source_polygons_xy(rings: dict[int, list[np.ndarray]]) -> list[shapely.Geometry]:
    """Planar EPSG:3031 polygon per basin; several rings combine by symmetric difference (islands, holes)."""
    polys = []
    for b in range(1, N_BASINS + 1):
        geom = None
        for ring in rings[b]:
            p = _polygonal(shapely.make_valid(shapely.Polygon(_ring_xy(ring))))
            geom = p if geom is None else shapely.symmetric_difference(geom, p)
        polys.append(_polygonal(shapely.make_valid(geom)))
    return polys


def simplify_coverage(polys: list[shapely.Geometry], tolerance: float) -> list[shapely.Geometry]:
    cleaned = shapely.coverage_clean(np.array(polys, dtype=object), gap_width=GAP_WIDTH_M)
    if not shapely.coverage_is_valid(cleaned):
        raise RuntimeError("coverage_clean did not produce a valid coverage")
    arcs = shapely.line_merge(shapely.union_all(shapely.boundary(cleaned)))
    simple_arcs = shapely.simplify(arcs, tolerance, preserve_topology=True)
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(simple_arcs)))
    faces = faces[shapely.area(faces) > 0]
    # assign every face to the cleaned basin it overlaps most
    owner = np.array([int(np.argmax(shapely.area(shapely.intersection(f, cleaned)))) for f in faces])
    return coverage_of(faces, owner, [f"basin {i + 1}" for i in range(len(polys))], shapely.union_all)


def coverage_of(faces: np.ndarray, owner: np.ndarray, labels: list[str], union) -> list[shapely.Geometry]:
    """One polygon per label from the faces it owns (`owner[i]` indexes `labels`), merged with `union`,
    counter-clockwise; refuses a label without faces or a result that is not a valid coverage."""
    out = []
    for k, label in enumerate(labels):
        mine = faces[owner == k]
        if len(mine) == 0:
            raise RuntimeError(f"{label} has no face left")
        g = _polygonal(shapely.make_valid(union(mine)))
        out.append(shapely.orient_polygons(g, exterior_cw=False))
    if not shapely.coverage_is_valid(np.array(out, dtype=object)):
        raise RuntimeError(f"the {len(labels)} polygons are not a valid coverage")
    return out


def natural_earth_antarctica_xy() -> shapely.Geometry | None:
    try:
        from pyogrio.raw import read
    except ImportError:
        return None
    spec = importlib.util.find_spec("pyogrio")
    shp = (
        Path(list(spec.submodule_search_locations)[0])
        / "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"
    )
    if not shp.exists():
        return None
    meta, _fids, geoms, fields = read(shp)
    names = list(fields[list(meta["fields"]).index("name")])
    wkb = geoms[names.index("Antarctica")]
    lonlat = shapely.from_wkb(wkb)
    # The main part runs along the coast from -180 to 180 and closes via (180,-90), (-180,-90). Projected
    # vertex-wise to EPSG:3031 that closure is a zero-width spike to the pole, which GEOS reports as valid, so
    # the pole vertices are dropped first: what remains is the coast loop, a planar polygon containing the
    # pole.
    parts = []
    for part in shapely.get_parts(lonlat):
        rings = []
        for ring in [part.exterior, *part.interiors]:
            c = np.asarray(ring.coords)
            c = c[c[:, 1] > -89.99999]
            x, y = _FWD.transform(c[:, 0], c[:, 1])
            xy = np.c_[x, y]
            keep = np.r_[True, np.hypot(*np.diff(xy, axis=0).T) > 1e-3]  # drop repeated points (+-180 seam)
            rings.append(xy[keep])
        parts.append(shapely.Polygon(rings[0], rings[1:]))
    g = _polygonal(shapely.make_valid(shapely.MultiPolygon(parts)))
    return shapely.orient_polygons(g, exterior_cw=False)


def to_lonlat(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda c: np.c_[_INV.transform(c[:, 0], c[:, 1])])


def _ring_coords(ring: shapely.LinearRing, decimals: int) -> list[list[float]]:
    c = np.round(np.asarray(ring.coords), decimals)
    # drop consecutive duplicates created by rounding (keep the closing vertex)
    keep = np.r_[True, np.any(np.diff(c, axis=0) != 0, axis=1)]
    c = c[keep]
    if not np.array_equal(c[0], c[-1]):
        c = np.vstack([c, c[:1]])
    return c.tolist()


def geojson_geometry(geom: shapely.Geometry, decimals: int) -> dict:
    polys = list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]
    coords = [
        [_ring_coords(p.exterior, decimals)] + [_ring_coords(r, decimals) for r in p.interiors] for p in polys
    ]
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def ring_facts(geom_lonlat: shapely.Geometry, geom_xy: shapely.Geometry) -> dict:
    """Does the basin contain the South Pole / have an edge crossing the antimeridian (shortest-way edges)?"""
    crosses = False
    for p in shapely.get_parts(geom_lonlat):
        for r in [p.exterior, *p.interiors]:
            lon = np.asarray(r.coords)[:, 0]
            crosses |= bool(np.any(np.abs(np.diff(lon)) > 180.0))
    return {
        "contains_pole": bool(geom_xy.contains(shapely.Point(0.0, 0.0))),
        "crosses_antimeridian": crosses,
    }


def write_json(path: Path, obj: dict) -> int:
    text = json.dumps(obj, separators=(",", ":"))
    path.write_text(text + "\n")
    return path.stat().st_size


REPRESENTATION = (
    "Coordinates are [lon, lat] degrees on WGS84. Each ring is the vertex sequence of a planar EPSG:3031 "
    "ring transformed vertex-wise to lon/lat; rings are not cut at the antimeridian and pole-containing "
    "rings are not augmented with pole vertices, so such rings are not valid planar lon/lat polygons: "
    "interpret them as spherical polygons through the given vertices, or project them to EPSG:3031. "
    "Exterior rings are counter-clockwise in EPSG:3031 (interior on the left when walking the ring on the"
    " globe)."
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="Ant_Grounded_DrainageSystem_Polygons.txt")
    ap.add_argument("--tolerance", type=float, default=1000.0, help="Douglas-Peucker tolerance (m, 3031)")
    ap.add_argument("--decimals", type=int, default=4, help="decimal places of lon/lat in the output")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args(argv)

    source = args.source or default_source()
    rings = read_source(source)
    n_rings = {b: len(r) for b, r in rings.items()}
    print(f"read {sum(len(r) for rs in rings.values() for r in rs)} vertices; rings per basin: {n_rings}")
    src = source_polygons_xy(rings)
    simple = simplify_coverage(src, args.tolerance)
    geod = Geod(ellps="WGS84")

    features = []
    for i, (g_src, g_xy) in enumerate(zip(src, simple), start=1):
        g_ll = to_lonlat(g_xy)
        facts = ring_facts(g_ll, g_xy)
        hd = shapely.hausdorff_distance(g_src, g_xy)
        print(
            f"basin {i:2d}: {shapely.get_num_coordinates(g_xy):5d} vertices, area change "
            f"{g_xy.area / g_src.area - 1:+.4%}, hausdorff {hd:6.0f} m, {facts}"
        )
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "id": i,
                    "name": f"basin_{i:02d}",
                    "label": str(i),
                    "area_km2": round(_geodesic_area_km2(g_ll, geod), 1),
                    **facts,
                },
                "geometry": geojson_geometry(g_ll, args.decimals),
            }
        )
    common = {
        "polaragg:representation": REPRESENTATION,
        "polaragg:simplification": (
            f"coverage-consistent Douglas-Peucker in EPSG:3031, tolerance {args.tolerance:g} m, "
            f"coverage_clean gap width {GAP_WIDTH_M:g} m, coordinates rounded to {args.decimals} decimals"
        ),
    }
    size = write_json(
        args.out_dir / "antarctic_basins.geojson",
        {
            "type": "FeatureCollection",
            "name": "antarctic_basins",
            "polaragg:source": "GSFC / Zwally et al. (2012) Antarctic grounded drainage systems, via mortie "
            f"1.0.0 ({SOURCE_NAME}, MIT)",
            **common,
            "features": features,
        },
    )
    print(f"antarctic_basins.geojson: {size} bytes")

    outline_xy = shapely.orient_polygons(
        _polygonal(shapely.coverage_union_all(np.array(simple, dtype=object))), exterior_cw=False
    )
    outline_ll = to_lonlat(outline_xy)
    size = write_json(
        args.out_dir / "antarctic_outline.geojson",
        {
            "type": "FeatureCollection",
            "name": "antarctic_outline",
            "polaragg:source": "union of antarctic_basins.geojson (grounded ice, Zwally et al. 2012)",
            **common,
            "features": [
                {
                    "type": "Feature",
                    "properties": {
                        "name": "grounded_ice",
                        "area_km2": round(_geodesic_area_km2(outline_ll, geod), 1),
                        **ring_facts(outline_ll, outline_xy),
                    },
                    "geometry": geojson_geometry(outline_ll, args.decimals),
                }
            ],
        },
    )
    print(f"antarctic_outline.geojson: {size} bytes, {shapely.get_num_coordinates(outline_xy)} vertices")

    ne_xy = natural_earth_antarctica_xy()
    if ne_xy is None:
        print("pyogrio fixture not found; antarctica_ne110m.geojson not rebuilt")
        return
    ne_ll = to_lonlat(ne_xy)
    size = write_json(
        args.out_dir / "antarctica_ne110m.geojson",
        {
            "type": "FeatureCollection",
            "name": "antarctica_ne110m",
            "polaragg:source": "Natural Earth 1:110m admin-0 'Antarctica' (public domain), via pyogrio test "
            "fixtures naturalearth_lowres; includes ice shelves",
            "polaragg:representation": REPRESENTATION,
            "polaragg:simplification": f"none; coordinates rounded to {args.decimals} decimals",
            "features": [
                {
                    "type": "Feature",
                    "properties": {"name": "Antarctica", **ring_facts(ne_ll, ne_xy)},
                    "geometry": geojson_geometry(ne_ll, args.decimals),
                }
            ],
        },
    )
    print(f"antarctica_ne110m.geojson: {size} bytes, {shapely.get_num_coordinates(ne_xy)} vertices")


def _geodesic_area_km2(geom_ll: shapely.Geometry, geod: Geod) -> float:
    """Geodesic area of a lon/lat polygon whose rings follow the stored vertex sequences (pole-safe)."""
    total = 0.0
    for p in shapely.get_parts(geom_ll):
        for k, r in enumerate([p.exterior, *p.interiors]):
            c = np.asarray(r.coords)
            a = abs(geod.polygon_area_perimeter(c[:, 0], c[:, 1])[0])
            total += a if k == 0 else -a
    return total / 1e6


if __name__ == "__main__":
    main()
