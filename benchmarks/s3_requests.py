"""S3 requests, bytes and CPU-seconds of the one-pass design, per granule and per cell task, for the cost model.

    .venv/bin/python benchmarks/s3_requests.py [--readers h5coro,h5py] [--latency-ms 30] [--quick]
                                            [--out benchmarks/results] [--install] [--working-tree]

A moto S3 server on 127.0.0.1 holds synthetic ATL06 granules (s3://granules/<name>.h5) and receives the run's
store, ledger and partitions (s3://out/<run>.zarr*). Every client talks to it through a logging proxy (this
script's `--serve-proxy`, built on benchmarks/s3.py's counting proxy) that records each request: method, path and
query, status, response body bytes, and when it arrived and was answered; it waits `--latency-ms` before
forwarding each request, so requests that a reader issues concurrently overlap in the log. moto's own request log
is kept as an independent count of the same requests.

Workloads, each run with `polaragg.run(..., executor="single-threaded")` (one task at a time in this process, so a
ledger record's `cpu_seconds` is that task's own CPU) for every reader:

- `demo`: recipes/one-cycle.yaml (82 granules clipped to the AOI box, about 78,000 rows each; 32 cell tasks);
- `full`: the same AOI, sources without the clipping box and every 4th of the demo's ground tracks, so the
  granules are whole (300,000-630,000 rows: the size of real ones, 1.52e9 rows / ~4,100 granules = 371,000 a cycle);
- `coarse`: the demo with order-5 parent cells (10 tasks of up to 3 million rows, the densest cell of a real
  cycle), so observations per segment differ from the demo's and the cell-task fit can tell them apart.

From the request log, the ledger and the partition records, per run: the requests of each stage (the granule
stage: from the first granule GET to the last partition record PUT; the cell stage: from there to the last task
record PUT; the rest is the client's set-up and finishing) by target and S3 price class, per granule (GETs and
bytes on its object, against its rows and file size) and per cell task (segment reads, record reads, chunk and
record PUTs against the plan's schema), and the effective request concurrency of each stage (sum of request
durations / the time covered by at least one request). Fitted over both workloads: granule CPU-seconds, GETs and
bytes linear in rows; cell-task CPU-seconds linear in observations and segments. Also the CPU-seconds of a fresh
interpreter importing what a worker imports (the cold start).

Writes --out/cost.json (figures, fits and per-granule / per-task points) and cost.md (with the full-cycle
projection of the figures by the measured code's `polaragg.cost`, one assumption varied at a time). `--install`
also writes the figures the package ships (src/polaragg/data/onepass_measured.json), which `polaragg.cost` uses.
The pipeline measured is HEAD's src/ (exported with `git archive`, so edits in the shared working tree are not
measured) unless --working-tree. `--quick`: a small AOI of the demo, 4 granules or fewer, one reader, nothing
installed (cost_quick.json / .md). `--render cost.json`: rewrite cost.md from an earlier output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
SHIPPED = ROOT / "src" / "polaragg" / "data" / "onepass_measured.json"
RECIPE = ROOT / "recipes" / "one-cycle.yaml"
OUT_BUCKET = "out"
READERS = ("h5coro", "h5py")
FULL_RGT_STEP = 36  # every 4th of the demo's tracks (step 9), whole granules
COARSE_PARENT_ORDER = 5  # 4x the cells per task: observations per segment vary between workloads
WORKLOADS = ("demo", "full", "coarse")
QUICK_BBOX = [80.0, -84.0, 82.0, -83.5]  # tests/test_s3.py's sub-area: a few parents
QUICK_RGTS = (19, 226, 775, 1162)  # region-11 tracks of the demo's sector that cross it
QUICK_GRANULES = 4
FORMAT = 1  # of cost.json / onepass_measured.json; bump when a field changes meaning
RECORD_NAME = re.compile(r"\d{20}-\d{5}\.json$")
# What a worker imports before its first task (the cold start measured in a fresh interpreter).
WORKER_IMPORTS = ("polaragg.plan", "polaragg.aggregate", "polaragg.store", "polaragg.read", "h5coro.h5coro",
                  "h5py", "zarr", "cubed", "s3fs")


def _module(name: str):
    """benchmarks/<name>.py, loaded once under a name of its own (as s3.py loads run.py)."""
    key = f"polaragg_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ----------------------------------------------------------------------------------------------------
# The logging proxy (its own process): s3.py's proxy, with every request recorded instead of tallied


class RequestLog:
    """Replaces s3.py's Tally: one entry per request (method, raw path with query, status, body bytes,
    arrival and answer times on this process's monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.entries: list[list] = []

    def begin(self) -> None:
        self._local.t0 = time.monotonic()

    def reset(self) -> None:
        with self._lock:
            self.entries = []

    def add(self, method: str, path: str, status: int, body_bytes: int) -> None:
        t1 = time.monotonic()
        t0 = getattr(self._local, "t0", t1)
        with self._lock:
            self.entries.append([method, path, int(status), int(body_bytes), t0, t1])

    def snapshot(self) -> list[list]:
        with self._lock:
            return list(self.entries)


def serve_proxy(upstream: str, latency_ms: float) -> int:
    s3 = _module("s3")
    s3.key_prefix = lambda path: path  # the handler tallies key_prefix(path): keep the whole path and query

    class TimedHandler(s3.ProxyHandler):
        def _dispatch(self) -> None:
            if not self.path.startswith(s3.CONTROL):
                self.server.tally.begin()
            s3.ProxyHandler._dispatch(self)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _dispatch

    return s3.serve_proxy(upstream, latency_ms, handler=TimedHandler, tally=RequestLog())


