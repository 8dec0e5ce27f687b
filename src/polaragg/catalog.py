"""Granule catalog: one row per granule (id, URLs, time, cycle/RGT/region, size, footprint) plus the
parent cells each footprint touches, so every task knows exactly which granules to read.

A catalog is built once from UMM-G records (CMR search or a local folder of `*.umm.json`) and kept
in one Parquet file; `run` consumes it without touching the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .aggregate import GranuleRef
from .coverage import footprint_cells
from .grid import cells_of_points

NAME_RE = re.compile(
    r"^ATL06_(?P<time>\d{14})_(?P<rgt>\d{4})(?P<cycle>\d{2})(?P<region>\d{2})_(?P<version>\d{3})_(?P<revision>\d{2})"
)

COLUMNS = (
    "granule_id", "name", "url", "s3_url", "https_url", "begin", "end", "cycle", "rgt", "region",
    "version", "size_bytes", "footprint", "parent_cells", "parent_shares", "expected_rows",
)


class CatalogError(ValueError):
    """Granule records or a catalog file that cannot be used."""


@dataclass(frozen=True)
class Catalog:
    """Granules and the parent cells (of the AOI) each one touches."""

    granules: pd.DataFrame
    parents: np.ndarray  # covered AOI parent cells, sorted uint64
    parent_order: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _cell_index(self.granules))

    @property
    def parents_with_granules(self) -> np.ndarray:
        return np.array(sorted(self._index), dtype=np.uint64)

    def granules_of(self, parent: int) -> list[GranuleRef]:
        return list(self.granule_refs(np.asarray(self._index.get(int(parent), ()), dtype=np.int64)))

    def pairs(self) -> pd.DataFrame:
        """One row per (parent cell, granule) pair, with the rows the pair is expected to hold."""
        g = self.granules
        n = g.parent_cells.map(len).to_numpy()
        if n.sum() == 0:
            return pd.DataFrame({"parent": np.empty(0, np.uint64), "granule_id": [], "expected_rows": []})
        parents = np.concatenate([np.asarray(c, dtype=np.uint64) for c in g.parent_cells])
        shares = np.concatenate([np.asarray(s, dtype=np.float64) for s in g.parent_shares])
        return pd.DataFrame({
            "parent": parents,
            "granule_id": np.repeat(g.granule_id.to_numpy(), n),
            "expected_rows": np.repeat(g.expected_rows.to_numpy(dtype=np.float64), n) * shares,
        })

    def expected_rows(self) -> dict[int, float]:
        """Rows each parent cell is expected to receive (planning estimate from footprint overlap)."""
        pairs = self.pairs()
        return {int(k): float(v) for k, v in pairs.expected_rows.groupby(pairs.parent).sum().items()}

    def pairs_at(self, order: int) -> pd.DataFrame:
        """One row per (cell at a finer `order`, granule) whose footprint touches the cell inside one of the
        granule's parent cells, with the rows expected there: the same exact coverage as the parent pairs,
        used to give each task of a split parent only the granules crossing its own child range.
        """
        if order < self.parent_order:
            raise ValueError(f"order {order} is coarser than the catalog's parent order {self.parent_order}")
        shift = np.uint64(2 * (order - self.parent_order))
        cells, rows, expected = [], [], []
        g = self.granules
        for i, (footprint, parents, total) in enumerate(zip(g.footprint, g.parent_cells, g.expected_rows)):
            if len(parents) == 0:
                continue
            geometry = json.loads(footprint)
            touched = footprint_cells(geometry, order)
            touched = touched[np.isin(touched >> shift, parents)]
            cells.append(touched)
            rows.append(np.full(touched.size, i, dtype=np.int64))
            expected.append(float(total) * footprint_shares(geometry, touched, order))
        if not cells:
            return pd.DataFrame({"cell": np.empty(0, np.uint64), "row": np.empty(0, np.int64),
                                 "expected_rows": np.empty(0)})
        return pd.DataFrame({"cell": np.concatenate(cells), "row": np.concatenate(rows),
                             "expected_rows": np.concatenate(expected)})

    def granule_refs(self, rows: np.ndarray) -> tuple[GranuleRef, ...]:
        """References of the granules at the given catalog rows, in catalog order."""
        g = self.granules
        return tuple(GranuleRef(str(g.granule_id.iat[i]), str(g.url.iat[i])) for i in np.unique(rows))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.granules, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"polaragg"] = json.dumps(
            {"parent_order": self.parent_order, "parents": [int(p) for p in self.parents]}
        ).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Catalog":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
        meta = json.loads((table.schema.metadata or {}).get(b"polaragg", b"{}"))
        if "parent_order" not in meta:
            raise CatalogError(f"{path} is not a polaragg catalog (no polaragg metadata)")
        granules = table.to_pandas()
        granules["parent_cells"] = granules.parent_cells.map(lambda v: np.asarray(v, dtype=np.uint64))
        granules["parent_shares"] = granules.parent_shares.map(lambda v: np.asarray(v, dtype=np.float64))
        return cls(granules, np.asarray(meta["parents"], dtype=np.uint64), int(meta["parent_order"]))


def build_catalog(records: list[dict], parents: np.ndarray, parent_order: int, *, access: str = "local") -> Catalog:
    """Catalog of UMM-G records restricted to the given AOI parent cells.

    `access` picks the URL tasks read: "local" (the `local_path` of directory records), "direct" (s3)
    or "external" (https).
    """
    parents = np.unique(np.asarray(parents, dtype=np.uint64))
    rows = []
    for record in records:
        row = granule_row(record, access)
        geometry = _geometry(record)
        touched = np.intersect1d(footprint_cells(geometry, parent_order), parents, assume_unique=True)
        row["parent_cells"] = touched.astype(np.uint64)
        row["parent_shares"] = footprint_shares(geometry, touched, parent_order)
        rows.append(row)
    granules = pd.DataFrame(rows, columns=list(COLUMNS))
    if not len(granules):
        raise CatalogError("no granule records to catalog")
    if len(granules):
        granules = granules.sort_values("name", kind="stable").reset_index(drop=True)
    return Catalog(granules, parents, parent_order)


def granule_row(record: dict, access: str = "local") -> dict:
    """Catalog columns of one UMM-G record (everything but the parent cells)."""
    umm = record.get("umm") or {}
    name = umm.get("GranuleUR")
    if not name:
        raise CatalogError("UMM-G record without umm.GranuleUR")
    match = NAME_RE.match(name)
    if not match:
        raise CatalogError(f"{name}: granule name does not follow ATL06_<time>_<rgt><cycle><region>_<version>_<rev>")
    urls = {u.get("Type"): u.get("URL") for u in umm.get("RelatedUrls", [])}
    s3_url = urls.get("GET DATA VIA DIRECT ACCESS")
    https_url = urls.get("GET DATA")
    local = record.get("local_path")
    url = {"local": local, "direct": s3_url, "external": https_url}.get(access)
    if not url:
        raise CatalogError(f"{name}: no URL for access {access!r}")
    rng = umm.get("TemporalExtent", {}).get("RangeDateTime", {})
    return {
        "granule_id": record.get("meta", {}).get("concept-id") or name,
        "name": name,
        "url": url,
        "s3_url": s3_url,
        "https_url": https_url,
        "begin": rng.get("BeginningDateTime"),
        "end": rng.get("EndingDateTime"),
        "cycle": int(match["cycle"]),
        "rgt": int(match["rgt"]),
        "region": int(match["region"]),
        "version": match["version"],
        "size_bytes": _size_bytes(umm),
        "footprint": json.dumps(_geometry(record), separators=(",", ":")),
        "expected_rows": _expected_rows(umm),
    }


def read_directory(path: str | Path) -> list[dict]:
    """UMM-G records of a local folder: each `<name>.umm.json` beside its `<name>.h5`."""
    folder = Path(path)
    if not folder.is_dir():
        raise CatalogError(f"granule folder not found: {folder}")
    records = []
    for meta_path in sorted(folder.glob("*.umm.json")):
        try:
            record = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{meta_path}: not valid JSON ({exc})") from exc
        h5 = meta_path.with_name(meta_path.name.removesuffix(".umm.json") + ".h5")
        records.append({**record, "local_path": str(h5.resolve())})
    if not records:
        raise CatalogError(f"no *.umm.json granule records in {folder}")
    return records


def _geometry(record: dict) -> dict:
    """The record's HorizontalSpatialDomain: its Geometry and, on older records, its Orbit block."""
    try:
        domain = record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]
    except (KeyError, TypeError):
        domain = None
    if not isinstance(domain, dict) or not ({"Geometry", "Orbit"} & domain.keys()):
        name = (record.get("umm") or {}).get("GranuleUR", "?")
        raise CatalogError(f"{name}: no umm.SpatialExtent.HorizontalSpatialDomain Geometry or Orbit")
    return domain


