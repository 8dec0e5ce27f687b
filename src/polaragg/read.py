"""Granule readers behind one interface: h5py (local files, fsspec) and h5coro (file, S3, HTTPS byte ranges).

A reader lists the beam groups present and reads whole variables or half-open row ranges
(hyperslices) of `/gtx/land_ice_segments/*`. Every reader is a context manager: the caller closes
every granule it opens, which matters for h5coro, whose cache lines live until `close()`.

Remote granules go through a circuit breaker per endpoint (process-wide): after `BREAKER.threshold`
consecutive connection failures, opens and reads of that endpoint raise `fs.EndpointUnreachable` at
once, with one message naming the endpoint, instead of each paying its own timeouts and retries.
Any answer from the endpoint (data, or an error response) closes the breaker again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

from .chunks import INFLATE_ERRORS, read_column
from .fs import S3_CLIENT_CONFIG, EndpointUnreachable, public_url, s3_endpoint
from .products import atl06

ReaderName = Literal["h5py", "h5coro"]

log = logging.getLogger(__name__)

# Granules opened in this process, by URL: lets tests and notebooks check that a computation read
# only the granules it needed.
OPENS: Counter[str] = Counter()
_OPENS_LOCK = threading.Lock()


class GranuleError(RuntimeError):
    """A granule could not be read. `transient` says whether retrying may help."""

    def __init__(self, url: str, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.transient = transient


class Granule(Protocol):
    url: str

    def beams(self) -> tuple[str, ...]: ...

    def read(
        self, beam: str, variables: tuple[str, ...], rows: tuple[int, int] | None = None
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Granule": ...

    def __exit__(self, *exc: object) -> None: ...


def open_granule(url: str, reader: ReaderName = "h5py", storage_options: dict | None = None) -> Granule:
    """Open a granule by local path, `s3://bucket/key` or `https://...` URL with the named reader.

    Raises `GranuleError`, or `fs.EndpointUnreachable` when the granule's endpoint is known dead.
    """
    if reader not in ("h5py", "h5coro"):
        raise ValueError(f"unknown reader {reader!r}; expected 'h5py' or 'h5coro'")
    endpoint = endpoint_of(url, storage_options)
    if endpoint is not None:
        BREAKER.check(endpoint)
    with _OPENS_LOCK:
        OPENS[url] += 1
    cls = H5pyGranule if reader == "h5py" else H5coroGranule
    if endpoint is None:
        return cls(url, storage_options)
    return _Guarded(BREAKER.call(endpoint, lambda: cls(url, storage_options)), endpoint)


def endpoint_of(url: str, storage_options: dict | None = None) -> str | None:
    """The endpoint a granule URL is read from (`scheme://host[:port]`), None for local files."""
    if url.startswith(("s3://", "s3a://")):
        return s3_endpoint(storage_options)
    if url.startswith(("http://", "https://")):
        return public_url(url)
    return None


_CONNECTION_ERROR_NAMES = {
    # botocore, urllib3, requests, aiohttp: the endpoint did not answer (as opposed to answering an error)
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "NewConnectionError", "MaxRetryError", "ConnectTimeout", "ReadTimeout",
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
    "ClientOSError", "ConnectionError",
}


def is_connection_failure(exc: BaseException) -> bool:
    """Whether a failure (or anything in its chain of causes) means the endpoint did not answer."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)) and not isinstance(current, EndpointUnreachable):
            return True
        if type(current).__name__ in _CONNECTION_ERROR_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


