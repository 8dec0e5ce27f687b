"""Calibration: what a task costs from its size, fitted on a ledger, shipped, or measured on S3.

- A task's seconds are modelled as a * rows_in_cell + b * granules + c, so a plan can be priced before it
  runs. `calibrate(records)` fits the model on ledger records (non-negative least squares);
  `default_calibration()` is a fit shipped in `prices.yaml` for when no ledger exists.
- `measured_figures(reader)` are the one-pass design's own counts, measured against a local S3 server by
  benchmarks/s3_requests.py and shipped in `polaragg/data/onepass_measured.json`: per granule of the granule
  stage, CPU-seconds, GETs and bytes linear in its rows, and its other requests; per cell task, CPU-seconds
  linear in observations and segments, and its requests per segment, per reported granule and per task; the
  client's requests; the CPU-seconds of a worker's cold start. `polaragg.cost.project_full_cycle` and
  `estimate` price them.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Sequence

import numpy as np

from .ledger import TaskRecord
from .prices import PriceError, shipped_section


@dataclass(frozen=True)
class Calibration:
    """seconds of one task = seconds_per_row * rows + seconds_per_granule * granules + seconds_per_task.

    `granules` says which granules of a task the fit counted: those it lists (a pipeline whose tasks read
    every granule crossing them, as the field's and polaragg's before the one-pass design) or those it
    reports (one pass: each granule read once, its cost carried by the one task that reports it)."""

    seconds_per_row: float
    seconds_per_granule: float
    seconds_per_task: float = 0.0
    observations_per_row: float = 1.0
    name: str = "custom"
    n_records: int = 0
    rejected: int = 0
    r2: float | None = None
    source: str = ""
    machine: str = ""
    granules: Literal["listed", "reported"] = "listed"

    def predict(self, rows: Any, granules: Any) -> Any:
        """Predicted task seconds (scalars or arrays)."""
        return (self.seconds_per_row * np.asarray(rows, dtype=np.float64)
                + self.seconds_per_granule * np.asarray(granules, dtype=np.float64) + self.seconds_per_task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrations() -> dict[str, Calibration]:
    """The calibrations shipped in `prices.yaml`, by name."""
    section = shipped_section("calibrations")
    names = [k for k in section if k != "default"]
    out = {}
    for n in names:
        spec = {f.name: section[n][f.name] for f in fields(Calibration) if f.name in section[n]}
        for k in ("seconds_per_row", "seconds_per_granule", "seconds_per_task", "observations_per_row"):
            spec[k] = float(spec.get(k, 0.0 if k != "observations_per_row" else 1.0))
        if spec.get("r2") is not None:
            spec["r2"] = float(spec["r2"])
        out[n] = Calibration(**{**spec, "name": n, "source": str(spec.get("source", "")).strip()})
    return out


def default_calibration(name: str | None = None) -> Calibration:
    """A shipped calibration (the default one unless `name` is given)."""
    known = calibrations()
    name = name or shipped_section("calibrations")["default"]
    if name not in known:
        raise PriceError(f"unknown calibration {name!r}; shipped: {', '.join(known)}")
    return known[name]


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a few columns.

    The optimum is the unconstrained least-squares solution on its own support, so trying every support
    (2^k for k <= 3 columns here) and keeping the best feasible one is exact. Uses scipy when present.
    """
    try:  # pragma: no cover - scipy is optional
        from scipy.optimize import nnls

        return nnls(a, y)[0]
    except ImportError:
        pass
    k = a.shape[1]
    best, best_res = np.zeros(k), float(np.sum(y * y))
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = list(support)
            sol, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if (sol < 0).any():
                continue
            x = np.zeros(k)
            x[cols] = sol
            res = float(np.sum((a @ x - y) ** 2))
            if res < best_res - 1e-15 * max(best_res, 1.0):
                best, best_res = x, res
    return best