def _size_bytes(umm: dict) -> int:
    units = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    for info in umm.get("DataGranule", {}).get("ArchiveAndDistributionInformation", []):
        if "SizeInBytes" in info:
            return int(info["SizeInBytes"])
        if "Size" in info:
            return int(float(info["Size"]) * units.get(str(info.get("SizeUnit", "MB")).upper(), 1e6))
    return 0


def _expected_rows(umm: dict) -> int:
    """Rows over all beams of a full granule, estimated from its duration (one 20 m segment per ~2.8 ms)."""
    rng = umm.get("TemporalExtent", {}).get("RangeDateTime", {})
    try:
        t0 = pd.Timestamp(rng["BeginningDateTime"])
        t1 = pd.Timestamp(rng["EndingDateTime"])
    except (KeyError, ValueError):
        return 0
    ground_speed_m_s = 6900.0
    return int(max(0.0, (t1 - t0).total_seconds()) * ground_speed_m_s / 20.0 * 6)


def footprint_shares(geometry: dict, cells: np.ndarray, order: int, step_deg: float = 0.01) -> np.ndarray:
    """Fraction of a granule's rows expected in each of `cells`, from the footprint's boundary length.

    `geometry` is a UMM-G HorizontalSpatialDomain (or its Geometry).
    A swath footprint's boundary runs along both sides of the track, so the boundary length inside a
    cell is proportional to the track length, and so to the rows, inside it. The boundary is
    sampled along great circles every `step_deg` (~1 km). Geometries without a GPolygon or line
    boundary share evenly.
    """
    cells = np.asarray(cells, dtype=np.uint64)
    if cells.size == 0:
        return np.empty(0, dtype=np.float64)
    shapes = geometry.get("Geometry", geometry)
    rings = [p["Boundary"]["Points"] for p in shapes.get("GPolygons", [])]
    rings += [line["Points"] for line in shapes.get("Lines", [])]
    samples = [_densify(ring, step_deg) for ring in rings if len(ring) >= 2]
    if not samples:
        return np.full(cells.size, 1.0 / cells.size)
    lon, lat = np.concatenate([s[0] for s in samples]), np.concatenate([s[1] for s in samples])
    sample_cells = np.sort(cells_of_points(lon, lat, order))
    counts = np.searchsorted(sample_cells, cells, side="right") - np.searchsorted(sample_cells, cells, side="left")
    return np.maximum(counts, 1) / sample_cells.size  # a touched cell never plans zero work


def _densify(points: list[dict], step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~step_deg along the great circles between consecutive vertices."""
    lon = np.radians([p["Longitude"] for p in points])
    lat = np.radians([p["Latitude"] for p in points])
    v = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    a, b = v[:-1], v[1:]
    angle = np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0))
    n = np.maximum(1, np.ceil(np.degrees(angle) / step_deg).astype(int))
    edge = np.repeat(np.arange(len(a)), n)
    t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
    w = np.repeat(angle, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sa = np.where(w > 1e-12, np.sin((1 - t) * w) / np.sin(w), 1 - t)
        sb = np.where(w > 1e-12, np.sin(t * w) / np.sin(w), t)
    p = sa[:, None] * a[edge] + sb[:, None] * b[edge]
    p /= np.linalg.norm(p, axis=1)[:, None]
    return np.degrees(np.arctan2(p[:, 1], p[:, 0])), np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1)))


def _cell_index(granules: pd.DataFrame) -> dict[int, list[int]]:
    index: dict[int, list[int]] = {}
    if "parent_cells" not in granules:
        return index
    for i, cells in enumerate(granules.parent_cells):
        for c in np.asarray(cells, dtype=np.uint64).tolist():
            index.setdefault(int(c), []).append(i)
    return index