class LoggingProxy:
    """Client side of the logging proxy process."""

    def __init__(self, url: str, proc: subprocess.Popen) -> None:
        self.url, self.proc = url, proc

    def entries(self) -> list["Request"]:
        s3 = _module("s3")
        status, data = s3._http(f"{self.url}{s3.CONTROL}counts", timeout=60.0)
        if status != 200:
            raise RuntimeError(f"proxy log: HTTP {status}")
        return [Request(*e) for e in json.loads(data)]

    def reset(self) -> None:
        s3 = _module("s3")
        s3._http(f"{self.url}{s3.CONTROL}reset", "POST")

    def set_latency(self, ms: float) -> None:
        s3 = _module("s3")
        s3._http(f"{self.url}{s3.CONTROL}latency?ms={ms}", "POST")


@contextlib.contextmanager
def logging_proxy(upstream: str, latency_ms: float = 0.0, startup_s: float = 30.0):
    s3 = _module("s3")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-proxy", upstream,
                             "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE, env=s3._child_env())
    try:
        ready, _, _ = select.select([proc.stdout], [], [], startup_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the proxy did not start within {startup_s:.0f} s (said {line!r})")
        proxy = LoggingProxy(f"http://127.0.0.1:{int(line.split()[1])}", proc)
        proxy.entries()  # answers
        yield proxy
    finally:
        s3._stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# ----------------------------------------------------------------------------------------------------
# Requests: what each one was about, and its S3 price class


@dataclass
class Request:
    method: str
    path: str  # as sent: /bucket/key?query
    status: int
    body_bytes: int
    t0: float
    t1: float

    @property
    def bucket(self) -> str:
        return self.key_parts[0]

    @property
    def key(self) -> str:
        return self.key_parts[1]

    @property
    def key_parts(self) -> tuple[str, str]:
        raw = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        bucket, _, key = raw.partition("/")
        return bucket, key

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)

    @property
    def price_class(self) -> str:
        """S3's request price tiers: PUT, COPY, POST, LIST at one price; GET, HEAD and the rest at the other;
        DELETE is free."""
        if self.method == "DELETE":
            return "free"
        if self.method in ("PUT", "POST"):
            return "put"
        if self.method == "GET" and not self.key and ("list-type" in self.query or "prefix" in self.query
                                                      or "delimiter" in self.query or not self.query):
            return "put"  # a bucket listing is billed as a LIST
        return "get"

    def target(self, store_key: str) -> str:
        """What the request is about: granule | partition-rows | partition-record | partitions | store |
        task-record | ledger | cubed | bucket | other. A bucket listing is about the key its prefix names
        (s3fs lists `<key>/` after a HEAD that found no object, to tell a missing key from a folder)."""
        bucket, key = self.key_parts
        if not key and "prefix" in self.query:
            key = self.query["prefix"][0].rstrip("/")
        if bucket != OUT_BUCKET:
            return "granule" if key.endswith(".h5") else "other"
        if not key:
            return "bucket"
        for suffix, name in ((".partitions", "partitions"), (".ledger", "ledger"), (".cubed", "cubed")):
            if key == f"{store_key}{suffix}":
                return name
        if key.startswith(f"{store_key}.partitions/"):
            leaf = key.rsplit("/", 1)[-1]
            return "partition-rows" if leaf.endswith(".bin") else \
                "partition-record" if leaf.endswith(".json") and not leaf.startswith("_") else "partitions"
        if key.startswith(f"{store_key}.ledger/"):
            return "task-record" if RECORD_NAME.search(key) else "ledger"
        if key.startswith(f"{store_key}.cubed"):
            return "cubed"
        if key == store_key or key.startswith(f"{store_key}/"):
            return "store"
        return "other"


def covered_seconds(requests: list[Request]) -> float:
    """Time covered by at least one of the requests (union of their [arrival, answer] intervals)."""
    total, end = 0.0, -math.inf
    for r in sorted(requests, key=lambda r: r.t0):
        if r.t1 <= end:
            continue
        total += r.t1 - max(r.t0, end)
        end = r.t1
    return total


def concurrency(requests: list[Request]) -> float | None:
    """Sum of request durations over the time they cover: 1 for one request at a time."""
    covered = covered_seconds(requests)
    return math.fsum(r.t1 - r.t0 for r in requests) / covered if covered > 0 else None


def same_requests(requests: list[Request], moto: list[tuple[str, str, int]]) -> bool:
    """Whether the proxy's log and moto's hold the same (method, path, status) lines (moto logs paths
    percent-decoded)."""
    def key(method: str, path: str, status: int) -> tuple[str, str, int]:
        return method, urllib.parse.unquote(path), int(status)

    return sorted(key(r.method, r.path, r.status) for r in requests) == sorted(key(*m) for m in moto)


def moto_requests(log_text: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of each request line of moto_server's log (its colour codes stripped)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    return [(m.group(1), m.group(2), int(m.group(3)))
            for m in re.finditer(r'"([A-Z]+) (\S+) HTTP/1\.[01]" (\d{3})', text)]


# ----------------------------------------------------------------------------------------------------
# Workloads


def workload_doc(kind: str) -> dict:
    """The recipe document of a workload: `demo` (one-cycle.yaml), `full` (no clipping box, every 4th track),
    `coarse` (the demo with order-5 parents: 4x the cells per task), `quick` (the demo's granules, a small AOI)."""
    import polaragg

    doc = polaragg.load_recipe(RECIPE).model_dump(mode="json")
    if kind == "full":
        doc["source"] = {**doc["source"], "bbox": None,
                         "rgts": {**doc["source"]["rgts"], "step": FULL_RGT_STEP}}
    elif kind == "coarse":
        doc["grid"] = {**doc["grid"], "parent_order": COARSE_PARENT_ORDER}
    elif kind == "quick":
        doc["aoi"] = {"bbox": QUICK_BBOX}
        doc["source"] = {**doc["source"], "rgts": list(QUICK_RGTS), "regions": [11]}  # only these are generated
    elif kind != "demo":
        raise ValueError(kind)
    return doc


