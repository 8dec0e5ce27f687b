"""What a run costs: a finished run priced from its ledger, and a plan or a full cycle estimated before one.

- `run_cost(records, prices, executor=...)` prices a run from its ledger records alone
  (`ledger.read_records`), so the figures can be recomputed on any machine, for any executor, long after
  the run.
- `estimate(plan_tasks, calibration, prices)` projects task-seconds and the Lambda / Coiled bill of a plan;
  `project_full_cycle(calibration, prices)` does it for one full ATL06 cycle over Antarctica.
- `format_cost(report)` is the cost block printed after a run.

Prices come from `prices.load_prices`, task seconds before a run from `calibration`.

Every report carries the Lambda, EC2/Coiled and S3-request figures side by side ("what would this have cost
there"), and `total_usd` picks the one billed for the executor actually used (None for local executors).

Model, per task (one ledger record):

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
- S3 requests: GETs = granules read x `s3_gets_per_granule` (each granule once when the records report
  the granule stage, else once per task that read it); PUTs = tasks x (stored variables + 1 ledger
  record) + one partition per granule. Transfer inside the region is free.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .calibration import Calibration, default_calibration
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
        width = max(len(k) for k, _ in rows)
        lines = [f"### {title}", "", f"| {'item':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
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
    gets_per_granule: float | None, puts_per_task: int | None, lambda_init_seconds: float,
    notes: list[str],
) -> CostReport:
    if not prices.lambda_memory_mb_min <= lambda_memory_mb <= prices.lambda_memory_mb_max:
        raise PriceError(f"lambda_memory_mb must lie in [{prices.lambda_memory_mb_min:.0f}, "
                         f"{prices.lambda_memory_mb_max:.0f}], got {lambda_memory_mb}")
    gb_second = prices.lambda_gb_second(architecture)
    inst = prices.instance(instance)
    if n_instances is not None and n_instances < 1:
        raise ValueError(f"n_instances must be >= 1, got {n_instances}")
    gets_per_granule = prices.s3_gets_per_granule if gets_per_granule is None else gets_per_granule
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

    # S3 requests.
    # A granule is read once by the granule stage when the records report it, else once per task reading it.
    reported = sum(len(r.granule_reports) for r in records)
    gets = int(round((reported or sum(int(r.granules_read) for r in records)) * gets_per_granule))
    puts = len(records) * int(puts_per_task) + reported
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
    gets_per_granule: float | None = None,
    puts_per_task: int | None = None,
    lambda_init_seconds: float = 0.0,
) -> CostReport:
    """The cost of a finished run from its ledger records alone (see the module docstring for the model).

    `executor` defaults to the one named in the records. `wall_seconds` is reported when given and, with
    `n_instances`, sets the instance-hours. `lambda_init_seconds` adds a billed INIT per invocation.
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
        instance_wall_seconds=wall_seconds, spot=spot, gets_per_granule=gets_per_granule,
        puts_per_task=puts_per_task, lambda_init_seconds=lambda_init_seconds, notes=notes,
    )