def calibrate(records: Sequence[TaskRecord], *, intercept: bool = True, robust: bool = True,
              name: str = "ledger", source: str = "", machine: str = "") -> Calibration:
    """Fit seconds = a * rows_in_cell + b * granules (+ c per task) by non-negative least squares.

    A record's seconds include the granule stage of the granules it reports, and its granules are those
    it reports (each granule is read once); records without granule reports count the granules they
    read. Failed tasks are left out. With `robust`, one pass drops tasks whose residual exceeds 3 robust standard
    deviations (1.4826 MAD, at least 1 ms) and refits: the first task of a process pays imports and cold
    caches.
    """
    usable = [r for r in records if r.status != "failed"]
    if not usable:
        raise ValueError("no usable task records to calibrate on (all failed, or none)")
    one_pass = any(r.granule_reports for r in usable)
    cols = [[float(r.rows_in_cell), float(len(r.granule_reports) if one_pass else r.granules)]
            + ([1.0] if intercept else []) for r in usable]
    a = np.asarray(cols, dtype=np.float64)
    y = np.asarray([r.seconds + r.granule_seconds for r in usable], dtype=np.float64)
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)  # column scaling for conditioning

    def fit(mask: np.ndarray) -> np.ndarray:
        return _nnls(a[mask] / scale, y[mask]) / scale

    keep = np.ones(len(y), dtype=bool)
    coef = fit(keep)
    if robust and len(y) > a.shape[1] + 1:
        res = y - a @ coef
        spread = 1.4826 * float(np.median(np.abs(res - np.median(res))))
        cand = np.abs(res) <= max(3.0 * spread, 1e-3)
        if cand.sum() >= a.shape[1] + 1 and not cand.all():
            keep = cand
            coef = fit(keep)
    pred = a[keep] @ coef
    ss_tot = float(np.sum((y[keep] - y[keep].mean()) ** 2))
    r2 = 1.0 - float(np.sum((y[keep] - pred) ** 2)) / ss_tot if ss_tot > 0 else None
    rows = sum(r.rows_in_cell for r in usable)
    obs = sum(r.observations for r in usable)
    return Calibration(
        granules="reported" if one_pass else "listed",
        seconds_per_row=float(coef[0]), seconds_per_granule=float(coef[1]),
        seconds_per_task=float(coef[2]) if intercept else 0.0,
        observations_per_row=obs / rows if rows else 1.0,
        name=name, n_records=len(usable), rejected=int((~keep).sum()), r2=r2, source=source, machine=machine,
    )


# ----------------------------------------------------------------------------------------------------
# Measured figures of the one-pass design (requests, bytes and CPU-seconds per granule and per cell task)

MEASURED_FILE = "onepass_measured.json"  # in polaragg/data, written by benchmarks/s3_requests.py --install
MEASURED_FORMAT = 1


@dataclass(frozen=True)
class GranuleStageFigures:
    """One granule through the granule stage (read, filter, HEALPix, partition written), per granule with
    `rows` rows read: CPU-seconds, GETs and bytes on its object = a + b x rows; other requests per granule."""

    cpu_seconds_per_granule: float
    cpu_seconds_per_row: float
    gets_per_granule: float
    gets_per_row: float
    get_bytes_per_granule: float
    get_bytes_per_row: float
    heads_per_granule: float  # HEADs of the granule object (s3fs asks for its size)
    other_get_class_per_granule: float  # e.g. the HEAD looking for an earlier partition record
    put_class_per_granule: float  # partition rows + record PUTs, and the LIST s3fs sends after a HEAD 404
    request_concurrency: float  # requests in flight at once, measured with injected latency

    def cpu_seconds(self, rows: Any) -> Any:
        return self.cpu_seconds_per_granule + self.cpu_seconds_per_row * np.asarray(rows, dtype=np.float64)

    def gets(self, rows: Any) -> Any:
        """GET-class requests of one granule: its object's GETs and HEADs and the stage's other GET-class."""
        return (self.gets_per_granule + self.gets_per_row * np.asarray(rows, dtype=np.float64)
                + self.heads_per_granule + self.other_get_class_per_granule)

    def get_bytes(self, rows: Any) -> Any:
        return self.get_bytes_per_granule + self.get_bytes_per_row * np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class CellStageFigures:
    """One cell task (reads its segments of the partitions, reduces, writes its chunks and record)."""

    cpu_seconds_per_task: float
    cpu_seconds_per_observation: float
    cpu_seconds_per_segment: float
    segment_gets_per_segment: float  # one ranged GET per (granule, task) segment with rows
    segment_bytes_per_observation: float
    record_get_class_per_granule: float  # HEAD + GET of each partition record the task reports
    other_get_class_per_task: float
    chunk_puts_per_task: float  # as measured; a projection takes the plan's schema instead
    task_record_puts_per_task: float
    other_put_class_per_task: float
    segments_per_planned_pair: float  # share of the footprints' (cell, granule) pairs that hold rows
    request_concurrency: float

    def cpu_seconds(self, observations: Any, segments: Any) -> Any:
        return (self.cpu_seconds_per_task
                + self.cpu_seconds_per_observation * np.asarray(observations, dtype=np.float64)
                + self.cpu_seconds_per_segment * np.asarray(segments, dtype=np.float64))


