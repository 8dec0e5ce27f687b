"""Temporary-credential S3 for tests: an Earthdata-style credentials endpoint and a token-checking proxy.

``CredentialsEndpoint`` speaks NSIDC's ``s3credentials`` protocol on 127.0.0.1: ``GET /s3credentials``
with ``Authorization: Bearer <token>`` answers fresh random ``accessKeyId`` / ``secretAccessKey`` /
``sessionToken`` and an ``expiration`` (``YYYY-MM-DD HH:MM:SS+00:00``, UTC). ``TokenCheckingProxy``
sits in front of a moto server and, like S3 with temporary credentials, refuses any request whose
``x-amz-security-token`` (header, or query parameter of a presigned URL) is missing, unknown or
expired, with the error XML S3 sends; everything else is forwarded unchanged (Host included: SigV4
signs it, and moto does not check signatures).

    with CredentialsEndpoint(lifetime_s=60, bearer_token="edl-token") as creds, \\
            TokenCheckingProxy(moto_url, creds) as proxy:
        ... GET creds.url with the bearer, then boto3.client("s3", endpoint_url=proxy.url, ...) ...
        proxy.forwarded, proxy.refused, proxy.tokens_seen

Expiry is to the second: a credential stops working at exactly the published ``expiration``, which
is ``now + lifetime_s`` rounded up to a whole second (a credential lives at least ``lifetime_s``).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import math
import re
import secrets as _random
import socket
import string
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

EXPIRATION_FORMAT = "%Y-%m-%d %H:%M:%S+00:00"  # as NSIDC sends it; datetime.fromisoformat parses it

# headers that describe one hop of a connection, not the request; never forwarded as they are
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
}
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/|^AWS ([^:\s]+):")  # SigV4 | SigV2 Authorization
_BLOCK = 1 << 16


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that can drop its open client connections when closed."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # many clients connecting at once must not see SYN drops

    def __init__(self, handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is no error worth printing
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive handler that registers its socket with the server and logs nothing."""

    protocol_version = "HTTP/1.1"
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no stderr logging
        pass

    def send_body(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None,
                  head: bool = False) -> None:
        """Answer with a complete body (omitted for HEAD, as HTTP wants; Content-Length still says it)."""
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _ServerBase:
    """Start/stop plumbing shared by both servers (context manager, `.close()`)."""

    _handler: type[_Handler]

    def __init__(self) -> None:
        self._server = _Server(self._handler, self)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        self._closed = False

    def close(self) -> None:
        """Stop accepting, drop open connections, release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the credentials endpoint ---------------------------------------------------------------------
def _random_string(alphabet: str, length: int) -> str:
    return "".join(_random.choice(alphabet) for _ in range(length))


class _CredentialsHandler(_Handler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802
        owner: CredentialsEndpoint = self.server.owner
        if urlsplit(self.path).path != "/s3credentials":
            self._json(404, {"error": "not found"})
            return
        if self.headers.get("Authorization", "") != f"Bearer {owner.bearer_token}":
            with owner._lock:
                owner.unauthorized += 1
            self._json(401, {"error": "Unauthorized",
                             "error_description": "a valid Earthdata Login bearer token is required"})
            return
        self._json(200, owner._issue())

    def do_POST(self) -> None:  # noqa: N802
        self._json(405, {"error": "method not allowed"})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_body(status, json.dumps(payload).encode(), "application/json")


class CredentialsEndpoint(_ServerBase):
    """NSIDC-style ``/s3credentials`` on 127.0.0.1 issuing credentials that live ``lifetime_s`` seconds.

    Attributes: ``url`` (of ``/s3credentials``), ``issued`` (copies of every credential answered),
    ``fetches`` (credentials answered), ``unauthorized`` (401 answers), ``lifetime_s`` (may be changed).
    """

    _handler = _CredentialsHandler

    def __init__(self, lifetime_s: float, bearer_token: str) -> None:
        if lifetime_s <= 0:
            raise ValueError("lifetime_s must be positive")
        self.lifetime_s = float(lifetime_s)
        self.bearer_token = bearer_token
        self.unauthorized = 0
        self._lock = threading.Lock()
        self._issued: list[dict[str, str]] = []
        self._expiry: dict[str, float] = {}  # session token -> epoch second it stops working
        self._key_of: dict[str, str] = {}  # session token -> its access key id
        super().__init__()
        self.url = f"http://{self.host}:{self.port}/s3credentials"

    @property
    def issued(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(c) for c in self._issued]

    @property
    def fetches(self) -> int:
        with self._lock:
            return len(self._issued)

    def _issue(self) -> dict[str, str]:
        expiry = math.ceil(time.time() + self.lifetime_s)
        credential = {
            "accessKeyId": "ASIA" + _random_string(string.ascii_uppercase + string.digits, 16),
            "secretAccessKey": _random_string(string.ascii_letters + string.digits + "+/", 40),
            "sessionToken": base64.b64encode(_random.token_bytes(150)).decode(),  # 200 chars, with + and /
            "expiration": dt.datetime.fromtimestamp(expiry, dt.timezone.utc).strftime(EXPIRATION_FORMAT),
        }
        with self._lock:
            self._issued.append(dict(credential))
            self._expiry[credential["sessionToken"]] = float(expiry)
            self._key_of[credential["sessionToken"]] = credential["accessKeyId"]
        return credential

    def expires_at(self, token: str) -> float | None:
        """Epoch second at which an issued token stops working; None for a token never issued."""
        with self._lock:
            return self._expiry.get(token)

    def access_key_of(self, token: str) -> str | None:
        """Access key id issued together with ``token`` (None if never issued)."""
        with self._lock:
            return self._key_of.get(token)

    def valid_token(self, token: str, at: float | dt.datetime | None = None) -> bool:
        """Whether ``token`` was issued and has not expired at ``at`` (epoch seconds or datetime; now)."""
        expiry = self.expires_at(token)
        if expiry is None:
            return False
        if at is None:
            at = time.time()
        elif isinstance(at, dt.datetime):
            at = at.timestamp()
        return at < expiry

    def secrets(self) -> list[str]:
        """Every access key id, secret and session token issued so far, and the bearer token."""
        with self._lock:
            values = [c[k] for c in self._issued for k in ("accessKeyId", "secretAccessKey", "sessionToken")]
        return values + [self.bearer_token]


# --- the token-checking proxy ---------------------------------------------------------------------
_S3_ERRORS = {
    "AccessDenied": "Access Denied",
    "ExpiredToken": "The provided token has expired.",
    "InvalidToken": "The provided token is malformed or otherwise invalid.",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
}


def _s3_error_xml(code: str, token: str | None, request_id: str) -> bytes:
    token_part = ""
    if token and code in ("ExpiredToken", "InvalidToken"):  # S3 echoes the token it refuses
        token_part = f"<Token-0>{escape(token)}</Token-0>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{_S3_ERRORS[code]}</Message>{token_part}"
        f"<RequestId>{request_id}</RequestId><HostId>{request_id}</HostId></Error>"
    ).encode()


class _ProxyHandler(_Handler):
    server: _Server

    def parse_request(self) -> bool:
        self._verdict: str | None = None
        self._checked = False
        self._upstream_conn: http.client.HTTPConnection | None = getattr(self, "_upstream_conn", None)
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # like S3: a refused upload gets its error instead of "100 Continue", and no body is read
        self._verdict, self._checked = self._check(), True
        if self._verdict is not None:
            self.close_connection = True  # the body may still come; this connection is done
            self._refuse(self._verdict)
            return False
        return super().handle_expect_100()

    def finish(self) -> None:
        if getattr(self, "_upstream_conn", None) is not None:
            self._upstream_conn.close()
            self._upstream_conn = None
        super().finish()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method is forwarded
            return self._handle
        raise AttributeError(name)

    # the checks
    def _token(self) -> str | None:
        token = self.headers.get("x-amz-security-token")
        if token:
            return token
        for key, value in parse_qsl(urlsplit(self.path).query, keep_blank_values=True):
            if key.lower() == "x-amz-security-token" and value:
                return value
        return None

    def _access_key(self) -> str | None:
        match = _CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
        if match:
            return match.group(1) or match.group(2)
        for key, value in parse_qsl(urlsplit(self.path).query):
            if key.lower() in ("x-amz-credential", "awsaccesskeyid"):  # presigned: SigV4, SigV2
                return value.split("/", 1)[0]
        return None

    def _check(self) -> str | None:
        """None when the request may go upstream, else the S3 error code to refuse it with."""
        owner: TokenCheckingProxy = self.server.owner
        credentials: CredentialsEndpoint = owner.credentials
        token = self._token()
        if token is None:
            bucket = urlsplit(self.path).path.lstrip("/").split("/", 1)[0]
            if owner.static_keys.get(self._access_key() or "") == bucket:
                return None  # an account's own long-term key, admitted on its one bucket only
            return "AccessDenied"
        if credentials.expires_at(token) is None:
            return "InvalidToken"
        if not credentials.valid_token(token):
            return "ExpiredToken"
        key = self._access_key()
        if key is not None and key != credentials.access_key_of(token):
            return "InvalidAccessKeyId"  # a key paired with another credential's token
        return None

    def _refuse(self, code: str) -> None:
        owner: TokenCheckingProxy = self.server.owner
        owner._count_refusal(self.command, urlsplit(self.path).path, code)
        request_id = uuid.uuid4().hex[:16].upper()
        body = _s3_error_xml(code, self._token(), request_id)
        ids = {"x-amz-request-id": request_id, "x-amz-id-2": request_id}
        self.send_body(403, body, "application/xml", ids, head=self.command == "HEAD")

    # the request body
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields are dropped
                    return b"".join(parts)
                parts.append(self._read_exactly(size))
                self.rfile.readline(65537)  # the CRLF after the chunk
        return self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size) if size else b""
        if len(data) != size:
            raise ConnectionError("client closed the connection inside a request body")
        return data

    # forwarding
    def _handle(self) -> None:
        owner: TokenCheckingProxy = self.server.owner
        verdict = self._verdict if self._checked else self._check()
        try:
            body = self._read_body()
        except (ConnectionError, ValueError, OSError):
            self.close_connection = True
            return
        if verdict is not None:
            self._refuse(verdict)
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        if body or self.command in ("PUT", "POST"):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        try:
            response = self._upstream(headers, body)
        except (OSError, http.client.HTTPException) as exc:
            self.close_connection = True
            message = f"upstream S3 unreachable: {type(exc).__name__}".encode()
            self.send_body(502, message, "text/plain", head=self.command == "HEAD")
            return
        owner._count_forward(self._token())
        try:
            self._relay(response)
        except (OSError, http.client.HTTPException):  # client gone, or upstream cut the body short
            self.close_connection = True
        finally:
            if not response.isclosed() or response.will_close:
                self._drop_upstream()

    def _upstream(self, headers: list[tuple[str, str]], body: bytes) -> http.client.HTTPResponse:
        """Send the request to moto on this client connection's upstream connection (one retry if stale)."""
        for attempt in (0, 1):
            reused = self._upstream_conn is not None
            if self._upstream_conn is None:
                owner: TokenCheckingProxy = self.server.owner
                self._upstream_conn = http.client.HTTPConnection(owner._up_host, owner._up_port, timeout=120)
            conn = self._upstream_conn
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body if body else None)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self._drop_upstream()
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        if self._upstream_conn is not None:
            self._upstream_conn.close()
            self._upstream_conn = None

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """The upstream answer (status, headers, body) to the client; streamed when its length is known."""
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        length = response.getheader("Content-Length")
        chunks: list[bytes] | None = None
        if not no_body and length is None:  # chunked or close-delimited upstream: buffer it, send a length
            chunks = [response.read()]
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or (chunks is not None and lower == "content-length"):
                continue
            self.send_header(name, value)
        if chunks is not None:
            self.send_header("Content-Length", str(len(chunks[0])))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if no_body:
            response.read()
        elif chunks is not None:
            self.wfile.write(chunks[0])
        else:
            while block := response.read(_BLOCK):
                self.wfile.write(block)


