"""S3 benchmark: requests, bytes and latency-bound wall time of reading ATL06 granules from a local S3 server.

    .venv/bin/python benchmarks/s3.py [--latency-ms 30] [--quick] [--out benchmarks/results] [--max-wait 10]

A moto S3 server on 127.0.0.1 holds the demo's synthetic granules under s3://granules/<name>.h5. Every
client (h5coro, s3fs/botocore, the run's worker processes) talks to it through a counting proxy started
by this script in its own process: it counts requests by method and key prefix and the body bytes of
GET responses, and sleeps an injected first-byte latency before forwarding each request, which turns a
localhost server into something with a round trip like a cloud object store's.

Measured, then written to --out as s3.md and s3.json:

1. the ideal: count and stored size of the HDF5 chunks of the six columns a task reads (one GET per chunk
   is the naive floor);
2. the read floor of each reader, without and with latency: every column of every beam of every granule
   read once, in one process, with h5coro (cache line sizes) and with h5py over s3fs (block size / cache
   type): GETs, GET bytes, other requests, CPU and wall seconds;
3. `polaragg.run` of the demo recipe with its granules on S3 (store on local disk), both readers on the
   single-threaded, threads and processes executors, with latency: the same counts and the run / floor
   ratios. A failing run is reported and the others go on.

`--quick`: 4 granules, single-threaded only. `--serve-proxy` is how this script starts the proxy process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import http.server
import importlib.util
import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
DEMO_RECIPE = ROOT / "recipes" / "one-cycle.yaml"
BUCKET = "granules"
GRANULE_PREFIX = f"{BUCKET}/*.h5"  # the proxy's key prefix of every granule object
BEAMS = ("gt1l", "gt1r", "gt2l", "gt2r", "gt3l", "gt3r")
COLUMNS = ("latitude", "longitude", "h_li", "h_li_sigma", "delta_time", "atl06_quality_summary")
EXECUTORS = ("single-threaded", "threads", "processes")
READERS = ("h5coro", "h5py")
MAX_WORKERS = 2
QUICK_GRANULES = 4
KIB, MIB = 2**10, 2**20
# Reader knobs measured in the floor; the first of each is what polaragg uses (the reader's default).
H5CORO_CACHE_LINES = (4 * MIB, 1 * MIB, 64 * KIB)
FSSPEC_CACHES = ((None, "readahead"), (1 * MIB, "readahead"), (256 * KIB, "blockcache"))
# Not secrets: moto accepts any key. Set for this process and inherited by the run's workers.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "polaragg-bench-dummy-key",
    "AWS_SECRET_ACCESS_KEY": "polaragg-bench-dummy-secret",
    "AWS_SESSION_TOKEN": "polaragg-bench-dummy-token",
}
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "FSSPEC_S3_ENDPOINT_URL")
TIMEOUT_S = 60.0  # every socket this script opens: a wedged server fails the measurement, not the machine


# ----------------------------------------------------------------------------------------------------
# The counting, latency-injecting proxy (runs in its own process: `--serve-proxy UPSTREAM`)

CONTROL = "/__proxy__/"  # not a valid bucket name, so never an S3 request
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"})
_NOT_FORWARDED = _HOP_BY_HOP | {"expect", "content-length"}  # the proxy answers 100-continue itself
_STREAM_BYTES = 256 * KIB


def key_prefix(path: str) -> str:
    """What a path-style S3 request is about, for counting: `bucket/folder/` for keys in a folder,
    `bucket/*.ext` for top-level keys (`granules/*.h5`), `bucket/` for bucket operations, `/` for none."""
    parts = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/").split("/", 1)
    bucket, key = parts[0], (parts[1] if len(parts) > 1 else "")
    if not bucket:
        return "/"
    if not key:
        return f"{bucket}/"
    if "/" in key:
        return f"{bucket}/{key.split('/', 1)[0]}/"
    ext = os.path.splitext(key)[1]
    return f"{bucket}/*{ext}" if ext else f"{bucket}/{key}"


class Tally:
    """Requests by "METHOD prefix", GET response body bytes by prefix, responses by status (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: Counter[str] = Counter()
            self.get_bytes: Counter[str] = Counter()
            self.statuses: Counter[str] = Counter()

    def add(self, method: str, prefix: str, status: int, body_bytes: int) -> None:
        with self._lock:
            self.requests[f"{method} {prefix}"] += 1
            self.statuses[str(status)] += 1
            if method == "GET":
                self.get_bytes[prefix] += body_bytes

    def snapshot(self) -> dict:
        with self._lock:
            return {"requests": dict(self.requests), "get_bytes": dict(self.get_bytes),
                    "statuses": dict(self.statuses)}


class ProxyServer(http.server.ThreadingHTTPServer):
    """Thread per client connection; forwards to `upstream` (host, port) after `latency_s`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int], latency_s: float) -> None:
        super().__init__(address, ProxyHandler)
        self.upstream = upstream
        self.latency_s = latency_s
        self.tally = Tally()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._open_lock:
            (self._open.add if alive else self._open.discard)(sock)

    def close_connections(self) -> None:
        """End the keep-alive connections still open (their threads then return)."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """One client connection (HTTP/1.1 keep-alive) with its own keep-alive connection upstream."""

    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_S * 2  # an idle client connection is closed after this
    server: ProxyServer

    def setup(self) -> None:
        super().setup()
        self._upstream_conn: http.client.HTTPConnection | None = None
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        if self._upstream_conn is not None:
            self._upstream_conn.close()
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request would dwarf the benchmark's own output

    def _dispatch(self) -> None:
        if self.path.startswith(CONTROL):
            self._control()
            return
        body = self._request_body()
        if self.server.latency_s > 0:
            time.sleep(self.server.latency_s)
        try:
            response = self._send_upstream(body)
        except OSError as exc:
            self.server.tally.add(self.command, key_prefix(self.path), 502, 0)
            self.send_error(502, f"upstream failed: {type(exc).__name__}")
            return
        sent = self._relay(response)
        self.server.tally.add(self.command, key_prefix(self.path), response.status, sent)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _dispatch

    def _request_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream_conn is None:
            host, port = self.server.upstream
            self._upstream_conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        return self._upstream_conn

    def _drop_connection(self) -> None:
        if self._upstream_conn is not None:
            self._upstream_conn.close()
            self._upstream_conn = None

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        """The same method, path, headers (Host included: SigV4 signs it) and body, sent upstream; a
        kept-alive upstream connection that the server closed meanwhile is reopened once."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, http.client.CannotSendRequest, ConnectionResetError,
                    BrokenPipeError):
                self._drop_connection()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, response: http.client.HTTPResponse) -> int:
        """Stream status, end-to-end headers and body back to the client; returns the body bytes sent."""
        has_body = self.command != "HEAD" and response.status not in (204, 304) and response.status >= 200
        buffered = None
        if has_body and response.getheader("Content-Length") is None:
            buffered = response.read()  # chunked or close-delimited upstream: give the client a length
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in _HOP_BY_HOP or (buffered is not None and name.lower() == "content-length"):
                continue
            self.send_header(name, value)
        if buffered is not None:
            self.send_header("Content-Length", str(len(buffered)))
        self.end_headers()
        sent = 0
        try:
            if buffered is not None:
                self.wfile.write(buffered)
                sent = len(buffered)
            elif has_body:
                while chunk := response.read(_STREAM_BYTES):
                    self.wfile.write(chunk)
                    sent += len(chunk)
            else:
                response.read()
            self.wfile.flush()
        except OSError:  # the client went away mid-body: this connection (and the upstream one) is done
            self.close_connection = True
            self._drop_connection()
        if response.will_close:
            self._drop_connection()
        return sent

    def _control(self) -> None:
        """GET counts, POST reset, POST latency?ms=N: neither counted nor delayed."""
        self._request_body()
        parts = urllib.parse.urlsplit(self.path)
        action = parts.path.removeprefix(CONTROL)
        if action == "counts":
            payload = self.server.tally.snapshot()
        elif action == "reset" and self.command == "POST":
            self.server.tally.reset()
            payload = {"ok": True}
        elif action == "latency" and self.command == "POST":
            ms = float(urllib.parse.parse_qs(parts.query).get("ms", ["0"])[0])
            self.server.latency_s = max(0.0, ms) / 1000.0
            payload = {"latency_ms": ms}
        else:
            self.send_error(404)
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_proxy(upstream: str, latency_ms: float, handler: type | None = None, tally: object | None = None) -> int:
    """Run the proxy on 127.0.0.1 (free port, printed as `PORT n`) until SIGTERM or SIGINT; `handler` and
    `tally` replace the request handler class and the request log (benchmarks/s3_requests.py)."""
    parts = urllib.parse.urlsplit(upstream)
    server = ProxyServer(("127.0.0.1", 0), (parts.hostname or "127.0.0.1", parts.port or 80), latency_ms / 1000)
    if handler is not None:
        server.RequestHandlerClass = handler
    if tally is not None:
        server.tally = tally

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.close_connections()
        server.server_close()
    return 0


