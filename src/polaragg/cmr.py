"""Search NASA CMR for granules once, through earthaccess, with timeouts, retries and a wall bound.

What is used, and why
---------------------
The query is an ``earthaccess.DataGranules`` object (earthaccess's public granule query builder,
a python-cmr ``GranuleQuery`` underneath). Every HTTP request is made by earthaccess itself, in
``DataGranules.get``, through the query's public ``session`` attribute. This module only:

* points the query at the configured host with python-cmr's public ``mode(url)`` (the base URL
  ``{scheme}://{host}/search/``; earthaccess appends ``granules.umm_json``). ``earthaccess.search_data``
  cannot be used for this: it always targets the CMR of the global ``earthaccess.__auth__`` (production
  unless ``earthaccess.login(system=...)`` ran, which contacts Earthdata Login, builds a ``Store`` and
  probes the EC2 metadata address), it makes two extra ``page_size=0`` "hits" requests, and it has no
  way to choose the page size;
* replaces ``query.session`` with :class:`_CmrSession`, a ``requests.Session`` subclass that gives every
  request a (connect, read) timeout, streams the body under a per-request deadline, retries transient
  failures (HTTP 429/500/502/503/504, refused/reset/dropped connections, timeouts) with capped
  exponential backoff and full jitter (the package's one retry policy, ``retry.retrying``, honouring a
  server's ``Retry-After`` up to the cap), fails at once on other HTTP errors (400, 404, ...) and enforces
  ``total_timeout`` on the whole search. earthaccess sets no timeout of its own, so without this a
  silent server hangs the search forever;
* drives the paging. ``DataGranules.get(limit)`` always uses ``page_size = min(limit, 2000)``, so
  ``get(page_size)`` fetches exactly one page. The session records each page's ``CMR-Hits`` and
  ``CMR-Search-After`` response headers, and the next page is requested by putting the
  ``cmr-search-after`` value into the query's public ``headers`` (which earthaccess sends on every
  request). A retried request re-sends the same ``cmr-search-after`` header, so a retry repeats exactly
  the page that failed, never the whole search.

The HTTP traffic of one search is therefore only
``GET {scheme}://{host}/search/granules.umm_json?short_name=..&version=..&provider=..&temporal[]=a,b
&bounding_box=W,S,E,N&readable_granule_name[]=PATTERN&options[readable_granule_name][pattern]=true
&page_size=N``, once per page, pages after the first carrying a ``cmr-search-after`` request header.
No collection lookup, no Earthdata Login call, nothing but the configured host.

Only public earthaccess / python-cmr names are used (``DataGranules``, ``mode``, ``session``,
``headers``, ``get``, ``short_name``, ``version``, ``provider``, ``temporal``, ``bounding_box``,
``granule_name``, ``Auth``), which are the same in earthaccess 0.17 and 0.19. Records are returned as
plain ``{"meta": ..., "umm": ...}`` dicts, so callers never touch ``DataGranule.size`` (a method in
0.17, a property in 0.19); use :func:`granule_size_bytes`, which reads the UMM.

Login is optional (CMR search of public collections needs none). With ``login_strategy`` set to
``"environment"`` or ``"netrc"``, an ``earthaccess.Auth`` is logged in (never ``earthaccess.login``,
which also contacts Earthdata Login for cookies and probes EC2 metadata) and its bearer token is sent as
``Authorization`` to the configured host only. Tokens never appear in log lines or error messages.

Limits: the per-request ``timeout`` bounds connecting, every socket read and the body download; a
server that trickles the *status line and headers* byte by byte is bounded only by the per-read timeout
(it is checked again as soon as the headers are complete). python-cmr does not URL-encode parameter
values, so granule-name patterns are restricted to ``[A-Za-z0-9_.-?*]``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import random
import re
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from .domain import RetryPolicy
from .retry import retrying

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_PAGE_SIZE = 2000  # CMR's limit
_LOGIN_STRATEGIES = ("environment", "netrc")
_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.\-?*]+$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class CmrQuery:
    """What to search for: one collection, optionally narrowed by time, name patterns and a box."""

    short_name: str = "ATL06"
    version: str | None = "006"
    provider: str | None = "NSIDC_CPRD"
    temporal: tuple[str, str] | None = None  # ISO strings; python-cmr formats them to whole seconds, UTC
    granule_name_patterns: tuple[str, ...] = ()  # e.g. ("ATL06_??????????????_????22??_*",), ORed
    bounding_box: tuple[float, float, float, float] | None = None  # W, S, E, N
    page_size: int = MAX_PAGE_SIZE


@dataclass(frozen=True)
class CmrSettings:
    """Where and how patiently to search."""

    host: str = "cmr.earthdata.nasa.gov"  # host[:port]; a local test server is e.g. "127.0.0.1:8765"
    scheme: str = "https"
    timeout: float = 30.0  # seconds per HTTP request (connect, each read, and the body download)
    total_timeout: float = 600.0  # wall bound on the whole search, retries and backoff included
    retries: int = 5  # further attempts per page after a transient failure
    backoff: float = 1.0  # base seconds; attempt n sleeps uniform(0, min(backoff_cap, backoff * 2**(n-1)))
    login_strategy: str | None = None  # "environment" | "netrc" | None (CMR search itself needs no login)
    backoff_cap: float = 30.0  # upper bound of one backoff sleep (also caps a server's Retry-After)


class CmrError(RuntimeError):
    """A CMR search that failed: the message names the host, what failed and the attempts made."""

    def __init__(
        self,
        message: str,
        *,
        host: str,
        attempts: int = 0,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.attempts = attempts
        self.status = status
        self.reason = reason


def search_granules(query: CmrQuery, settings: CmrSettings = CmrSettings()) -> list[dict]:
    """All UMM-G records (``{"meta": ..., "umm": ...}``) matching ``query``, every page, in CMR order.

    Raises ``ValueError`` for an invalid query or settings (before any network access) and
    :class:`CmrError` when the search fails or cannot finish within ``settings.total_timeout``.
    """
    _validate(query, settings)
    label = _host_label(settings)
    started = time.monotonic()
    deadline = started + settings.total_timeout
    token = _bearer_token(settings, label)

    import earthaccess  # imported lazily: only searching needs it

    session = _CmrSession(settings, deadline, label, token)
    try:
        q = _build_query(earthaccess, query, settings, session, label)
        records: list[dict] = []
        seen: set[str] = set()
        hits: int | None = None
        search_after: str | None = None
        pages = 0
        while True:
            if search_after is not None:
                q.headers["cmr-search-after"] = search_after
            session.page_headers = None
            page = _get_page(q, query.page_size, label, session)
            pages += 1
            headers = session.page_headers or {}
            hits = _int_or_none(headers.get("CMR-Hits"), hits)
            for granule in page:
                record = {"meta": granule.get("meta") or {}, "umm": granule.get("umm") or {}}
                key = record["meta"].get("concept-id") or record["umm"].get("GranuleUR")
                if key is not None and str(key) in seen:
                    logger.warning("CMR %s: duplicate granule %s dropped", label, key)
                    continue
                if key is not None:
                    seen.add(str(key))
                records.append(record)
            logger.debug(
                "CMR %s: page %d, %d items, %d/%s records", label, pages, len(page), len(records), hits
            )
            next_after = headers.get("CMR-Search-After")
            if len(page) < query.page_size or not next_after or (hits is not None and len(records) >= hits):
                break
            if next_after == search_after:
                raise CmrError(
                    f"CMR search on {label} failed: paging did not advance after page {pages} "
                    f"(same CMR-Search-After value returned twice)",
                    host=label, reason="paging stalled",
                )
            search_after = next_after
        if hits is not None and len(records) < hits:
            raise CmrError(
                f"CMR search on {label} failed: incomplete result, {len(records)} of {hits} granules "
                f"after {pages} page(s) (the collection may have changed during the search; search again)",
                host=label, reason="incomplete",
            )
        logger.info(
            "CMR %s: %d granules in %d page(s), %d request(s), %.2f s",
            label, len(records), pages, session.requests_made, time.monotonic() - started,
        )
        return records
    finally:
        session.close()


def granule_size_bytes(record: Mapping[str, Any], name: str | None = None) -> int | None:
    """Size in bytes of a UMM-G record's files, from ``SizeInBytes`` or ``Size`` + ``SizeUnit``.

    Reads ``DataGranule.ArchiveAndDistributionInformation``; with ``name`` (the granule's file name,
    with or without ``.h5``) only the matching entry counts when there is one, else all entries are
    summed. Units are binary (KB = 1024 B), as earthaccess assumes. ``None`` (unknown) when there is no
    entry or one has neither ``SizeInBytes`` nor a ``Size`` with a known unit: ``SizeUnit: "NA"`` or a
    missing unit is unknown, never taken as MB. Accepts a ``{"meta", "umm"}`` record or the ``umm`` itself.
    """
    umm = record.get("umm", record)
    infos = [i for i in ((umm.get("DataGranule") or {}).get("ArchiveAndDistributionInformation") or [])
             if isinstance(i, Mapping)]
    if name is not None:
        stem = name.removesuffix(".h5")
        named = [i for i in infos if isinstance(i.get("Name"), str) and i["Name"].removesuffix(".h5") == stem]
        infos = named or infos
    sizes = [_entry_bytes(i) for i in infos]
    if not sizes or any(s is None for s in sizes):
        return None
    return int(sum(sizes))


_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}


def _entry_bytes(info: Mapping[str, Any]) -> int | None:
    """Bytes of one ArchiveAndDistributionInformation entry, None when unknown."""
    for value, unit in ((info.get("SizeInBytes"), "B"), (info.get("Size"), info.get("SizeUnit"))):
        if value is None or isinstance(value, bool):
            continue
        factor = _SIZE_UNITS.get(str(unit).strip().upper()) if unit is not None else None
        try:
            size = float(value)
        except (TypeError, ValueError):
            continue
        if factor is not None and math.isfinite(size) and size >= 0:
            return int(round(size * factor))
    return None


# --------------------------------------------------------------------------------------------------
# query construction


def _validate(query: CmrQuery, settings: CmrSettings) -> None:
    if not query.short_name:
        raise ValueError("CmrQuery.short_name is required")
    if not 1 <= int(query.page_size) <= MAX_PAGE_SIZE:
        raise ValueError(f"CmrQuery.page_size must be in 1..{MAX_PAGE_SIZE}, got {query.page_size}")
    for pattern in query.granule_name_patterns:
        if not isinstance(pattern, str) or not _PATTERN_RE.match(pattern):
            raise ValueError(
                f"granule name pattern {pattern!r} may contain only letters, digits, '_', '.', '-', '?', '*'"
            )
    if query.bounding_box is not None:
        w, s, e, n = (float(v) for v in query.bounding_box)
        if not (-90 <= s <= n <= 90 and -180 <= w <= 180 and -180 <= e <= 180):
            raise ValueError(f"bounding_box must be (W, S, E, N) in degrees, got {query.bounding_box}")
    if settings.scheme not in ("http", "https"):
        raise ValueError(f"CmrSettings.scheme must be 'http' or 'https', got {settings.scheme!r}")
    if not isinstance(settings.host, str) or not _HOST_RE.match(settings.host):
        raise ValueError("CmrSettings.host must be host[:port] (no scheme, path, or user info)")
    for name in ("timeout", "total_timeout"):
        value = getattr(settings, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"CmrSettings.{name} must be a positive number of seconds, got {value!r}")
    if int(settings.retries) < 0:
        raise ValueError("CmrSettings.retries must be >= 0")
    if settings.backoff < 0 or settings.backoff_cap < 0:
        raise ValueError("CmrSettings.backoff and backoff_cap must be >= 0")
    if settings.login_strategy is not None and settings.login_strategy not in _LOGIN_STRATEGIES:
        raise ValueError(
            f"CmrSettings.login_strategy must be one of {_LOGIN_STRATEGIES} or None, got "
            f"{settings.login_strategy!r} (an interactive prompt is never used)"
        )


def _host_label(settings: CmrSettings) -> str:
    return f"{settings.scheme}://{settings.host}"


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _build_query(
    earthaccess: Any, query: CmrQuery, settings: CmrSettings, session: "_CmrSession", label: str
) -> Any:
    q = earthaccess.DataGranules()  # no Auth: no network access, production URL until mode() below
    for attr in ("mode", "get", "headers"):
        if not hasattr(q, attr):
            raise CmrError(
                f"CMR search on {label} failed: earthaccess {getattr(earthaccess, '__version__', '?')} "
                f"DataGranules has no {attr!r}; unsupported earthaccess version",
                host=label, reason="unsupported earthaccess",
            )
    q.mode(f"{settings.scheme}://{settings.host}/search/")
    default_session = getattr(q, "session", None)
    if isinstance(default_session, requests.Session):
        default_session.close()
    q.session = session
    q.short_name(query.short_name)
    if query.version:
        q.version(query.version)
    if query.provider:
        q.provider(query.provider)
    if query.temporal is not None:
        start, end = query.temporal
        q.temporal(start or None, end or None)
    if query.bounding_box is not None:
        q.bounding_box(*(float(v) for v in query.bounding_box))
    if query.granule_name_patterns:
        q.granule_name(list(query.granule_name_patterns))
    return q


def _get_page(q: Any, page_size: int, label: str, session: "_CmrSession") -> list:
    try:
        with warnings.catch_warnings():
            # earthaccess 0.17 builds each DataGranule by calling its deprecated size() method
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"earthaccess(\.|$)")
            return q.get(page_size)
    except CmrError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # JSON decode errors are ValueErrors
        raise CmrError(
            f"CMR search on {label} failed: unexpected response body ({type(exc).__name__})",
            host=label, attempts=session.page_attempts, reason="bad response",
        ) from exc
    except RuntimeError as exc:  # earthaccess wraps HTTP errors it sees; ours are raised before that
        raise CmrError(
            f"CMR search on {label} failed: {type(exc).__name__} from earthaccess",
            host=label, attempts=session.page_attempts, reason="earthaccess error",
        ) from exc


def _bearer_token(settings: CmrSettings, label: str) -> str | None:
    strategy = settings.login_strategy
    if strategy is None:
        return None
    if settings.scheme != "https" and not _is_loopback(settings.host):
        raise ValueError(f"refusing to send an Earthdata token over plain http to {label}")
    import earthaccess

    auth = earthaccess.Auth()
    try:
        auth.login(strategy=strategy)
    except Exception as exc:  # never echo the exception text: it may quote a server response
        hint = ""
        unavailable = getattr(getattr(earthaccess, "exceptions", None), "LoginStrategyUnavailable", None)
        if unavailable is not None and isinstance(exc, unavailable):
            hint = " (credentials for this strategy are not configured)"
        raise CmrError(
            f"Earthdata login for CMR search on {label} failed with strategy {strategy!r}: "
            f"{type(exc).__name__}{hint}",
            host=label, reason="login",
        ) from None
    token = getattr(auth, "token", None)
    access = token.get("access_token") if isinstance(token, Mapping) else None
    if not access:
        raise CmrError(
            f"Earthdata login for CMR search on {label} with strategy {strategy!r} produced no token",
            host=label, reason="login",
        )
    return str(access)


def _int_or_none(value: Any, default: int | None) -> int | None:
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------------------------------
# HTTP: timeouts, retries, total bound


class _Transient(Exception):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out


class _CmrSession(requests.Session):
    """The session earthaccess makes its requests with: timeouts, retries, backoff, a deadline."""

    def __init__(self, settings: CmrSettings, deadline: float, label: str, token: str | None) -> None:
        super().__init__()
        self._settings = settings
        self._deadline = deadline
        self._label = label
        self._rng = random.Random()
        self.page_headers: Mapping[str, str] | None = None  # headers of the last successful response
        self.page_attempts = 0
        self.requests_made = 0
        self._last: _Transient | None = None  # the last transient failure of the current request
        try:
            import earthaccess

            version = getattr(earthaccess, "__version__", "")
        except Exception:  # pragma: no cover
            version = ""
        self.headers["User-Agent"] = f"polaragg (earthaccess {version})".replace(" ()", "")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    # requests.Session.get/post/... all go through request()
    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """One request under the shared retry policy: `retries` + 1 tries, full-jitter backoff, a deadline."""
        s = self._settings
        policy = RetryPolicy(int(s.retries) + 1, float(s.backoff), float(s.backoff_cap))
        self._last = None
        response: requests.Response | None = None
        for trial in retrying(
            policy,
            lambda exc: isinstance(exc, _Transient),
            wait=lambda state: self._backoff(policy, state.attempt_number, state.outcome.exception()),
            stop=self._past_deadline,
            before_sleep=lambda state: self._log_retry(state, policy),
            give_up=lambda state: self._give_up(state, policy),
        ):
            with trial:
                response = self._try(method, url, trial.retry_state.attempt_number, args, kwargs)
        assert response is not None
        return response

    def _try(self, method: str, url: str, attempt: int, args: tuple, kwargs: dict) -> requests.Response:
        """Try `attempt` (1-based) of a request, within what is left of the search's deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._total_timeout_error(attempt - 1, self._last)
        self.page_attempts = attempt
        budget = min(float(self._settings.timeout), remaining)
        try:
            return self._attempt(method, url, budget, attempt, args, kwargs)
        except _Transient as exc:
            self._last = exc
            raise

    def _timed_out_at_deadline(self, failure: BaseException | None) -> bool:
        """A try that timed out because the search's deadline cut its budget: no time is left to retry."""
        timed_out = isinstance(failure, _Transient) and failure.timed_out
        return timed_out and time.monotonic() >= self._deadline - 1e-3

    def _past_deadline(self, state: Any) -> bool:
        """Stop (besides the attempt limit) when the deadline is reached or the next backoff would pass it."""
        if self._timed_out_at_deadline(state.outcome.exception()):
            return True
        return time.monotonic() + state.upcoming_sleep >= self._deadline

    def _give_up(self, state: Any, policy: RetryPolicy) -> None:
        """The error for a request whose retries stopped: the deadline's, or that of the spent attempts."""
        attempt = state.attempt_number
        last = state.outcome.exception()
        if self._timed_out_at_deadline(last) or attempt < policy.attempts:
            raise self._total_timeout_error(attempt, last)
        raise CmrError(
            f"CMR search on {self._label} failed: {last.reason}; gave up after {attempt} attempt(s)",
            host=self._label, attempts=attempt, status=last.status, reason=last.reason,
        )

    def _log_retry(self, state: Any, policy: RetryPolicy) -> None:
        logger.warning(
            "CMR %s: attempt %d/%d failed (%s); retrying in %.2f s",
            self._label, state.attempt_number, policy.attempts, state.outcome.exception().reason,
            state.upcoming_sleep,
        )

    def _backoff(self, policy: RetryPolicy, attempt: int, failure: BaseException | None) -> float:
        """The policy's full-jitter delay, raised to a server's Retry-After (itself capped)."""
        delay = policy.delay(attempt, self._rng)
        retry_after = getattr(failure, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.cap_seconds))
        return delay

    def _total_timeout_error(self, attempts: int, last: _Transient | None) -> CmrError:
        tail = f"; last error: {last.reason}" if last is not None else ""
        return CmrError(
            f"CMR search on {self._label} failed: total timeout of {self._settings.total_timeout:g} s "
            f"exceeded after {attempts} attempt(s) for the current page{tail}",
            host=self._label, attempts=attempts, status=last.status if last else None,
            reason="total timeout",
        )

    def _attempt(self, method: str, url: str, budget: float, attempt: int,
                 args: tuple, kwargs: dict) -> requests.Response:
        kwargs = dict(kwargs)
        kwargs["timeout"] = (budget, budget)
        kwargs["stream"] = True
        attempt_deadline = time.monotonic() + budget
        self.requests_made += 1
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise CmrError(
                f"CMR search on {self._label} failed: TLS error ({type(exc).__name__}); not retried",
                host=self._label, attempts=attempt, reason="tls",
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise _Transient(f"connect timeout after {budget:g} s", timed_out=True) from None
        except requests.exceptions.ReadTimeout:
            raise _Transient(f"timeout after {budget:g} s waiting for a response", timed_out=True) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(_describe_connection_error(exc)) from None
        except requests.exceptions.RequestException as exc:
            raise CmrError(
                f"CMR search on {self._label} failed: request error ({type(exc).__name__}); not retried",
                host=self._label, attempts=attempt, reason="request error",
            ) from None
        try:
            body = _read_body(response, attempt_deadline, budget)
        except BaseException:
            response.close()
            raise
        status = response.status_code
        if 200 <= status < 300:
            self.page_headers = response.headers
            response._content = body  # the body was streamed under our deadline; hand it over
            response._content_consumed = True
            return response
        detail = _error_detail(body)
        if status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {status}{detail}", status=status,
                             retry_after=_retry_after(response.headers.get("Retry-After")))
        raise CmrError(
            f"CMR search on {self._label} failed: HTTP {status}{detail}; not retried (attempt {attempt})",
            host=self._label, attempts=attempt, status=status, reason=f"HTTP {status}",
        )


