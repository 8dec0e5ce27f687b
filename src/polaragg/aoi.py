"""Bundled ice-sheet geometry for both poles and user GeoJSON AOIs.

Antarctica: GSFC/Zwally 2012 drainage basins ``basin_01`` .. ``basin_27``, their grounded-ice outline and a
Natural Earth coastline, planar in EPSG:3031. Greenland: the Natural Earth 1:10m land outline and eight
compass sectors of it about Summit, ``gl_sector_n`` .. ``gl_sector_nw`` (geometric sectors, **not** drainage
basins: no Greenland basin data set could be obtained), planar in EPSG:3413. A run covers one hemisphere:
see :func:`hemisphere_of`.

Representation
--------------
Geometries are shapely polygons in lon/lat degrees (WGS84, x = lon, y = lat) whose rings are the vertex
sequences of planar EPSG:3031 rings transformed vertex by vertex. Rings are **not** cut at the antimeridian
and no vertices are added at the pole, so:

* basin 2 (and the outline, and the Natural Earth coastline) *contain the South Pole*; their lon/lat rings
  wind once around the pole and are not valid planar lon/lat polygons;
* basins 2 and 17 *cross the antimeridian* (basin 17 straddles it without containing the pole);
* the other 25 basins are ordinary, valid lon/lat polygons.

Treat rings as spherical polygons through the given vertices (edges are short: <= 90 km, and a straight
EPSG:3031 edge differs from the great circle by < 25 m), or project them with :func:`to_polar_stereo` for
planar work (area, union, plotting): every shipped geometry is valid in EPSG:3031. Exterior rings are
counter-clockwise in EPSG:3031, which preserves orientation as seen from outside the Earth, so the interior
lies to the left of the direction of travel on the globe. The basins form an exact coverage (shared edges
identical, no gaps/overlaps).

The Greenland geometry follows the same conventions in EPSG:3413 (``to_polar_stereo(g, "north")``): valid
there, exterior rings counter-clockwise, sectors an exact coverage whose union is the outline, edges <= 50 km.
Greenland contains no pole and crosses no antimeridian, so its rings are also plain valid lon/lat polygons.
``polar_stereo=True`` always gives a geometry in the plane of its own hemisphere (EPSG:3413 for Greenland).

Data provenance and simplification: ``polaragg/data/SOURCES.md``; rebuilt by
``polaragg/data/build_basins.py`` (Antarctica) and ``polaragg/data/build_greenland.py`` (Greenland).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon, shape

Geometry = Polygon | MultiPolygon
Hemisphere = Literal["north", "south"]

BASINS_FILE = "antarctic_basins.geojson"
OUTLINE_FILE = "antarctic_outline.geojson"
COASTLINE_FILE = "antarctica_ne110m.geojson"
GREENLAND_BASINS_FILE = "greenland_basins.geojson"
GREENLAND_OUTLINE_FILE = "greenland_outline.geojson"
N_BASINS = 27
GREENLAND_PREFIX = "gl_"
POLAR_STEREO = "EPSG:3031"
POLAR_STEREO_NORTH = "EPSG:3413"
POLAR_STEREO_CRS: dict[str, str] = {"south": POLAR_STEREO, "north": POLAR_STEREO_NORTH}
LONLAT = "EPSG:4326"
ONE_HEMISPHERE_RULE = (
    "an area of interest lies in one hemisphere per run (polar stereographic planes, maps and parent cells "
    "are per pole); run the north and the south as separate recipes"
)

_tls = threading.local()


class UnknownBasinError(KeyError, ValueError):
    """Raised for a basin name or id that is not shipped (message lists the valid names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HemisphereError(ValueError):
    """Raised for a geometry that reaches both hemispheres or lies on the equator (one hemisphere per run)."""


def _transformer(src: str, dst: str) -> Transformer:
    """One pyproj Transformer per (thread, direction); Transformers are not shared between threads."""
    cache = getattr(_tls, "transformers", None)
    if cache is None:
        cache = _tls.transformers = {}
    key = (src, dst)
    if key not in cache:
        cache[key] = Transformer.from_crs(src, dst, always_xy=True)
    return cache[key]


def _data_text(name: str) -> str:
    try:
        return resources.files("polaragg").joinpath("data", name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        return (Path(__file__).resolve().parent / "data" / name).read_text(encoding="utf-8")


def _transform(geom: Any, src: str, dst: str) -> Any:
    tr = _transformer(src, dst)

    def fn(coords: np.ndarray) -> np.ndarray:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        out = np.column_stack([x, y])
        if not np.all(np.isfinite(out)):
            bad = coords[~np.all(np.isfinite(out), axis=1)][:3].tolist()
            raise ValueError(f"coordinates cannot be transformed {src} -> {dst}, e.g. {bad}")
        return out

    return shapely.transform(geom, fn)


def polar_stereo_crs(hemisphere: Hemisphere = "south") -> str:
    """The polar stereographic CRS of a hemisphere: ``EPSG:3031`` (south) or ``EPSG:3413`` (north)."""
    try:
        return POLAR_STEREO_CRS[hemisphere]
    except (KeyError, TypeError):
        raise ValueError(f"hemisphere must be 'north' or 'south', got {hemisphere!r}") from None


def to_polar_stereo(geom: Any, hemisphere: Hemisphere = "south") -> Any:
    """Lon/lat degrees -> EPSG:3031 (south, default) or EPSG:3413 (north) metres, vertex by vertex."""
    return _transform(geom, LONLAT, polar_stereo_crs(hemisphere))


def from_polar_stereo(geom: Any, hemisphere: Hemisphere = "south") -> Any:
    """EPSG:3031 (south, default) or EPSG:3413 (north) metres -> lon/lat degrees, vertex by vertex."""
    return _transform(geom, polar_stereo_crs(hemisphere), LONLAT)


def to_polar_stereo_north(geom: Any) -> Any:
    """Lon/lat degrees -> EPSG:3413 metres, vertex by vertex (ring structure and order kept)."""
    return to_polar_stereo(geom, "north")


def from_polar_stereo_north(geom: Any) -> Any:
    """EPSG:3413 metres -> lon/lat degrees, vertex by vertex (ring structure and order kept)."""
    return from_polar_stereo(geom, "north")


def hemisphere_of(geometry: Any, where: str = "the geometry") -> Hemisphere:
    """``"north"`` or ``"south"``: the hemisphere holding every vertex of a lon/lat geometry.

    All latitudes > 0 is north, all < 0 south; the edges (shorter great-circle arcs) and the interior (the
    side that fits in a hemisphere) then lie there too. A geometry with vertices on both sides or on the
    equator raises :class:`HemisphereError` naming ``where``, its latitude range and the rule: one hemisphere
    per run. Also ValueError for an empty geometry.
    """
    coords = shapely.get_coordinates(geometry)
    if coords.size == 0:
        raise ValueError(f"{where} is empty: it has no hemisphere")
    lat = coords[:, 1]
    lo, hi = float(np.min(lat)), float(np.max(lat))
    if lo > 0.0:
        return "north"
    if hi < 0.0:
        return "south"
    how = "reaches both hemispheres" if lo < 0.0 < hi else "touches the equator"
    raise HemisphereError(f"{where} {how} (latitudes {lo:g} to {hi:g}): {ONE_HEMISPHERE_RULE}")


# --- bundled data -------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _basin_table() -> dict[str, tuple[int, Geometry]]:
    fc = json.loads(_data_text(BASINS_FILE))
    table: dict[str, tuple[int, Geometry]] = {}
    for feat in fc["features"]:
        props = feat["properties"]
        table[props["name"]] = (int(props["id"]), shape(feat["geometry"]))
    return dict(sorted(table.items(), key=lambda kv: kv[1][0]))


@lru_cache(maxsize=None)
def _basin_table_xy() -> dict[str, Geometry]:
    return {name: to_polar_stereo(geom) for name, (_id, geom) in _basin_table().items()}


@lru_cache(maxsize=None)
def _greenland_table() -> dict[str, tuple[int, Geometry]]:
    fc = json.loads(_data_text(GREENLAND_BASINS_FILE))
    rows = {f["properties"]["name"]: (int(f["properties"]["id"]), shape(f["geometry"]))
            for f in fc["features"]}
    return dict(sorted(rows.items(), key=lambda kv: kv[1][0]))


@lru_cache(maxsize=None)
def _greenland_table_xy() -> dict[str, Geometry]:
    return {name: to_polar_stereo(geom, "north") for name, (_id, geom) in _greenland_table().items()}


@lru_cache(maxsize=None)
def _single_feature(name: str) -> Geometry:
    fc = json.loads(_data_text(name))
    return shape(fc["features"][0]["geometry"])


def basin_names() -> list[str]:
    """Names of the 27 Antarctic drainage basins, ``basin_01`` ... ``basin_27`` (Zwally basin ids 1-27)."""
    return list(_basin_table())


def greenland_basin_names() -> list[str]:
    """Names of the 8 Greenland sectors: ``gl_sector_n``, ``gl_sector_ne``, ... clockwise to ``_nw``."""
    return list(_greenland_table())


def _resolve(name: str | int) -> str:
    table = _basin_table()
    key: str | None = None
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        key = f"basin_{int(name):02d}"
    elif isinstance(name, str):
        s = name.strip().lower()
        m = re.fullmatch(r"(?:basin[_ ]?)?0*(\d+)", s)
        key = f"basin_{int(m.group(1)):02d}" if m else s
    if key not in table and key not in _greenland_table():
        raise UnknownBasinError(
            f"unknown basin {name!r}; valid names are {', '.join(table)} (or the Zwally ids 1-{len(table)}) "
            f"in Antarctica and {', '.join(_greenland_table())} in Greenland"
        )
    return key


def basin(name: str | int, *, polar_stereo: bool = False) -> Geometry:
    """One shipped basin: Antarctic by name (``"basin_07"``) or Zwally id (``7``, ``"7"``), or a Greenland
    sector by name (``"gl_sector_sw"``); lon/lat unless polar_stereo (EPSG:3031 or EPSG:3413 by its pole).

    Raises UnknownBasinError (a KeyError and ValueError) listing the valid names for an unknown basin.
    """
    key = _resolve(name)
    if key.startswith(GREENLAND_PREFIX):
        return _greenland_table_xy()[key] if polar_stereo else _greenland_table()[key][1]
    return _basin_table_xy()[key] if polar_stereo else _basin_table()[key][1]


def basins(names: Iterable[str | int] | None = None, *, polar_stereo: bool = False) -> dict[str, Geometry]:
    """Several basins keyed by canonical name (all 27 Antarctic ones when ``names`` is None)."""
    if names is None:
        keys = basin_names()
    elif isinstance(names, (str, int)):
        keys = [_resolve(names)]
    else:
        keys = [_resolve(n) for n in names]
    return {k: basin(k, polar_stereo=polar_stereo) for k in keys}


def greenland_basin(name: str, *, polar_stereo: bool = False) -> Geometry:
    """One Greenland sector by name (``"gl_sector_sw"``); lon/lat unless ``polar_stereo`` (EPSG:3413).

    The sectors are geometric (45 degrees of azimuth about Summit each), not drainage basins.
    """
    key = _resolve(name)
    if not key.startswith(GREENLAND_PREFIX):
        raise UnknownBasinError(
            f"{name!r} is an Antarctic basin; Greenland's are {', '.join(_greenland_table())}"
        )
    return basin(key, polar_stereo=polar_stereo)


def greenland_basins(
    names: Iterable[str] | None = None, *, polar_stereo: bool = False
) -> dict[str, Geometry]:
    """Several Greenland sectors keyed by name (all 8 when ``names`` is None)."""
    keys = greenland_basin_names() if names is None else [names] if isinstance(names, str) else list(names)
    return {_resolve(k): greenland_basin(k, polar_stereo=polar_stereo) for k in keys}


def basin_id(name: str | int) -> int:
    """Zwally basin id (1-27) of an Antarctic basin; sector number (1-8, from north) of a Greenland one."""
    key = _resolve(name)
    return _greenland_table()[key][0] if key.startswith(GREENLAND_PREFIX) else _basin_table()[key][0]


def basin_hemisphere(name: str | int) -> Hemisphere:
    """``"north"`` for a Greenland sector, ``"south"`` for an Antarctic basin."""
    return "north" if _resolve(name).startswith(GREENLAND_PREFIX) else "south"


def outline(*, polar_stereo: bool = False) -> Geometry:
    """Antarctic grounded-ice outline (union of the 27 basins; has the pole); lon/lat unless polar_stereo."""
    g = _single_feature(OUTLINE_FILE)
    return _cached_xy(OUTLINE_FILE) if polar_stereo else g


def coastline(*, polar_stereo: bool = False) -> Geometry:
    """Natural Earth 1:110m Antarctica incl. ice shelves (for maps); lon/lat unless ``polar_stereo``."""
    g = _single_feature(COASTLINE_FILE)
    return _cached_xy(COASTLINE_FILE) if polar_stereo else g


def greenland_outline(*, polar_stereo: bool = False) -> Geometry:
    """Greenland's land outline (Natural Earth 1:10m, islands >= 100 km^2; includes the ice-free margin, so it
    is larger than the ice sheet); the union of the 8 sectors. Lon/lat unless ``polar_stereo`` (EPSG:3413)."""
    g = _single_feature(GREENLAND_OUTLINE_FILE)
    return _cached_xy(GREENLAND_OUTLINE_FILE, "north") if polar_stereo else g


ICE_SHEETS: dict[str, Hemisphere] = {"antarctica": "south", "greenland": "north"}


def ice_sheet_outline(name: str | bool = "antarctica", *, polar_stereo: bool = False) -> Geometry:
    """The outline a recipe's ``aoi.outline`` names: ``"antarctica"`` (or True) or ``"greenland"``."""
    key = "antarctica" if name is True else str(name).strip().lower()
    if key == "antarctica":
        return outline(polar_stereo=polar_stereo)
    if key == "greenland":
        return greenland_outline(polar_stereo=polar_stereo)
    raise ValueError(f"unknown ice sheet {name!r}; valid are {', '.join(ICE_SHEETS)} (true means antarctica)")


@lru_cache(maxsize=None)
def _cached_xy(name: str, hemisphere: Hemisphere = "south") -> Geometry:
    return to_polar_stereo(_single_feature(name), hemisphere)


# --- user GeoJSON -------------------------------------------------------------------------------------------
def _crs_from_member(obj: dict, path: Path) -> str | None:
    member = obj.get("crs")
    if not member:
        return None
    try:
        props = member.get("properties", {})
        if member.get("type") == "name":
            return str(props["name"])
        if member.get("type", "").upper() == "EPSG":  # GeoJSON 2008 "EPSG" form
            return f"EPSG:{int(props['code'])}"
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    raise ValueError(f"{path}: unsupported GeoJSON 'crs' member {member!r}")


def _is_lonlat(crs: str, path: Path) -> bool:
    try:
        c = CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises CRSError
        raise ValueError(f"{path}: unknown CRS {crs!r} ({exc})") from None
    return c.is_geographic


def _polygons_of(geom: dict, where: str) -> list[Polygon]:
    if not isinstance(geom, dict) or "type" not in geom:
        raise ValueError(f"{where}: not a GeoJSON geometry: {str(geom)[:80]}")
    gtype = geom["type"]
    if gtype == "GeometryCollection":
        out: list[Polygon] = []
        for i, g in enumerate(geom.get("geometries") or []):
            out += _polygons_of(g, f"{where}, geometries[{i}]")
        return out
    if gtype not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"{where}: geometry type {gtype!r} is not a Polygon or MultiPolygon")
    try:
        g = shape(geom)
    except Exception as exc:
        raise ValueError(f"{where}: malformed {gtype} coordinates ({exc})") from None
    return [p for p in shapely.get_parts(g) if not p.is_empty]


def load_geojson(path: str | Path, crs: str | None = None) -> MultiPolygon:
    """Read polygons from a GeoJSON file (FeatureCollection, Feature or bare geometry) as lon/lat degrees.

    All polygon parts of all features are collected, in file order and with their vertices as given, into one
    MultiPolygon (parts are not dissolved: a planar union in lon/lat would break pole or antimeridian rings).
    The coordinate reference system is, in order of precedence: the ``crs`` argument (e.g. ``"EPSG:3031"``),
    the file's GeoJSON ``crs`` member, or EPSG:3031 when any coordinate magnitude exceeds 360 (else lon/lat):
    northern polar stereographic metres (EPSG:3413) must be named by the argument or the member.
    Projected coordinates are transformed vertex by vertex to lon/lat.

    Raises FileNotFoundError if the file is missing and ValueError, naming the file and the problem, for
    unreadable JSON, non-polygon geometry, no polygons at all, or coordinates that do not fit the CRS.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"AOI GeoJSON file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise ValueError(f"{path}: not a GeoJSON object (no 'type' member)")

    polys: list[Polygon] = []
    kind = obj["type"]
    if kind == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list):
            raise ValueError(f"{path}: FeatureCollection has no 'features' list")
        for i, feat in enumerate(feats):
            if not isinstance(feat, dict) or feat.get("type") != "Feature":
                raise ValueError(f"{path}: features[{i}] is not a GeoJSON Feature")
            if feat.get("geometry") is not None:
                polys += _polygons_of(feat["geometry"], f"{path}: features[{i}]")
    elif kind == "Feature":
        if obj.get("geometry") is not None:
            polys += _polygons_of(obj["geometry"], f"{path}: feature")
    else:
        polys += _polygons_of(obj, str(path))
    if not polys:
        raise ValueError(f"{path}: contains no (non-empty) Polygon or MultiPolygon geometry")
    geom = MultiPolygon(polys)

    coords = shapely.get_coordinates(geom)
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{path}: coordinates contain NaN or infinity")
    crs = crs or _crs_from_member(obj, path)
    big = float(np.abs(coords).max()) > 360.0
    if crs is None:
        crs = POLAR_STEREO if big else LONLAT
    if _is_lonlat(crs, path):
        if big or np.abs(coords[:, 1]).max() > 90.0:
            raise ValueError(
                f"{path}: coordinates out of lon/lat range for CRS {crs!r} (|lon| <= 360, |lat| <= 90); "
                "pass crs='EPSG:3031' (south) or crs='EPSG:3413' (north) for polar stereographic metres"
            )
        return geom
    try:
        return _transform(geom, crs, LONLAT)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


__all__ = [
    "basin",
    "basin_hemisphere",
    "basin_id",
    "basin_names",
    "basins",
    "coastline",
    "from_polar_stereo",
    "from_polar_stereo_north",
    "greenland_basin",
    "greenland_basin_names",
    "greenland_basins",
    "greenland_outline",
    "hemisphere_of",
    "HemisphereError",
    "ice_sheet_outline",
    "load_geojson",
    "outline",
    "polar_stereo_crs",
    "to_polar_stereo",
    "to_polar_stereo_north",
    "UnknownBasinError",
]
