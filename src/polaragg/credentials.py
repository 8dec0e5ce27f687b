"""S3 credentials of a run: obtained on the client, sent with every task, current whenever they are used.

A run has two credential sets (`recipe.credentials`): `granules` for the buckets the granules are read
from and `store` for the output store, its ledger and partitions and Cubed's work_dir. Each becomes a
`TaskCredentials`, and each store or reader gets them inside an `S3Options` (the fsspec/s3fs options
dict every polaragg reader and writer, and Cubed's own Zarr access, already takes).

How they stay current:
- on the client a `CredentialSource` re-fetches them `refresh_margin_s` before they expire;
- a task carries a snapshot taken when it is serialized, i.e. when its batch is dispatched (Cubed's
  processes and Lithops pickle tasks per operation, Dask at submission), so tasks dispatched after a
  refresh get the new ones; in a worker process all tasks of a run share one `TaskCredentials` (a
  registry by run), which keeps the newest snapshot it has seen (Dask clusters are pushed new ones);
- with `workers_refresh` an Earthdata source also sends its login token, and a worker whose snapshot
  is about to expire fetches fresh credentials itself (Lambda workers cannot reach the client).

Secrets print as `***`; `redact` removes them from any message. Nothing here writes them anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .recipe import CredentialsConfig

logger = logging.getLogger(__name__)

SetName = Literal["granules", "store"]
FETCH_TIMEOUT_S = 10.0
FETCH_ATTEMPTS = 3

# ------------------------------------------------------------------------------------------------
# Credentials for workers
# ------------------------------------------------------------------------------------------------

_KEY_NAMES = ("accessKeyId", "AWS_ACCESS_KEY_ID", "aws_access_key_id", "AccessKeyId")
_SECRET_NAMES = ("secretAccessKey", "AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "SecretAccessKey")
_TOKEN_NAMES = ("sessionToken", "AWS_SESSION_TOKEN", "aws_session_token", "SessionToken")
_EXPIRY_NAMES = ("expiration", "Expiration", "AWS_CREDENTIAL_EXPIRATION")


class CredentialError(RuntimeError):
    """Credentials that are missing, malformed or cannot be fetched (message carries no secret)."""


class SecretDict(dict):
    """A dict of secrets that prints its keys only (`{'AWS_SECRET_ACCESS_KEY': '***', ...}`)."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '***'" for k in self) + "}"

    __str__ = __repr__