@dataclass(frozen=True)
class ClientFigures:
    """The client's own requests (store creation, lock, inputs, reading the ledger back, finishing)."""

    get_class_per_task: float
    put_class_per_task: float
    get_class_per_run: float
    put_class_per_run: float


@dataclass(frozen=True)
class OnePassFigures:
    """What one granule and one cell task of the one-pass design cost in S3 requests, bytes and CPU-seconds,
    with one reader, as measured by benchmarks/s3_requests.py (see benchmarks/results/cost.md)."""

    reader: str
    granule: GranuleStageFigures
    cell: CellStageFigures
    client: ClientFigures
    cold_start_cpu_seconds: float  # a fresh interpreter importing what a worker imports
    commit: str = ""
    date: str = ""
    machine: str = ""
    latency_ms: float = 0.0  # injected by the benchmark's proxy when the concurrency was measured
    source: str = ""


def _figures(cls: type, spec: dict[str, Any], where: str) -> Any:
    try:
        return cls(**{f.name: float(spec[f.name]) for f in fields(cls)})
    except KeyError as exc:
        raise PriceError(f"{where}: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise PriceError(f"{where}: {exc}") from None


def _positive(value: Any) -> float:
    v = float(value) if value is not None else 1.0
    return v if v > 0 else 1.0


def load_measured(data: dict[str, Any], reader: str = "h5coro", where: str = MEASURED_FILE) -> OnePassFigures:
    """The figures of `reader` from a measured-figures document (benchmarks/results/cost.json's layout)."""
    if int(data.get("format", 0)) != MEASURED_FORMAT:
        raise PriceError(f"{where}: format {data.get('format')!r}, expected {MEASURED_FORMAT}")
    readers = data.get("readers") or {}
    if reader not in readers:
        raise PriceError(f"{where}: no figures for reader {reader!r} (measured: {', '.join(sorted(readers)) or 'none'})")
    r = readers[reader]
    g, c, k = r["granule_stage"], r["cell_stage"], r["client"]
    granule = _figures(GranuleStageFigures, {
        "cpu_seconds_per_granule": g["cpu_seconds"]["per_granule"], "cpu_seconds_per_row": g["cpu_seconds"]["per_row"],
        "gets_per_granule": g["granule_gets"]["per_granule"], "gets_per_row": g["granule_gets"]["per_row"],
        "get_bytes_per_granule": g["granule_get_bytes"]["per_granule"],
        "get_bytes_per_row": g["granule_get_bytes"]["per_row"], "heads_per_granule": g["granule_heads_per_granule"],
        "other_get_class_per_granule": g["other_get_class_per_granule"],
        "put_class_per_granule": g["put_class_per_granule"], "request_concurrency": _positive(g["request_concurrency"]),
    }, f"{where}: {reader} granule_stage")
    cell = _figures(CellStageFigures, {
        "cpu_seconds_per_task": c["cpu_seconds"]["per_task"],
        "cpu_seconds_per_observation": c["cpu_seconds"]["per_observation"],
        "cpu_seconds_per_segment": c["cpu_seconds"]["per_segment"],
        **{name: c[name] for name in ("segment_gets_per_segment", "segment_bytes_per_observation",
                                      "record_get_class_per_granule", "other_get_class_per_task",
                                      "chunk_puts_per_task", "task_record_puts_per_task", "other_put_class_per_task",
                                      "segments_per_planned_pair")},
        "request_concurrency": _positive(c["request_concurrency"]),
    }, f"{where}: {reader} cell_stage")
    client = _figures(ClientFigures, k, f"{where}: {reader} client")
    return OnePassFigures(reader=reader, granule=granule, cell=cell, client=client,
                          cold_start_cpu_seconds=float(data.get("cold_start_cpu_seconds", 0.0)),
                          commit=str(data.get("commit", "")), date=str(data.get("date", "")),
                          machine=str(data.get("machine", "")), latency_ms=float(data.get("latency_ms", 0.0)),
                          source=str(data.get("source", "")))


def measured_figures(reader: str = "h5coro", path: str | None = None) -> OnePassFigures:
    """The shipped measured figures of `reader` (polaragg/data/onepass_measured.json), or those of a
    benchmark output file (`path`, e.g. benchmarks/results/cost.json)."""
    import json
    from importlib import resources
    from pathlib import Path

    file = Path(path) if path else Path(str(resources.files("polaragg") / "data" / MEASURED_FILE))
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise PriceError(f"measured figures not found: {file} (benchmarks/s3_requests.py --install writes them)") from None
    return load_measured(data, reader, str(file))
