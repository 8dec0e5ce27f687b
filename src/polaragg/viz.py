"""Polar stereographic maps of per-cell HEALPix variables, with matplotlib (Agg) and pyproj: EPSG:3031 for
cells in the south, EPSG:3413 for cells in the north (picked from the cells unless given).

No cartopy (it downloads Natural Earth at run time): cell polygons come from
``healpix_geo.nested.vertices(..., ellipsoid="WGS84")``, are projected vertex-wise and drawn as one
``PolyCollection``; basin outlines, the ice-sheet outline and (south) the Natural Earth coastline are the
shipped geometries of :mod:`polaragg.aoi`. Axes are in km; in EPSG:3031 longitude 0 points up (+y) and 90 E
right (+x); in EPSG:3413 longitude 45 W points down (-y).
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import aoi

DPI = 120
CRS = {"south": "EPSG:3031", "north": "EPSG:3413"}


class VariableNotFoundError(KeyError, ValueError):
    """Raised by :func:`plot_store` for a variable not in the store (the message lists the available ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- geometry -----------------------------------------------------------------------------------------------
def _check_cells(cell_ids: Any, level: int) -> np.ndarray:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) <= 29:
        raise ValueError(f"level must be an integer HEALPix order in 0..29, got {level!r}")
    ids = np.asarray(cell_ids)
    if ids.ndim != 1:
        raise ValueError(f"cell_ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and (ids.dtype.kind not in "iu" or int(ids.min()) < 0):
        raise ValueError(f"cell_ids must be non-negative integers, got dtype {ids.dtype}")
    ids = ids.astype(np.uint64, copy=False)
    n_cells = 12 * 4 ** int(level)
    if ids.size and int(ids.max()) >= n_cells:
        raise ValueError(f"cell id {int(ids.max())} is out of range for level {level} (< {n_cells})")
    return ids


def hemisphere_of_cells(cell_ids: Any, level: int) -> str:
    """"north" or "south": where most of the cells' centres lie (south for no cells)."""
    from healpix_geo.nested import healpix_to_lonlat

    ids = _check_cells(cell_ids, level)
    if ids.size == 0:
        return "south"
    _, lat = healpix_to_lonlat(ids, int(level), ellipsoid="WGS84")
    return "north" if np.count_nonzero(np.asarray(lat) > 0) * 2 > ids.size else "south"


def cell_polygons_xy(cell_ids: Any, level: int, step: int = 1, hemisphere: str = "south") -> np.ndarray:
    """Vertices of nested HEALPix cells projected to EPSG:3031 (south) or EPSG:3413 (north), metres, shape
    ``(n, 4 * step, 2)``. ``step`` > 1 adds points along each edge (useful for large, low-order cells).
    """
    from healpix_geo.nested import vertices

    ids = _check_cells(cell_ids, level)
    if ids.size == 0:
        return np.empty((0, 4 * step, 2))
    lon, lat = vertices(ids, int(level), ellipsoid="WGS84", step=step)
    tr = aoi._transformer(aoi.LONLAT, CRS[hemisphere])
    x, y = tr.transform(np.ravel(lon), np.ravel(lat))
    return np.stack([np.reshape(x, np.shape(lon)), np.reshape(y, np.shape(lon))], axis=-1)


def _edge_step(level: int) -> int:
    """Edge densification: a few points per edge for cells larger than ~100 km."""
    return 1 if level >= 6 else min(16, 2 ** (6 - level))


def _rings_xy(geom: Any) -> list[np.ndarray]:
    import shapely

    rings = []
    for p in shapely.get_parts(geom):
        for r in [p.exterior, *p.interiors]:
            rings.append(np.asarray(r.coords)[:, :2] / 1e3)
    return rings


# --- figure helpers -----------------------------------------------------------------------------------------
def _new_axes(title: str, extent: tuple[float, float, float, float], colorbar: bool, hemisphere: str = "south"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x0, x1, y0, y1 = extent
    aspect = (x1 - x0) / (y1 - y0)  # width / height of the map
    height = 7.0
    width = min(max(height * aspect + (1.6 if colorbar else 0.6), 4.5), 13.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(f"x (km, {CRS[hemisphere]})")
    ax.set_ylabel(f"y (km, {CRS[hemisphere]})")
    if title:
        ax.set_title(title)
    return fig, ax


def _context(hemisphere: str) -> tuple[list, Any, Any]:
    """(basin geometries, ice-sheet outline, coastline or None) of a hemisphere, in its map's metres."""
    if hemisphere == "south":
        return (list(aoi.basins(polar_stereo=True).values()), aoi.outline(polar_stereo=True),
                aoi.coastline(polar_stereo=True))
    return list(aoi.greenland_basins(polar_stereo=True).values()), aoi.greenland_outline(polar_stereo=True), None


def _draw_context(ax, *, outline: bool, basins: bool, hemisphere: str = "south") -> None:
    from matplotlib.collections import LineCollection

    basin_geoms, sheet, coast_geom = _context(hemisphere)
    if basins and basin_geoms:
        rings = [r for g in basin_geoms for r in _rings_xy(g)]
        ax.add_collection(LineCollection(rings, colors="0.55", linewidths=0.4, zorder=3), autolim=False)
    if outline:
        if coast_geom is not None:
            coast = _rings_xy(coast_geom)
            dashed = (0, (3, 2))
            ax.add_collection(
                LineCollection(coast, colors="0.3", linewidths=0.5, linestyles=dashed, zorder=4), autolim=False
            )
        if sheet is not None:
            grounded = _rings_xy(sheet)
            ax.add_collection(LineCollection(grounded, colors="black", linewidths=0.8, zorder=4), autolim=False)


@lru_cache(maxsize=2)
def _continent_extent(hemisphere: str = "south") -> tuple[float, float, float, float] | None:
    import shapely

    _, sheet, coast = _context(hemisphere)
    parts = [g for g in (sheet, coast) if g is not None]
    if not parts:
        return None
    b = shapely.union_all(parts).bounds
    return b[0] / 1e3, b[2] / 1e3, b[1] / 1e3, b[3] / 1e3


def _extent(
    verts_km: np.ndarray, *, whole_continent: bool, margin: float, hemisphere: str = "south"
) -> tuple[float, float, float, float]:
    """Map extent (km): bounding box of the cells (or continent) padded by ``margin`` x its longer side."""
    continent = _continent_extent(hemisphere) if whole_continent or verts_km.size == 0 else None
    if continent is not None:
        x0, x1, y0, y1 = continent
    elif verts_km.size == 0:
        x0, x1, y0, y1 = -1000.0, 1000.0, -1000.0, 1000.0
    else:
        x0, x1 = float(verts_km[..., 0].min()), float(verts_km[..., 0].max())
        y0, y1 = float(verts_km[..., 1].min()), float(verts_km[..., 1].max())
    span = max(x1 - x0, y1 - y0, 20.0)
    pad = margin * span
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = max(x1 - x0, 20.0) / 2 + pad, max(y1 - y0, 20.0) / 2 + pad
    return cx - hx, cx + hx, cy - hy, cy + hy


def _save(fig, out: str | Path, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The Software text chunk marks the file as polaragg's, so a later map may replace it (and nothing else).
    fig.savefig(out, dpi=dpi, format="png", metadata={"Software": "polaragg (matplotlib)"})
    fig.clear()
    return out


# --- public plots -------------------------------------------------------------------------------------------
def plot_cells(
    cell_ids: np.ndarray,
    level: int,
    values: np.ndarray,
    *,
    out: str | Path,
    title: str = "",
    label: str = "",
    cmap: str = "viridis",
    outline: bool = True,
    basins: bool = True,
    whole_continent: bool = False,
    nan_color: str | None = "lightgrey",
    vmin: float | None = None,
    vmax: float | None = None,
    margin: float = 0.05,
    dpi: int = DPI,
    hemisphere: str | None = None,
) -> Path:
    """Map one value per cell (nested HEALPix ids at ``level``) in EPSG:3031, or EPSG:3413 for cells in the
    north (``hemisphere``: picked from the cells unless given); writes a PNG, returns its path.

    Cells are filled polygons coloured by ``values`` (NaN cells in ``nan_color``, or not drawn if it is None),
    over thin grey basin outlines (``basins``) and the grounded-ice outline in black plus the Natural Earth
    coastline dashed (``outline``). The extent is the data's, with ``margin`` (fraction of the span) around
    it, or the whole continent if ``whole_continent``. ``label`` is the colour-bar label, e.g.
    ``"h_mean (m)"``.
    """
    from matplotlib.collections import PolyCollection

    ids = _check_cells(cell_ids, level)
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape != ids.shape:
        raise ValueError(f"values has shape {vals.shape} but cell_ids has shape {ids.shape}")
    if nan_color is None:
        keep = np.isfinite(vals)
        ids, vals = ids[keep], vals[keep]

    hemisphere = hemisphere or hemisphere_of_cells(ids, level)
    verts = cell_polygons_xy(ids, level, step=_edge_step(int(level)), hemisphere=hemisphere) / 1e3
    extent = _extent(verts, whole_continent=whole_continent, margin=margin, hemisphere=hemisphere)
    fig, ax = _new_axes(title, extent, colorbar=True, hemisphere=hemisphere)
    finite = vals[np.isfinite(vals)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5

    import matplotlib as mpl

    cm = mpl.colormaps[cmap]
    if nan_color is not None:
        cm = cm.with_extremes(bad=nan_color)
    pc = PolyCollection(
        verts,
        array=np.ma.masked_invalid(vals),
        cmap=cm,
        norm=mpl.colors.Normalize(lo, hi),
        edgecolors="face",
        linewidths=0.1 if len(vals) < 20_000 else 0.0,
        antialiaseds=len(vals) < 20_000,
        zorder=2,
    )
    ax.add_collection(pc, autolim=False)
    _draw_context(ax, outline=outline, basins=basins, hemisphere=hemisphere)
    fig.colorbar(pc, ax=ax, label=label, shrink=0.85)
    return _save(fig, out, dpi)


def _level_of(cell_ids) -> int:
    attrs = getattr(cell_ids, "attrs", {})
    scheme = attrs.get("indexing_scheme", "nested")
    if scheme != "nested":
        raise ValueError(f"cell_ids use indexing_scheme {scheme!r}; only 'nested' HEALPix is supported")
    for key in ("level", "refinement_level", "resolution", "order"):
        if key in attrs:
            return int(attrs[key])
    raise ValueError("the 'cell_ids' coordinate has no 'level' attribute (HEALPix order)")


def _label(var: str, attrs: Mapping[str, Any]) -> str:
    units = attrs.get("units")
    units = None if units in (None, "", "1") else units
    name = var
    return f"{name} ({units})" if units else name


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def default_map_path(store: str, var: str) -> str:
    """Where `polaragg map` writes a store's map when no output is given: `<store without .zarr>_<var>.png`.

    A local store (a path or `file://`) gets its map beside it (`out/demo.zarr` -> `out/demo_h_mean.png`), so
    maps of different stores do not overwrite each other and never land inside the store. A remote store
    (`s3://...`, any other `scheme://`) cannot take a local file beside it: its map is a file in the current
    folder named after the store's last path component. Characters unsafe in a file name (path separators
    included) become `_`, so neither the store's name nor `var` can place the file elsewhere.
    """
    text = str(store).strip()
    text = text[len("file://"):] if text.startswith("file://") else text
    remote = "://" in text
    trimmed = text.rstrip("/\\") if not remote else text.split("://", 1)[1].rstrip("/")
    name = re.split(r"[/\\]", trimmed)[-1] if trimmed else ""
    name = name[: -len(".zarr")] if name.lower().endswith(".zarr") else name
    stem = _UNSAFE_NAME.sub("_", name).strip("._") or "store"
    leaf = f"{stem}_{_UNSAFE_NAME.sub('_', str(var)).strip('._') or 'var'}.png"
    if remote or not trimmed or name in (".", ".."):
        return leaf
    return str(Path(trimmed).parent / leaf)


def plot_store(
    store: str | Path | Any,
    var: str = "h_mean",
    out: str | Path | None = None,
    *,
    title: str | None = None,
    label: str | None = None,
    sel: Mapping[str, Any] | None = None,
    drop_empty: bool = True,
    **kwargs: Any,
) -> Path:
    """Map one variable of a polaragg store (Zarr path/URL or an open ``xr.Dataset``); returns the PNG path.

    Uses the ``cell_ids`` coordinate (attr ``level``), drops NaN cells and cells with ``count == 0`` (when a
    ``count`` variable exists), labels the colour bar from the variable's ``units``, and passes ``kwargs`` on
    to :func:`plot_cells`. ``sel`` is applied with ``Dataset.sel`` first (e.g. to pick one time step). ``out``
    defaults to ``<store>_<var>.png`` beside a store path, or ``<var>.png`` for a Dataset.
    """
    import xarray as xr

    if isinstance(store, xr.Dataset):
        ds = store
        default_out = Path(f"{var}.png")
    else:
        from .store import open_store

        ds = open_store(str(store))
        default_out = Path(default_map_path(str(store), var))
    if sel:
        ds = ds.sel(sel)
    if var in ds.data_vars and "time" in ds[var].dims:
        ds = ds.isel(time=-1)  # one bin: its only one; several: the latest (sel= picks another)
    if var not in ds.data_vars:
        avail = ", ".join(sorted(map(str, ds.data_vars))) or "(none)"
        raise VariableNotFoundError(f"variable {var!r} not in the store; available variables: {avail}")
    if "cell_ids" not in ds.coords and "cell_ids" not in ds.variables:
        raise ValueError("the store has no 'cell_ids' coordinate; is it a polaragg / xdggs HEALPix store?")
    cell_coord = ds["cell_ids"]
    level = _level_of(cell_coord)
    da = ds[var]
    if da.ndim != 1 or da.dims != cell_coord.dims:
        raise ValueError(
            f"variable {var!r} has dims {da.dims}; select down to the cell dimension {cell_coord.dims} "
            "first (sel=...)"
        )
    ids = np.asarray(cell_coord.values)
    vals = np.asarray(da.values, dtype=np.float64)
    keep = np.isfinite(vals)
    if drop_empty and "count" in ds.data_vars and var != "count":
        count = ds["count"]
        if "time" in count.dims:
            count = count.sum("time")
        if count.dims == da.dims:
            keep &= np.asarray(count.values) > 0
    if drop_empty and var == "count":
        keep &= vals > 0
    if not keep.any():
        raise ValueError(f"variable {var!r} has no finite, non-empty cells to plot")
    long_name = da.attrs.get("long_name")
    if title is None:
        head = f"{var}: {long_name}" if long_name and long_name != var else var
        head = textwrap.shorten(head, width=90, placeholder=" ...")
        when = ""
        if "time" in ds.coords and ds["time"].ndim == 0:
            when = f", {np.datetime_as_string(ds['time'].values, unit='D')}"
        title = f"{head}\nHEALPix order {level}, {int(keep.sum()):,} cells{when}"
    return plot_cells(
        ids[keep],
        level,
        vals[keep],
        out=out if out is not None else default_out,
        title=title,
        label=label if label is not None else _label(var, da.attrs),
        **kwargs,
    )


def plot_parent_cells(
    parent_ids: Sequence[int] | np.ndarray,
    level: int,
    out: str | Path,
    title: str = "",
    highlight: Sequence[int] | np.ndarray | None = None,
    *,
    whole_continent: bool = True,
    outline: bool = True,
    basins: bool = True,
    dpi: int = DPI,
    hemisphere: str | None = None,
) -> Path:
    """Plan map: outlines of (parent) cells over the continent; ``highlight`` (ids or boolean mask) filled.
    EPSG:3031 or EPSG:3413 as for :func:`plot_cells`. Returns the PNG path.
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    ids = _check_cells(parent_ids, level)
    hemisphere = hemisphere or hemisphere_of_cells(ids, level)
    verts = cell_polygons_xy(ids, level, step=_edge_step(int(level)), hemisphere=hemisphere) / 1e3
    if highlight is None:
        hl = np.zeros(ids.shape, dtype=bool)
    else:
        h = np.asarray(highlight)
        if h.dtype == bool:
            if h.shape != ids.shape:
                raise ValueError(f"boolean highlight has shape {h.shape}, parent_ids has {ids.shape}")
            hl = h
        else:
            hl = np.isin(ids, _check_cells(h, level))
    extent = _extent(verts, whole_continent=whole_continent, margin=0.04, hemisphere=hemisphere)
    fig, ax = _new_axes(title or f"{len(ids):,} cells at HEALPix order {level}", extent, colorbar=False,
                        hemisphere=hemisphere)
    ax.add_collection(
        PolyCollection(verts[~hl], facecolors="#c6dbef", edgecolors="#2171b5", linewidths=0.4, zorder=2),
        autolim=False,
    )
    handles = [Patch(facecolor="#c6dbef", edgecolor="#2171b5", label=f"cells ({int((~hl).sum()):,})")]
    if hl.any():
        ax.add_collection(
            PolyCollection(verts[hl], facecolors="#fd8d3c", edgecolors="#a63603", linewidths=0.5, zorder=2.5),
            autolim=False,
        )
        hl_label = f"highlighted ({int(hl.sum()):,})"
        handles.append(Patch(facecolor="#fd8d3c", edgecolor="#a63603", label=hl_label))
    _draw_context(ax, outline=outline, basins=basins, hemisphere=hemisphere)
    ax.legend(handles=handles, loc="lower left", fontsize="small")
    return _save(fig, out, dpi)


__all__ = [
    "CRS", "VariableNotFoundError", "cell_polygons_xy", "default_map_path", "hemisphere_of_cells", "plot_cells",
    "plot_parent_cells", "plot_store",
]
