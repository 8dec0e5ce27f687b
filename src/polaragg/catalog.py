"""Granule catalog: one row per granule (id, URLs, time, cycle/RGT/region, size, footprint) plus the
parent cells each footprint touches, so every task knows exactly which granules to read.

A catalog is built once from UMM-G records (CMR search or a local folder of `*.umm.json`) and kept
in one Parquet file; `run` consumes it without touching the network. Real records vary: the ATL06
name may sit in `GranuleUR`, in `DataGranule.Identifiers` or only in the data URLs, and some records
cannot be used at all. Those are skipped and listed on the catalog, never fatal; duplicate granules
(the same record twice, or several revisions of one granule) are reduced to the newest revision.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .cmr import granule_size_bytes
from .coverage import footprint_cells
from .domain import GranuleRef
from .grid import cells_of_points

logger = logging.getLogger(__name__)

Access = Literal["local", "direct", "external"]

NAME_RE = re.compile(
    r"^ATL06_(?P<time>\d{14})_(?P<rgt>\d{4})(?P<cycle>\d{2})(?P<region>\d{2})_(?P<version>\d{3})"
    r"_(?P<revision>\d{2})(?:\.h5)?$"
)

COLUMNS = (
    "granule_id", "name", "url", "s3_url", "https_url", "begin", "end", "cycle", "rgt", "region",
    "version", "size_bytes", "footprint", "parent_cells", "parent_shares", "expected_rows",
)

UNREADABLE = "unreadable"  # key of a folder record whose metadata file could not be read: the reason
_DIRECT, _EXTERNAL = "GET DATA VIA DIRECT ACCESS", "GET DATA"
_NOTE_LIMIT = 5  # names listed per line of Catalog.notes()


class CatalogError(ValueError):
    """Granule records or a catalog file that cannot be used."""


# An orbit's 14 ATL06 regions: 1-7 from the equator over the north (3 = 59.5N -> 80N ascending, 4 = the
# north-pole cap, 5 = 80N -> 59.5N descending: Greenland), 8-14 over the south (10, 11, 12: Antarctica).
NORTH_REGIONS = frozenset(range(1, 8))
SOUTH_REGIONS = frozenset(range(8, 15))


def region_hemisphere(region: int) -> str:
    """"north" or "south" for an ATL06 region number (ValueError outside 1-14)."""
    if region in NORTH_REGIONS:
        return "north"
    if region in SOUTH_REGIONS:
        return "south"
    raise ValueError(f"ATL06 region {region} is not one of 1-14")


class AccessFallbackWarning(UserWarning):
    """Granules without a direct-access (s3) URL are read over https instead."""


@dataclass(frozen=True)
class SkippedRecord:
    """A UMM-G record left out of the catalog: which one (concept-id, GranuleUR or file) and why."""

    record: str
    reason: str


@dataclass(frozen=True)
class DroppedDuplicate:
    """A record dropped because the catalog holds the same granule from a newer (or the same) revision."""

    name: str  # granule name of the dropped record
    kept: str  # granule name of the record kept instead
    record: str  # identifier of the dropped record (concept-id, GranuleUR or file)


@dataclass(frozen=True)
class Catalog:
    """Granules and the parent cells (of the AOI) each one touches, with the records left out.

    `skipped` lists the records that could not be used and why; `duplicates` the records dropped
    because the same granule (same time, RGT, cycle, region and version) was already present from a
    newer or the same revision. Both survive `write` / `read`.
    """

    granules: pd.DataFrame
    parents: np.ndarray  # covered AOI parent cells, sorted uint64
    parent_order: int
    skipped: tuple[SkippedRecord, ...] = ()
    duplicates: tuple[DroppedDuplicate, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped", tuple(self.skipped))
        object.__setattr__(self, "duplicates", tuple(self.duplicates))
        object.__setattr__(self, "_index", _cell_index(self.granules))
        # one reference per granule, shared by every parent's list (a plan pickles each granule once)
        object.__setattr__(self, "_refs", tuple(GranuleRef(i, u) for i, u in zip(
            self.granules.granule_id.astype(str).tolist(), self.granules.url.astype(str).tolist())))

    @property
    def parents_with_granules(self) -> np.ndarray:
        return np.array(sorted(self._index), dtype=np.uint64)

    def granules_of(self, parent: int) -> list[GranuleRef]:
        return list(self.granule_refs(np.asarray(self._index.get(int(parent), ()), dtype=np.int64)))

    def inputs(self) -> pd.DataFrame:
        """The catalog's inputs for a resume fingerprint: granule `name` and `size_bytes` (0 = unknown),
        sorted by name, one row per granule."""
        g = self.granules
        out = pd.DataFrame({"name": g.name.astype(str).to_numpy(),
                            "size_bytes": g.size_bytes.to_numpy(dtype=np.int64)})
        return out.sort_values("name", kind="stable").reset_index(drop=True)

    def notes(self) -> list[str]:
        """One line per kind of record left out (duplicates, skipped), empty when every record was used."""
        lines = []
        if self.duplicates:
            names = ", ".join(f"{d.name} (kept {d.kept})" for d in self.duplicates[:_NOTE_LIMIT])
            more = len(self.duplicates) - _NOTE_LIMIT
            lines.append(f"{len(self.duplicates)} duplicate granule record(s) removed, newest revision kept: "
                         f"{names}" + (f" and {more} more" if more > 0 else ""))
        if self.skipped:
            items = "; ".join(f"{s.record}: {s.reason}" for s in self.skipped[:_NOTE_LIMIT])
            more = len(self.skipped) - _NOTE_LIMIT
            lines.append(f"{len(self.skipped)} unusable granule record(s) skipped: {items}"
                         + (f"; and {more} more" if more > 0 else ""))
        return lines

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

    def reads_s3(self) -> bool:
        """Whether any granule is read from an s3:// URL (the run then needs the granules' credentials)."""
        return bool(self.granules.url.astype(str).str.startswith(("s3://", "s3a://")).any())

    def hemispheres(self) -> set[str]:
        """Hemispheres of the granules whose footprints cross the AOI, from their region numbers."""
        crossing = self.granules[self.granules.parent_cells.map(len) > 0]
        return {region_hemisphere(int(r)) for r in crossing.region}

    def time_spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each granule's cycle and [begin, end] as ATL06 delta_time (UTC seconds since 2018-01-01)."""
        g = self.granules
        epoch = pd.Timestamp("2018-01-01", tz="UTC")

        def seconds(col: pd.Series) -> np.ndarray:
            when = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
            return ((when - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)

        return g.cycle.to_numpy(dtype=np.int64), seconds(g.begin), seconds(g.end)

    def select(self, keep: np.ndarray) -> "Catalog":
        """The catalog of the granules where `keep` is True (the same parents and notes)."""
        keep = np.asarray(keep, bool)
        if keep.all():
            return self
        return dataclasses.replace(self, granules=self.granules[keep].reset_index(drop=True))

    def granule_refs(self, rows: np.ndarray) -> tuple[GranuleRef, ...]:
        """References of the granules at the given catalog rows, in catalog order."""
        refs = self._refs
        return tuple(refs[r] for r in np.unique(rows).tolist())


    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.granules, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"polaragg"] = json.dumps({
            "parent_order": self.parent_order,
            "parents": [int(p) for p in self.parents],
            "skipped": [[s.record, s.reason] for s in self.skipped],
            "duplicates": [[d.name, d.kept, d.record] for d in self.duplicates],
        }).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Catalog":
        try:
            table = pq.read_table(path, use_threads=False)  # small: Arrow's thread pool costs more CPU than it saves
        except (OSError, pa.ArrowInvalid) as exc:
            raise CatalogError(f"cannot read catalog {path}: {exc}") from exc
        try:
            meta = json.loads((table.schema.metadata or {}).get(b"polaragg", b"{}"))
            parents = np.asarray(meta["parents"], dtype=np.uint64)
            parent_order = int(meta["parent_order"])
            skipped = tuple(SkippedRecord(str(r), str(why)) for r, why in meta.get("skipped", []))
            duplicates = tuple(DroppedDuplicate(str(n), str(k), str(r)) for n, k, r in meta.get("duplicates", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"{path} is not a polaragg catalog (no or malformed polaragg metadata)") from exc
        granules = table.to_pandas()
        granules["parent_cells"] = granules.parent_cells.map(lambda v: np.asarray(v, dtype=np.uint64))
        granules["parent_shares"] = granules.parent_shares.map(lambda v: np.asarray(v, dtype=np.float64))
        return cls(granules, parents, parent_order, skipped, duplicates)


@dataclass(frozen=True)
class _Usable:
    """A record that can be catalogued: its row, footprint, cells, granule key and preference."""

    row: dict
    geometry: dict
    cells: np.ndarray
    key: tuple[str, ...]
    preference: tuple[int, int, int]
    ident: str


def build_catalog(records: list[dict], parents: np.ndarray, parent_order: int, *, access: Access = "local") -> Catalog:
    """Catalog of UMM-G records restricted to the given AOI parent cells.

    `access` picks the URL tasks read: "local" (the `local_path` of directory records), "direct" (s3,
    falling back to https with an `AccessFallbackWarning` for records without one) or "external" (https).
    Unusable records are skipped and listed; of several records of one granule the newest revision is
    kept and the others listed. Raises `CatalogError` only when no record at all can be used.
    """
    parents = np.unique(np.asarray(parents, dtype=np.uint64))
    skipped: list[SkippedRecord] = []
    usable: list[_Usable] = []
    for i, record in enumerate(records):
        ident = _record_id(record, i)
        try:
            row = granule_row(record, access)
            geometry = _geometry(record)
            cells = footprint_cells(geometry, parent_order)
        except CatalogError as exc:
            skipped.append(SkippedRecord(ident, str(exc)))
            continue
        except (ValueError, TypeError) as exc:
            skipped.append(SkippedRecord(ident, f"unusable footprint: {exc}"))
            continue
        usable.append(_Usable(row, geometry, cells, _granule_key(row["name"]),
                              _preference(record, row["name"], i), ident))
    if not usable:
        if not skipped:
            raise CatalogError("no granule records to catalog")
        shown = "; ".join(f"{s.record}: {s.reason}" for s in skipped[:_NOTE_LIMIT])
        raise CatalogError(f"no usable granule record: all {len(skipped)} skipped ({shown})")
    kept, duplicates = _newest_revisions(usable)
    rows = []
    for u in kept:
        touched = np.intersect1d(u.cells, parents, assume_unique=True).astype(np.uint64)
        rows.append({**u.row, "parent_cells": touched,
                     "parent_shares": footprint_shares(u.geometry, touched, parent_order)})
    granules = pd.DataFrame(rows, columns=list(COLUMNS))
    granules = granules.sort_values("name", kind="stable").reset_index(drop=True)
    fallback = granules.name[(granules.url != granules.s3_url)].tolist() if access == "direct" else []
    if fallback:
        message = (f"{len(fallback)} granule(s) have no direct-access (s3) URL and will be read over https: "
                   + ", ".join(fallback[:_NOTE_LIMIT]) + (" ..." if len(fallback) > _NOTE_LIMIT else ""))
        warnings.warn(message, AccessFallbackWarning, stacklevel=2)
    for s in skipped:
        logger.info("granule record %s skipped: %s", s.record, s.reason)
    return Catalog(granules, parents, parent_order, tuple(skipped), duplicates)


def granule_row(record: dict, access: Access = "local") -> dict:
    """Catalog columns of one UMM-G record (everything but the parent cells); `CatalogError` if unusable."""
    if UNREADABLE in record:
        raise CatalogError(str(record[UNREADABLE]))
    umm = record.get("umm")
    if not isinstance(umm, dict):
        raise CatalogError("no umm block")
    s3_url, https_url = _data_urls(umm)
    local = record.get("local_path")
    name, match = _granule_name(umm, (s3_url, https_url, local))
    url = {"local": local, "direct": s3_url or https_url, "external": https_url}.get(access)
    if not url:
        raise CatalogError(f"{name}: no URL for access {access!r}")
    rng = (umm.get("TemporalExtent") or {}).get("RangeDateTime") or {}
    return {
        "granule_id": str((record.get("meta") or {}).get("concept-id") or name),
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
        "size_bytes": granule_size_bytes(umm, name=name) or 0,
        "footprint": json.dumps(_geometry(record), separators=(",", ":")),
        "expected_rows": _expected_rows(rng),
    }


def read_directory(path: str | Path) -> list[dict]:
    """UMM-G records of a local folder: each `<name>.umm.json` beside its `<name>.h5`.

    A file that is not a JSON object comes back as a record holding only its paths and, under
    `UNREADABLE`, the reason, so `build_catalog` lists it as skipped instead of failing the folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CatalogError(f"granule folder not found: {folder}")
    records = []
    for meta_path in sorted(folder.glob("*.umm.json")):
        h5 = meta_path.with_name(meta_path.name.removesuffix(".umm.json") + ".h5")
        paths = {"local_path": str(h5.resolve()), "metadata_path": str(meta_path)}
        try:
            record = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            records.append({**paths, UNREADABLE: f"not valid JSON ({exc})"})
            continue
        if not isinstance(record, dict):
            records.append({**paths, UNREADABLE: f"not a JSON object (a {type(record).__name__})"})
            continue
        records.append({**record, **paths})
    if not records:
        raise CatalogError(f"no *.umm.json granule records in {folder}")
    return records


def _record_id(record: Any, index: int) -> str:
    """How to name a record in a report: concept-id, else GranuleUR, else its file, else its position."""
    if isinstance(record, dict):
        meta, umm = record.get("meta"), record.get("umm")
        for value in ((meta or {}).get("concept-id") if isinstance(meta, dict) else None,
                      (umm or {}).get("GranuleUR") if isinstance(umm, dict) else None,
                      record.get("metadata_path"), record.get("local_path")):
            if isinstance(value, str) and value:
                return value
    return f"record #{index}"


def _granule_name(umm: dict, urls: tuple[str | None, ...]) -> tuple[str, re.Match[str]]:
    """The ATL06 file name of a record: from GranuleUR, the ProducerGranuleId (or any identifier), or
    the file name of a data URL, the first that is one."""
    granule_data = umm.get("DataGranule") or {}
    identifiers = [i for i in granule_data.get("Identifiers") or [] if isinstance(i, dict)]
    identifiers.sort(key=lambda i: i.get("IdentifierType") != "ProducerGranuleId")
    candidates = [umm.get("GranuleUR")] + [i.get("Identifier") for i in identifiers]
    candidates += [u.rsplit("/", 1)[-1] for u in urls if isinstance(u, str)]
    for candidate in candidates:
        if isinstance(candidate, str):
            match = NAME_RE.match(candidate.strip())
            if match:
                return candidate.strip(), match
    raise CatalogError(
        f"no ATL06 granule name (ATL06_<time>_<rgt><cycle><region>_<version>_<rev>) in GranuleUR "
        f"{umm.get('GranuleUR')!r}, DataGranule.Identifiers or the data URLs"
    )


def _data_urls(umm: dict) -> tuple[str | None, str | None]:
    """The record's s3 and https data URLs (None when absent), preferring the HDF5 file's."""
    s3: list[str] = []
    https: list[str] = []
    for item in umm.get("RelatedUrls") or []:
        if not isinstance(item, dict) or not isinstance(item.get("URL"), str):
            continue
        url, kind = item["URL"].strip(), item.get("Type")
        if url.startswith("s3://") and kind in (_DIRECT, _EXTERNAL):
            s3.append(url)
        elif url.startswith(("https://", "http://")) and kind == _EXTERNAL:
            https.append(url)

    def pick(urls: list[str]) -> str | None:
        return next((u for u in urls if u.endswith(".h5")), urls[0] if urls else None)

    return pick(s3), pick(https)


def _granule_key(name: str) -> tuple[str, ...]:
    """What identifies a granule across revisions: time, RGT, cycle, region and version of its name."""
    m = NAME_RE.match(name)
    assert m is not None
    return m["time"], m["rgt"], m["cycle"], m["region"], m["version"]


def _preference(record: dict, name: str, index: int) -> tuple[int, int, int]:
    """Higher wins among records of one granule: revision in the name, then CMR's revision-id, then the
    earlier record."""
    m = NAME_RE.match(name)
    assert m is not None
    return int(m["revision"]), _int((record.get("meta") or {}).get("revision-id")), -index


def _newest_revisions(usable: list[_Usable]) -> tuple[list[_Usable], tuple[DroppedDuplicate, ...]]:
    """One record per granule (the preferred one) and the dropped others; also one per granule id."""
    best: dict[tuple[str, ...], _Usable] = {}
    for u in usable:
        if u.key not in best or u.preference > best[u.key].preference:
            best[u.key] = u
    kept_ids: dict[str, str] = {}
    keep, dropped = [], []
    for u in usable:
        winner = best[u.key]
        if u is not winner:
            dropped.append(DroppedDuplicate(u.row["name"], winner.row["name"], u.ident))
        elif u.row["granule_id"] in kept_ids:  # two different granule names under one concept-id
            dropped.append(DroppedDuplicate(u.row["name"], kept_ids[u.row["granule_id"]], u.ident))
        else:
            kept_ids[u.row["granule_id"]] = u.row["name"]
            keep.append(u)
    dropped.sort(key=lambda d: (d.name, d.record))
    return keep, tuple(dropped)


def _geometry(record: dict) -> dict:
    """The record's HorizontalSpatialDomain: its Geometry and, on older records, its Orbit block."""
    try:
        domain = record["umm"]["SpatialExtent"]["HorizontalSpatialDomain"]
    except (KeyError, TypeError):
        domain = None
    if not isinstance(domain, dict) or not ({"Geometry", "Orbit"} & domain.keys()):
        raise CatalogError("no umm.SpatialExtent.HorizontalSpatialDomain Geometry or Orbit")
    return domain


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _expected_rows(rng: dict) -> int:
    """Rows over all beams of a full granule, estimated from its duration (one 20 m segment per ~2.8 ms)."""
    try:
        t0 = pd.Timestamp(rng["BeginningDateTime"])
        t1 = pd.Timestamp(rng["EndingDateTime"])
    except (KeyError, ValueError, TypeError):
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