def s3_catalog(doc: dict, path: Path, limit: int | None = None) -> tuple[dict, list[Path]]:
    """The workload's granules that cross its AOI, and the recipe document reading them from
    s3://granules/<name>.h5 through a catalog written to `path`."""
    import polaragg
    from polaragg.catalog import build_catalog, read_directory
    from polaragg.sources import aoi_parents, synthetic_folder

    recipe = polaragg.load_recipe(doc)
    folder = synthetic_folder(recipe.source)
    parents = aoi_parents(recipe)
    records = read_directory(folder)
    local = build_catalog(records, parents, recipe.grid.parent_order)
    touching = sorted(set(local.granules.name[local.granules.parent_cells.map(len) > 0]))
    if limit is not None and len(touching) > limit:
        step = len(touching) / limit
        touching = [touching[int(i * step)] for i in range(limit)]
    wanted, files, kept = set(touching), [], []
    for record in records:
        local_path = Path(record.pop("local_path"))
        if record["umm"]["GranuleUR"] not in wanted:
            continue
        for url in record["umm"]["RelatedUrls"]:
            if url.get("Type") == "GET DATA VIA DIRECT ACCESS":
                url["URL"] = f"s3://granules/{local_path.name}"
        kept.append(record)
        files.append(local_path)
    catalog = build_catalog(kept, parents, recipe.grid.parent_order, access="direct")
    catalog.write(path)
    return {**doc, "source": {"kind": "catalog", "path": str(path)}}, sorted(files)


# ----------------------------------------------------------------------------------------------------
# One measured run


@dataclass
class Run:
    workload: str
    reader: str
    latency_ms: float
    store: str
    granules: int = 0
    tasks: int = 0
    planned_pairs: int = 0
    puts_per_task_schema: int = 0
    observations: int = 0
    rows: int = 0
    wall_s: float = math.nan
    process_cpu_s: float = math.nan
    other_cpu: float = 0.0
    error: str = ""
    requests: list[Request] = field(default_factory=list, repr=False)
    moto: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    moto_span: tuple[int, int] = (0, 0)  # byte offsets of the run's lines in moto's log
    granule_points: list[dict] = field(default_factory=list, repr=False)  # per granule
    task_points: list[dict] = field(default_factory=list, repr=False)  # per cell task
    reported_cost: dict = field(default_factory=dict, repr=False)  # the run's own cost report (RunSummary.cost)