class CircuitBreaker:
    """Consecutive connection failures per endpoint; open (failing at once) from `threshold` on.

    After `cooldown_s` an open endpoint is tried again: one more connection failure re-opens it at
    once, any answer closes it. Thread-safe; `clock` is injectable for tests.
    """

    def __init__(self, threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._opened: dict[str, tuple[float, str]] = {}  # endpoint -> (when, last failure)

    def failures(self, endpoint: str) -> int:
        return self._failures.get(endpoint, 0)

    def is_open(self, endpoint: str) -> bool:
        with self._lock:
            opened = self._opened.get(endpoint)
            return opened is not None and self._clock() - opened[0] < self.cooldown_s

    def check(self, endpoint: str) -> None:
        """Raise `EndpointUnreachable` if the endpoint is open (and not yet due for another try)."""
        with self._lock:
            opened = self._opened.get(endpoint)
            if opened is not None and self._clock() - opened[0] < self.cooldown_s:
                raise self._error(endpoint, opened[1])

    def success(self, endpoint: str) -> None:
        with self._lock:
            self._failures.pop(endpoint, None)
            self._opened.pop(endpoint, None)

    def failure(self, endpoint: str, exc: BaseException) -> EndpointUnreachable | None:
        """Count a connection failure; the error to raise instead once the breaker is open."""
        with self._lock:
            count = self._failures[endpoint] = self._failures.get(endpoint, 0) + 1
            if count < self.threshold:
                return None
            last = _root_name(exc)
            self._opened[endpoint] = (self._clock(), last)
            return self._error(endpoint, last)

    def call(self, endpoint: str, work: Callable[[], object]):
        """Run `work` (an open or a read of the endpoint) through the breaker."""
        self.check(endpoint)
        try:
            result = work()
        except EndpointUnreachable:
            raise
        except BaseException as exc:
            if not is_connection_failure(exc):
                self.success(endpoint)  # the endpoint answered, with an error about this object
                raise
            opened = self.failure(endpoint, exc)
            if opened is not None:
                raise opened from None
            raise
        self.success(endpoint)
        return result

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self._opened.clear()

    def _error(self, endpoint: str, last: str) -> EndpointUnreachable:
        return EndpointUnreachable(
            f"endpoint {endpoint} is unreachable: {self._failures.get(endpoint, self.threshold)} consecutive "
            f"connection failures (last: {last}); stopping instead of failing every granule - run again with "
            "--resume once it answers"
        )


def _root_name(exc: BaseException) -> str:
    """The type name of the innermost connection error in a chain of causes."""
    name = type(exc).__name__
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        if type(current).__name__ in _CONNECTION_ERROR_NAMES or isinstance(current, (ConnectionError, TimeoutError)):
            name = type(current).__name__
        current = current.__cause__ or current.__context__
    return name


BREAKER = CircuitBreaker()


class _Guarded:
    """A remote granule whose listings and reads go through the endpoint's circuit breaker."""

    def __init__(self, granule: "Granule", endpoint: str) -> None:
        self._granule = granule
        self._endpoint = endpoint
        self.url = granule.url

    def beams(self) -> tuple[str, ...]:
        return BREAKER.call(self._endpoint, self._granule.beams)

    def read(self, beam: str, variables: tuple[str, ...], rows: tuple[int, int] | None = None):
        return BREAKER.call(self._endpoint, lambda: self._granule.read(beam, variables, rows))

    def close(self) -> None:
        self._granule.close()

    def __enter__(self) -> "_Guarded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str):
        if name in ("_granule", "_endpoint"):  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self._granule, name)  # reader internals (e.g. h5coro's driver) for diagnostics


