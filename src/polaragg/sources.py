"""Resolve a recipe's inputs: the AOI geometry, its parent cells, and the granule catalog.

Synthetic sources are generated once into a cache folder keyed by their parameters; directory and
synthetic sources then go through the same path as CMR records (UMM-G -> catalog). A catalog built
from a local folder is cached (Parquet) under a key of the folder's files (name, size, modification
time), the AOI's parent cells and the catalog format, so an unchanged folder is not catalogued twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import shapely

from .catalog import Catalog, CatalogError, build_catalog, read_directory
from .coverage import cells_covering, footprint_cells
from .domain import POLARAGG_VERSION
from .recipe import Aoi, CatalogSource, CmrSource, DirectorySource, Recipe, RecipeError, SyntheticSource


def aoi_geometry(aoi: Aoi) -> shapely.Polygon | shapely.MultiPolygon:
    """The AOI as a (multi)polygon in lon/lat degrees, vertices in ring order.

    An AOI must lie in one hemisphere (one pole per run): a box or polygon across or on the equator, basins of
    both ice sheets or a GeoJSON in both hemispheres raises a RecipeError naming the AOI and the rule.
    """
    from . import aoi as shipped

    if aoi.bbox is not None:
        geom = bbox_polygon(*aoi.bbox)
    elif aoi.polygon is not None:
        geom = shapely.Polygon(aoi.polygon)
    elif aoi.basins is not None:
        parts = [shipped.basin(b) for b in aoi.basins]
        polys = [p for g in parts for p in getattr(g, "geoms", [g])]
        geom = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
    elif aoi.outline:
        geom = shipped.ice_sheet_outline(aoi.outline)
    else:
        geom = shipped.load_geojson(aoi.geojson, crs=aoi.crs)
    _one_hemisphere(aoi, geom)
    return geom


def aoi_hemisphere(aoi: Aoi) -> str:
    """``"north"`` or ``"south"``: the hemisphere of the recipe's AOI (RecipeError if it reaches both)."""
    from . import aoi as shipped

    return shipped.hemisphere_of(aoi_geometry(aoi))


def _describe_aoi(aoi: Aoi) -> str:
    if aoi.bbox is not None:
        return f"aoi.bbox {list(aoi.bbox)}"
    if aoi.polygon is not None:
        return f"aoi.polygon ({len(aoi.polygon)} points)"
    if aoi.basins is not None:
        return f"aoi.basins {list(aoi.basins)}"
    if aoi.outline:
        return f"aoi.outline {aoi.outline}"
    return f"aoi.geojson {aoi.geojson}"


def _one_hemisphere(aoi: Aoi, geom: shapely.Geometry) -> None:
    from . import aoi as shipped

    if aoi.basins is not None:
        where = {shipped.basin_hemisphere(b) for b in aoi.basins}
        if len(where) > 1:
            south = [b for b in aoi.basins if shipped.basin_hemisphere(b) == "south"]
            north = [b for b in aoi.basins if shipped.basin_hemisphere(b) == "north"]
            raise RecipeError(f"{_describe_aoi(aoi)} mixes Antarctic basins {south} and Greenland basins "
                              f"{north}: {shipped.ONE_HEMISPHERE_RULE}")
    try:
        shipped.hemisphere_of(geom, _describe_aoi(aoi))
    except shipped.HemisphereError as exc:
        raise RecipeError(str(exc)) from None


def bbox_polygon(lon_min: float, lat_min: float, lon_max: float, lat_max: float) -> shapely.Polygon:
    """A lon/lat box whose east-west edges follow parallels (densified every 0.25 deg of longitude)."""
    span = (lon_max - lon_min) % 360.0 or 360.0
    n = max(2, int(np.ceil(span / 0.25)) + 1)
    lons = lon_min + np.linspace(0.0, span, n)
    lons = (lons + 180.0) % 360.0 - 180.0
    south = np.column_stack([lons, np.full(n, lat_min)])
    north = np.column_stack([lons[::-1], np.full(n, lat_max)])
    return shapely.Polygon(np.vstack([south, north]))