def _read_body(response: requests.Response, deadline: float, budget: float) -> bytes:
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2.3: returns what is available, one socket read
    chunks: list[bytes] = []
    try:
        while True:
            if time.monotonic() > deadline:
                raise _Transient(f"response not complete within {budget:g} s", timed_out=True)
            reader = read1 if read1 is not None else raw.read
            chunk = reader(_READ_CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError:
        raise _Transient(f"timeout after {budget:g} s reading the response", timed_out=True) from None
    except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
        raise _Transient(f"connection dropped while reading the response ({type(exc).__name__})") from None
    return b"".join(chunks)


def _describe_connection_error(exc: BaseException) -> str:
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(item, http.client.RemoteDisconnected):
            return "connection closed by the server without a response"
        if isinstance(item, socket.gaierror):
            return "host name lookup failed"
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        linked = (getattr(item, "reason", None), item.__cause__, item.__context__)
        stack.extend(x for x in linked if x is not None)
    return f"connection error ({type(exc).__name__})"


def _error_detail(body: bytes) -> str:
    """A short, single-line excerpt of a CMR error body (CMR answers ``{"errors": [...]}``)."""
    if not body:
        return ""
    try:
        errors = json.loads(body.decode("utf-8", "replace")).get("errors")
        text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
    except Exception:
        text = ""
    if not text:
        text = body[:200].decode("utf-8", "replace")
    text = " ".join(text.split())
    return f": {text[:200]}" if text else ""


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