class _GranuleBase:
    url: str

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class H5pyGranule(_GranuleBase):
    """h5py reader: local files directly, remote URLs through fsspec file objects."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        # land_ice_segments groups by beam, as low-level ids: h5py's path lookups and Group objects cost
        # ~0.2 ms each, a fifth of the granule's HDF5 metadata work
        self._groups: dict[str, object] = {}
        import h5py

        self.url = url
        self._fileobj = None
        self._fd: int | None = None  # local files: whole columns are read from their raw chunks (chunks.py)
        remote = "://" in url and not url.startswith("file://")
        try:
            if remote:
                import fsspec

                from .fs import fsspec_options

                self._fileobj = fsspec.open(url, "rb", **fsspec_options(url, storage_options)).open()
                self._file = h5py.File(self._fileobj, "r")
            else:
                self._fd = os.open(url.removeprefix("file://"), os.O_RDONLY)
                self._file = h5py.File(url.removeprefix("file://"), "r")
        except BaseException as exc:
            if self._fileobj is not None:
                self._fileobj.close()
            if self._fd is not None:
                os.close(self._fd)
            if isinstance(exc, FileNotFoundError):
                raise GranuleError(url, "file not found") from exc
            if isinstance(exc, PermissionError):  # s3fs: AccessDenied and friends
                raise GranuleError(url, f"access denied ({exc})") from exc
            if isinstance(exc, OSError):
                raise GranuleError(url, f"not a readable HDF5 file ({exc})", transient=_is_transient(exc)) from exc
            if remote and isinstance(exc, Exception):  # botocore / aiohttp errors escaping s3fs
                raise GranuleError(url, f"cannot open ({type(exc).__name__}: {exc})",
                                   transient=_is_transient(exc)) from exc
            raise

    def beams(self) -> tuple[str, ...]:
        return tuple(b for b in atl06.BEAMS if self._segments(b) is not None)

    def _segments(self, beam: str):
        """The beam's land_ice_segments group (a low-level id), or None where the file has none."""
        import h5py

        if beam not in self._groups:
            fid, path = self._file.id, f"{beam}/{atl06.SEGMENTS_GROUP}".encode()
            present = fid.links.exists(beam.encode()) and fid.links.exists(path)
            self._groups[beam] = h5py.h5g.open(fid, path) if present else None
        return self._groups[beam]

    def read(
        self, beam: str, variables: tuple[str, ...], rows: tuple[int, int] | None = None
    ) -> dict[str, np.ndarray]:
        import h5py

        out: dict[str, np.ndarray] = {}
        sel = slice(None) if rows is None else slice(rows[0], rows[1])
        group = self._segments(beam)
        if group is None:
            raise GranuleError(self.url, f"missing group /{beam}/{atl06.SEGMENTS_GROUP}")
        for name in variables:
            path = atl06.dataset_path(beam, name)
            try:
                # Whole columns: the low-level dataset id is all the chunk reader needs (and cheaper).
                dset = h5py.h5d.open(group, name.encode())
                dset = dset if rows is None else h5py.Dataset(dset)
            except (KeyError, ValueError) as exc:
                raise GranuleError(self.url, f"missing variable {path}") from exc
            try:
                out[name] = read_column(dset, self._fd) if rows is None else dset[sel]
            except INFLATE_ERRORS as exc:
                raise GranuleError(self.url, f"cannot read {path} (corrupt chunk: {exc})") from exc
            except OSError as exc:
                raise GranuleError(self.url, f"cannot read {path} ({exc})", transient=_is_transient(exc)) from exc
            except Exception as exc:
                if self._fileobj is None:
                    raise
                # remote file objects can fail with botocore / aiohttp errors that are not OSErrors
                raise GranuleError(self.url, f"cannot read {path} ({type(exc).__name__}: {exc})",
                                   transient=_is_transient(exc)) from exc
        return out

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            if self._fileobj is not None:
                self._fileobj.close()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class H5coroGranule(_GranuleBase):
    """h5coro reader: concurrent byte-range reads from a local file, S3 or HTTPS."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        from h5coro import h5coro

        self.url = url
        if storage_options is None:
            from .fs import scoped_options

            storage_options = scoped_options(url)
        options = dict(storage_options or {})
        if url.startswith("s3://"):
            # A run's S3Options give credentials, endpoint and anonymity explicitly; otherwise they come
            # from the environment (botocore honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
            driver, resource = _s3_driver_class(), url.removeprefix("s3://")
            credentials = (storage_options.h5coro() if hasattr(storage_options, "h5coro")
                           else options.get("credentials") or _s3_credentials_from_env())
        elif url.startswith(("http://", "https://")):
            from h5coro import webdriver

            driver, resource, credentials = webdriver.HTTPDriver, url, options.get("credentials", {})
        else:
            from h5coro import filedriver

            resource = url.removeprefix("file://")
            if not os.path.exists(resource):
                raise GranuleError(url, "file not found")
            driver, credentials = filedriver.FileDriver, {}
        try:
            self._h5 = h5coro.H5Coro(resource, driver, credentials=credentials, errorChecking=True)
        except S3ReadError as exc:
            raise GranuleError(url, exc.reason, transient=exc.transient) from exc
        except Exception as exc:  # h5coro raises assorted types for unreadable superblocks
            raise GranuleError(url, f"not a readable HDF5 file ({exc})", transient=_is_transient(exc)) from exc
        self._beams: tuple[str, ...] | None = None

    def beams(self) -> tuple[str, ...]:
        if self._beams is None:
            try:
                _, _, groups = self._h5.list("/", w_attr=False)
            except S3ReadError as exc:
                raise GranuleError(self.url, exc.reason, transient=exc.transient) from exc
            except Exception as exc:
                raise GranuleError(self.url, f"cannot list groups ({exc})", transient=_is_transient(exc)) from exc
            self._beams = tuple(b for b in atl06.BEAMS if b in groups)
        return self._beams

    def read(
        self, beam: str, variables: tuple[str, ...], rows: tuple[int, int] | None = None
    ) -> dict[str, np.ndarray]:
        requests = []
        for name in variables:
            hyperslice = [] if rows is None else [[int(rows[0]), int(rows[1])]]
            requests.append({"dataset": atl06.dataset_path(beam, name), "hyperslice": hyperslice})
        try:
            promise = self._h5.readDatasets(requests, block=True)
        except S3ReadError as exc:
            raise GranuleError(self.url, exc.reason, transient=exc.transient) from exc
        except Exception as exc:
            raise GranuleError(self.url, f"cannot read beam {beam} ({exc})", transient=_is_transient(exc)) from exc
        out: dict[str, np.ndarray] = {}
        for name in variables:
            path = atl06.dataset_path(beam, name).lstrip("/")
            values = promise[path] if path in promise.keys() else None
            if values is None:
                # h5coro reports missing datasets and bad hyperslices as null results, not exceptions.
                raise GranuleError(self.url, f"missing or unreadable variable /{path}")
            out[name] = np.asarray(values)
        return out

    def close(self) -> None:
        self._h5.close()


def _s3_credentials_from_env() -> dict[str, str]:
    """Credentials for h5coro's S3 driver from the standard AWS variables.

    With AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set: the three-key dict the driver needs (its
    session token may be empty for long-term keys). Without them: an empty dict, which makes the
    driver open a default boto3 session (profile, container or instance role, web identity), the
    same chain s3fs uses.
    """
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return {}
    return {
        "aws_access_key_id": key,
        "aws_secret_access_key": secret,
        "aws_session_token": os.environ.get("AWS_SESSION_TOKEN", ""),
    }


class S3ReadError(OSError):
    """A failed S3 byte-range read, classified. Deliberately not a RuntimeError: h5coro turns
    RuntimeErrors raised inside its dataset threads into null results, losing the reason."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