# ----------------------------------------------------------------------------------------------------
# Servers as context managers (moto_server, the proxy process) and their HTTP control calls


def _http(url: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request with http.client (which, unlike urllib, never goes through a configured HTTP proxy)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _child_env() -> dict[str, str]:
    """This environment without HTTP proxy variables (127.0.0.1 is always talked to directly)."""
    return {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}


@dataclass
class Server:
    """A server process on 127.0.0.1 that this script started (and stops)."""

    url: str
    proc: subprocess.Popen

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (0 if it cannot be read)."""
        try:
            import psutil

            times = psutil.Process(self.proc.pid).cpu_times()
            return times.user + times.system
        except Exception:  # noqa: BLE001 - a figure for the report only
            return 0.0


@contextlib.contextmanager
def moto_server(log_dir: Path, startup_s: float = 30.0) -> Iterator[Server]:
    """moto's S3 server on 127.0.0.1 (a free port), as tests/conftest.py starts it; stopped on exit."""
    sibling = Path(sys.executable).with_name("moto_server")
    command = [str(sibling)] if sibling.exists() else [sys.executable, "-m", "moto.server"]
    port = _free_port()
    log_path = log_dir / "moto_server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env=_child_env())
    server = Server(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-1000:]}")
            try:
                _http(f"{server.url}/moto-api/", timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {server.url} within {startup_s:.0f} s")
                time.sleep(0.1)
        yield server
    finally:
        _stop(proc)


class Proxy(Server):
    """Client side of the proxy process: its counts, a reset and the injected latency."""

    def counts(self) -> "Traffic":
        status, data = _http(f"{self.url}{CONTROL}counts")
        if status != 200:
            raise RuntimeError(f"proxy counts: HTTP {status}")
        return Traffic(**json.loads(data))

    def reset(self) -> None:
        _http(f"{self.url}{CONTROL}reset", "POST")

    def set_latency(self, ms: float) -> None:
        _http(f"{self.url}{CONTROL}latency?ms={ms}", "POST")


@contextlib.contextmanager
def counting_proxy(upstream: str, latency_ms: float = 0.0, startup_s: float = 30.0) -> Iterator[Proxy]:
    """The proxy in its own process (so its work never shares this process's GIL); stopped on exit."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-proxy", upstream,
                             "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE, env=_child_env())
    try:
        ready, _, _ = select.select([proc.stdout], [], [], startup_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the proxy did not start within {startup_s:.0f} s (said {line!r})")
        proxy = Proxy(f"http://127.0.0.1:{int(line.split()[1])}", proc)
        proxy.counts()  # answers
        yield proxy
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Traffic:
    """What the proxy saw: requests by "METHOD prefix", GET body bytes by prefix, responses by status."""

    requests: dict[str, int] = field(default_factory=dict)
    get_bytes: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def gets(self, prefix: str = GRANULE_PREFIX) -> int:
        return self.requests.get(f"GET {prefix}", 0)

    def bytes(self, prefix: str = GRANULE_PREFIX) -> int:
        return self.get_bytes.get(prefix, 0)

    def other_on(self, prefix: str = GRANULE_PREFIX) -> int:
        """Requests on the prefix that are not GETs (HEADs for object sizes, say)."""
        return sum(n for k, n in self.requests.items() if k.split(" ", 1)[1] == prefix and not k.startswith("GET "))

    def elsewhere(self, prefix: str = GRANULE_PREFIX) -> dict[str, int]:
        """Requests on every other prefix (bucket listings, intermediates, ...)."""
        return {k: n for k, n in self.requests.items() if k.split(" ", 1)[1] != prefix}

    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if int(code) >= 400)


def _run_module():
    """benchmarks/run.py (machine_info, OtherLoad), loaded once under a name of its own."""
    name = "polaragg_bench_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("run.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextlib.contextmanager
def other_load() -> Iterator[object]:
    """run.py's `OtherLoad`: CPU of processes outside this process tree (moto and the proxy are inside)
    during a measurement, as a share of the machine; its `share` is read after the block."""
    with _run_module().OtherLoad() as load:
        yield load


# ----------------------------------------------------------------------------------------------------
# Environment, data, upload


@contextlib.contextmanager
def s3_environment(endpoint: str) -> Iterator[None]:
    """Point every S3 client of this process and its children (boto3, s3fs, h5coro, run workers) at
    `endpoint`, with dummy credentials and no AWS config files; the environment is restored on exit."""
    saved = dict(os.environ)
    try:
        for name in _PROXY_VARS + _AWS_VARS:
            os.environ.pop(name, None)
        os.environ.update(DUMMY_CREDENTIALS)
        os.environ.update({
            "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-west-2",
            "AWS_REGION": "us-west-2", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        })
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def demo_granules(limit: int | None = None) -> tuple[object, list[Path]]:
    """The demo recipe and its synthetic granule files (generated into the cache on first use);
    with `limit`, that many granules spread evenly over the sorted list."""
    from polaragg.recipe import load_recipe
    from polaragg.sources import synthetic_folder

    recipe = load_recipe(DEMO_RECIPE)
    files = sorted(synthetic_folder(recipe.source).glob("*.h5"))
    if limit is not None and len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return recipe, files


def s3_url(path: Path) -> str:
    return f"s3://{BUCKET}/{path.name}"


def upload(endpoint: str, files: list[Path]) -> None:
    """Create the bucket and put each granule as `<name>.h5` (straight to moto: uploads are not counted)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-west-2")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    for path in files:
        client.upload_file(str(path), BUCKET, path.name)


# ----------------------------------------------------------------------------------------------------
# The ideal (chunks of the needed columns) and the read floor of each reader


@dataclass
class Ideal:
    """What the six columns occupy in the files: one GET per chunk is the naive floor."""

    granules: int
    beams: int
    rows: int
    chunks: int
    chunk_bytes: int
    file_bytes: int


def chunk_inventory(files: list[Path]) -> Ideal:
    """Chunks (count, stored bytes) of COLUMNS of every beam present, read from the local files' indexes."""
    import h5py

    beams = rows = chunks = stored = 0
    for path in files:
        with h5py.File(path, "r") as f:
            for beam in BEAMS:
                group = f.get(f"{beam}/land_ice_segments")
                if group is None:
                    continue
                beams += 1
                rows += group[COLUMNS[0]].shape[0]
                for name in COLUMNS:
                    dset = group[name].id
                    n = dset.get_num_chunks()
                    chunks += n
                    stored += sum(dset.get_chunk_info(i).size for i in range(n))
    return Ideal(len(files), beams, rows, chunks, stored, sum(p.stat().st_size for p in files))


def read_h5coro(url: str, cache_line: int, driver_class: type | None = None) -> int:
    """Every column of every beam of one granule with h5coro, opened as polaragg's H5coroGranule opens
    S3 objects (its S3 driver, credentials from the environment); all datasets in one concurrent
    request set. Returns the rows read."""
    from h5coro import h5coro

    from polaragg.read import _s3_credentials_from_env, _s3_driver_class

    h5 = h5coro.H5Coro(url.removeprefix("s3://"), driver_class or _s3_driver_class(),
                       credentials=_s3_credentials_from_env(), cacheLineSize=cache_line, errorChecking=True)
    try:
        _, _, groups = h5.list("/", w_attr=False)
        paths = [f"{b}/land_ice_segments/{c}" for b in BEAMS if b in groups for c in COLUMNS]
        promise = h5.readDatasets([{"dataset": f"/{p}", "hyperslice": []} for p in paths], block=True)
        rows = 0
        for p in paths:
            values = promise[p] if p in promise.keys() else None
            if values is None:
                raise RuntimeError(f"h5coro returned nothing for {url}:/{p}")
            rows += len(values) if p.endswith(COLUMNS[0]) else 0
        return rows
    finally:
        h5.close()


def read_h5py(url: str, block_size: int | None, cache_type: str) -> int:
    """Every column of every beam of one granule with h5py over an s3fs file object, opened as
    polaragg's H5pyGranule opens it (`fs.fsspec_options`), with the given block size and cache type."""
    import fsspec
    import h5py

    from polaragg.fs import fsspec_options

    knobs: dict = {"default_cache_type": cache_type}
    if block_size is not None:
        knobs["default_block_size"] = block_size
    rows = 0
    with fsspec.open(url, "rb", **fsspec_options(url, knobs)) as fileobj, h5py.File(fileobj, "r") as f:
        for beam in BEAMS:
            if f"{beam}/land_ice_segments" not in f:
                continue
            group = f[f"{beam}/land_ice_segments"]
            for name in COLUMNS:
                group[name][...]
            rows += len(group[COLUMNS[0]])
    return rows


@dataclass
class Setting:
    """One way of reading a granule: a reader and its coalescing knob."""

    reader: str
    label: str
    read: Callable[[str], int]
    default: bool = False


def floor_settings() -> list[Setting]:
    """h5coro cache line sizes and s3fs block sizes / cache types; the first of each is polaragg's."""
    out = []
    for i, line in enumerate(H5CORO_CACHE_LINES):
        out.append(Setting("h5coro", f"cacheLineSize {_size(line)}" + (" (default)" if i == 0 else ""),
                           lambda url, line=line: read_h5coro(url, line), default=i == 0))
    for i, (block, cache) in enumerate(FSSPEC_CACHES):
        label = f"{cache} {_size(block) if block else '50 MiB'}" + (" (s3fs default)" if i == 0 else "")
        out.append(Setting("h5py", label, lambda url, b=block, c=cache: read_h5py(url, b, c), default=i == 0))
    return out


@dataclass
class FloorResult:
    reader: str
    setting: str
    default: bool
    latency_ms: float
    granules: int
    rows: int = 0
    gets: int = 0
    get_bytes: int = 0
    other_on_granules: int = 0
    elsewhere: int = 0
    http_errors: int = 0
    cpu_s: float = math.nan
    wall_s: float = math.nan
    server_cpu_s: float = math.nan
    other_cpu: float = 0.0
    error: str = ""

    @property
    def requests(self) -> int:
        return self.gets + self.other_on_granules + self.elsewhere


def _error_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:300]