def puts_per_task(plan) -> int:
    """Objects a cell task writes by the plan's schema: each variable's chunks at each of its orders and
    its ledger record (runner._puts_per_task; recomputed here from the plan so the count is independent)."""
    schema = plan.schema
    bins = plan.time.n - plan.stored_bins
    time_chunks = -(-bins // (plan.time_chunk or plan.time.n))
    return len(plan.task_orders) * (len(schema.per_bin) * time_chunks + len(schema.per_cell)) + 1


def measure_run(proxy: LoggingProxy, moto_log: Path, doc: dict, files: list[Path], workload: str, reader: str,
                latency_ms: float) -> Run:
    """`polaragg.run` of the document on single-threaded with its store on s3://out/, the proxy's log of it,
    moto's log lines of it, and the ledger's per-granule and per-task figures."""
    import polaragg
    from polaragg.catalog import Catalog
    from polaragg.ledger import read_records
    from polaragg.runner import plan_recipe

    common = _module("common")
    key = f"{workload}-{reader}.zarr"
    out = Run(workload, reader, latency_ms, f"s3://{OUT_BUCKET}/{key}")
    recipe = polaragg.load_recipe({**doc, "reader": reader, "executor": {**doc["executor"], "name": "single-threaded"}})
    plan = plan_recipe(recipe, executor="single-threaded")
    out.granules, out.tasks = len(plan.granules), len(plan.tasks)
    out.planned_pairs = sum(len(t.granules) for t in plan.tasks)
    out.puts_per_task_schema = puts_per_task(plan)
    proxy.set_latency(latency_ms)
    moto_offset = moto_log.stat().st_size
    proxy.reset()
    with common.OtherLoad() as load:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            summary = polaragg.run(recipe, store=out.store, executor="single-threaded", progress=False)
            out.reported_cost = dict(summary.cost or {})
            out.observations = int(summary.observations)
        except Exception as exc:  # noqa: BLE001 - report it, go on with the other runs
            out.error = (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0][:300]
        out.wall_s, out.process_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    out.other_cpu = load.share
    out.requests = proxy.entries()  # before reading the ledger back (those reads are not the run's)
    time.sleep(0.2)  # moto writes its log line after answering
    with open(moto_log, "rb") as f:
        f.seek(moto_offset)
        chunk = f.read()
    out.moto_span = (moto_offset, moto_offset + len(chunk))
    out.moto = moto_requests(chunk.decode(errors="replace"))
    if out.error:
        return out
    proxy.set_latency(0)
    records = read_records(out.store)
    catalog = Catalog.read(Path(doc["source"]["path"]))
    name_of = dict(zip(catalog.granules.granule_id.astype(str), catalog.granules.url.astype(str)))
    sizes = {f.name: f.stat().st_size for f in files}
    per_key = _granule_traffic(out.requests)
    for r in records:
        for g in r.granule_reports:
            name = name_of[g["granule"]].rsplit("/", 1)[-1]
            traffic = per_key.get(name, {"gets": 0, "get_bytes": 0, "heads": 0})
            out.granule_points.append({"granule": name, "rows": int(g["rows"]), "observations": int(g["observations"]),
                                       "file_bytes": sizes[name], "cpu_seconds": float(g["cpu_seconds"]),
                                       "seconds": float(g["seconds"]), **traffic})
    segments = _segments(out, records)
    for r in records:
        out.task_points.append({"parent": r.parent, "child_lo": r.child_lo, "observations": r.observations,
                                "segments": segments.get((r.parent, r.child_lo), 0),
                                "reported_granules": len(r.granule_reports), "cpu_seconds": r.cpu_seconds,
                                "seconds": r.seconds})
    out.rows = sum(p["rows"] for p in out.granule_points)
    return out


def _granule_traffic(requests: list[Request]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in requests:
        if r.bucket == OUT_BUCKET or not r.key.endswith(".h5"):
            continue
        t = out.setdefault(r.key, {"gets": 0, "get_bytes": 0, "heads": 0})
        if r.method == "GET":
            t["gets"] += 1
            t["get_bytes"] += r.body_bytes
        elif r.method == "HEAD":
            t["heads"] += 1
    return out


def _segments(run: Run, records) -> dict[tuple[int, int], int]:
    """(granule, task) segments each task read: the partition records' segments, by task."""
    # The partitions are removed after a successful run; count the cell stage's ranged reads of them
    # instead, per task from the order of the log: a task's reads come before its record PUT.
    key = run.store.split("/", 3)[3]
    out: dict[tuple[int, int], int] = {}
    pending = 0
    for r in sorted(run.requests, key=lambda r: r.t0):
        target = r.target(key)
        if target == "partition-rows" and r.method == "GET":
            pending += 1
        elif target == "task-record" and r.method == "PUT":
            name = r.key.rsplit("/", 1)[-1]
            parent, child_lo = int(name[:20]), int(name[21:26])
            out[(parent, child_lo)] = out.get((parent, child_lo), 0) + pending
            pending = 0
    return out


# ----------------------------------------------------------------------------------------------------
# Analysis of a run: stages, targets, per-unit figures


def stages(run: Run) -> dict[str, list[Request]]:
    """The run's requests by stage, from the order of the log (single-threaded: one thing at a time):
    granule stage from the first request about a granule or its partition (the check for an earlier
    record) to the last partition record PUT, cell stage from there to the last task record PUT; `client`
    is the rest (set-up before, finishing after)."""
    key = run.store.split("/", 3)[3]
    ordered = sorted(run.requests, key=lambda r: r.t0)
    first_granule = next((i for i, r in enumerate(ordered)
                          if r.target(key) in ("granule", "partition-record", "partition-rows")), None)
    last_record = max((i for i, r in enumerate(ordered) if r.target(key) == "partition-record" and r.method == "PUT"),
                      default=None)
    last_task = max((i for i, r in enumerate(ordered) if r.target(key) == "task-record" and r.method == "PUT"),
                    default=None)
    if first_granule is None or last_record is None or last_task is None or not first_granule < last_record < last_task:
        raise RuntimeError(f"{run.workload}/{run.reader}: cannot find the stages in the request log")
    return {"granule": ordered[first_granule:last_record + 1], "cell": ordered[last_record + 1:last_task + 1],
            "client": ordered[:first_granule] + ordered[last_task + 1:]}


def breakdown(requests: list[Request], key: str) -> dict[str, dict[str, int]]:
    """{target: {"METHOD class": count, ..., "get_bytes": n}}."""
    out: dict[str, dict[str, int]] = {}
    for r in requests:
        t = out.setdefault(r.target(key), {})
        name = f"{r.method} {r.price_class}"
        t[name] = t.get(name, 0) + 1
        if r.method == "GET":
            t["get_bytes"] = t.get("get_bytes", 0) + r.body_bytes
    return out


def classes(requests: list[Request]) -> dict[str, int]:
    out = {"get": 0, "put": 0, "free": 0}
    for r in requests:
        out[r.price_class] += 1
    return out


def summarize(run: Run) -> dict:
    """Per stage: requests by price class and by target, the counts the cost model uses, and the stage's
    effective request concurrency."""
    key = run.store.split("/", 3)[3]
    by_stage = stages(run)

    def n(reqs: list[Request], target: str | tuple[str, ...], method: str | None = None, cls: str | None = None) -> int:
        targets = (target,) if isinstance(target, str) else target
        return sum(1 for r in reqs if r.target(key) in targets and (method is None or r.method == method)
                   and (cls is None or r.price_class == cls))

    def stage(reqs: list[Request]) -> dict:
        c = classes(reqs)
        return {"get_class": c["get"], "put_class": c["put"], "free": c["free"], "requests": len(reqs),
                "concurrency": concurrency(reqs), "covered_s": covered_seconds(reqs),
                "request_s": math.fsum(r.t1 - r.t0 for r in reqs), "targets": breakdown(reqs, key)}

    granule, cell, client = by_stage["granule"], by_stage["cell"], by_stage["client"]
    g, c, k = stage(granule), stage(cell), stage(client)
    g.update({
        "granule_gets": n(granule, "granule", "GET"), "granule_heads": n(granule, "granule", "HEAD"),
        "granule_get_bytes": sum(r.body_bytes for r in granule if r.target(key) == "granule" and r.method == "GET"),
    })
    g["other_get_class"] = g["get_class"] - g["granule_gets"] - g["granule_heads"]
    c.update({
        "segment_gets": n(cell, "partition-rows", "GET"),
        "segment_get_bytes": sum(r.body_bytes for r in cell if r.target(key) == "partition-rows" and r.method == "GET"),
        "record_get_class": n(cell, "partition-record", cls="get"),
        "chunk_puts": n(cell, "store", "PUT"), "task_record_puts": n(cell, "task-record", "PUT"),
    })
    c["other_get_class"] = c["get_class"] - c["segment_gets"] - c["record_get_class"]
    c["other_put_class"] = c["put_class"] - c["chunk_puts"] - c["task_record_puts"]
    k.update({"task_record_get_class": n(client, "task-record", cls="get"),
              "task_record_put_class": n(client, "task-record", cls="put")})
    return {
        "workload": run.workload, "reader": run.reader, "latency_ms": run.latency_ms,
        "granules": len(run.granule_points), "tasks": len(run.task_points), "planned_pairs": run.planned_pairs,
        "segments": sum(p["segments"] for p in run.task_points),
        "reported_granules": sum(p["reported_granules"] for p in run.task_points),
        "rows": run.rows, "observations": run.observations,
        "file_bytes": sum(p["file_bytes"] for p in run.granule_points),
        "wall_s": run.wall_s, "process_cpu_s": run.process_cpu_s, "other_cpu": run.other_cpu,
        "granule_cpu_s": math.fsum(p["cpu_seconds"] for p in run.granule_points),
        "cell_cpu_s": math.fsum(p["cpu_seconds"] for p in run.task_points),
        "requests": len(run.requests), "moto_log_requests": len(run.moto),
        "moto_log_matches": same_requests(run.requests, run.moto),
        "granule_stage": g, "cell_stage": c, "client": k,
        "puts_per_task_schema": run.puts_per_task_schema,
    }


# ----------------------------------------------------------------------------------------------------
# Fits over the runs of one reader


def least_squares(columns: list[list[float]], y: list[float]) -> tuple[list[float], float | None]:
    """Non-negative least squares (polaragg.calibration's exact small-k solver) and R^2."""
    import numpy as np

    from polaragg.calibration import _nnls

    a, b = np.asarray(columns, dtype=float).T, np.asarray(y, dtype=float)
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)
    coef = _nnls(a / scale, b) / scale
    ss_tot = float(np.sum((b - b.mean()) ** 2))
    r2 = 1.0 - float(np.sum((b - a @ coef) ** 2)) / ss_tot if ss_tot > 0 else None
    return [float(c) for c in coef], r2


def reader_figures(runs: list[Run], summaries: list[dict]) -> dict:
    """The figures the cost model uses for one reader, from all its runs (both workloads): fits per granule
    and per cell task, and request counts per unit (granule, segment, reported granule, task, run)."""
    gp = [p for r in runs for p in r.granule_points]
    tp = [p for r in runs for p in r.task_points]
    rows = [float(p["rows"]) for p in gp]
    ones = [1.0] * len(gp)
    cpu_g, r2_cpu_g = least_squares([ones, rows], [p["cpu_seconds"] for p in gp])
    gets_g, r2_gets_g = least_squares([ones, rows], [float(p["gets"]) for p in gp])
    bytes_g, r2_bytes_g = least_squares([ones, rows], [float(p["get_bytes"]) for p in gp])
    cpu_t, r2_cpu_t = least_squares([[1.0] * len(tp), [float(p["observations"]) for p in tp],
                                     [float(p["segments"]) for p in tp]], [p["cpu_seconds"] for p in tp])

    def total(stage: str, name: str) -> float:
        return float(sum(s[stage][name] for s in summaries))

    def tot(name: str) -> float:
        return float(sum(s[name] for s in summaries))

    def overlap(stage: str) -> float | None:
        covered = total(stage, "covered_s")
        return total(stage, "request_s") / covered if covered > 0 else None

    n_g, n_t, n_runs = tot("granules"), tot("tasks"), float(len(summaries))
    return {
        "granule_stage": {
            "cpu_seconds": {"per_granule": cpu_g[0], "per_row": cpu_g[1], "r2": r2_cpu_g},
            "granule_gets": {"per_granule": gets_g[0], "per_row": gets_g[1], "r2": r2_gets_g},
            "granule_get_bytes": {"per_granule": bytes_g[0], "per_row": bytes_g[1], "r2": r2_bytes_g},
            "granule_heads_per_granule": total("granule_stage", "granule_heads") / n_g,
            "other_get_class_per_granule": total("granule_stage", "other_get_class") / n_g,
            "put_class_per_granule": total("granule_stage", "put_class") / n_g,
            "request_concurrency": overlap("granule_stage"),
            "observations_per_row": sum(p["observations"] for p in gp) / sum(rows),
        },
        "cell_stage": {
            "cpu_seconds": {"per_task": cpu_t[0], "per_observation": cpu_t[1], "per_segment": cpu_t[2],
                            "r2": r2_cpu_t},
            "segment_gets_per_segment": total("cell_stage", "segment_gets") / tot("segments"),
            "segment_bytes_per_observation": total("cell_stage", "segment_get_bytes") / tot("observations"),
            "record_get_class_per_granule": total("cell_stage", "record_get_class") / tot("reported_granules"),
            "other_get_class_per_task": total("cell_stage", "other_get_class") / n_t,
            "chunk_puts_per_task": total("cell_stage", "chunk_puts") / n_t,
            "task_record_puts_per_task": total("cell_stage", "task_record_puts") / n_t,
            "other_put_class_per_task": total("cell_stage", "other_put_class") / n_t,
            "puts_per_task_schema": sorted({s["puts_per_task_schema"] for s in summaries}),
            "request_concurrency": overlap("cell_stage"),
            "segments_per_planned_pair": tot("segments") / tot("planned_pairs"),
        },
        "client": {
            "get_class_per_task": total("client", "task_record_get_class") / n_t,
            "put_class_per_task": total("client", "task_record_put_class") / n_t,
            "get_class_per_run": (total("client", "get_class") - total("client", "task_record_get_class")) / n_runs,
            "put_class_per_run": (total("client", "put_class") - total("client", "task_record_put_class")) / n_runs,
        },
        "granules": int(n_g), "tasks": int(n_t), "runs": len(summaries), "rows": sum(rows),
        "rows_per_granule": {"min": min(rows), "max": max(rows), "mean": sum(rows) / len(rows)},
        "file_bytes_per_row": tot("file_bytes") / sum(rows),
    }


def cold_start_cpu(repeats: int = 3) -> float:
    """Least CPU-seconds of a fresh interpreter importing what a worker imports."""
    code = ("import time; t = time.process_time()\n"
            + "".join(f"import {m}\n" for m in WORKER_IMPORTS)
            + "print(time.process_time() - t)")
    best = math.inf
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        best = min(best, float(done.stdout.strip().splitlines()[-1]))
    return best


# ----------------------------------------------------------------------------------------------------
# Reports


def _n(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def markdown(payload: dict) -> str:
    lines = [
        f"# One-pass design: S3 requests, bytes and CPU-seconds per granule and per cell task ({payload['date']})",
        "",
        f"Command: `{payload['command']}` ({payload['total_s']:.0f} s in all). Code measured: {payload['code']}.",
        "",
        f"Machine: {payload['machine']}.",
        "",
        f"Granules, and the run's store, ledger and partitions, on a local moto S3 server; every request through a "
        f"logging proxy that waits {payload['latency_ms']:g} ms before forwarding it. `polaragg.run` on "
        "`single-threaded` (one task at a time, so a ledger record's CPU-seconds are its own). Workloads: "
        + "; ".join(f"`{k}`: {v}" for k, v in payload["workloads"].items()) + ".",
        "",
        "## Runs",
        "",
        "Per granule: the granule stage's requests (its object, the check for an earlier partition record, the "
        "partition's rows and record). Per task: the cell stage's (segment reads, partition record reads, chunk "
        "PUTs, the task record). *client*: the run's own set-up and finishing.",
        "",
        "| workload | reader | granules | rows / granule | file MiB / granule | object GETs / granule | GET MiB / "
        "granule | granule stage GET-class / PUT-class per granule | tasks | observations | segments | cell stage "
        "GET-class / PUT-class per task (schema) | client GET-class / PUT-class | granule stage CPU s | cell stage "
        "CPU s | requests = moto log | other CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in payload["runs"]:
        if s.get("error"):
            lines.append(f"| {s['workload']} | {s['reader']} | failed: {s['error']} |" + " |" * 14)
            continue
        g, c, k = s["granule_stage"], s["cell_stage"], s["client"]
        n_g, n_t = max(s["granules"], 1), max(s["tasks"], 1)
        same = "yes" if s["moto_log_matches"] else f"NO ({s['moto_log_requests']:,} in moto's)"
        lines.append(
            f"| {s['workload']} | {s['reader']} | {s['granules']} | {s['rows'] / n_g:,.0f} | "
            f"{s['file_bytes'] / n_g / 2**20:.2f} | {g['granule_gets'] / n_g:.2f} | "
            f"{g['granule_get_bytes'] / n_g / 2**20:.2f} | {g['get_class'] / n_g:.2f} / {g['put_class'] / n_g:.2f} | "
            f"{s['tasks']} | {s['observations']:,} | {s['segments']:,} | {c['get_class'] / n_t:.2f} / "
            f"{c['put_class'] / n_t:.2f} ({s['puts_per_task_schema']}) | {k['get_class']} / {k['put_class']} | "
            f"{s['granule_cpu_s']:.2f} | {s['cell_cpu_s']:.2f} | {same}: {s['requests']:,} | {s['other_cpu']:.0%} |")
    lines += ["", "## Figures the cost model uses (`src/polaragg/data/onepass_measured.json`)", ""]
    for reader, f in payload["readers"].items():
        g, c, k = f["granule_stage"], f["cell_stage"], f["client"]
        rg = f["rows_per_granule"]
        lines += [
            f"### {reader}",
            "",
            f"From {f['granules']} granules ({rg['min']:,.0f}-{rg['max']:,.0f} rows, mean {rg['mean']:,.0f}), "
            f"{f['tasks']} cell tasks and {f['runs']} runs.",
            "",
            "| figure | fixed | per unit | R^2 |",
            "|---|--:|--:|--:|",
            f"| granule stage CPU-seconds | {_n(g['cpu_seconds']['per_granule'])} per granule | "
            f"{_n(g['cpu_seconds']['per_row'])} per row | {_n(g['cpu_seconds']['r2'])} |",
            f"| granule object GETs | {_n(g['granule_gets']['per_granule'])} per granule | "
            f"{_n(g['granule_gets']['per_row'])} per row | {_n(g['granule_gets']['r2'])} |",
            f"| granule object GET bytes | {_n(g['granule_get_bytes']['per_granule'])} per granule | "
            f"{_n(g['granule_get_bytes']['per_row'])} per row | {_n(g['granule_get_bytes']['r2'])} |",
            f"| granule object HEADs | | {_n(g['granule_heads_per_granule'])} per granule | |",
            f"| other GET-class requests of the granule stage | | {_n(g['other_get_class_per_granule'])} per granule | |",
            f"| PUT-class requests of the granule stage | | {_n(g['put_class_per_granule'])} per granule | |",
            f"| cell task CPU-seconds | {_n(c['cpu_seconds']['per_task'])} per task | "
            f"{_n(c['cpu_seconds']['per_observation'])} per observation + {_n(c['cpu_seconds']['per_segment'])} per "
            f"segment | {_n(c['cpu_seconds']['r2'])} |",
            f"| segment GETs | | {_n(c['segment_gets_per_segment'])} per segment | |",
            f"| segment bytes | | {_n(c['segment_bytes_per_observation'])} per observation | |",
            f"| partition record GET-class requests | | {_n(c['record_get_class_per_granule'])} per reported granule | |",
            f"| other GET-class requests of a cell task | | {_n(c['other_get_class_per_task'])} per task | |",
            f"| chunk PUTs + record PUT of a cell task | | {_n(c['chunk_puts_per_task'])} + "
            f"{_n(c['task_record_puts_per_task'])} per task (schema: {', '.join(map(str, c['puts_per_task_schema']))}) | |",
            f"| segments per planned (cell, granule) pair | | {_n(c['segments_per_planned_pair'])} | |",
            f"| client: ledger read-back | | {_n(k['get_class_per_task'])} GET-class per task | |",
            f"| client: the rest (set-up, finishing) | {_n(k['get_class_per_run'])} GET-class + "
            f"{_n(k['put_class_per_run'])} PUT-class per run | | |",
            f"| effective request concurrency | granule stage {_n(g['request_concurrency'])}, cell stage "
            f"{_n(c['request_concurrency'])} | | |",
            "",
        ]
    if not payload.get("quick"):
        lines += projection_lines(payload)
    lines += [
        f"Cold start: a fresh interpreter importing {', '.join(WORKER_IMPORTS)} took "
        f"{payload['cold_start_cpu_seconds']:.2f} CPU-seconds (least of {payload['cold_start_repeats']}).",
        "",
        "## How it is counted",
        "",
        "- Every request of a run passes the proxy, which logs it (method, path and query, status, body bytes, "
        "arrival and answer). moto's own request log must hold the same (method, path, status) lines "
        "(column *requests = moto log*).",
        "- Stages from the order of the log (one task at a time): the granule stage runs from the first request "
        "about a granule or its partition to the last PUT of a partition record, the cell stage from there to "
        "the last PUT of a task record; the client's requests (store creation, lock, inputs, listings, reading "
        "the ledger back, finishing, removing the partitions) are the rest.",
        "- Price classes as S3 bills them: PUT, POST and bucket listings (LIST) at the PUT price, GET and HEAD "
        "at the GET price, DELETE free. A listing counts towards the key its prefix names (s3fs lists `<key>/` "
        "after a HEAD that found nothing).",
        "- Per granule: GETs and body bytes on its object from the log, rows and CPU-seconds from its partition "
        "record (in the ledger). Per cell task: CPU-seconds and observations from its ledger record; its "
        "segments are the partition range GETs logged before its record's PUT.",
        "- *effective request concurrency*: the sum of request durations over the time covered by at least one "
        f"request, with {payload['latency_ms']:g} ms injected before each: 1.0 when requests never overlap.",
        "- Fits: non-negative least squares over all workloads; granule figures = a + b x rows, cell task "
        "CPU-seconds = a + b x observations + c x segments.",
        "",
    ]
    return "\n".join(lines)


SENSITIVITY = (  # (label, price-table overrides, project_full_cycle keywords): one assumption changed at a time
    ("as shipped", {}, {}),
    ("S3 latency 10 ms", {"s3_request_latency_seconds": 0.010}, {}),
    ("S3 latency 100 ms", {"s3_request_latency_seconds": 0.100}, {}),
    ("throughput 25 MB/s per worker", {"s3_worker_mb_per_second": 25}, {}),
    ("vCPU 0.5x the measuring core", {"vcpu_speed": 0.5}, {}),
    ("Lambda 1024 MB (0.58 vCPU)", {}, {"lambda_memory_mb": 1024}),
    ("Lambda 4096 MB", {}, {"lambda_memory_mb": 4096}),
    ("concurrency 100", {}, {"concurrency": 100}),
)


def projection_lines(payload: dict) -> list[str]:
    """The full-cycle projection of the measured figures with the imported polaragg's cost model (both
    readers), one assumption varied at a time, and the h5coro report as `polaragg` prints it."""
    head = ["## What the figures project to: one full ATL06 cycle over Antarctica", ""]
    try:
        from polaragg.calibration import load_measured
        from polaragg.cost import project_full_cycle
        from polaragg.prices import load_prices
    except ImportError as exc:
        return head + [f"Not computed: the code measured has no projection from measured figures ({exc}); "
                       "`benchmarks/s3_requests.py --render cost.json` adds it with a newer polaragg.", ""]
    lines = head + [
        "`polaragg.cost.project_full_cycle(figures=...)` of these figures with the shipped price table and "
        "assumptions (`polaragg/data/prices.yaml`); each row below changes one assumption. The published run of "
        "the field is a reference row of the report, not an input. Projected by "
        f"{_module('common').code_label()} on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| reader | variant | Lambda $ | Lambda GB-s | Lambda wall | EC2 $ | Coiled $ | S3 requests $ | task-s | "
        "of which S3 waits s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    reports = {}
    for reader in payload["readers"]:
        figures = load_measured(payload, reader, "cost.json")
        for label, override, kwargs in SENSITIVITY if reader == "h5coro" else SENSITIVITY[:1]:
            r = project_full_cycle(figures=figures, prices=load_prices(override), **kwargs)
            reports.setdefault(reader, r)
            waits = sum(st["wait_seconds"] for st in r.stages)
            lines.append(f"| {reader} | {label} | {r.lambda_usd:.3f} | {r.lambda_gb_seconds:,.0f} | "
                         f"{r.lambda_wall_seconds:,.1f} s | {r.ec2_usd:.3f} | {r.coiled_usd:.3f} | {r.s3_usd:.3f} | "
                         f"{r.task_seconds:,.0f} | {waits:,.0f} |")
    if "h5coro" in reports:
        lines += ["", "The h5coro projection as printed:", "", reports["h5coro"].format()]
    return lines + [""]


# ----------------------------------------------------------------------------------------------------
# Main


def measure(workloads: tuple[str, ...], readers: list[str], latency_ms: float, max_wait: float = 0.0,
            limit: int | None = None, log=lambda msg: None, moto_log_copy: Path | None = None
            ) -> tuple[list[Run], list[dict]]:
    """Each workload on each reader against one moto server behind the logging proxy: the runs and their
    summaries (a failed run has an `error` and no summary figures). `moto_log_copy`: where to keep moto's
    request log."""
    s3, common = _module("s3"), _module("common")
    runs: list[Run] = []
    summaries: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="polaragg-s3-requests-"))
    try:
        with s3.moto_server(workdir) as moto, logging_proxy(moto.url) as proxy, s3.s3_environment(proxy.url):
            import boto3

            client = boto3.client("s3", endpoint_url=moto.url, region_name="us-west-2")
            for bucket in ("granules", OUT_BUCKET):
                client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
            for workload in workloads:
                doc, files = s3_catalog(workload_doc(workload), workdir / f"{workload}.parquet", limit)
                s3.upload(moto.url, files)  # straight to moto: not through the proxy (moto logs it, before the runs)
                log(f"{workload}: {len(files)} granules uploaded")
                for reader in readers:
                    if max_wait > 0:
                        common.wait_for_quiet(max_wait)
                    run = measure_run(proxy, workdir / "moto_server.log", doc, files, workload, reader, latency_ms)
                    runs.append(run)
                    if run.error:
                        log(f"  {reader}: FAILED {run.error}")
                        summaries.append({"workload": workload, "reader": reader, "error": run.error})
                        continue
                    summaries.append(summarize(run))
                    log(f"  {reader}: {len(run.requests)} requests (moto log {len(run.moto)}), wall {run.wall_s:.1f} s, "
                        f"granule CPU {summaries[-1]['granule_cpu_s']:.2f} s, cell CPU {summaries[-1]['cell_cpu_s']:.2f} s, "
                        f"other CPU {run.other_cpu:.0%}")
        if moto_log_copy is not None:
            shutil.copy(workdir / "moto_server.log", moto_log_copy)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs, summaries


def _export_head_src() -> tuple[Path, str]:
    """HEAD's src/ in a temporary folder (git archive), and the commit."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="polaragg-s3-requests-src-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", head, "src"], capture_output=True,
                             check=True, timeout=60).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder, head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--readers", default=",".join(READERS))
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--install", action="store_true", help=f"also write {SHIPPED.relative_to(ROOT)}")
    p.add_argument("--working-tree", action="store_true", help="measure the working tree's src/, not HEAD's")
    p.add_argument("--max-wait", type=float, default=30.0,
                   help="seconds to wait, at most, for other processes to quieten before each run")
    p.add_argument("--render", metavar="COST_JSON",
                   help="only write the .md of an earlier output (its projection with the imported polaragg)")
    p.add_argument("--serve-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy, args.latency_ms)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    if not args.working_tree and "POLARAGG_REQUESTS_SRC" not in os.environ:
        folder, head = _export_head_src()
        env = {**os.environ, "POLARAGG_REQUESTS_SRC": head,
               "PYTHONPATH": os.pathsep.join([str(folder / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        try:
            return subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env).returncode
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    import polaragg

    s3, common = _module("s3"), _module("common")
    started = time.perf_counter()
    commit = os.environ.get("POLARAGG_REQUESTS_SRC")
    code = (f"commit {commit[:7]} ({commit}; src/ exported with git archive, imported from {Path(polaragg.__file__).parent})"
            if commit else common.code_label())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    if args.quick:
        readers = readers[:1]
    workloads = ("quick",) if args.quick else WORKLOADS
    runs, summaries = measure(workloads, readers, args.latency_ms, args.max_wait,
                              QUICK_GRANULES if args.quick else None, log)
    figures = {}
    for reader in readers:
        ok = [(r, s) for r, s in zip(runs, summaries) if r.reader == reader and not r.error]
        if ok:
            figures[reader] = reader_figures([r for r, _ in ok], [s for _, s in ok])
    cold = cold_start_cpu(1 if args.quick else 3)
    total = time.perf_counter() - started
    payload = {
        "format": FORMAT,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "commit": commit or "", "code": code,
        "command": "python benchmarks/s3_requests.py " + " ".join(argv),
        "machine": s3.machine_line(), "latency_ms": args.latency_ms, "total_s": total,
        "workloads": {"demo": "recipes/one-cycle.yaml (granules clipped to the AOI box)",
                      "full": f"the same AOI, whole granules of every {FULL_RGT_STEP}th RGT (no clipping box)",
                      "coarse": f"the demo with order-{COARSE_PARENT_ORDER} parent cells (4x the cells per task)"}
        if not args.quick else {"quick": f"the demo's granules of RGTs {list(QUICK_RGTS)} over AOI {QUICK_BBOX}"},
        "quick": bool(args.quick),
        "cold_start_cpu_seconds": cold, "cold_start_repeats": 1 if args.quick else 3,
        "worker_imports": list(WORKER_IMPORTS),
        "readers": figures,
        "runs": summaries,
        "points": {f"{r.workload}/{r.reader}": {"granules": r.granule_points, "tasks": r.task_points}
                   for r in runs if not r.error},
        "moto_log": {f"{r.workload}/{r.reader}": len(r.moto) for r in runs},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cost_quick" if args.quick else "cost"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown(payload))
    if args.install and not args.quick:
        shipped = {k: payload[k] for k in ("format", "date", "commit", "machine", "latency_ms", "cold_start_cpu_seconds",
                                           "readers")}
        shipped["source"] = "benchmarks/s3_requests.py -> benchmarks/results/cost.json (see cost.md, docs/cost.md)"
        SHIPPED.write_text(json.dumps(shipped, indent=1) + "\n")
        log(f"wrote {SHIPPED}")
    log(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')} in {total:.0f} s")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