_S3_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_S3_DENIED = {
    "AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "AllAccessDisabled", "AccountProblem",
}
# Credentials that expired in flight: a retry opens the granule again with the renewed ones.
_S3_EXPIRED = {"ExpiredToken", "TokenRefreshRequired", "RequestExpired"}
_S3_TRANSIENT = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
    "OperationAborted",
}


def classify_s3_error(exc: BaseException, bucket: str, key: str) -> S3ReadError:
    """A botocore failure of a GET on s3://bucket/key as a reason and a transient flag.

    The reason holds the error code and S3's fixed message only, never request details (the
    responses of signature errors echo the access key id).
    """
    import botocore.exceptions as bce

    where = f"s3://{bucket}/{key}"
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {}) or {}
        code = str(error.get("Code", "") or "")
        status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            return S3ReadError(f"bucket not found ({where}: NoSuchBucket)", transient=False)
        if code in _S3_NOT_FOUND or status == 404:
            return S3ReadError(f"object not found ({where}: {code or status})", transient=False)
        if code in _S3_EXPIRED:
            return S3ReadError(f"credentials expired ({where}: {code})", transient=True)
        if code in _S3_DENIED or status == 403:
            return S3ReadError(f"access denied ({where}: {code or status})", transient=False)
        if code in _S3_TRANSIENT or status in (429, 500, 502, 503, 504):
            return S3ReadError(f"S3 busy or failing ({where}: {code or status})", transient=True)
        if code == "InvalidRange" or status == 416:
            return S3ReadError(f"byte range beyond the end of the object, truncated file? ({where})",
                               transient=False)
        return S3ReadError(f"S3 error ({where}: {code or status})", transient=False)
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return S3ReadError(f"no usable AWS credentials for {where} ({type(exc).__name__})", transient=False)
    transient_types = (
        bce.ConnectionError,  # endpoint connection, connect timeouts, proxies
        bce.HTTPClientError,  # read timeouts, connections closed mid-response
        bce.IncompleteReadError,
        bce.ResponseStreamingError,
        TimeoutError,
        ConnectionError,
    )
    if isinstance(exc, transient_types) or _is_transient(exc):
        return S3ReadError(f"S3 connection failed ({where}: {type(exc).__name__})", transient=True)
    return S3ReadError(f"S3 read failed ({where}: {type(exc).__name__}: {exc})", transient=False)