def measure_floor(proxy: Proxy, setting: Setting, urls: list[str], latency_ms: float,
                  servers: tuple[Server, ...] = ()) -> FloorResult:
    """One pass of `setting` over the granules, one after the other in this process, at `latency_ms`."""
    out = FloorResult(setting.reader, setting.label, setting.default, latency_ms, len(urls))
    proxy.set_latency(latency_ms)
    proxy.reset()
    server_cpu = sum(s.cpu_seconds() for s in servers)
    with other_load() as load:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            out.rows = sum(setting.read(url) for url in urls)
        except Exception as exc:  # noqa: BLE001 - one broken setting must not lose the others
            out.error = _error_line(exc)
        out.wall_s = time.perf_counter() - wall
        out.cpu_s = time.process_time() - cpu
    out.other_cpu = load.share
    out.server_cpu_s = sum(s.cpu_seconds() for s in servers) - server_cpu
    traffic = proxy.counts()
    out.gets, out.get_bytes = traffic.gets(), traffic.bytes()
    out.other_on_granules, out.elsewhere = traffic.other_on(), sum(traffic.elsewhere().values())
    out.http_errors = traffic.errors()
    return out


# ----------------------------------------------------------------------------------------------------
# polaragg runs against S3


def s3_catalog(recipe, files: list[Path], path: Path) -> Path:
    """The recipe's catalog of `files` with their direct-access URLs at s3://granules/<name>.h5, written
    to `path` (a `catalog` source then reads the granules from S3, as in tests/test_s3.py)."""
    from polaragg.catalog import build_catalog, read_directory
    from polaragg.sources import aoi_parents

    wanted = {p.name for p in files}
    records = []
    for record in read_directory(files[0].parent):
        local = Path(record.pop("local_path"))
        if local.name not in wanted:
            continue
        for url in record["umm"]["RelatedUrls"]:
            if url.get("Type") == "GET DATA VIA DIRECT ACCESS":
                url["URL"] = s3_url(local)
        records.append(record)
    catalog = build_catalog(records, aoi_parents(recipe), recipe.grid.parent_order, access="direct")
    catalog.write(path)
    return path


