"""What a run costs: a finished run priced from its ledger, and a plan or a full cycle projected before one.

- `run_cost(records, prices, executor=...)` prices a run from its ledger records alone
  (`ledger.read_records`), so the figures can be recomputed on any machine, for any executor, long after
  the run.
- `estimate(plan)` projects a plan's task-seconds and its Lambda / EC2 / Coiled / S3 bill;
  `project_full_cycle()` does it for one full ATL06 cycle over Antarctica. Both price the one-pass design
  from its own measured counts (`calibration.measured_figures`: GETs, bytes and CPU-seconds per granule of
  the granule stage, per cell task of the cell stage, and the client's requests, measured against a local
  S3 server by benchmarks/s3_requests.py) and print their assumptions; the field's published runs are
  reference rows beside them (`published_reference`), never inputs.
- `format_cost(report)` is the cost block printed after a run.

Prices and the projection's assumptions come from `prices.load_prices` (polaragg/data/prices.yaml).

Every report carries the Lambda, EC2/Coiled and S3-request figures side by side ("what would this have cost
there"), and `total_usd` picks the one billed for the executor actually used (None for local executors).

Model of a finished run, per task (one ledger record):

- Lambda: one invocation per attempt; each attempt billed ceil-to-1-ms(seconds * cpu_scale + init_seconds)
  x memory in GB (MB / 1024). A record with `attempt = k` stands for k invocations; the duration of the
  k - 1 earlier attempts is not recorded and is taken equal to the recorded one (per-granule read retries
  happen inside one attempt and are already in its seconds). `cpu_scale` is 1 for runs that were on Lambda
  and, for a what-if from seconds measured on one full core, max(1, 1769 MB / memory): below 1,769 MB a
  function gets a fraction of a vCPU.
- EC2 / Coiled: instance-hours = wall x n_instances when both are known, else the (attempt-weighted)
  task-seconds packed perfectly onto the instance's vCPUs (a lower bound: no idle cores, no start-up);
  EC2 $ = hours x hourly (x spot factor); Coiled fee = hours x vCPUs x fee per CPU-hour.
- Invocations and seconds: every cell-stage task, plus every granule-stage task (its record is carried by
  the one cell task that reports the granule, `TaskRecord.granule_reports`).
- S3 requests: the projection's request model (`requests_of`, with the measured figures of the run's
  reader) applied to the ledger's own counts: each granule the granule stage reported, with the rows it
  read; each cell task's partition segments, reported records and chunk PUTs (stored variables + 1 ledger
  record unless `puts_per_task` is given); the client's requests. Transfer inside the region is free.

Model of a projection (`project_full_cycle`, `estimate`; docs/cost.md): per task, CPU-seconds, GET-class and
PUT-class requests and GET bytes from the measured figures (granule stage linear in rows, cell stage in
observations and segments, a cell task's PUTs from the plan's schema); seconds = CPU / vcpu_speed (x the
Lambda's CPU scale) + requests x s3_request_latency_seconds / the stage's measured request concurrency +
bytes / s3_worker_mb_per_second; Lambda bills each task ceil-to-1-ms plus one INIT (the measured cold-start
CPU) per concurrent function; the wall clock is the INIT plus each stage's max(slowest task, seconds /
workers).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from .calibration import Calibration, OnePassFigures, default_calibration, measured_figures
from .ledger import TaskRecord, read_records
from .prices import PriceError, PriceTable, load_prices, shipped_section

LAMBDA_EXECUTORS = frozenset({"lambda"})
COILED_EXECUTORS = frozenset({"coiled"})


# ----------------------------------------------------------------------------------------------------
# The report


def _usd(x: float) -> str:
    if x == 0:
        return "$0"
    if x < 0.01:
        return f"${x:.6f}"
    if x < 100:
        return f"${x:,.4f}" if x < 1 else f"${x:,.2f}"
    return f"${x:,.0f}"


def _secs(x: float) -> str:
    if x < 120:
        return f"{x:,.2f} s"
    if x < 7200:
        return f"{x:,.0f} s ({x / 60:,.1f} min)"
    return f"{x:,.0f} s ({x / 3600:,.1f} h)"


@dataclass(frozen=True)
class CostReport:
    """Time and cost of a run (`kind="actual"`), a plan (`"estimate"`) or a full cycle (`"projection"`)."""

    kind: str
    executor: str | None
    n_tasks: int
    invocations: int
    wall_seconds: float | None
    task_seconds: float
    max_task_seconds: float
    observations: int
    rows: int
    granules_read: int
    observations_per_core_second: float
    peak_memory_bytes: int
    # Lambda
    architecture: str
    lambda_memory_mb: int
    lambda_cpu_scale: float
    lambda_gb_seconds: float
    lambda_duration_usd: float
    lambda_request_usd: float
    lambda_usd: float
    # EC2 / Coiled
    instance: str
    spot: bool
    instance_hours: float
    instance_hours_basis: str
    ec2_usd: float
    coiled_fee_usd: float
    coiled_usd: float
    # S3 requests
    s3_gets: int
    s3_puts: int
    s3_usd: float
    notes: tuple[str, ...] = ()
    # Projections and estimates only (empty for a finished run's cost):
    s3_get_bytes: int = 0
    stages: tuple[dict, ...] = ()  # StageCost of the granule stage and the cell stage, as dicts
    assumptions: tuple[tuple[str, str], ...] = ()  # (name, value and source), printed with the report
    reference: tuple[dict, ...] = ()  # the field's published runs (ReferenceRow), for comparison only
    lambda_cold_starts: int = 0
    lambda_wall_seconds: float | None = None

    @property
    def total_usd(self) -> float | None:
        """The bill of the executor used: Lambda or Coiled, plus S3 requests; None for local executors."""
        if self.executor in LAMBDA_EXECUTORS:
            return self.lambda_usd + self.s3_usd
        if self.executor in COILED_EXECUTORS:
            return self.coiled_usd + self.s3_usd
        return None

    def usd_per_billion_observations(self, which: str = "lambda") -> float | None:
        cost = {"lambda": self.lambda_usd, "coiled": self.coiled_usd, "ec2": self.ec2_usd}[which]
        return cost / self.observations * 1e9 if self.observations else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["stages"] = [dict(s) for s in self.stages]
        out["assumptions"] = [list(a) for a in self.assumptions]
        out["reference"] = [dict(r) for r in self.reference]
        out["total_usd"] = self.total_usd
        return out

    def format(self) -> str:
        """A Markdown table (readable as plain text)."""
        spot = "spot" if self.spot else "on-demand"
        title = {"actual": f"Cost of the run (from {self.n_tasks:,} ledger records)",
                 "estimate": f"Estimated cost of the plan ({self.n_tasks:,} tasks)",
                 "projection": f"Projected cost ({self.n_tasks:,} tasks)"}.get(self.kind, self.kind)
        per_b = self.usd_per_billion_observations("lambda")
        rows: list[tuple[str, str]] = [
            ("executor", self.executor or "-"),
            ("tasks / Lambda invocations", f"{self.n_tasks:,} / {self.invocations:,}"),
            ("wall clock", _secs(self.wall_seconds) if self.wall_seconds is not None else "-"),
            ("task-seconds", _secs(self.task_seconds)),
            ("slowest task", _secs(self.max_task_seconds)),
            ("observations", f"{self.observations:,}"),
            ("observations per core-second", f"{self.observations_per_core_second:,.0f}"),
            ("peak task memory",
             f"{self.peak_memory_bytes / 2**20:,.0f} MiB" if self.peak_memory_bytes else "-"),
            (f"Lambda {self.architecture} {self.lambda_memory_mb} MB",
             f"{self.lambda_gb_seconds:,.1f} GB-s {_usd(self.lambda_duration_usd)} + requests "
             f"{_usd(self.lambda_request_usd)} = **{_usd(self.lambda_usd)}**"
             + (f" ({_usd(per_b)} per 10^9 obs)" if per_b is not None else "")),
            (f"EC2 {self.instance} {spot}",
             f"{self.instance_hours:,.4g} instance-h ({self.instance_hours_basis}) = {_usd(self.ec2_usd)}"),
            ("Coiled (EC2 + platform fee)",
             f"{_usd(self.ec2_usd)} + {_usd(self.coiled_fee_usd)} = **{_usd(self.coiled_usd)}**"),
            ("S3 requests", f"{self.s3_gets:,} GET + {self.s3_puts:,} PUT = {_usd(self.s3_usd)}"),
            ("billed for this executor",
             _usd(self.total_usd) if self.total_usd is not None
             else "no cloud bill (local executor)" if self.executor else "- (no executor chosen)"),
        ]
        if self.stages:
            rows.insert(3, ("wall clock on Lambda", _secs(self.lambda_wall_seconds or 0.0)
                            + f" (incl. one INIT; {self.lambda_cold_starts:,} cold starts billed)"))
            rows[-2] = ("S3 requests", f"{self.s3_gets:,} GET-class + {self.s3_puts:,} PUT-class = {_usd(self.s3_usd)} "
                        f"({self.s3_get_bytes / 1e9:,.1f} GB fetched, free in-region)")
        width = max(len(k) for k, _ in rows)
        lines = [f"### {title}", "", f"| {'item':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        if self.stages:
            lines += ["", "| stage | tasks | CPU-s | S3 wait s | transfer s | task-s (full vCPU) | slowest on Lambda | "
                      "GET-class | PUT-class | GB fetched | workers | wall |",
                      "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
            for st in self.stages:
                lines.append(
                    f"| {st['stage']} | {st['tasks']:,} | {st['cpu_seconds']:,.0f} | {st['wait_seconds']:,.0f} | "
                    f"{st['transfer_seconds']:,.0f} | {st['seconds']:,.0f} | {_secs(st['max_task_seconds'])} | "
                    f"{st['gets']:,.0f} | {st['puts']:,.0f} | {st['get_bytes'] / 1e9:,.2f} | {st['workers']:,} | "
                    f"{_secs(st['wall_seconds'])} |")
        if self.assumptions:
            lines += ["", "Assumptions:"] + [f"- {name}: {value}" for name, value in self.assumptions]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        if self.reference:
            lines += ["", "Reference (the field's published runs, for comparison; not part of this projection):"]
            lines += [f"- {ReferenceRow(**r).line()}" for r in self.reference]
        return "\n".join(lines)


def _number_or(report: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = report.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def format_cost(report: Mapping[str, Any]) -> str:
    """The cost block printed after a run, from a stored report (`CostReport.to_dict()`, the `run_cost` attr).

    The Lambda, EC2 and Coiled lines price the same task-seconds on each service, so they are alternatives,
    not parts of one bill: each says what this work would cost there. Only the service the run actually used
    (Lambda or Coiled) is worded as a cost; a local run has no cloud bill. S3 requests are what a run with its
    data and store in S3 would add to any of them.
    """
    if not report:
        return "Cost: no cost report in the store (run_cost attribute missing)"
    executor = report.get("executor") or None
    n_tasks = int(_number_or(report, "n_tasks"))
    task_seconds = _number_or(report, "task_seconds")
    billed = "lambda" if executor in LAMBDA_EXECUTORS else "coiled" if executor in COILED_EXECUTORS else None

    def verb(service: str) -> str:
        return "cost" if service == billed else "would cost"

    spot = "spot" if report.get("spot") else "on-demand"
    architecture, memory_mb = report.get("architecture", "arm64"), report.get("lambda_memory_mb", "?")
    lambda_label = f"AWS Lambda ({architecture}, {memory_mb} MB)"
    ec2_label = f"EC2 {report.get('instance', '?')} ({spot})"
    rows = [
        (lambda_label, f"{verb('lambda')} {_usd(_number_or(report, 'lambda_usd'))}",
         f"{_number_or(report, 'lambda_gb_seconds'):,.1f} GB-s + {int(_number_or(report, 'invocations')):,} "
         "requests"),
        (ec2_label, f"would cost {_usd(_number_or(report, 'ec2_usd'))}",
         f"{_number_or(report, 'instance_hours'):,.4g} instance-h"),
        ("Coiled (EC2 + platform fee)", f"{verb('coiled')} {_usd(_number_or(report, 'coiled_usd'))}",
         f"{_usd(_number_or(report, 'ec2_usd'))} + fee {_usd(_number_or(report, 'coiled_fee_usd'))}"),
        ("S3 requests (data in S3)",
         f"{'added' if billed else 'would add'} {_usd(_number_or(report, 's3_usd'))}",
         f"{int(_number_or(report, 's3_gets')):,} GET + {int(_number_or(report, 's3_puts')):,} PUT"),
    ]
    total = report.get("total_usd")
    if billed and isinstance(total, (int, float)):
        bill = f"{_usd(float(total))} ({billed} + S3 requests)"
    else:
        bill = f"none (local executor {executor!r})" if executor else "none (no executor recorded)"
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"Cost: the same work ({n_tasks:,} tasks, {_secs(task_seconds)} of task time, from the ledger) "
        "priced on each service",
        "      (alternatives, not one bill; prices: polaragg/data/prices.yaml)",
    ]
    lines += [f"      {label + ':':<{width + 1}} {value:<22} ({detail})" for label, value, detail in rows]
    lines.append(f"      {'Billed for this run:':<{width + 1}} {bill}")
    return "\n".join(lines)


def _ceil_ms(seconds: float) -> int:
    """Billed milliseconds of one invocation (Lambda bills duration rounded up to 1 ms)."""
    return math.ceil(round(seconds * 1000.0, 6))


def _stored_variables() -> int:
    from .stats import STATS

    return len(STATS)


def _infer_executor(records: Sequence[TaskRecord]) -> str | None:
    names = Counter(r.executor for r in records if r.executor)
    return names.most_common(1)[0][0] if names else None


def _price(
    records: Sequence[TaskRecord], prices: PriceTable, *, kind: str, executor: str | None,
    lambda_memory_mb: int, architecture: str, instance: str, n_instances: int | None,
    wall_seconds: float | None, instance_wall_seconds: float | None, spot: bool,
    figures: OnePassFigures, puts_per_task: int | None, lambda_init_seconds: float,
    notes: list[str],
) -> CostReport:
    if not prices.lambda_memory_mb_min <= lambda_memory_mb <= prices.lambda_memory_mb_max:
        raise PriceError(f"lambda_memory_mb must lie in [{prices.lambda_memory_mb_min:.0f}, "
                         f"{prices.lambda_memory_mb_max:.0f}], got {lambda_memory_mb}")
    gb_second = prices.lambda_gb_second(architecture)
    inst = prices.instance(instance)
    if n_instances is not None and n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    puts_per_task = _stored_variables() + 1 if puts_per_task is None else puts_per_task

    # Invocations: every cell-stage task, and every granule-stage task its granule's reporter recorded.
    attempts = [max(1, int(r.attempt)) for r in records]
    seconds = [float(r.seconds) for r in records]
    for r in records:
        for g in r.granule_reports:  # its read retries happen inside one invocation, in its seconds
            attempts.append(1)
            seconds.append(float(g.get("seconds", 0.0)))
    task_seconds = math.fsum(seconds)
    attempt_seconds = math.fsum(k * s for k, s in zip(attempts, seconds))
    observations = sum(int(r.observations) for r in records)

    # Lambda: measured on Lambda -> as billed; otherwise a what-if from one-core seconds.
    on_lambda = executor in LAMBDA_EXECUTORS
    cpu_scale = 1.0 if on_lambda else max(1.0, prices.lambda_mb_per_vcpu / lambda_memory_mb)
    billed_ms = sum(k * _ceil_ms(s * cpu_scale + lambda_init_seconds) for k, s in zip(attempts, seconds))
    invocations = sum(attempts)
    gb_seconds = billed_ms / 1000.0 * (lambda_memory_mb / 1024.0)
    lambda_duration = gb_seconds * gb_second
    lambda_requests = invocations * prices.lambda_requests_per_million / 1e6
    timeouts = sum(s * cpu_scale + lambda_init_seconds > prices.lambda_timeout_seconds for s in seconds)
    if timeouts:
        notes.append(f"{timeouts} task(s) would exceed the Lambda timeout of "
                     f"{prices.lambda_timeout_seconds:.0f} s: split them before running on Lambda")
    peak = max([int(r.peak_memory_bytes) for r in records]
               + [int(g.get("peak_memory_bytes", 0)) for r in records for g in r.granule_reports], default=0)
    if on_lambda and peak > lambda_memory_mb * 2**20:
        notes.append(f"peak task memory {peak / 2**20:,.0f} MiB is above the Lambda memory "
                     f"{lambda_memory_mb} MB")
    if cpu_scale > 1.0:
        notes.append(f"below {prices.lambda_mb_per_vcpu:.0f} MB a Lambda gets {1 / cpu_scale:.2f} vCPU: "
                     f"task-seconds scaled by {cpu_scale:.2f}")

    # EC2 / Coiled.
    vcpus = inst.vcpus
    if n_instances is not None and instance_wall_seconds is not None:
        hours = instance_wall_seconds * n_instances / 3600.0
        basis = f"{n_instances} x wall"
    else:
        hours = attempt_seconds / vcpus / 3600.0
        basis = f"task-seconds / {vcpus} vCPU"
    ec2 = hours * inst.hourly * (prices.spot_factor if spot else 1.0)
    fee = hours * vcpus * prices.coiled_fee_per_cpu_hour

    # S3 requests: the one-pass request model with the measured figures, applied to the ledger's own counts.
    requests = requests_of(_ledger_workload(records, int(puts_per_task), notes), figures)
    gets, puts = int(round(requests.gets)), int(round(requests.puts))
    s3 = gets * prices.s3_get_per_1000 / 1000.0 + puts * prices.s3_put_per_1000 / 1000.0

    if invocations > len(seconds):
        notes.append(f"{invocations - len(seconds)} retried attempt(s) billed as extra invocations of the "
                     "recorded duration")
    return CostReport(
        kind=kind, executor=executor, n_tasks=len(seconds), invocations=invocations,
        wall_seconds=wall_seconds, task_seconds=task_seconds, max_task_seconds=max(seconds, default=0.0),
        observations=observations, rows=sum(int(r.rows_in_cell) for r in records),
        granules_read=sum(int(r.granules_read) for r in records),
        observations_per_core_second=observations / task_seconds if task_seconds > 0 else 0.0,
        peak_memory_bytes=peak, architecture=architecture, lambda_memory_mb=int(lambda_memory_mb),
        lambda_cpu_scale=cpu_scale, lambda_gb_seconds=gb_seconds, lambda_duration_usd=lambda_duration,
        lambda_request_usd=lambda_requests, lambda_usd=lambda_duration + lambda_requests,
        instance=instance, spot=spot, instance_hours=hours, instance_hours_basis=basis, ec2_usd=ec2,
        coiled_fee_usd=fee, coiled_usd=ec2 + fee, s3_gets=gets, s3_puts=puts, s3_usd=s3, notes=tuple(notes),
        s3_get_bytes=int(round(requests.get_bytes)),
    )


def _ledger_workload(records: Sequence[TaskRecord], puts_per_task: int, notes: list[str]) -> Workload:
    """The workload a run's ledger records describe: each granule the granule stage reported with the rows
    it read; each cell task with its observations, the partition segments it read and the records it
    reported. Records of a run whose granule stage is not reported count each task's granules as read whole
    by that task (as before the one-pass design), with the per-granule figures only."""
    reports = [g for r in records for g in r.granule_reports]
    if reports:
        rows = np.array([float(g.get("rows", 0)) for g in reports], dtype=np.float64)
        # records made before they counted segments: one per granule read, an upper bound
        segments = [float(r.granules_read if r.segments is None else r.segments) for r in records]
    else:
        rows = np.zeros(sum(int(r.granules_read) for r in records), dtype=np.float64)
        segments = [0.0] * len(records)  # the tasks read the granules themselves, no partitions
        if rows.size:
            notes.append("the records do not report the granule stage: each task's granules are counted as "
                         "read by it, at the per-granule request figures")
    return Workload(
        granule_granules=np.ones(rows.size), granule_rows=rows,
        cell_observations=np.array([float(r.observations) for r in records], dtype=np.float64),
        cell_segments=np.array(segments, dtype=np.float64),
        cell_reported=np.array([float(len(r.granule_reports)) for r in records], dtype=np.float64),
        cell_rows=np.array([float(r.rows_in_cell) for r in records], dtype=np.float64),
        cell_listed=np.array([float(r.granules) for r in records], dtype=np.float64),
        puts_per_task=puts_per_task,
    )


def run_cost(
    records: Sequence[TaskRecord],
    prices: PriceTable | None = None,
    *,
    executor: str | None = None,
    lambda_memory_mb: int = 2048,
    architecture: str = "arm64",
    instance: str = "c7g.4xlarge",
    n_instances: int | None = None,
    wall_seconds: float | None = None,
    spot: bool = False,
    puts_per_task: int | None = None,
    lambda_init_seconds: float = 0.0,
    reader: str = "h5py",
    figures: OnePassFigures | None = None,
) -> CostReport:
    """The cost of a finished run from its ledger records alone (see the module docstring for the model).

    `executor` defaults to the one named in the records. `wall_seconds` is reported when given and, with
    `n_instances`, sets the instance-hours. `lambda_init_seconds` adds a billed INIT per invocation.
    S3 requests follow the measured figures of `reader` (`calibration.measured_figures`; the default is a
    recipe's default reader) unless `figures` are given.
    """
    records = list(records)
    executor = executor or _infer_executor(records)
    notes: list[str] = []
    if executor not in LAMBDA_EXECUTORS and records:
        notes.append(f"measured on '{executor}'; Lambda and Coiled figures are what-ifs from these "
                     "task-seconds")
    return _price(
        records, prices or load_prices(), kind="actual", executor=executor, lambda_memory_mb=lambda_memory_mb,
        architecture=architecture, instance=instance, n_instances=n_instances, wall_seconds=wall_seconds,
        instance_wall_seconds=wall_seconds, spot=spot, figures=figures or measured_figures(reader),
        puts_per_task=puts_per_task, lambda_init_seconds=lambda_init_seconds, notes=notes,
    )


def store_cost(store_url: str, prices: PriceTable | None = None, *, storage_options: dict | None = None,
               **kwargs: Any) -> CostReport:
    """`run_cost` of the records in a store's ledger (`<store>.ledger/`), with the reader of the recipe that
    made the store unless `reader` is given (run_cost's default when the store names none)."""
    records = read_records(store_url, storage_options)
    if not records:
        raise ValueError(f"no ledger records next to {store_url}")
    if "reader" not in kwargs and (reader := _store_reader(store_url, storage_options)) is not None:
        kwargs["reader"] = reader
    return run_cost(records, prices, **kwargs)


def _store_reader(store_url: str, storage_options: dict | None) -> str | None:
    """The reader named by the recipe a store records (`store.recipe_attrs`); None if it names none."""
    import json

    import zarr

    from .store import zarr_store

    try:
        attrs = zarr.open_group(zarr_store(store_url, storage_options), mode="r", zarr_format=3).attrs
        reader = json.loads(attrs["recipe"]).get("reader")
    except (FileNotFoundError, KeyError, ValueError, TypeError, OSError):
        return None
    return str(reader) if reader else None


# ----------------------------------------------------------------------------------------------------
# Before a run: the one-pass design priced from its own measured counts


def puts_per_task(plan: Any) -> int:
    """Objects one cell task writes, by the plan's schema: each variable's chunks at each order the task
    computes, and its ledger record (the count `run_cost` is given after a run)."""
    schema = plan.schema
    bins = plan.time.n - plan.stored_bins
    time_chunks = -(-bins // (plan.time_chunk or plan.time.n))
    return len(plan.task_orders) * (len(schema.per_bin) * time_chunks + len(schema.per_cell)) + 1


def _one_cycle_puts_per_task() -> int:
    """`puts_per_task` of a one-cycle plan (one time bin, no fit, the child order only)."""
    from .schema import OutputSchema

    schema = OutputSchema(1, False)
    return len(schema.per_bin) + len(schema.per_cell) + 1


@dataclass(frozen=True)
class Workload:
    """What a projection prices, task by task.

    Granule stage: per task, the granules it partitions and the rows it reads (all of each granule's rows).
    Cell stage: per task, its observations, the (granule, task) segments it reads, the partition records it
    reports, and its expected rows and listed granules (used only when a calibration replaces the measured
    CPU-seconds). `puts_per_task`: a cell task's chunk and record PUTs by the plan's schema."""

    granule_granules: np.ndarray
    granule_rows: np.ndarray
    cell_observations: np.ndarray
    cell_segments: np.ndarray
    cell_reported: np.ndarray
    cell_rows: np.ndarray
    cell_listed: np.ndarray
    puts_per_task: int


@dataclass(frozen=True)
class StageCost:
    """One stage of a projection: its tasks' CPU-seconds, waits and requests, and its wall clock."""

    stage: str
    tasks: int
    cpu_seconds: float  # on one core of the measuring machine
    wait_seconds: float  # S3 request latency: requests x latency / the stage's request concurrency
    transfer_seconds: float  # bytes / per-worker throughput
    seconds: float  # on a full vCPU: cpu / vcpu_speed + waits + transfer
    lambda_seconds: float  # on a Lambda of the report's memory: the CPU part x cpu_scale
    max_task_seconds: float  # on Lambda
    gets: float
    puts: float
    get_bytes: float
    workers: int
    wall_seconds: float  # max(slowest task, lambda_seconds / workers)


@dataclass(frozen=True)
class Requests:
    """S3 requests and GET bytes of a workload by the measured figures: per granule-stage task, per cell
    task, and the client's own."""

    granule_gets: np.ndarray
    granule_puts: np.ndarray
    granule_bytes: np.ndarray
    cell_gets: np.ndarray
    cell_puts: np.ndarray
    cell_bytes: np.ndarray
    client_gets: float
    client_puts: float

    @property
    def gets(self) -> float:
        return math.fsum(self.granule_gets.tolist()) + math.fsum(self.cell_gets.tolist()) + self.client_gets

    @property
    def puts(self) -> float:
        return math.fsum(self.granule_puts.tolist()) + math.fsum(self.cell_puts.tolist()) + self.client_puts

    @property
    def get_bytes(self) -> float:
        return math.fsum(self.granule_bytes.tolist()) + math.fsum(self.cell_bytes.tolist())


def requests_of(work: Workload, figures: OnePassFigures) -> Requests:
    """The request model of the one-pass design (docs/cost.md), shared by projections and finished runs.

    Granule stage, per task of n granules and R rows: GET-class n x (GETs + HEADs + other GET-class per
    granule) + R x GETs per row, PUT-class n x per granule, bytes n x per granule + R x per row. Cell stage,
    per task: a ranged GET per segment, the GET-class requests of each partition record it reports, its
    chunk and record PUTs (`work.puts_per_task`), bytes per observation. Client: its requests per run and
    its ledger read-back per cell task."""
    g, c, k = figures.granule, figures.cell, figures.client
    n, rows = work.granule_granules.astype(np.float64), work.granule_rows.astype(np.float64)
    obs, seg = work.cell_observations.astype(np.float64), work.cell_segments.astype(np.float64)
    n_tasks = int(obs.size)
    return Requests(
        granule_gets=n * (g.gets_per_granule + g.heads_per_granule + g.other_get_class_per_granule)
        + rows * g.gets_per_row,
        granule_puts=n * g.put_class_per_granule,
        granule_bytes=n * g.get_bytes_per_granule + rows * g.get_bytes_per_row,
        cell_gets=seg * c.segment_gets_per_segment + work.cell_reported.astype(np.float64)
        * c.record_get_class_per_granule + c.other_get_class_per_task,
        cell_puts=np.full(n_tasks, float(work.puts_per_task) + c.other_put_class_per_task),
        cell_bytes=obs * c.segment_bytes_per_observation,
        client_gets=k.get_class_per_run + k.get_class_per_task * n_tasks,
        client_puts=k.put_class_per_run + k.put_class_per_task * n_tasks,
    )


@dataclass(frozen=True)
class ReferenceRow:
    """A published run of the field, recomputed with the price table: for comparison, never projected."""

    label: str
    observations: float
    lambda_seconds: float
    lambda_memory_mb: int
    architecture: str
    lambda_gb_seconds: float
    usd_price_table: float  # lambda_gb_seconds x the table's price (requests not included)
    usd_published: float | None
    usd_per_billion_observations: float
    usd_per_billion_published: tuple[float, float] | None
    wall_seconds: float | None
    max_concurrency: int | None
    source: str

    def line(self) -> str:
        parts = [f"{self.observations:,.3g} observations", f"{self.lambda_seconds:,.0f} Lambda-s at "
                 f"{self.lambda_memory_mb} MB {self.architecture} = {self.lambda_gb_seconds:,.0f} GB-s",
                 f"{_usd(self.usd_price_table)} at the table's price"
                 + (f" (published {_usd(self.usd_published)})" if self.usd_published is not None else ""),
                 f"{_usd(self.usd_per_billion_observations)} per 10^9 obs"
                 + (f" (published ${self.usd_per_billion_published[0]:g}-{self.usd_per_billion_published[1]:g})"
                    if self.usd_per_billion_published else "")]
        if self.wall_seconds is not None:
            parts.append(f"wall {_secs(self.wall_seconds)}"
                         + (f" with up to {self.max_concurrency:,} workers" if self.max_concurrency else ""))
        return f"{self.label}: " + "; ".join(parts)


def published_reference(prices: PriceTable | None = None) -> tuple[ReferenceRow, ...]:
    """The field's published runs (prices.yaml, section `published`), each recomputed with the price table.
    They are reference rows beside a projection; no projection reads them."""
    prices = prices or load_prices()
    out = []
    for item in shipped_section("published") or ():
        memory = int(item["lambda_memory_mb"])
        architecture = str(item.get("architecture", "arm64"))
        gb_s = float(item["lambda_seconds"]) * memory / 1024.0
        usd = gb_s * prices.lambda_gb_second(architecture)
        obs = float(item["observations"])
        band = item.get("usd_per_billion_observations")
        out.append(ReferenceRow(
            label=str(item["label"]), observations=obs, lambda_seconds=float(item["lambda_seconds"]),
            lambda_memory_mb=memory, architecture=architecture, lambda_gb_seconds=gb_s, usd_price_table=usd,
            usd_published=float(item["usd"]) if item.get("usd") is not None else None,
            usd_per_billion_observations=usd / obs * 1e9,
            usd_per_billion_published=(float(band[0]), float(band[1])) if band else None,
            wall_seconds=float(item["wall_seconds"]) if item.get("wall_seconds") is not None else None,
            max_concurrency=int(item["max_concurrency"]) if item.get("max_concurrency") else None,
            source=" ".join(str(item.get("source", "")).split()),
        ))
    return tuple(out)


def _ceil_ms_array(seconds: np.ndarray) -> np.ndarray:
    return np.ceil(np.round(seconds * 1000.0, 6))


def _stage(name: str, cpu: np.ndarray, gets: np.ndarray, puts: np.ndarray, get_bytes: np.ndarray,
           concurrency: float, prices: PriceTable, cpu_scale: float, workers: int
           ) -> tuple[StageCost, np.ndarray, np.ndarray]:
    """A stage's cost, and its tasks' seconds on a full vCPU and on the report's Lambda."""
    latency, speed = prices.s3_request_latency_seconds, prices.vcpu_speed
    wait = (gets + puts) * latency / concurrency
    transfer = get_bytes / (prices.s3_worker_mb_per_second * 1e6)
    full = cpu / speed + wait + transfer
    on_lambda = cpu * cpu_scale / speed + wait + transfer
    total_lambda = math.fsum(on_lambda.tolist())
    slowest = float(on_lambda.max()) if on_lambda.size else 0.0
    wall = max(slowest, total_lambda / workers) if on_lambda.size else 0.0
    return StageCost(
        stage=name, tasks=int(cpu.size), cpu_seconds=math.fsum(cpu.tolist()), wait_seconds=math.fsum(wait.tolist()),
        transfer_seconds=math.fsum(transfer.tolist()), seconds=math.fsum(full.tolist()), lambda_seconds=total_lambda,
        max_task_seconds=slowest, gets=math.fsum(gets.tolist()), puts=math.fsum(puts.tolist()),
        get_bytes=math.fsum(get_bytes.tolist()), workers=workers, wall_seconds=wall,
    ), full, on_lambda


def _project(
    work: Workload, figures: OnePassFigures, prices: PriceTable, *, kind: str, executor: str | None,
    calibration: Calibration | None, lambda_memory_mb: int, architecture: str, instance: str,
    n_instances: int | None, concurrency: int | None, spot: bool, peak_memory_bytes: int, notes: list[str],
    scale_note: str,
) -> CostReport:
    """The bill of a workload of the one-pass design (see `project_full_cycle` for the model)."""
    if not prices.lambda_memory_mb_min <= lambda_memory_mb <= prices.lambda_memory_mb_max:
        raise PriceError(f"lambda_memory_mb must lie in [{prices.lambda_memory_mb_min:.0f}, "
                         f"{prices.lambda_memory_mb_max:.0f}], got {lambda_memory_mb}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if n_instances is not None and n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    gb_second = prices.lambda_gb_second(architecture)
    inst = prices.instance(instance)
    cpu_scale = max(1.0, prices.lambda_mb_per_vcpu / lambda_memory_mb)
    g, c = figures.granule, figures.cell
    n_g_tasks, n_c_tasks = int(work.granule_rows.size), int(work.cell_observations.size)
    req = requests_of(work, figures)

    # Granule stage: per task of n granules and R rows, each figure is n x (per granule) + R x (per row).
    n, rows = work.granule_granules.astype(np.float64), work.granule_rows.astype(np.float64)
    g_cpu = n * g.cpu_seconds_per_granule + rows * g.cpu_seconds_per_row
    # Cell stage.
    obs, seg = work.cell_observations.astype(np.float64), work.cell_segments.astype(np.float64)
    if calibration is not None:  # its task seconds already hold the granule stage it was fitted with
        granules = work.cell_reported if calibration.granules == "reported" else work.cell_listed
        c_cpu = np.maximum(calibration.predict(work.cell_rows, granules), 0.0)
        g_cpu = np.zeros_like(g_cpu)
        notes.append(f"CPU-seconds from calibration '{calibration.name}' ({calibration.seconds_per_row:.3g} s/row, "
                     f"{calibration.seconds_per_granule:.3g} s/granule {calibration.granules}, "
                     f"{calibration.seconds_per_task:.3g} s/task, granule stage included, charged to the cell "
                     "tasks) instead of the measured ones")
    else:
        c_cpu = c.cpu_seconds(obs, seg)

    limit = int(prices.lambda_concurrency) if concurrency is None else int(concurrency)
    workers_of = (lambda tasks: max(1, min(limit, tasks)))
    g_stage, g_full, g_lambda = _stage("granule stage", g_cpu, req.granule_gets, req.granule_puts,
                                       req.granule_bytes, g.request_concurrency, prices, cpu_scale,
                                       workers_of(n_g_tasks))
    c_stage, c_full, c_lambda = _stage("cell stage", c_cpu, req.cell_gets, req.cell_puts, req.cell_bytes,
                                       c.request_concurrency, prices, cpu_scale, workers_of(n_c_tasks))
    seconds_lambda = np.concatenate([g_lambda, c_lambda])
    seconds_full = np.concatenate([g_full, c_full])

    # Lambda: every task one invocation billed ceil-to-1-ms; one INIT per concurrent function (cold start).
    invocations = n_g_tasks + n_c_tasks
    init = figures.cold_start_cpu_seconds * cpu_scale / prices.vcpu_speed
    cold = min(invocations, max(g_stage.workers, c_stage.workers)) if invocations else 0
    billed_ms = float(_ceil_ms_array(seconds_lambda).sum()) + cold * float(_ceil_ms_array(np.array([init]))[0])
    gb_seconds = billed_ms / 1000.0 * (lambda_memory_mb / 1024.0)
    lambda_duration = gb_seconds * gb_second
    lambda_requests = invocations * prices.lambda_requests_per_million / 1e6
    wall_lambda = (init if invocations else 0.0) + g_stage.wall_seconds + c_stage.wall_seconds
    timeouts = int((seconds_lambda > prices.lambda_timeout_seconds).sum())
    if timeouts:
        notes.append(f"{timeouts} task(s) would exceed the Lambda timeout of {prices.lambda_timeout_seconds:.0f} s: "
                     "split them before running on Lambda")
    if peak_memory_bytes > lambda_memory_mb * 2**20:
        notes.append(f"projected task memory {peak_memory_bytes / 2**20:,.0f} MiB is above the Lambda memory "
                     f"{lambda_memory_mb} MB")

    # EC2 / Coiled: the same tasks on full vCPUs, waits included (a worker waiting on S3 holds its vCPU).
    total_full = math.fsum(seconds_full.tolist())
    wall = wall_lambda
    if n_instances is not None:
        slots = n_instances * inst.vcpus
        wall = sum(max(float(s.max()) if s.size else 0.0, math.fsum(s.tolist()) / slots) for s in (g_full, c_full))
        hours = wall * n_instances / 3600.0
        basis = f"{n_instances} x wall"
    else:
        hours = total_full / inst.vcpus / 3600.0
        basis = f"task-seconds / {inst.vcpus} vCPU"
    ec2 = hours * inst.hourly * (prices.spot_factor if spot else 1.0)
    fee = hours * inst.vcpus * prices.coiled_fee_per_cpu_hour

    # S3 requests: both stages and the client (its fixed requests once, its ledger read-back per task).
    gets, puts = req.gets, req.puts
    s3 = gets * prices.s3_get_per_1000 / 1000.0 + puts * prices.s3_put_per_1000 / 1000.0

    stages = (g_stage, c_stage)
    assumptions = _assumptions(figures, prices, lambda_memory_mb, architecture, cpu_scale, limit, concurrency,
                               init, cold, scale_note)
    observations = int(round(float(obs.sum())))
    return CostReport(
        kind=kind, executor=executor, n_tasks=invocations, invocations=invocations, wall_seconds=wall,
        task_seconds=total_full, max_task_seconds=float(seconds_full.max()) if seconds_full.size else 0.0,
        observations=observations, rows=int(round(float(rows.sum()))),
        granules_read=int(round(float(n.sum()))),
        observations_per_core_second=observations / total_full if total_full > 0 else 0.0,
        peak_memory_bytes=int(peak_memory_bytes), architecture=architecture, lambda_memory_mb=int(lambda_memory_mb),
        lambda_cpu_scale=cpu_scale, lambda_gb_seconds=gb_seconds, lambda_duration_usd=lambda_duration,
        lambda_request_usd=lambda_requests, lambda_usd=lambda_duration + lambda_requests,
        instance=instance, spot=spot, instance_hours=hours, instance_hours_basis=basis, ec2_usd=ec2,
        coiled_fee_usd=fee, coiled_usd=ec2 + fee, s3_gets=int(round(gets)), s3_puts=int(round(puts)), s3_usd=s3,
        notes=tuple(notes), s3_get_bytes=int(round(req.get_bytes)),
        stages=tuple(asdict(st) for st in stages), assumptions=assumptions,
        reference=tuple(asdict(r) for r in published_reference(prices)),
        lambda_cold_starts=cold, lambda_wall_seconds=wall_lambda,
    )


def _assumptions(figures: OnePassFigures, prices: PriceTable, memory_mb: int, architecture: str, cpu_scale: float,
                 limit: int, concurrency: int | None, init: float, cold: int, scale_note: str
                 ) -> tuple[tuple[str, str], ...]:
    """(name, value and where it comes from) of everything a projection assumes, in print order."""
    g, c = figures.granule, figures.cell
    return (
        ("S3 request latency", f"{prices.s3_request_latency_seconds * 1000:g} ms per request (GET, HEAD, PUT, LIST) "
                               "in the same region; assumed, not measured (the local S3 server of the measurements "
                               "answers in a few ms)"),
        ("request concurrency", f"granule stage {g.request_concurrency:.2f}, cell stage {c.request_concurrency:.2f} "
                                f"requests in flight per worker (measured with {figures.latency_ms:g} ms injected)"),
        ("S3 throughput", f"{prices.s3_worker_mb_per_second:g} MB/s per worker (assumed)"),
        ("Lambda", f"{memory_mb} MB {architecture}: {1 / cpu_scale:.2f} vCPU, CPU-seconds x {cpu_scale:.2f} "
                   f"(a full vCPU at {prices.lambda_mb_per_vcpu:.0f} MB; a task uses one core)"),
        ("concurrency", f"at most {limit:,} functions at once"
                        + (" (given)" if concurrency is not None else
                           " (Lambda's default quota per region)") + "; each stage waits for the one before"),
        ("vCPU speed", f"{prices.vcpu_speed:g} x one core of the machine that measured the CPU-seconds "
                       f"({figures.machine.split(',')[0] or '?'}); assumed"),
        ("cold starts", f"{cold:,} INITs (one per concurrent function) of {init:.2f} s (measured import CPU "
                        f"{figures.cold_start_cpu_seconds:.2f} s x {cpu_scale:.2f})"),
        ("granule stage", f"{prices.granules_per_lambda_task:g} granule(s) per task on Lambda"
                          if scale_note.startswith("full cycle") else "the plan's granule-stage tasks"),
        ("measured figures", f"reader {figures.reader}, {figures.date or '?'}, commit {figures.commit[:7] or '?'} "
                             "(polaragg/data/onepass_measured.json; benchmarks/results/cost.md)"),
        ("scale", scale_note),
    )


def _granule_rows_of(plan: Any, catalog: Any | None) -> tuple[np.ndarray, str]:
    """Rows each planned granule holds: the catalog's expected rows (whole granules: the granule stage
    reads every row), else the plan's expected rows spread evenly over its granules (rows outside the
    AOI missed)."""
    granules = list(getattr(plan, "granules", ()))
    if catalog is not None:
        table = catalog.granules
        known = dict(zip(table.granule_id.astype(str), table.expected_rows.fillna(0).astype(float)))
        return np.array([known.get(str(ref.granule_id), 0.0) for ref in granules], dtype=np.float64), \
            "granule rows from the catalog (whole granules)"
    tasks = list(getattr(plan, "tasks", ()))
    total = math.fsum(float(t.expected_rows) for t in tasks)
    each = total / len(granules) if granules else 0.0
    return np.full(len(granules), each), ("granule rows: the plan's expected rows spread over its granules "
                                          "(no catalog given: rows outside the AOI not counted)")


def estimate(
    plan: Any,
    figures: OnePassFigures | None = None,
    prices: PriceTable | None = None,
    *,
    calibration: Calibration | None = None,
    catalog: Any | None = None,
    executor: str | None = None,
    reader: str | None = None,
    observations_per_row: float | None = None,
    lambda_memory_mb: int = 2048,
    architecture: str = "arm64",
    instance: str = "c7g.4xlarge",
    n_instances: int | None = None,
    concurrency: int | None = None,
    spot: bool = False,
    puts: int | None = None,
    kind: str = "estimate",
) -> CostReport:
    """Projected bill of a plan before running it, from the measured figures of the one-pass design.

    `plan`: a `Plan` (or anything with its `tasks` and `granules`). Its granule stage is its granules in
    blocks of `plan.granules_per_task`, each granule's rows from `catalog` (else the plan's expected rows
    spread evenly); its cell tasks are its tasks: observations = expected rows x `observations_per_row`
    (default: the shipped calibration's, as `polaragg plan` prints them), segments = listed granules x the
    measured share of (cell, granule) pairs with rows, partition records = the granules it reports. A cell
    task's PUTs come from the plan's schema (`puts_per_task(plan)`) unless `puts` is given. `figures`
    default to the plan reader's (`measured_figures`). A `calibration` replaces the measured CPU-seconds.
    See `project_full_cycle` for the model.
    """
    prices = prices or load_prices()
    reader = reader or str(getattr(plan, "reader", "h5coro"))
    figures = figures or measured_figures(reader)
    per_row = default_calibration().observations_per_row if observations_per_row is None else observations_per_row
    tasks = list(getattr(plan, "tasks", ()))
    g_rows, rows_note = _granule_rows_of(plan, catalog)
    k = max(1, int(getattr(plan, "granules_per_task", 1) or 1))
    blocks = [(min(k, len(g_rows) - i), float(g_rows[i:i + k].sum())) for i in range(0, len(g_rows), k)]
    expected = np.array([float(t.expected_rows) for t in tasks], dtype=np.float64)
    listed = np.array([float(len(t.granules)) for t in tasks], dtype=np.float64)
    reported = np.array([float(len(getattr(t, "reports", ()) or ())) for t in tasks], dtype=np.float64)
    if puts is not None:
        puts_note = "given"
    elif hasattr(plan, "schema"):
        puts, puts_note = puts_per_task(plan), "from its schema"
    else:
        puts = int(round(figures.cell.chunk_puts_per_task + figures.cell.task_record_puts_per_task))
        puts_note = "as measured (the plan has no schema)"
    work = Workload(
        granule_granules=np.array([b[0] for b in blocks], dtype=np.float64),
        granule_rows=np.array([b[1] for b in blocks], dtype=np.float64),
        # whole observations per task, as `polaragg plan` prints them (describe_plan)
        cell_observations=np.array([round(r * per_row) for r in expected.tolist()], dtype=np.float64),
        cell_segments=listed * figures.cell.segments_per_planned_pair,
        cell_reported=reported, cell_rows=expected, cell_listed=listed, puts_per_task=int(puts),
    )
    peak = max([int(getattr(t, "projected_bytes", 0) or 0) for t in tasks]
               + [int(b) for b in getattr(plan, "granule_projected_bytes", ())], default=0)
    scale = (f"this plan: {len(g_rows):,} granules in {len(blocks):,} granule-stage task(s) of up to {k}, "
             f"{len(tasks):,} cell tasks ({expected.sum():,.0f} expected rows x {per_row:.3f} observations "
             f"per row), {puts} PUTs per cell task ({puts_note}); {rows_note}")
    return _project(work, figures, prices, kind=kind, executor=executor, calibration=calibration,
                    lambda_memory_mb=lambda_memory_mb, architecture=architecture, instance=instance,
                    n_instances=n_instances, concurrency=concurrency, spot=spot, peak_memory_bytes=peak,
                    notes=[], scale_note=scale)


@dataclass(frozen=True)
class CycleScale:
    """Size of one ATL06 cycle over Antarctica (defaults from `prices.yaml`, section antarctic_cycle)."""

    observations: float
    rows: float
    granules: int
    parent_cells_with_data: int
    densest_cell_observations: float
    pairs_per_granule: float
    densest_cell_granules: int
    largest_granule_rows: float = 0.0
    source: str = ""

    @classmethod
    def shipped(cls, **overrides: Any) -> "CycleScale":
        section = dict(shipped_section("antarctic_cycle"))
        merged = {**section, **overrides}
        for f in fields(cls):
            if f.name in merged and f.name != "source":
                merged[f.name] = float(merged[f.name]) if f.type == "float" else int(merged[f.name])
        return cls(**merged)

    def tasks(self) -> list[tuple[float, float]]:
        """(rows, granules) per cell task: the densest cell, and the rest of the cycle spread evenly."""
        per_row = self.observations / self.rows
        n = int(self.parent_cells_with_data)
        dense_rows = self.densest_cell_observations / per_row
        pairs = self.granules * self.pairs_per_granule
        rest_rows = (self.rows - dense_rows) / (n - 1)
        rest_granules = (pairs - self.densest_cell_granules) / (n - 1)
        return [(dense_rows, float(self.densest_cell_granules))] + [(rest_rows, rest_granules)] * (n - 1)

    def granule_tasks(self, per_task: int = 1) -> list[tuple[float, float]]:
        """(granules, rows read) per granule-stage task of `per_task` granules: the largest granule (if
        known) in the first task, the rest of the rows spread evenly over the other granules."""
        n = int(self.granules)
        largest = min(float(self.largest_granule_rows), float(self.rows)) or self.rows / n
        rest = (self.rows - largest) / (n - 1) if n > 1 else 0.0
        out = []
        for first in range(0, n, per_task):
            count = min(per_task, n - first)
            out.append((float(count), (largest + rest * (count - 1)) if first == 0 else rest * count))
        return out


def project_full_cycle(
    calibration: Calibration | None = None,
    prices: PriceTable | None = None,
    *,
    figures: OnePassFigures | None = None,
    reader: str = "h5coro",
    scale: CycleScale | None = None,
    lambda_memory_mb: int = 2048,
    architecture: str = "arm64",
    instance: str = "c7g.4xlarge",
    n_instances: int | None = None,
    concurrency: int | None = None,
    spot: bool = False,
    puts: int | None = None,
) -> CostReport:
    """Projected Lambda, EC2/Coiled and S3 bill of one full ATL06 cycle over Antarctica with the one-pass
    design, from its own measured counts (`measured_figures(reader)`; benchmarks/results/cost.md).

    Workload (`CycleScale`, prices.yaml `antarctic_cycle`): ~4,100 granules, 1.52e9 rows read, in granule-stage
    tasks of `granules_per_lambda_task` granules (the largest granule, 720,000 rows, in the first); one cell
    task per parent cell with data (~1,330), the densest (3e6 observations, 381 granules) on its own, the rest
    spread evenly; segments = listed granules x the measured share of pairs with rows; each granule's
    partition record reported once; a cell task's PUTs from a one-cycle plan's schema unless `puts` is given.

    Per task, from the measured figures: CPU-seconds (granule: a + b x rows; cell: a + b x observations +
    c x segments), GET-class and PUT-class requests and GET bytes. Its seconds on a full vCPU are
    CPU / vcpu_speed + (GETs + PUTs) x s3_request_latency_seconds / the stage's measured request concurrency
    + bytes / s3_worker_mb_per_second; on a Lambda below 1,769 MB the CPU part is scaled by 1769 / MB.
    Lambda: one invocation per task, each billed ceil-to-1-ms x GB, plus one INIT (the measured cold-start
    CPU, scaled) per concurrent function; requests at the per-million price. Wall: the INIT plus, per stage,
    max(slowest task, stage seconds / workers), workers = min(concurrency or lambda_concurrency, tasks).
    EC2/Coiled: the full-vCPU task-seconds packed on the instance's vCPUs (or `n_instances` x that wall).
    S3: both stages' requests and the client's (fixed per run, plus its ledger read-back per task).

    A `calibration` replaces the measured CPU-seconds by its task seconds (cell tasks, granule stage
    included). The field's published runs are in the report's `reference` rows, never in the projection.
    """
    if calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration, got {type(calibration).__name__} (prices= is a keyword)")
    prices = prices or load_prices()
    figures = figures or measured_figures(reader)
    scale = scale or CycleScale.shipped()
    per_row = scale.observations / scale.rows
    cells = scale.tasks()
    granule_tasks = scale.granule_tasks(int(prices.granules_per_lambda_task))
    rows = np.array([r for r, _ in cells], dtype=np.float64)
    listed = np.array([g for _, g in cells], dtype=np.float64)
    puts = _one_cycle_puts_per_task() if puts is None else int(puts)
    work = Workload(
        granule_granules=np.array([n for n, _ in granule_tasks], dtype=np.float64),
        granule_rows=np.array([r for _, r in granule_tasks], dtype=np.float64),
        cell_observations=rows * per_row, cell_segments=listed * figures.cell.segments_per_planned_pair,
        cell_reported=np.full(rows.size, scale.granules / rows.size), cell_rows=rows, cell_listed=listed,
        puts_per_task=puts,
    )
    note = (f"full cycle: {scale.granules:,} granules ({scale.rows:,.3g} rows, largest "
            f"{scale.largest_granule_rows:,.0f}), {scale.parent_cells_with_data:,} cell tasks ({scale.observations:,.3g} "
            f"observations; densest {scale.densest_cell_observations:,.3g} obs / {scale.densest_cell_granules} "
            f"granules), {scale.pairs_per_granule:g} (cell, granule) pairs per granule x "
            f"{figures.cell.segments_per_planned_pair:.2f} with rows, {puts} PUTs per cell task (one-cycle schema); "
            "prices.yaml antarctic_cycle")
    return _project(work, figures, prices, kind="projection", executor=None, calibration=calibration,
                    lambda_memory_mb=lambda_memory_mb, architecture=architecture, instance=instance,
                    n_instances=n_instances, concurrency=concurrency, spot=spot, peak_memory_bytes=0, notes=[],
                    scale_note=note)
