"""Bundled Antarctic geometry (GSFC/Zwally 2012 drainage basins, grounded-ice outline) and user GeoJSON AOIs.

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

Data provenance and simplification: ``polaragg/data/SOURCES.md``; rebuilt by
``polaragg/data/build_basins.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon, shape

Geometry = Polygon | MultiPolygon

BASINS_FILE = "antarctic_basins.geojson"
OUTLINE_FILE = "antarctic_outline.geojson"
COASTLINE_FILE = "antarctica_ne110m.geojson"
N_BASINS = 27
POLAR_STEREO = "EPSG:3031"
LONLAT = "EPSG:4326"

_tls = threading.local()


class UnknownBasinError(KeyError, ValueError):
    """Raised for a basin name or id that is not one of the 27 (message lists the valid names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


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


def to_polar_stereo(geom: Any) -> Any:
    """Lon/lat degrees -> EPSG:3031 metres, vertex by vertex (ring structure and order kept)."""
    return _transform(geom, LONLAT, POLAR_STEREO)


def from_polar_stereo(geom: Any) -> Any:
    """EPSG:3031 metres -> lon/lat degrees, vertex by vertex (ring structure and order kept)."""
    return _transform(geom, POLAR_STEREO, LONLAT)


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
def _single_feature(name: str) -> Geometry:
    fc = json.loads(_data_text(name))
    return shape(fc["features"][0]["geometry"])


def basin_names() -> list[str]:
    """Names of the 27 drainage basins, ``basin_01`` ... ``basin_27`` (Zwally basin ids 1-27)."""
    return list(_basin_table())


def _resolve(name: str | int) -> str:
    table = _basin_table()
    key: str | None = None
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        key = f"basin_{int(name):02d}"
    elif isinstance(name, str):
        s = name.strip().lower()
        m = re.fullmatch(r"(?:basin[_ ]?)?0*(\d+)", s)
        key = f"basin_{int(m.group(1)):02d}" if m else s
    if key not in table:
        raise UnknownBasinError(
            f"unknown basin {name!r}; valid names are {', '.join(table)} (or the Zwally ids 1-{len(table)})"
        )
    return key


def basin(name: str | int, *, polar_stereo: bool = False) -> Geometry:
    """One drainage basin by name (``"basin_07"``) or Zwally id (``7``, ``"7"``); lon/lat unless polar_stereo.

    Raises UnknownBasinError (a KeyError and ValueError) listing the valid names for an unknown basin.
    """
    key = _resolve(name)
    return _basin_table_xy()[key] if polar_stereo else _basin_table()[key][1]


def basins(names: Iterable[str | int] | None = None, *, polar_stereo: bool = False) -> dict[str, Geometry]:
    """Several basins keyed by canonical name (all 27 when ``names`` is None)."""
    if names is None:
        keys = basin_names()
    elif isinstance(names, (str, int)):
        keys = [_resolve(names)]
    else:
        keys = [_resolve(n) for n in names]
    return {k: basin(k, polar_stereo=polar_stereo) for k in keys}


def basin_id(name: str | int) -> int:
    """Zwally basin id (1-27) of a basin name."""
    return _basin_table()[_resolve(name)][0]


def outline(*, polar_stereo: bool = False) -> Geometry:
    """Grounded-ice outline (union of the 27 basins; contains the pole); lon/lat unless ``polar_stereo``."""
    g = _single_feature(OUTLINE_FILE)
    return _cached_xy(OUTLINE_FILE) if polar_stereo else g


def coastline(*, polar_stereo: bool = False) -> Geometry:
    """Natural Earth 1:110m Antarctica incl. ice shelves (for maps); lon/lat unless ``polar_stereo``."""
    g = _single_feature(COASTLINE_FILE)
    return _cached_xy(COASTLINE_FILE) if polar_stereo else g


@lru_cache(maxsize=None)
def _cached_xy(name: str) -> Geometry:
    return to_polar_stereo(_single_feature(name))


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
    the file's GeoJSON ``crs`` member, or EPSG:3031 when any coordinate magnitude exceeds 360 (else lon/lat).
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
                "pass crs='EPSG:3031' for polar stereographic metres"
            )
        return geom
    try:
        return _transform(geom, crs, LONLAT)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


__all__ = [
    "basin",
    "basin_id",
    "basin_names",
    "basins",
    "coastline",
    "from_polar_stereo",
    "load_geojson",
    "outline",
    "to_polar_stereo",
    "UnknownBasinError",
]
