"""A small stand-in for NASA CMR's granule search, on 127.0.0.1, for tests.

Serves ``GET /search/granules.umm_json`` (and ``/search/granules.json``, the ATOM-like JSON feed) from a
list of UMM-G records given at start, with CMR's parameters, ``CMR-Hits`` / ``CMR-Search-After``
paging and deterministic order (by GranuleUR). As in CMR, a granule's collection (short name, version)
comes from its ``CollectionReference``: ``ShortName`` + ``Version``, or an ``EntryTitle`` the server
knows (``COLLECTIONS``, overridable per server), and ``readable_granule_name`` matches the
``GranuleUR`` or a ``ProducerGranuleId``, so older records (``GranuleUR: SC:ATL06.005:...``) are found
by their file name. Faults can be scheduled for upcoming requests: HTTP
errors, dropped connections, stalls (no answer) and trickled bodies. Scheduled faults form a queue, used
in order: a fault's ``after`` counts the requests let through once the faults before it are used up.
Every request is logged and counted. Stalls wait on the server's stop event in bounded steps and
handler threads are daemons, so stopping never blocks on a stalled request.

    with CmrServer(records) as server:
        server.fail_next(2, status=500)          # the next two requests get HTTP 500
        server.drop_next(1, after=3)             # then 3 good requests, then one closed without a response
        ... CmrSettings(host=server.host, scheme="http") ...
        server.count()                           # requests received
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

GRANULE_PATHS = ("/search/granules.umm_json", "/search/granules.json")
MAX_PAGE_SIZE = 2000
DEFAULT_PAGE_SIZE = 10  # CMR's default

# parameters accepted (list form "name[]" is accepted for all of them); anything else is a 400, as in CMR
_KNOWN_PARAMS = {
    "short_name", "version", "provider", "provider_id", "temporal", "readable_granule_name",
    "granule_ur", "page_size", "bounding_box", "polygon", "point", "line", "concept_id",
    "collection_concept_id", "sort_key", "cloud_hosted", "downloadable", "online_only",
}
_OPTION_RE = re.compile(r"^options\[(?P<param>[a-z_]+)\]\[(?P<option>[a-z_]+)\]$")

# collections known by entry title (older granule records name their collection only this way)
COLLECTIONS = {
    f"ATLAS/ICESat-2 L3A Land Ice Height V{v}": ("ATL06", v) for v in ("005", "006", "007")
}


@dataclass
class _Fault:
    kind: str  # "http" | "drop" | "stall" | "trickle"
    count: int
    skip: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers; every answer has a Content-Length
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self) -> None:  # noqa: N802
        owner = self.server.owner
        entry = owner._begin(self)
        fault = owner._take_fault()
        if fault is not None:
            entry["outcome"] = fault.kind
            owner._count_fault(fault.kind)
            getattr(self, f"_fault_{fault.kind}")(fault.options)
            return
        split = urlsplit(self.path)
        if split.path not in GRANULE_PATHS:
            entry["outcome"] = "404"
            self._send_json(404, {"errors": [f"The path {split.path} was not found."]})
            return
        try:
            status, headers, body = owner._search(split.path, split.query, self.headers)
        except _BadRequest as exc:
            entry["outcome"] = "400"
            self._send_json(400, {"errors": [str(exc)]})
            return
        entry["outcome"] = str(status)
        self._send_json(status, body, headers)

    # -- responses ------------------------------------------------------------------------------
    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        content_type = "application/vnd.nasa.cmr.umm_results+json; version=1.6.6; charset=utf-8"
        self.send_header("Content-Type", content_type if status == 200 else "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fault_http(self, options: dict[str, Any]) -> None:
        status = int(options.get("status", 500))
        headers = {}
        if options.get("retry_after") is not None:
            headers["Retry-After"] = str(options["retry_after"])
        self._send_json(status, {"errors": [f"injected HTTP {status}"]}, headers)

    def _fault_drop(self, options: dict[str, Any]) -> None:
        if options.get("reset"):
            # linger 0: close() sends a TCP RST instead of a FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _fault_stall(self, options: dict[str, Any]) -> None:
        seconds = options.get("seconds")
        limit = time.monotonic() + (60.0 if seconds is None else float(seconds))
        stop = self.server.owner._stop
        while not stop.is_set() and time.monotonic() < limit:
            stop.wait(min(0.05, max(0.0, limit - time.monotonic())))
        self.close_connection = True  # then close without an answer

    def _fault_trickle(self, options: dict[str, Any]) -> None:
        interval = float(options.get("interval", 0.2))
        data = json.dumps({"hits": 0, "took": 1, "items": [], "padding": "x" * 200}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("CMR-Hits", "0")
        self.end_headers()
        self.wfile.flush()
        stop = self.server.owner._stop
        try:
            for i in range(len(data)):
                if stop.wait(interval):
                    break
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except OSError:
            pass  # the client gave up
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: "CmrServer"


class _BadRequest(Exception):
    pass


class CmrServer:
    """CMR granule search on ``127.0.0.1`` with an ephemeral port; a context manager."""

    def __init__(self, records: list[dict], *, port: int = 0,
                 collections: dict[str, tuple[str, str]] | None = None) -> None:
        self._records = sorted(records, key=lambda r: r["umm"]["GranuleUR"])
        self._collections = dict(COLLECTIONS if collections is None else collections)
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.request_log: list[dict[str, Any]] = []
        self.fault_counts: Counter[str] = Counter()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "CmrServer":
        self._stop.clear()
        self._httpd = _Server(("127.0.0.1", self._port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="cmr-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases stalled and trickling handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "CmrServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def host(self) -> str:
        """``host:port``, as ``CmrSettings.host`` expects."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- fault injection --------------------------------------------------------------------------
    def fail_next(
        self, n: int = 1, *, status: int = 500, after: int = 0, retry_after: float | None = None
    ) -> None:
        """Answer ``n`` requests with HTTP ``status``, after letting ``after`` requests through."""
        self._schedule(_Fault("http", n, after, {"status": status, "retry_after": retry_after}))

    def drop_next(self, n: int = 1, *, after: int = 0, reset: bool = False) -> None:
        """Close the connection of ``n`` requests without any response (``reset``: with a TCP RST)."""
        self._schedule(_Fault("drop", n, after, {"reset": reset}))

    def stall_next(self, n: int = 1, *, after: int = 0, seconds: float | None = None) -> None:
        """Accept ``n`` requests and never answer (until ``seconds`` or server stop, then close)."""
        self._schedule(_Fault("stall", n, after, {"seconds": seconds}))

    def trickle_next(self, n: int = 1, *, after: int = 0, interval: float = 0.2) -> None:
        """Answer ``n`` requests with a valid header, then the body one byte per ``interval`` s."""
        self._schedule(_Fault("trickle", n, after, {"interval": interval}))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _schedule(self, fault: _Fault) -> None:
        if fault.count > 0:
            with self._lock:
                self._faults.append(fault)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            head = self._faults[0]
            if head.skip > 0:
                head.skip -= 1
                return None
            head.count -= 1
            if head.count <= 0:
                self._faults.pop(0)
            return head

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self.fault_counts[kind] += 1

    # -- counters -----------------------------------------------------------------------------------
    def count(self, outcome: str | None = None) -> int:
        """Requests received (all, or those with this outcome: "200", "400", "http", "drop", ...)."""
        with self._lock:
            return sum(1 for e in self.request_log if outcome is None or e["outcome"] == outcome)

    def _begin(self, handler: _Handler) -> dict[str, Any]:
        split = urlsplit(handler.path)
        entry = {
            "path": split.path,
            "params": parse_qsl(split.query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "outcome": "pending",
            "time": time.monotonic(),
        }
        with self._lock:
            self.request_log.append(entry)
        return entry

    # -- search -------------------------------------------------------------------------------------
    def _search(self, path: str, query: str, headers: Any) -> tuple[int, dict[str, str], Any]:
        started = time.monotonic()
        params: dict[str, list[str]] = {}
        options: dict[str, dict[str, str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            match = _OPTION_RE.match(key)
            if match:
                options.setdefault(match["param"], {})[match["option"]] = value.lower()
                continue
            name = key[:-2] if key.endswith("[]") else key
            if name not in _KNOWN_PARAMS:
                raise _BadRequest(f"Parameter [{key}] was not recognized.")
            params.setdefault(name, []).append(value)

        page_size = DEFAULT_PAGE_SIZE
        if "page_size" in params:
            try:
                page_size = int(params["page_size"][-1])
            except ValueError:
                raise _BadRequest("page_size must be a number between 0 and 2000") from None
            if not 0 <= page_size <= MAX_PAGE_SIZE:
                raise _BadRequest("page_size must be a number between 0 and 2000")

        matches = [r for r in self._records if self._matches(r, params, options)]
        after = headers.get("CMR-Search-After")
        if after is not None:
            try:
                token = json.loads(after)
                last_ur = token[0]
                if not isinstance(last_ur, str):
                    raise ValueError
            except (ValueError, IndexError, TypeError, KeyError):
                raise _BadRequest("The CMR-Search-After header value is invalid.") from None
            start = _bisect_right(matches, last_ur)
        else:
            start = 0
        page = matches[start:start + page_size]
        took = int((time.monotonic() - started) * 1000)
        out_headers = {
            "CMR-Hits": str(len(matches)), "CMR-Took": str(took), "CMR-Request-Id": str(uuid.uuid4())
        }
        if page:
            out_headers["CMR-Search-After"] = json.dumps([page[-1]["umm"]["GranuleUR"], start + len(page)])
        if path.endswith(".umm_json"):
            body: Any = {"hits": len(matches), "took": took, "items": page}
        else:
            body = {"feed": {"entry": [_json_entry(r) for r in page]}}
        return 200, out_headers, body

    def _collection(self, umm: dict) -> tuple[str | None, str | None]:
        ref = umm.get("CollectionReference") or {}
        if "ShortName" in ref:
            return ref.get("ShortName"), ref.get("Version")
        return self._collections.get(ref.get("EntryTitle"), (None, None))

    def _matches(self, record: dict, params: dict[str, list[str]], options: dict[str, dict[str, str]]) -> bool:
        umm, meta = record["umm"], record["meta"]
        short_name, version = self._collection(umm)
        if "short_name" in params and short_name not in params["short_name"]:
            return False
        if "version" in params and version not in params["version"]:
            return False
        providers = params.get("provider", []) + params.get("provider_id", [])
        if providers and meta.get("provider-id") not in providers:
            return False
        if "concept_id" in params and meta.get("concept-id") not in params["concept_id"]:
            return False
        if "granule_ur" in params and umm["GranuleUR"] not in params["granule_ur"]:
            return False
        if "readable_granule_name" in params:
            opts = options.get("readable_granule_name", {})
            pattern = opts.get("pattern") == "true"
            ignore_case = opts.get("ignore_case") == "true"
            names = [umm["GranuleUR"], *_producer_ids(umm)]
            if not any(_name_matches(n, p, pattern, ignore_case)
                       for p in params["readable_granule_name"] for n in names):
                return False
        if "temporal" in params:
            exclude = options.get("temporal", {}).get("exclude_boundary") == "true"
            rng = umm.get("TemporalExtent", {}).get("RangeDateTime", {})
            begin = _parse_time(rng.get("BeginningDateTime"))
            end = _parse_time(rng.get("EndingDateTime")) or begin
            if begin is None or not any(_overlaps(begin, end, t, exclude) for t in params["temporal"]):
                return False
        # bounding_box / polygon / point / line are accepted and validated, but not used as filters
        for value in params.get("bounding_box", []):
            _parse_bbox(value)
        return True


def _producer_ids(umm: dict) -> list[str]:
    ids = (umm.get("DataGranule") or {}).get("Identifiers") or []
    return [i["Identifier"] for i in ids
            if i.get("IdentifierType") == "ProducerGranuleId" and isinstance(i.get("Identifier"), str)]


def _bisect_right(records: list[dict], granule_ur: str) -> int:
    lo, hi = 0, len(records)
    while lo < hi:
        mid = (lo + hi) // 2
        if records[mid]["umm"]["GranuleUR"] <= granule_ur:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _name_matches(name: str, value: str, pattern: bool, ignore_case: bool) -> bool:
    flags = re.IGNORECASE if ignore_case else 0
    if not pattern:
        return re.fullmatch(re.escape(value), name, flags) is not None
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.fullmatch(regex, name, flags | re.DOTALL) is not None


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"Temporal datetime is invalid: {value}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _overlaps(begin: dt.datetime, end: dt.datetime, temporal: str, exclude: bool) -> bool:
    parts = temporal.split(",")
    if len(parts) < 2:
        raise _BadRequest(f"Temporal range is invalid: {temporal}")
    lo, hi = _parse_time(parts[0].strip()), _parse_time(parts[1].strip())
    if lo is not None and hi is not None and lo > hi:
        raise _BadRequest(f"Temporal range start must be before end: {temporal}")
    if exclude:
        return (hi is None or begin < hi) and (lo is None or end > lo)
    return (hi is None or begin <= hi) and (lo is None or end >= lo)


def _parse_bbox(value: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise _BadRequest(f"bounding_box is invalid: {value}") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise _BadRequest(f"bounding_box is invalid: {value}")
    return box


def _json_entry(record: dict) -> dict:
    umm, meta = record["umm"], record["meta"]
    rng = umm.get("TemporalExtent", {}).get("RangeDateTime", {})
    return {
        "id": meta.get("concept-id"),
        "title": umm["GranuleUR"],
        "producer_granule_id": (_producer_ids(umm) or [umm["GranuleUR"]])[0],
        "data_center": meta.get("provider-id"),
        "time_start": rng.get("BeginningDateTime"),
        "time_end": rng.get("EndingDateTime"),
        "links": [{"href": u["URL"], "rel": "http://esipfed.org/ns/fedsearch/1.1/data#"}
                  for u in umm.get("RelatedUrls", [])],
    }


# --------------------------------------------------------------------------------------------------
# fake ATL06 UMM-G records following the real naming convention

CYCLE_STARTS = {  # UTC, from docs/reference atl06.md
    20: dt.datetime(2023, 6, 20, 5, 55, tzinfo=dt.timezone.utc),
    21: dt.datetime(2023, 9, 19, 1, 35, tzinfo=dt.timezone.utc),
    22: dt.datetime(2023, 12, 18, 21, 15, tzinfo=dt.timezone.utc),
    23: dt.datetime(2024, 3, 18, 16, 55, tzinfo=dt.timezone.utc),
    24: dt.datetime(2024, 6, 17, 12, 34, tzinfo=dt.timezone.utc),
}
NODAL_PERIOD_S = 5657.38
# argument of latitude (deg) where Antarctic regions 10, 11, 12 begin and end
REGION_U = {10: (239.55, 260.10), 11: (260.10, 279.90), 12: (279.90, 300.45)}


def fake_atl06_record(cycle: int, rgt: int, region: int, *, version: str = "006", revision: int = 1,
                      provider: str = "NSIDC_CPRD", serial: int = 1) -> dict:
    """One small, realistic-looking ATL06 UMM-G record (no footprint polygon)."""
    u0, u1 = REGION_U[region]
    start = CYCLE_STARTS[cycle] + dt.timedelta(seconds=((rgt - 1) + u0 / 360.0) * NODAL_PERIOD_S)
    end = CYCLE_STARTS[cycle] + dt.timedelta(seconds=((rgt - 1) + u1 / 360.0) * NODAL_PERIOD_S)
    name = f"ATL06_{start:%Y%m%d%H%M%S}_{rgt:04d}{cycle:02d}{region:02d}_{version}_{revision:02d}.h5"
    path = f"ATLAS/ATL06/{version}/{start:%Y/%m/%d}/{name}"
    iso = "%Y-%m-%dT%H:%M:%S.000Z"
    return {
        "meta": {"concept-id": f"G{serial:010d}-{provider}", "provider-id": provider, "revision-id": 1},
        "umm": {
            "GranuleUR": name,
            "CollectionReference": {"ShortName": "ATL06", "Version": version},
            "TemporalExtent": {"RangeDateTime": {"BeginningDateTime": start.strftime(iso),
                                                 "EndingDateTime": end.strftime(iso)}},
            "RelatedUrls": [
                {"URL": f"https://data.nsidc.earthdatacloud.nasa.gov/nsidc-cumulus-prod-protected/{path}",
                 "Type": "GET DATA"},
                {"URL": f"s3://nsidc-cumulus-prod-protected/{path}", "Type": "GET DATA VIA DIRECT ACCESS"},
            ],
            "DataGranule": {
                "DayNightFlag": "Unspecified",
                "ArchiveAndDistributionInformation": [{"Name": name, "SizeInBytes": 60_000_000 + 1000 * rgt}],
            },
        },
    }


def fake_atl06_records(cycles: tuple[int, ...] = (21, 22, 23), rgts: range = range(1, 41),
                       regions: tuple[int, ...] = (10, 11, 12), *, version: str = "006",
                       serial_start: int = 1) -> list[dict]:
    """Records for every (cycle, rgt, region), except a few missing ones (every 7th RGT lacks region 11)."""
    out, serial = [], serial_start
    for cycle in cycles:
        for rgt in rgts:
            for region in regions:
                if region == 11 and rgt % 7 == 0:
                    continue
                out.append(fake_atl06_record(cycle, rgt, region, version=version, serial=serial))
                serial += 1
    return out