class TokenCheckingProxy(_ServerBase):
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` (moto) admitting only current session tokens.

    Attributes: ``url``; ``forwarded`` (requests sent upstream), ``refused`` (list of (method, path,
    S3 error code), path without the query), ``tokens_seen`` (tokens of forwarded requests).
    Refusals: no token -> ``AccessDenied``; never issued -> ``InvalidToken``; expired -> ``ExpiredToken``;
    a token with another credential's access key -> ``InvalidAccessKeyId``; all 403 with S3's error XML.
    """

    _handler = _ProxyHandler

    def __init__(self, upstream: str, credentials: CredentialsEndpoint) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self.credentials = credentials
        self._up_host, self._up_port = parts.hostname, parts.port or 80
        self._lock = threading.Lock()
        self._forwarded = 0
        self._refused: list[tuple[str, str, str]] = []
        self._tokens: set[str] = set()
        # long-term access key -> the one bucket it may use without a session token (see `allow_static`)
        self.static_keys: dict[str, str] = {}
        super().__init__()
        self.url = f"http://{self.host}:{self.port}"

    def allow_static(self, access_key: str, bucket: str) -> None:
        """Admit requests signed with `access_key` and no session token, on `bucket` only (e.g. Lithops'
        own storage bucket, reached on Lambda with the account's identity, not the run's credentials)."""
        self.static_keys[access_key] = bucket

    @property
    def forwarded(self) -> int:
        with self._lock:
            return self._forwarded

    @property
    def refused(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._refused)

    @property
    def tokens_seen(self) -> set[str]:
        with self._lock:
            return set(self._tokens)

    def _count_forward(self, token: str | None) -> None:
        with self._lock:
            self._forwarded += 1
            if token:
                self._tokens.add(token)

    def _count_refusal(self, method: str, path: str, code: str) -> None:
        with self._lock:
            self._refused.append((method, path, code))
