"""What a store holds and whether it can be delivered: `polaragg status` and `polaragg validate`.

Both read only the store and its ledger, so they work for runs on any executor.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import zarr

from .grid import Grid
from .ledger import TaskRecord, read_records
from .store import checksum, combine_checksums, schema_of, zarr_store

XDGGS_ATTRS = ("grid_name", "level", "indexing_scheme", "ellipsoid")


@dataclass(frozen=True)
class StoreStatus:
    store: str
    tasks_total: int
    records: tuple[TaskRecord, ...]

    @property
    def by_status(self) -> Counter:
        return Counter(r.status for r in self.records)

    def failures_by_reason(self) -> dict[str, list[str]]:
        """Failed granules grouped by reason."""
        groups: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            for f in r.failures:
                groups[f["reason"]].add(f["granule"])
        return {reason: sorted(g) for reason, g in sorted(groups.items(), key=lambda kv: -len(kv[1]))}

    def format(self) -> str:
        done = len(self.records)
        counts = self.by_status
        obs = sum(r.observations for r in self.records)
        pct = 100.0 * done / self.tasks_total if self.tasks_total else 100.0
        lines = [
            f"store:        {self.store}",
            f"progress:     {done}/{self.tasks_total} tasks recorded ({pct:.0f}%)",
            "status:       " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("ok", "empty", "partial", "failed")),
            f"observations: {obs:,}",
        ]
        invalid = sum(r.rows_invalid for r in self.records)
        filtered = sum(r.rows_filtered for r in self.records)
        outside = sum(r.rows_outside for r in self.records)
        lines.append(f"rows dropped: {filtered:,} filtered, {invalid:,} without valid coordinates or time, "
                     f"{outside:,} outside the plan's cells")
        misses = [m for r in self.records for m in r.footprint_misses]
        if misses:
            lost = unrepaired_misses(list(self.records))
            granules = sorted({m["granule"] for m in misses})
            lines.append(f"footprints:   {len(granules)} granule(s) had rows outside their footprint in "
                         f"{len(misses)} task(s); {len(misses) - len(lost)} aggregated there, {len(lost)} not")
            lines += [f"  - {p}" for p in lost[:10]]
        failures = self.failures_by_reason()
        if failures:
            lines.append(f"failures:     {sum(len(g) for g in failures.values())} granule(s)")
            for reason, granules in failures.items():
                shown = ", ".join(granules[:5]) + (" ..." if len(granules) > 5 else "")
                lines.append(f"  {len(granules):>4} x {reason}")
                lines.append(f"         {shown}")
        return "\n".join(lines)


def misses_not_aggregated(records) -> list[dict]:
    """Footprint misses ({granule, parent, child_lo, rows}) whose task's record does not show it read the
    granule: rows the store is missing."""
    by_key = {(r.parent, r.child_lo): r for r in records}
    return [m for r in by_key.values() for m in r.footprint_misses
            if m["granule"] not in getattr(by_key.get((m["parent"], m["child_lo"])), "granule_ids", ())]


def unrepaired_misses(records: list[TaskRecord]) -> list[str]:
    """`misses_not_aggregated`, one line each."""
    return [f"granule {m['granule']}: {m['rows']:,} rows in parent {m['parent']} children from "
            f"{m['child_lo']} that its footprint misses were not aggregated" for m in misses_not_aggregated(records)]


def store_status(store: str, storage_options: dict | None = None) -> StoreStatus:
    root = zarr.open_group(zarr_store(store, storage_options), mode="r", zarr_format=3, use_consolidated=False)
    count = root["count"]
    tasks_total = int(np.ceil(count.shape[0] / count.chunks[0]))
    return StoreStatus(store, tasks_total, tuple(read_records(store, storage_options)))


def validate_store(store: str, storage_options: dict | None = None) -> list[str]:
    """Reasons the store is not deliverable; an empty list means it is valid."""
    problems: list[str] = []
    try:
        root = zarr.open_group(zarr_store(store, storage_options), mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return [f"cannot open {store} as a Zarr v3 group: {exc}"]
    attrs = dict(root.attrs)
    for key in ("recipe", "recipe_fingerprint", "parent_order", "child_order"):
        if key not in attrs:
            problems.append(f"root attribute {key!r} is missing")
    names = set(root.array_keys())
    schema = schema_of(root)
    for spec in schema.variables:
        if spec.name not in names:
            problems.append(f"variable {spec.name!r} is missing")
        elif str(root[spec.name].dtype) != spec.dtype:
            problems.append(f"variable {spec.name!r} has dtype {root[spec.name].dtype}, expected {spec.dtype}")
    if "cell_ids" not in names:
        problems.append("coordinate 'cell_ids' is missing")
    if problems:
        return problems

    grid = Grid(int(attrs["parent_order"]), int(attrs["child_order"]))
    ids = root["cell_ids"][:]
    id_attrs = dict(root["cell_ids"].attrs)
    for key, value in grid.cell_id_attrs().items():
        if id_attrs.get(key) != value:
            problems.append(f"cell_ids attribute {key!r} is {id_attrs.get(key)!r}, expected {value!r}")
    n_children = grid.children_per_parent
    parents = np.unique(ids >> np.uint64(grid.shift))
    if ids.size != parents.size * n_children or not np.array_equal(ids, grid.children_of(parents)):
        problems.append("cell_ids are not the complete, ordered children of their parent cells")
    chunk = root["count"].chunks[-1]
    all_records = read_records(store, storage_options)
    records = {(r.parent, r.child_lo): r for r in all_records}
    problems += unrepaired_misses(all_records)
    fingerprint = attrs.get("run_fingerprint", attrs["recipe_fingerprint"])
    arrays = {spec.name: root[spec.name] for spec in schema.variables}
    # Orders each task wrote besides the child order (pyramid groups computed in the tasks).
    finer = [(o, grid.child_order - o) for o in attrs.get("task_orders", [grid.child_order])[1:]]
    level_arrays = {o: {spec.name: root[str(o)][spec.name] for spec in schema.variables} for o, _ in finer}
    negative = mismatched = total = 0
    # Task by task: a run cut short can leave a task's chunks partly written (its record is missing then).
    for k in range(ids.size // chunk):
        start = k * chunk
        parent = int(ids[start] >> np.uint64(grid.shift))
        child_lo = int(ids[start] - np.uint64(parent * n_children))
        record = records.pop((parent, child_lo), None)
        where = f"task parent {parent} children {child_lo}-{child_lo + chunk}"
        try:
            values = {name: a[..., start:start + chunk] for name, a in arrays.items()}
            levels = {o: {name: a[..., (start >> 2 * d):(start + chunk) >> 2 * d] for name, a in level_arrays[o].items()}
                      for o, d in finer}
        except Exception as exc:  # noqa: BLE001 - whatever the codec raises on a cut or corrupt chunk
            problems.append(f"{where}: " + ("no ledger record (the task never finished; a chunk of it is partly "
                                            "written)" if record is None else
                                            f"a chunk cannot be read ({type(exc).__name__}: {exc})"))
            continue
        count = values["count"]
        negative += int((count < 0).sum())
        mismatched += int((np.isnan(values["h_mean"]) != (count == 0)).sum())
        total += int(count.sum())
        if record is None:
            problems.append(f"{where}: no ledger record (the task never finished)")
            continue
        if record.fingerprint != fingerprint:
            problems.append(f"{where}: ledger record is from another recipe ({record.fingerprint})")
        if record.status not in ("ok", "empty"):
            reasons = "; ".join(sorted({f['reason'] for f in record.failures})) or "no reason recorded"
            problems.append(f"{where}: status {record.status} ({reasons})")
        stored = int(count.sum())
        if stored != record.observations:
            problems.append(f"{where}: store counts {stored:,} observations, the ledger {record.observations:,}")
        if not record.checksum:
            problems.append(f"{where}: ledger record has no checksum of its chunk")
        elif combine_checksums([checksum(values, schema)] + [checksum(levels[o], schema) for o, _ in finer]
                               ) != record.checksum:
            problems.append(f"{where}: stored values differ from what the task wrote (checksum mismatch)")
    if negative:
        problems.append(f"{negative} cells have a negative count")
    if mismatched:
        problems.append(f"{mismatched} cells have h_mean NaN where count > 0 or a value where count == 0")
    for (parent, child_lo) in sorted(records):
        problems.append(f"ledger record for parent {parent} children from {child_lo} has no place in the store")
    summary = attrs.get("run_summary")
    if summary is not None:
        reported = json.loads(summary).get("observations")
        if reported is not None and int(reported) != total:
            problems.append(f"run summary reports {int(reported):,} observations, the store holds {total:,}")
    return problems