_S3_DRIVER_CLASS = None
# boto3 sessions shared by the S3 drivers of this process, by credentials. A new session parses
# botocore's endpoint and service JSON again (~0.4 s, 80 % of opening a small granule); a client
# from a warm session takes ~5 ms and resolves the endpoint (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
# afresh. Sessions are not thread-safe, so clients are created under a lock (clients are).
_S3_SESSIONS: dict[tuple, object] = {}
_S3_SESSIONS_LOCK = threading.Lock()
_S3_SESSIONS_MAX = 4  # temporary credentials rotate; keep only the latest few


def _s3_driver_class():
    """h5coro's S3 driver, raising a classified `S3ReadError` where the stock one logs and returns
    None (which later surfaces as a TypeError with no reason), and reusing boto3 sessions."""
    global _S3_DRIVER_CLASS
    if _S3_DRIVER_CLASS is None:
        from botocore import UNSIGNED
        from botocore.config import Config
        from h5coro import s3driver

        class ClassifyingS3Driver(s3driver.S3Driver):
            def __init__(self, resource, credentials, session=None, max_connections=None):
                credentials = dict(credentials)
                endpoint, anon = credentials.pop("endpoint_url", None), credentials.pop("anon", False)
                key = (os.getpid(), tuple(sorted((str(k), str(v)) for k, v in credentials.items())))
                with _S3_SESSIONS_LOCK:
                    if session is None:
                        session = _S3_SESSIONS.get(key)
                    super().__init__(resource, credentials, session, max_connections)
                    if key not in _S3_SESSIONS:
                        while len(_S3_SESSIONS) >= _S3_SESSIONS_MAX:
                            _S3_SESSIONS.pop(next(iter(_S3_SESSIONS)))
                        _S3_SESSIONS[key] = self.session
                    # h5coro's own client, with polaragg's timeouts and retries (shared with s3fs)
                    unsigned = {"signature_version": UNSIGNED} if anon else {}
                    self.client = self.session.client("s3", use_ssl=False, endpoint_url=endpoint, config=Config(
                        max_pool_connections=self.max_connections, tcp_keepalive=True, **S3_CLIENT_CONFIG,
                        **unsigned))
                    self._extra = {k: v for k, v in (("endpoint_url", endpoint), ("anon", anon)) if v}

            def read(self, offset, size):
                if self._closed:
                    raise RuntimeError("S3Driver has been closed and cannot be used.")
                try:
                    response = self.client.get_object(
                        Bucket=self.bucket_name, Key=self.key, Range=f"bytes={offset}-{offset + size - 1}"
                    )
                    return response["Body"].read()
                except Exception as exc:
                    raise classify_s3_error(exc, self.bucket_name, self.key) from exc

            def copy(self, max_connections=None):
                return type(self)("/".join(self.resourcePath), {**self.cached_credentials, **self._extra},
                                  self.session, max_connections)

        _S3_DRIVER_CLASS = ClassifyingS3Driver
    return _S3_DRIVER_CLASS


_TRANSIENT_MARKERS = (
    "timed out",
    "timeout",
    "throttl",
    "slowdown",
    "slow down",
    "connection reset",
    "connection aborted",
    "connection refused",
    "temporarily unavailable",
    "503",
    "500 internal",
    "broken pipe",
)


def _is_transient(exc: BaseException) -> bool:
    """Whether an I/O failure looks like a flaky service (retry) rather than a bad file (record).

    Looks through the exception's causes: s3fs and h5py wrap the botocore or socket error that
    says what happened.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, (TimeoutError, ConnectionError)):
            return True
        boto = _botocore_transient(current)
        if boto is not None:
            return boto
        text = str(current).lower()
        if any(marker in text for marker in _TRANSIENT_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _botocore_transient(exc: BaseException) -> bool | None:
    """Transient or not for botocore errors; None for anything else."""
    import sys

    if "botocore" not in sys.modules:  # then exc cannot be a botocore error
        return None
    import botocore.exceptions as bce

    if isinstance(exc, bce.ClientError):
        code = str((exc.response.get("Error", {}) or {}).get("Code", "") or "")
        status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
        return code in _S3_TRANSIENT or status in (429, 500, 502, 503, 504)
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                        bce.ResponseStreamingError)):
        return True
    if isinstance(exc, bce.BotoCoreError):
        return False
    return None