def store_cost(store_url: str, prices: PriceTable | None = None, *, storage_options: dict | None = None,
               **kwargs: Any) -> CostReport:
    """`run_cost` of the records in a store's ledger (`<store>.ledger/`)."""
    records = read_records(store_url, storage_options)
    if not records:
        raise ValueError(f"no ledger records next to {store_url}")
    return run_cost(records, prices, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Before a run


def _task_sizes(plan_tasks: Any) -> tuple[np.ndarray, np.ndarray]:
    """(expected rows, granules) of each task from a Plan, Task objects or (rows, n_granules) pairs."""
    items = getattr(plan_tasks, "tasks", plan_tasks)
    rows, granules = [], []
    for item in items:
        if hasattr(item, "expected_rows"):
            rows.append(float(item.expected_rows))
            # A plan's task reads, in the granule stage, the granules it reports (each granule once).
            g = item.reports if hasattr(item, "reports") else item.granules
            granules.append(float(len(g) if not isinstance(g, (int, float)) else g))
        else:
            r, g = item
            rows.append(float(r))
            granules.append(float(g))
    return np.asarray(rows, dtype=np.float64), np.asarray(granules, dtype=np.float64)


def estimate(
    plan_tasks: Any,
    calibration: Calibration | None = None,
    prices: PriceTable | None = None,
    *,
    executor: str | None = None,
    lambda_memory_mb: int = 2048,
    architecture: str = "arm64",
    instance: str = "c7g.4xlarge",
    n_instances: int | None = None,
    concurrency: int | None = None,
    spot: bool = False,
    gets_per_granule: float | None = None,
    puts_per_task: int | None = None,
    lambda_init_seconds: float = 0.0,
    kind: str = "estimate",
) -> CostReport:
    """Projected task-seconds and bills of a plan before running it.

    `plan_tasks` is a `Plan`, its `Task`s, or (expected_rows, n_granules) pairs. Each task's seconds come from
    `calibration` (default: the shipped one). The wall clock is reported as the lower bound
    max(slowest task, task-seconds / workers), workers = `concurrency` (e.g. Lambda fan-out) or
    `n_instances` x vCPUs; with `n_instances` the instance-hours are that wall x n_instances.
    """
    calibration = calibration or default_calibration()
    prices = prices or load_prices()
    rows, granules = _task_sizes(plan_tasks)
    seconds = np.maximum(calibration.predict(rows, granules), 0.0) if rows.size else np.empty(0)
    records = [
        TaskRecord(parent=i, child_lo=0, child_hi=0, status="planned",
                   observations=int(round(r * calibration.observations_per_row)), rows_in_cell=int(round(r)),
                   granules=int(g), granules_read=int(g), seconds=float(s), executor=executor or "")
        for i, (r, g, s) in enumerate(zip(rows, granules, seconds))
    ]
    total = math.fsum(seconds.tolist())
    slowest = float(seconds.max()) if seconds.size else 0.0
    wall = max(slowest, total / concurrency) if concurrency else None
    instance_wall = None
    if n_instances is not None:
        instance_wall = max(slowest, total / (n_instances * prices.instance(instance).vcpus))
        if wall is None:
            wall = instance_wall
    notes = [f"task seconds from calibration '{calibration.name}'"
             f" ({calibration.seconds_per_row:.3g} s/row, {calibration.seconds_per_granule:.3g} s/granule, "
             f"{calibration.seconds_per_task:.3g} s/task)"]
    if wall is not None:
        notes.append("wall clock is a lower bound: max(slowest task, task-seconds / workers)")
    return _price(
        records, prices, kind=kind, executor=executor, lambda_memory_mb=lambda_memory_mb,
        architecture=architecture, instance=instance, n_instances=n_instances, wall_seconds=wall,
        instance_wall_seconds=instance_wall, spot=spot, gets_per_granule=gets_per_granule,
        puts_per_task=puts_per_task, lambda_init_seconds=lambda_init_seconds, notes=notes,
    )


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
        """(rows, granules) per task: the densest cell, and the rest of the cycle spread evenly."""
        per_row = self.observations / self.rows
        n = int(self.parent_cells_with_data)
        dense_rows = self.densest_cell_observations / per_row
        pairs = self.granules * self.pairs_per_granule
        rest_rows = (self.rows - dense_rows) / (n - 1)
        rest_granules = (pairs - self.densest_cell_granules) / (n - 1)
        return [(dense_rows, float(self.densest_cell_granules))] + [(rest_rows, rest_granules)] * (n - 1)


def project_full_cycle(
    calibration: Calibration | None = None,
    prices: PriceTable | None = None,
    *,
    scale: CycleScale | None = None,
    lambda_memory_mb: int = 2048,
    architecture: str = "arm64",
    instance: str = "c7g.4xlarge",
    n_instances: int | None = None,
    concurrency: int | None = None,
    spot: bool = False,
) -> CostReport:
    """Projected Lambda and Coiled bill of one full ATL06 cycle over Antarctica (~1.37e9 observations).

    One task per parent cell with data (~1,330), the densest cell (~3e6 observations, ~381 granules) as its
    own task, the rest spread evenly (task seconds are linear, so only the slowest one depends on the spread).
    The wall clock is for a Lambda fan-out of one worker per task unless `concurrency` / `n_instances` say
    otherwise; the Coiled figure packs task-seconds onto the instance vCPUs unless `n_instances` is given.
    """
    calibration = calibration or default_calibration()
    scale = scale or CycleScale.shipped()
    calibration = replace(calibration, observations_per_row=scale.observations / scale.rows)
    tasks = scale.tasks()
    if concurrency is None and n_instances is None:
        concurrency = len(tasks)
    return estimate(
        tasks, calibration, prices, lambda_memory_mb=lambda_memory_mb, architecture=architecture,
        instance=instance, n_instances=n_instances, concurrency=concurrency, spot=spot, kind="projection",
    )