def aoi_parents(recipe: Recipe) -> np.ndarray:
    """Parent cells covering the AOI. Boxes go through the rectangle path, whose parallel edges are exact."""
    order = recipe.grid.parent_order
    if recipe.aoi.bbox is not None:
        aoi_geometry(recipe.aoi)  # one hemisphere per run (RecipeError otherwise)
        west, south, east, north = recipe.aoi.bbox
        rect = {"WestBoundingCoordinate": west, "SouthBoundingCoordinate": south,
                "EastBoundingCoordinate": east, "NorthBoundingCoordinate": north}
        return footprint_cells({"BoundingRectangles": [rect]}, order)
    return cells_covering(aoi_geometry(recipe.aoi), order)


def default_cache_dir() -> Path:
    return Path(os.environ.get("POLARAGG_CACHE", Path.home() / ".cache" / "polaragg"))


def synthetic_folder(source: SyntheticSource) -> Path:
    """Generate the synthetic granules if not cached; return their folder.

    The cache key hashes the source parameters and the generator's ``MODEL_VERSION``, so granules written by
    another version of the simulated model are never reused.
    """
    from .synthetic import MODEL_VERSION, SynthConfig, generate

    params = {**source.model_dump(mode="json", exclude={"cache_dir"}), "model_version": MODEL_VERSION}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(source.cache_dir).expanduser() if source.cache_dir else default_cache_dir()
    folder = base / f"synthetic-{key}"
    done = folder / ".complete"
    if not done.exists():
        config = SynthConfig(
            seed=source.seed,
            cycles=tuple(source.cycles),
            rgts=source.rgt_values(),
            regions=tuple(source.regions),
            bbox=tuple(source.bbox) if source.bbox else None,
            weak_beam_dropout=source.weak_beam_dropout,
            cloud_fraction=source.cloud_fraction,
        )
        folder.mkdir(parents=True, exist_ok=True)  # after the config is known to be valid
        generate(folder, config)
        done.write_text(json.dumps(params))
    return folder


def load_catalog(recipe: Recipe) -> Catalog:
    """The recipe's catalog: read, built from local records, or searched in CMR once."""
    source = recipe.source
    if isinstance(source, CatalogSource):
        return Catalog.read(source.path)
    parents = aoi_parents(recipe)
    order = recipe.grid.parent_order
    if parents.size == 0:
        raise CatalogError(f"aoi: the area of interest covers no cell at grid.parent_order {order} (is it empty?)")
    if isinstance(source, SyntheticSource):
        return folder_catalog(synthetic_folder(source), parents, order)
    if isinstance(source, DirectorySource):
        return folder_catalog(Path(source.path), parents, order)
    if isinstance(source, CmrSource):
        from .cmr import CmrQuery, CmrSettings, search_granules

        patterns = tuple(f"ATL06_??????????????_????{c:02d}??_*" for c in source.cycles)
        query = CmrQuery(
            short_name=source.short_name, version=source.version, provider=source.provider,
            temporal=source.temporal, granule_name_patterns=patterns,
        )
        settings = CmrSettings(host=source.host, scheme=source.scheme, timeout=source.timeout, retries=source.retries)
        return build_catalog(search_granules(query, settings), parents, order, access=source.access)
    raise CatalogError(f"unsupported source {type(source).__name__}")


CATALOG_CACHE_FORMAT = 1  # bump when catalog rows or their meaning change


def folder_catalog(folder: Path, parents: np.ndarray, order: int) -> Catalog:
    """The catalog of a local folder of granules, from the cache when the folder has not changed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatalogError(f"granule folder not found: {folder}")
    h = hashlib.sha256(f"{CATALOG_CACHE_FORMAT}:{POLARAGG_VERSION}:{folder.resolve()}:{order}:".encode())
    h.update(np.ascontiguousarray(parents, dtype=np.uint64).tobytes())
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.endswith((".umm.json", ".h5")):
            st = entry.stat()
            h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino};".encode())
    cached = default_cache_dir() / "catalogs" / f"{h.hexdigest()[:24]}.parquet"
    if cached.is_file():
        try:
            return Catalog.read(cached)
        except CatalogError:
            pass  # an unreadable cache entry is rebuilt
    catalog = build_catalog(read_directory(folder), parents, order)
    with contextlib.suppress(OSError):  # a read-only cache only costs the rebuild next time
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        catalog.write(tmp)
        os.replace(tmp, cached)
    return catalog