def run_document(recipe, files: list[Path], catalog_path: Path) -> tuple[dict, int]:
    """The recipe as a document whose source is the S3 catalog, and the catalog's (cell, granule) pairs."""
    from polaragg.catalog import Catalog

    doc = recipe.model_dump(mode="json")
    doc["source"] = {"kind": "catalog", "path": str(s3_catalog(recipe, files, catalog_path))}
    return doc, len(Catalog.read(catalog_path).pairs())


@dataclass
class RunResult:
    reader: str
    executor: str
    latency_ms: float
    workers: int
    wall_s: float = math.nan
    gets: int = 0
    get_bytes: int = 0
    other_on_granules: int = 0
    elsewhere: dict[str, int] = field(default_factory=dict)
    http_errors: int = 0
    granules: int = 0
    granules_failed: int = 0
    observations: int = 0
    server_cpu_s: float = math.nan
    other_cpu: float = 0.0
    error: str = ""


def run_once(proxy: Proxy, doc: dict, reader: str, executor: str, workdir: Path, latency_ms: float,
             servers: tuple[Server, ...] = ()) -> RunResult:
    """`polaragg.run` of the recipe document with `reader` on `executor`, store in `workdir`; a failure
    becomes the result's error line."""
    import polaragg

    workers = 1 if executor == "single-threaded" else MAX_WORKERS
    out = RunResult(reader, executor, latency_ms, workers)
    store = workdir / f"{reader}-{executor}.zarr"
    executor_doc = {**(doc.get("executor") or {}), "name": executor}
    executor_doc.pop("max_workers", None)
    if workers > 1:
        executor_doc["max_workers"] = workers
    proxy.set_latency(latency_ms)
    proxy.reset()
    server_cpu = sum(s.cpu_seconds() for s in servers)
    with other_load() as load:
        t0 = time.perf_counter()
        try:
            recipe = polaragg.load_recipe({**doc, "reader": reader, "executor": executor_doc})
            summary = polaragg.run(recipe, store=str(store), executor=executor, progress=False)
            out.granules = int(getattr(summary, "granules", 0) or 0)
            out.granules_failed = int(getattr(summary, "granules_failed", 0) or 0)
            out.observations = int(getattr(summary, "observations", 0) or 0)
        except Exception as exc:  # noqa: BLE001 - the pipeline may be mid-rewrite; report and go on
            out.error = _error_line(exc)
        out.wall_s = time.perf_counter() - t0
    out.other_cpu = load.share
    out.server_cpu_s = sum(s.cpu_seconds() for s in servers) - server_cpu
    traffic = proxy.counts()
    out.gets, out.get_bytes = traffic.gets(), traffic.bytes()
    out.other_on_granules, out.elsewhere = traffic.other_on(), traffic.elsewhere()
    out.http_errors = traffic.errors()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(f"{store}.ledger", ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n // KIB} KiB"


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _s(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def machine_line() -> str:
    """The machine line of benchmarks/run.py's `machine_info`."""
    from importlib.metadata import PackageNotFoundError, version

    info = _run_module().machine_info()
    more = []
    for name in ("h5coro", "s3fs", "botocore", "moto"):
        try:
            more.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            more.append(f"{name} (not installed)")
    return (f"{info['cpu']}, {info['cores']} cores, {info['ram']} RAM, {info['os']}, Python {info['python']}; "
            f"{info['packages']}, {', '.join(more)}")


def code_version() -> str:
    """The commit the package was measured at, and whether src/ had uncommitted changes (the figures of a
    run depend on the pipeline's code, which may be mid-edit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head}" + (f" + uncommitted changes in {len(changed)} file(s) under src/" if changed else "")


def _floor_of(floors: list[FloorResult], reader: str, latency_ms: float) -> FloorResult | None:
    """The reader's default-knob floor at that latency (what a run is compared with)."""
    return next((f for f in floors if f.reader == reader and f.default and f.latency_ms == latency_ms
                 and not f.error), None)


def _unloaded(floors: list[FloorResult], f: FloorResult) -> FloorResult | None:
    """The same reader and knob without injected latency."""
    return next((g for g in floors if (g.reader, g.setting) == (f.reader, f.setting) and g.latency_ms == 0
                 and not g.error), None)


def _latency_cost(floors: list[FloorResult], f: FloorResult) -> str:
    base = _unloaded(floors, f)
    return "-" if f.latency_ms == 0 or base is None else f"{f.wall_s - base.wall_s:+.2f}"


def markdown(ctx: dict) -> str:
    ideal: Ideal = ctx["ideal"]
    floors: list[FloorResult] = ctx["floors"]
    runs: list[RunResult] = ctx["runs"]
    lat = ctx["latency_ms"]
    n = max(ideal.granules, 1)
    lines = [
        f"# S3 reads: requests, bytes, latency-bound wall time ({ctx['date']})",
        "",
        f"{ideal.granules} demo granules ({_mib(ideal.file_bytes)} MiB) on a local moto S3 server behind a "
        f"counting proxy that waits {lat:g} ms before forwarding each request (rows at 0 ms: no injected "
        f"latency). Command: `{ctx['command']}` ({ctx['total_s']:.0f} s in all), code at {ctx['code']}.",
        "",
        f"Machine: {ctx['machine']}.",
        "",
        *_noise_note(floors, runs),
        "## Ideal",
        "",
        f"The six columns ({', '.join(COLUMNS)}) of the {ideal.beams} beams present: {ideal.rows:,} rows in "
        f"{ideal.chunks:,} HDF5 chunks ({ideal.chunks / n:.0f} per granule), {_mib(ideal.chunk_bytes)} MiB "
        f"stored ({ideal.chunk_bytes / max(ideal.file_bytes, 1):.0%} of the files). One GET per needed chunk is "
        f"the naive floor: {ideal.chunks:,} GETs, {_mib(ideal.chunk_bytes)} MiB.",
        "",
        "## Read floor per reader",
        "",
        "Every column of every beam of every granule read once, granule after granule in one process "
        "(h5coro: `list('/')`, then all datasets of the granule in one `readDatasets`; h5py: `h5py.File` over "
        "an s3fs file object). *latency cost*: wall minus the same knob's 0 ms wall; *serial bill*: all "
        "requests x the latency, what a reader issuing one request at a time would pay.",
        "",
        "| reader | knob | latency ms | GETs | GETs / granule | GET MiB | GETs / ideal | bytes / ideal | "
        "other granule req. | other keys | CPU s | wall s | latency cost s | serial bill s | server CPU s | "
        "other CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for f in floors:
        if f.error:
            lines.append(f"| {f.reader} | {f.setting} | {f.latency_ms:g} | failed: {f.error} |" + " |" * 12)
            continue
        lines.append(
            f"| {f.reader} | {f.setting} | {f.latency_ms:g} | {f.gets:,} | {f.gets / n:.1f} | {_mib(f.get_bytes)} | "
            f"{_x(f.gets, ideal.chunks)} | {_x(f.get_bytes, ideal.chunk_bytes)} | {f.other_on_granules:,} | "
            f"{f.elsewhere:,} | {_s(f.cpu_s)} | {_s(f.wall_s)} | {_latency_cost(floors, f)} | "
            f"{f.requests * f.latency_ms / 1000:.2f} | {_s(f.server_cpu_s)} | {f.other_cpu:.0%} |")
    lines += ["", *floor_notes(floors, ideal), ""]
    lines += [
        "## polaragg runs against S3",
        "",
        f"`polaragg.run` of the demo recipe, its catalog pointing at the S3 granules, store on local disk, "
        f"{lat:g} ms injected latency, `max_workers` {MAX_WORKERS} on `threads` and `processes`. Ratios are to "
        "the same reader's default-knob floor at the same latency; a run's wall includes catalog, plan, "
        "aggregation and writing the store.",
        "",
        "| reader | executor | GETs | GET MiB | GETs / floor | bytes / floor | other granule req. | other keys | "
        "wall s | wall / floor | granules failed | observations | server CPU s | other CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        fl = _floor_of(floors, r.reader, r.latency_ms)
        other = ", ".join(f"{k} {c}" for k, c in sorted(r.elsewhere.items())) or "0"
        if r.error:
            lines.append(f"| {r.reader} | {r.executor} | {r.gets:,} | {_mib(r.get_bytes)} | failed: {r.error} |"
                         + " |" * 10)
            continue
        lines.append(
            f"| {r.reader} | {r.executor} | {r.gets:,} | {_mib(r.get_bytes)} | "
            f"{_x(r.gets, fl.gets) if fl else '-'} | {_x(r.get_bytes, fl.get_bytes) if fl else '-'} | "
            f"{r.other_on_granules:,} | {other} | {_s(r.wall_s)} | {_x(r.wall_s, fl.wall_s) if fl else '-'} | "
            f"{r.granules_failed} | {r.observations:,} | {_s(r.server_cpu_s)} | {r.other_cpu:.0%} |")
    lines += ["", *run_notes(runs, floors, ideal, ctx["pairs"]), ""]
    lines += [
        "## How it is counted",
        "",
        "- The proxy (`benchmarks/s3.py --serve-proxy`, its own process, a thread per client connection, "
        "HTTP/1.1 keep-alive on both sides) forwards method, path, headers and body to moto and streams the "
        "answer back. It counts every request by method and key prefix "
        f"(`{GRANULE_PREFIX}` = the granule objects) and the response body bytes of every GET, i.e. the bytes "
        "that crossed the wire to the client, not the ranges asked for. Its control calls are not counted. "
        "`tests/test_s3_bench.py` checks the counts against boto3 calls and against the readers' own fetches.",
        "- Injected latency: the proxy sleeps before forwarding each request, in that request's own thread "
        "(concurrent requests wait concurrently): a first-byte round trip, no bandwidth limit.",
        "- *other granule req.*: non-GET requests on granule keys (s3fs's HEAD for the object size); "
        "*other keys*: requests on any other prefix (bucket listings, intermediates if a run wrote any to S3).",
        "- *CPU s*: this process's CPU (reader threads included). *server CPU s*: moto + proxy, which share "
        "the machine's cores with the reader. *other CPU*: processes outside this benchmark's tree (other "
        "work on the machine) as a share of its capacity, `OtherLoad` of benchmarks/run.py.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _noise_note(floors: list[FloorResult], runs: list[RunResult]) -> list[str]:
    """A warning when other work on the machine used a noticeable share of it during a measurement."""
    worst = max([f.other_cpu for f in floors] + [r.other_cpu for r in runs], default=0.0)
    if worst <= 0.05:
        return []
    return [f"**Noisy machine**: other processes used up to {worst:.0%} of the machine's CPU during a measurement "
            "(column *other CPU*); wall and CPU seconds of those rows are slower than on an idle machine. "
            "Request and byte counts do not depend on it.", ""]


def floor_notes(floors: list[FloorResult], ideal: Ideal) -> list[str]:
    """Per reader: its default against the ideal, and what each coalescing knob did to requests and bytes."""
    notes = []
    n = max(ideal.granules, 1)
    for reader in READERS:
        rows = [f for f in floors if f.reader == reader and not f.error]
        base = next((f for f in rows if f.default), None)
        if base is None:
            continue
        side = "below" if base.gets < ideal.chunks else "at or above"
        whole = (" (about one GET per granule: the first read fetches the whole file)"
                 if base.gets <= 1.05 * n and base.get_bytes >= 0.99 * ideal.file_bytes else "")
        knobs = []
        for f in rows:
            if f.default or f.latency_ms:
                continue
            knobs.append(f"{f.setting}: {f.gets / base.gets:.1f}x the GETs ({f.gets / n:.1f} per granule), "
                         f"{f.get_bytes / max(base.get_bytes, 1):.2f}x the bytes")
        costs = [f"{f.setting} {_latency_cost(floors, f)} s (serial bill {f.requests * f.latency_ms / 1000:.2f} s)"
                 for f in rows if f.latency_ms]
        notes.append(
            f"- **{reader}**, polaragg's default ({base.setting.split(' (')[0]}): {base.gets:,} GETs, "
            f"{base.gets / ideal.chunks:.2f}x the ideal's {ideal.chunks:,}, {side} one GET per chunk{whole}; "
            f"{base.get_bytes / ideal.chunk_bytes:.2f}x the chunk bytes "
            f"({base.get_bytes / max(ideal.file_bytes, 1):.2f}x the files)."
            + (f" Against the default: {'; '.join(knobs)}." if knobs else "")
            + (f" Latency cost: {'; '.join(costs)}." if costs else ""))
    return notes


def run_notes(runs: list[RunResult], floors: list[FloorResult], ideal: Ideal, pairs: int) -> list[str]:
    """How often the runs fetched each granule, against the floor and against one read per (cell, granule)."""
    ok = [r for r in runs if not r.error]
    if not ok:
        return ["- No run finished; the error of each is in its row."] if runs else []
    n = max(ideal.granules, 1)
    per = ", ".join(f"{r.reader}/{r.executor} {r.gets / n:.2f}" for r in ok)
    return [
        f"- GETs per granule: {per}. The catalog has {pairs:,} (parent cell, granule) pairs for {ideal.granules} "
        f"granules ({pairs / n:.1f}x): a pipeline opening each granule once per cell it crosses would fetch "
        "each granule about that many times with these readers' defaults.",
        "- *wall / floor* compares a whole run (catalog, plan, reading, aggregation, store) with reading alone in "
        "one process. " + " ".join(_bound(f) for f in floors if f.default and f.latency_ms and not f.error),
    ]


def _bound(f: FloorResult) -> str:
    """Whether a floor's wall went to this process's CPU or to waiting (for the servers, the latency)."""
    share = f.cpu_s / f.wall_s if f.wall_s > 0 else 0.0
    what = "mostly CPU" if share >= 0.6 else "mostly waiting"
    return f"The {f.reader} floor at {f.latency_ms:g} ms is {what}: {f.cpu_s:.1f} CPU s of {f.wall_s:.1f} s wall."


# ----------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latency-ms", type=float, default=30.0, help="injected first-byte latency (default 30)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_GRANULES} granules, single-threaded only")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for s3.md and s3.json")
    p.add_argument("--max-wait", type=float, default=10.0,
                   help="seconds to wait, at most, for other processes to quieten before each measurement")
    p.add_argument("--serve-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy, args.latency_ms)

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    recipe, files = demo_granules(QUICK_GRANULES if args.quick else None)
    executors = EXECUTORS[:1] if args.quick else EXECUTORS
    ideal = chunk_inventory(files)
    log(f"{len(files)} granules, {ideal.chunks} chunks of the six columns ({_mib(ideal.chunk_bytes)} MiB)")
    urls = [s3_url(f) for f in files]
    latencies = (0.0, args.latency_ms) if args.latency_ms > 0 else (0.0,)
    floors: list[FloorResult] = []
    runs: list[RunResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="polaragg-s3-bench-"))
    try:
        with moto_server(workdir) as moto, counting_proxy(moto.url) as proxy, s3_environment(proxy.url):
            servers = (moto, proxy)
            upload(moto.url, files)
            log(f"uploaded to s3://{BUCKET}/ on {moto.url}; proxy on {proxy.url}")
            settings = floor_settings()
            for setting in settings:  # warm-up: imports, boto3 sessions, s3fs instances; not measured
                measure_floor(proxy, setting, urls[:1], 0.0)
            quiet = _run_module().wait_for_quiet
            for latency in latencies:
                for setting in settings:
                    quiet(args.max_wait)
                    f = measure_floor(proxy, setting, urls, latency, servers)
                    floors.append(f)
                    log(f"floor {f.reader} [{f.setting}] {latency:g} ms: {f.gets} GETs, {_mib(f.get_bytes)} MiB, "
                        f"{f.other_on_granules} other, cpu {f.cpu_s:.2f} s, wall {f.wall_s:.2f} s {f.error}")
            try:
                doc, pairs = run_document(recipe, files, workdir / "s3.parquet")
                setup_error = ""
            except Exception as exc:  # noqa: BLE001 - the catalog code may be mid-rewrite too
                doc, pairs, setup_error = {}, 0, f"catalog: {_error_line(exc)}"
            for reader in READERS:
                for executor in executors:
                    if setup_error:
                        runs.append(RunResult(reader, executor, args.latency_ms, 1, error=setup_error))
                        continue
                    quiet(args.max_wait)
                    log(f"run {reader} on {executor} ...")
                    r = run_once(proxy, doc, reader, executor, workdir, args.latency_ms, servers)
                    runs.append(r)
                    log(f"  {r.gets} GETs, {_mib(r.get_bytes)} MiB, other {r.other_on_granules} / {r.elsewhere}, "
                        f"wall {r.wall_s:.1f} s, {r.observations:,} obs {r.error}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    total = time.perf_counter() - started
    ctx = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "latency_ms": args.latency_ms, "ideal": ideal,
        "floors": floors, "runs": runs, "pairs": pairs, "machine": machine_line(), "total_s": total,
        "code": code_version(),
        "command": "python benchmarks/s3.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3.md").write_text(markdown(ctx))
    payload = {k: v for k, v in ctx.items() if k not in ("ideal", "floors", "runs")}
    payload.update({"ideal": asdict(ideal), "floors": [asdict(f) for f in floors], "runs": [asdict(r) for r in runs],
                    "granule_keys": [u.removeprefix(f"s3://{BUCKET}/") for u in urls], "bucket": BUCKET})
    (out / "s3.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    log(f"wrote {out / 's3.md'} and {out / 's3.json'} in {total:.0f} s")
    print((out / "s3.md").read_text())
    return 1 if any(f.error for f in floors) or any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