def _first(credentials: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = credentials.get(name)
        if value:
            return value
    return None


def _parts(credentials: Mapping[str, Any]) -> tuple[str, str, str | None]:
    key, secret = _first(credentials, _KEY_NAMES), _first(credentials, _SECRET_NAMES)
    if not key or not secret:
        missing = [n for n, v in (("access key id", key), ("secret access key", secret)) if not v]
        raise CredentialError(
            f"credentials lack the {' and '.join(missing)} (fields present: {sorted(credentials)})"
        )
    token = _first(credentials, _TOKEN_NAMES)
    return str(key), str(secret), (str(token) if token else None)


def worker_environment(credentials: Mapping[str, Any] | None, *, prefix: str = "") -> dict[str, str]:
    """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN for workers.

    Accepts NSIDC `s3credentials` answers (accessKeyId, secretAccessKey, sessionToken, expiration),
    AWS_* names, boto-style lower-case names or STS `Credentials`. `None` gives `{}`. `prefix` names
    the variables differently (e.g. "EARTHDATA_") so they do not replace the worker's own AWS identity.
    """
    if not credentials:
        return SecretDict()
    key, secret, token = _parts(credentials)
    env = SecretDict({f"{prefix}AWS_ACCESS_KEY_ID": key, f"{prefix}AWS_SECRET_ACCESS_KEY": secret})
    if token:
        env[f"{prefix}AWS_SESSION_TOKEN"] = token
    return env


def reader_credentials(credentials: Mapping[str, Any]) -> dict[str, str]:
    """The three-key dict h5coro's S3 driver takes (`storage_options={"credentials": ...}` of the
    h5coro reader): the way to hand Earthdata credentials to a task explicitly, e.g. on Lambda,
    where AWS_* variables are reserved for the function's own role."""
    key, secret, token = _parts(credentials)
    return SecretDict(aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token or "")


def credentials_expiry(credentials: Mapping[str, Any]) -> float | None:
    """Expiry as a POSIX timestamp, or None when the credentials do not say."""
    value = _first(credentials, _EXPIRY_NAMES)
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise CredentialError(f"credentials expiration is not a date: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _secret_values(credentials: Mapping[str, Any] | None) -> list[str]:
    if not credentials:
        return []
    names = _KEY_NAMES + _SECRET_NAMES + _TOKEN_NAMES
    return [str(v) for k, v in credentials.items() if k in names and v]


def redact(text: str, secrets: Iterable[str] | Mapping[str, Any] | None) -> str:
    """`text` with every occurrence of each secret (also URL-encoded) replaced by `***`.

    `secrets` may be strings or a credentials mapping (all its values are treated as secret, except
    an expiration). Strings shorter than 4 characters are ignored so that redaction cannot mangle a
    message.
    """
    if not secrets:
        return text
    if isinstance(secrets, Mapping):
        values = [v for k, v in secrets.items() if k not in _EXPIRY_NAMES]
    else:
        values = list(secrets)
    forms: set[str] = set()
    for value in values:
        if not isinstance(value, str) or len(value) < 4:
            continue
        forms.add(value)
        forms.add(urllib.parse.quote(value, safe=""))
        forms.add(urllib.parse.quote_plus(value))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


class CredentialSource:
    """Temporary credentials that are re-fetched shortly before they expire.

    `fetch()` returns a credentials mapping (e.g. `earthaccess.get_s3_credentials(daac="NSIDC")`,
    valid ~1 h). `get()` returns the current mapping, fetching anew when fewer than `margin_s`
    seconds (default 10 min) remain. Credentials without an expiration are taken to last
    `default_lifetime_s`. A failed refresh while the old credentials are still valid keeps them (with
    a warning); without valid credentials it raises `CredentialError`. Error messages are redacted.
    Thread-safe; `clock` (POSIX seconds) is injectable for tests.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        margin_s: float = 600.0,
        default_lifetime_s: float = 3600.0,
        min_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self.margin_s = margin_s
        self.default_lifetime_s = default_lifetime_s
        # after a refresh (or a failed one), wait this long before trying again within the margin
        self.min_interval_s = min(30.0, margin_s / 4) if min_interval_s is None else min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._current: dict[str, Any] | None = None
        self._expires_at: float | None = None
        self._fetched_at: float | None = None
        self._seen: list[str] = []
        self.fetches = 0
        self.generation = 0  # bumped whenever the current credentials change

    @property
    def expires_at(self) -> float | None:
        return self._expires_at

    def remaining(self) -> float:
        """Seconds until the current credentials expire (0 when there are none)."""
        if self._expires_at is None:
            return 0.0
        return max(0.0, self._expires_at - self._clock())

    def needs_refresh(self) -> bool:
        if self._current is None:
            return True
        remaining = self.remaining()
        if remaining <= 0:
            return True
        recently = self._fetched_at is not None and self._clock() - self._fetched_at < self.min_interval_s
        return remaining < self.margin_s and not recently

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self.needs_refresh():
                self._refresh()
            assert self._current is not None
            return SecretDict(self._current)

    def environment(self, *, prefix: str = "") -> dict[str, str]:
        """`worker_environment` of the current (refreshed if needed) credentials."""
        return worker_environment(self.get(), prefix=prefix)

    def reader_credentials(self) -> dict[str, str]:
        return reader_credentials(self.get())

    def last(self) -> dict[str, Any] | None:
        """The current credentials as they are, expired or not, without fetching."""
        with self._lock:
            return None if self._current is None else SecretDict(self._current)

    def offer(self, credentials: Mapping[str, Any], expires_at: float | None) -> bool:
        """Take `credentials` (valid until `expires_at`, None: they do not expire) if they outlast the
        current ones; returns whether they were taken."""
        until = float("inf") if expires_at is None else float(expires_at)
        with self._lock:
            if self._current is not None and self._expires_at is not None and until <= self._expires_at:
                return False
            _parts(credentials)
            self._seen.extend(v for v in _secret_values(credentials) if v not in self._seen)
            self._current = dict(credentials)
            self._expires_at = until  # not a fetch: a snapshot near its margin is renewed at once
            self.generation += 1
            return True

    def secrets(self) -> list[str]:
        """Every secret value seen so far (older ones too: they may linger in messages)."""
        return list(self._seen)

    def redact(self, text: str) -> str:
        return redact(text, self._seen)

    def _refresh(self) -> None:
        now = self._clock()
        problem = None
        try:
            fresh = dict(self._fetch())
            _parts(fresh)  # validates the fields
            expiry = credentials_expiry(fresh)
        except Exception as exc:  # noqa: BLE001
            problem = redact(f"{type(exc).__name__}: {exc}", self._seen)
        if problem is not None:
            if self._current is not None and self.remaining() > 0:
                logger.warning(
                    "could not refresh credentials (%s); keeping the current ones for %.0f s",
                    problem,
                    self.remaining(),
                )
                self._fetched_at = now  # wait min_interval_s before trying again
                return
            raise CredentialError(f"could not fetch credentials: {problem}")
        self.fetches += 1
        self.generation += 1
        self._seen.extend(v for v in _secret_values(fresh) if v not in self._seen)
        self._current = fresh
        self._fetched_at = now
        self._expires_at = expiry if expiry is not None else now + self.default_lifetime_s
        logger.info("fetched temporary credentials valid for %.0f s", self._expires_at - now)


# ------------------------------------------------------------------------------------------------
# Where credentials come from
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EarthdataFetcher:
    """Temporary S3 credentials from a DAAC's `s3credentials` endpoint, authorised by an Earthdata
    login token (`Authorization: Bearer`), with retries and backoff for a flaky service."""

    endpoint: str
    token: str = field(repr=False)
    token_env: str = "EARTHDATA_TOKEN"
    timeout_s: float = FETCH_TIMEOUT_S
    attempts: int = FETCH_ATTEMPTS

    def __call__(self) -> dict[str, Any]:
        from .domain import RetryPolicy
        from .retry import retrying

        host = urllib.parse.urlsplit(self.endpoint).netloc or self.endpoint
        for attempt in retrying(RetryPolicy(self.attempts, 0.5, 5.0), _transient_http):
            with attempt:
                return self._once(host)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, host: str) -> dict[str, Any]:
        request = urllib.request.Request(self.endpoint, headers={"Authorization": f"Bearer {self.token}",
                                                                 "Accept": "application/json"})
        try:  # never followed: a redirect would carry the token to another host (a login page, say)
            with _NO_REDIRECTS.open(request, timeout=self.timeout_s) as response:
                body = response.read(1_000_000)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise CredentialError(f"{host} redirected the request (HTTP {exc.code}) instead of answering with "
                                      f"credentials: the Earthdata login token in ${self.token_env} was not "
                                      "accepted; create a new one at https://urs.earthdata.nasa.gov") from None
            if exc.code in (401, 403):
                raise CredentialError(f"{host} refused the Earthdata login token in ${self.token_env} (HTTP "
                                      f"{exc.code}): create a new one at https://urs.earthdata.nasa.gov") from None
            raise _HTTPFailure(f"{host} answered HTTP {exc.code} {exc.reason}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _HTTPFailure(f"{host} is not reachable: {reason}", None) from None
        try:
            answer = json.loads(body)
            _parts(answer)
        except (ValueError, CredentialError, AttributeError, TypeError):
            raise CredentialError(f"{host} did not answer with S3 credentials (is {self.endpoint} an "
                                  "s3credentials endpoint?)") from None
        return SecretDict(answer)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None  # the 3xx surfaces as an HTTPError


_NO_REDIRECTS = urllib.request.build_opener(_NoRedirect)


def _https_or_local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")


class _HTTPFailure(CredentialError):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def _transient_http(exc: BaseException) -> bool:
    return isinstance(exc, _HTTPFailure) and (exc.status is None or exc.status == 429 or exc.status >= 500)


def client_chain() -> dict[str, Any]:
    """The client's own AWS credentials (environment, profile, SSO, role), as botocore resolves them."""
    import botocore.session

    found = botocore.session.Session().get_credentials()
    if found is None:
        raise CredentialError("no AWS credentials on this machine (environment, ~/.aws profile, SSO or role)")
    frozen = found.get_frozen_credentials()
    out: dict[str, Any] = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        out["AWS_SESSION_TOKEN"] = frozen.token
    expiry = getattr(found, "_expiry_time", None)
    if isinstance(expiry, datetime):
        out["expiration"] = expiry.isoformat()
    return SecretDict(out)


SESSION_SECONDS = 3600  # lifetime of the session credentials that stand in for long-term keys


def client_session() -> dict[str, Any]:
    """The client's chain as temporary credentials: long-term keys (no session token) are exchanged for
    session credentials (STS GetSessionToken, an hour), so no permanent key leaves the client inside a
    task; credentials that are temporary already are used as they are."""
    current = client_chain()
    if current.get("AWS_SESSION_TOKEN"):
        return current
    import boto3
    from botocore.config import Config

    try:
        sts = boto3.client("sts", aws_access_key_id=current["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=current["AWS_SECRET_ACCESS_KEY"],
                           config=Config(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 3}))
        issued = sts.get_session_token(DurationSeconds=SESSION_SECONDS)["Credentials"]
    except Exception as exc:  # noqa: BLE001 - one line, without the keys
        raise CredentialError(f"could not exchange this machine's long-term AWS keys for session credentials "
                              f"(sts:GetSessionToken: {type(exc).__name__}); tasks are sent temporary credentials "
                              "only: allow sts:GetSessionToken, use temporary credentials (SSO, a role), or set "
                              "the set's source to worker") from None
    expiration = issued["Expiration"]
    return SecretDict({"AWS_ACCESS_KEY_ID": issued["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": issued["SecretAccessKey"],
                       "AWS_SESSION_TOKEN": issued["SessionToken"],
                       "expiration": expiration.isoformat() if isinstance(expiration, datetime) else str(expiration)})


# ------------------------------------------------------------------------------------------------
# Credentials that travel with tasks
# ------------------------------------------------------------------------------------------------

_LIVE: dict[str, "TaskCredentials"] = {}  # this process's credentials by run set (see _restore)
_LIVE_LOCK = threading.Lock()


class TaskCredentials:
    """One credential set of a run, current whenever asked (`current()`, `s3fs()`, `h5coro()`).

    On the client it is backed by the source that fetches them; pickled (into a task) it becomes a
    snapshot of the credentials current at that moment, plus the worker-side fetcher when the set may
    refresh on workers. Unpickled, it is the one object of its set in that process (see `_restore`).
    """

    def __init__(self, name: SetName, source: CredentialSource, *, worker_fetch: Callable[[], Mapping] | None = None,
                 ident: str | None = None, remote: bool = False) -> None:
        self.name = name
        self.ident = ident or uuid.uuid4().hex
        self._source = source
        self._worker_fetch = worker_fetch
        self.remote = remote  # unpickled away from the client (a worker, a scheduler)
        with _LIVE_LOCK:
            _LIVE.setdefault(self.ident, self)

    def forget(self) -> None:
        """Drop this set from the process's registry (the client, once its run is over)."""
        with _LIVE_LOCK:
            if _LIVE.get(self.ident) is self:
                del _LIVE[self.ident]

    def current(self) -> dict[str, Any]:
        try:
            return self._source.get()
        except CredentialError as exc:
            raise CredentialError(f"credentials.{self.name}: {exc}") from None

    @property
    def generation(self) -> int:
        return self._source.generation

    @property
    def expires_at(self) -> float | None:
        return self._source.expires_at

    def s3fs(self) -> dict[str, str]:
        """key / secret / token for s3fs (`S3FileSystem(**...)`)."""
        key, secret, token = _parts(self.current())
        return SecretDict({"key": key, "secret": secret, **({"token": token} if token else {})})

    def secrets(self) -> list[str]:
        extra = [getattr(self._worker_fetch, "token", "")] if self._worker_fetch is not None else []
        return [s for s in self._source.secrets() + extra if s]

    def snapshot(self) -> tuple[dict[str, Any], float | None]:
        """The current credentials and their expiry (None: they do not expire)."""
        current = self.current()
        expiry = credentials_expiry(current)
        return dict(current), expiry

    def __reduce__(self):
        try:
            current, expiry = self.snapshot()
        except CredentialError:
            current = self._source.last() if self.remote else None
            if current is None:  # the client stops here: it could not renew them
                raise
            expiry = credentials_expiry(current)  # a Dask scheduler passes on the newest it holds
        return (_restore, (self.ident, self.name, current, expiry, self._worker_fetch, self._source.margin_s))

    def __repr__(self) -> str:
        return f"TaskCredentials({self.name!r}, ***)"


# Libraries that log request headers (session tokens, signatures) at DEBUG: capped at INFO in every
# process that holds credentials, whatever the host's logging says (Lithops' local runner logs at DEBUG).
CHATTY_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs")


def quiet_credential_loggers() -> None:
    for name in CHATTY_LOGGERS:
        log = logging.getLogger(name)
        if log.getEffectiveLevel() < logging.INFO:
            log.setLevel(logging.INFO)


def _restore(ident: str, name: SetName, current: dict, expiry: float | None,
             worker_fetch: Callable[[], Mapping] | None, margin_s: float) -> TaskCredentials:
    """The process's credentials of set `ident`, holding the newest snapshot seen (this one or an earlier)."""
    quiet_credential_loggers()
    with _LIVE_LOCK:
        live = _LIVE.get(ident)
    if live is None:
        # Without a fetcher this process waits for newer snapshots (later tasks, pushes) until expiry.
        fetch = worker_fetch if worker_fetch is not None else _CannotRenew(name)
        source = CredentialSource(fetch, margin_s=margin_s if worker_fetch is not None else 0.0)
        live = TaskCredentials(name, source, worker_fetch=worker_fetch, ident=ident, remote=True)
        with _LIVE_LOCK:
            live = _LIVE.setdefault(ident, live)
    if live.remote:  # the client's own set renews from its source; a snapshot of it adds nothing
        live._source.offer(current, expiry)
    return live


def receive(credentials: TaskCredentials) -> str:
    """Worker side of a push (`distributed.Client.run(receive, credentials)`): unpickling the argument
    already offered its snapshot to this process's set; returns the set's name."""
    return credentials.name


@dataclass(frozen=True)
class _CannotRenew:
    name: str

    def __call__(self) -> dict:
        raise CredentialError(f"the credentials sent with this task expired and a worker cannot renew them "
                              f"(raise credentials.{self.name}.refresh_margin_s above the longest task, or set "
                              "workers_refresh: true)")


def open_credentials(config: "CredentialsConfig", name: SetName, *, leaves_client: bool = False) -> TaskCredentials | None:
    """The credential set `config` describes, fetched once now (CredentialError, one line, if it cannot be);
    None for `worker` and `anonymous` (nothing is sent). `leaves_client`: tasks are pickled to other
    processes or machines, so the client's long-term keys are exchanged for session credentials."""
    if config.source in ("worker", "anonymous"):
        return None
    worker_fetch = None
    if config.source == "client":
        fetch: Callable[[], Mapping] = client_session if leaves_client else client_chain
    else:
        token = os.environ.get(config.token_env, "").strip()
        if not token:
            raise CredentialError(f"credentials.{name}: source earthdata needs an Earthdata login token in "
                                  f"${config.token_env} (create one at https://urs.earthdata.nasa.gov)")
        if not _https_or_local(config.endpoint_url):
            raise CredentialError(f"credentials.{name}.endpoint {config.endpoint_url} is not https: the Earthdata "
                                  "login token is sent only over https (or to this machine)")
        fetch = EarthdataFetcher(config.endpoint_url, token, config.token_env)
        worker_fetch = fetch if config.workers_refresh else None
    quiet_credential_loggers()
    credentials = TaskCredentials(name, CredentialSource(fetch, margin_s=config.refresh_margin_s),
                                  worker_fetch=worker_fetch)
    credentials.current()
    return credentials


class S3Options(dict):
    """fsspec / s3fs options whose `key`, `secret` and `token` are those of a `TaskCredentials` at the
    moment they are read: `**options`, `dict(options)` and iteration all see the current ones (the dict
    methods they use are synced; a plain `[]` lookup sees the values of the last sync). Pickles as its
    static options plus its credentials (which pickle as a snapshot); prints its keys only.
    """

    _SECRET_KEYS = ("key", "secret", "token")

    def __init__(self, static: Mapping[str, Any] | None = None, credentials: TaskCredentials | None = None) -> None:
        super().__init__({k: v for k, v in (static or {}).items() if k not in self._SECRET_KEYS})
        self.credentials = credentials
        self._lock = threading.Lock()
        for k in self._SECRET_KEYS:  # explicitly none until synced: the process's s3fs defaults never apply
            dict.__setitem__(self, k, None)

    def _sync(self) -> None:
        if self.credentials is None:
            return
        fresh = self.credentials.s3fs()
        with self._lock:  # the three change together
            dict.update(self, {k: fresh.get(k) for k in self._SECRET_KEYS})

    def keys(self):
        self._sync()
        return super().keys()

    def __iter__(self) -> Iterator[str]:
        self._sync()
        return super().__iter__()

    def items(self):
        self._sync()
        return super().items()

    def values(self):
        self._sync()
        return super().values()

    def copy(self) -> dict[str, Any]:
        return dict(self.items())

    def static(self) -> dict[str, Any]:
        return {k: v for k, v in dict.items(self) if k not in self._SECRET_KEYS}

    def h5coro(self) -> dict[str, Any]:
        """The credentials dict of polaragg's h5coro S3 driver: the three aws_* keys (none: the
        driver's own chain), plus `endpoint_url` and `anon` when set."""
        out: dict[str, Any] = {}
        if self.credentials is not None:
            key, secret, token = _parts(self.credentials.current())
            out = {"aws_access_key_id": key, "aws_secret_access_key": secret, "aws_session_token": token or ""}
        static = self.static()
        endpoint = static.get("endpoint_url") or (static.get("client_kwargs") or {}).get("endpoint_url")
        if endpoint:
            out["endpoint_url"] = endpoint
        if static.get("anon"):
            out["anon"] = True
        return SecretDict(out)

    def __reduce__(self):
        return (S3Options, (self.static(), self.credentials))

    def __repr__(self) -> str:
        shown = {k: ("***" if k in self._SECRET_KEYS and v else v) for k, v in dict.items(self)}
        return f"S3Options({shown!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class RunCredentials:
    """The two credential sets of a run and the S3 options built from them."""

    granules: TaskCredentials | None = None
    store: TaskCredentials | None = None
    anonymous: frozenset[str] = frozenset()

    def options(self, url: str, which: SetName) -> S3Options | None:
        """Options for an s3:// URL of the set `which` (None for any other URL)."""
        from .fs import fsspec_options

        if not url.startswith(("s3://", "s3a://")):
            return None
        static = fsspec_options(url, {})
        if which in self.anonymous:
            static["anon"] = True
        return S3Options(static, getattr(self, which))

    def scopes(self, store_prefixes: Iterable[str]) -> dict[str, S3Options]:
        """`fs.options_scope` entries: the store's prefixes get the store set, every other s3:// URL the
        granules set."""
        out: dict[str, S3Options] = {}
        granules = self.options("s3://", "granules")
        if granules is not None:
            out["s3://"] = granules
        for prefix in store_prefixes:
            options = self.options(prefix, "store")
            if options is not None:
                out[prefix] = options
        return out

    def sets(self) -> list[TaskCredentials]:
        return [c for c in (self.granules, self.store) if c is not None]

    def secrets(self) -> list[str]:
        return [s for c in self.sets() for s in c.secrets()]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())


def run_credentials(sections: Any, needs_granules: bool, needs_store: bool, *,
                    leaves_client: bool = False) -> RunCredentials:
    """The run's credential sets (`recipe.credentials`), fetched now; a set no S3 URL needs is not opened.
    `leaves_client`: see `open_credentials`."""
    anonymous = frozenset(n for n in ("granules", "store") if getattr(sections, n).source == "anonymous")
    granules = open_credentials(sections.granules, "granules", leaves_client=leaves_client) if needs_granules else None
    store = open_credentials(sections.store, "store", leaves_client=leaves_client) if needs_store else None
    return RunCredentials(granules, store, anonymous)


class _ProcessDefaults(S3Options):
    """S3Options that, wherever they are unpickled, become the process's fsspec defaults for s3://."""

    def __reduce__(self):
        return (_install_defaults, (self.static(), self.credentials))


_REPLACED: dict[str, Any] = {}  # fsspec defaults that process_defaults replaced, restored by clear_process_defaults


def _install_defaults(static: dict, credentials: TaskCredentials | None) -> S3Options:
    import fsspec.config

    for protocol in ("s3", "s3a"):
        previous = fsspec.config.conf.get(protocol)
        if previous is not None and not isinstance(previous, _ProcessDefaults):
            _REPLACED[protocol] = previous
    merged = {**dict(_REPLACED.get("s3") or {}), **static}
    options = _ProcessDefaults(merged, credentials)
    for protocol in ("s3", "s3a"):
        fsspec.config.conf[protocol] = options
    return options


def process_defaults(options: S3Options) -> S3Options:
    """`options` as the defaults of every s3fs filesystem made without options of its own, in this
    process and in every process the returned object is unpickled in: how the store's credentials reach
    Cubed's own Zarr accesses to its work_dir, which take no storage options. Polaragg's own readers and
    writers pass theirs explicitly (credentials or explicit None), so the defaults never replace them.
    Undo with `clear_process_defaults`."""
    return _install_defaults(options.static(), options.credentials)


def clear_process_defaults() -> None:
    import fsspec.config

    for protocol in ("s3", "s3a"):
        if isinstance(fsspec.config.conf.get(protocol), _ProcessDefaults):
            del fsspec.config.conf[protocol]
            if protocol in _REPLACED:
                fsspec.config.conf[protocol] = _REPLACED.pop(protocol)
