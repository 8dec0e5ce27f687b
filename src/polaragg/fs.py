"""Filesystem options shared by every reader and writer of remote objects (fsspec, s3fs, h5coro).

S3 clients get bounded connect and read timeouts and few retries, so a dead endpoint costs seconds,
not minutes, per request; `read.py` adds a circuit breaker over them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping

# botocore Config for every S3 client polaragg builds or configures (s3fs `config_kwargs`, h5coro's
# S3 driver): a TCP connect that does not finish in 3 s, or a response silent for 10 s, fails, and
# each request is tried at most 3 times (botocore's "standard" mode: the first try + 2 retries).
S3_CLIENT_CONFIG: dict = {"connect_timeout": 3, "read_timeout": 10, "retries": {"total_max_attempts": 3, "mode": "standard"}}


def fsspec_options(url: str, storage_options: dict | None = None) -> dict:
    """fsspec options for `url`, with the S3 endpoint from the environment made explicit.

    s3fs, like every botocore client, already honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. Passing
    the endpoint explicitly only makes it part of fsspec's instance-cache key, so a process whose
    environment changes endpoint (tests, notebooks) never reuses a filesystem bound to the old one.
    Credentials are never added here: they stay with botocore's credential chain. Timeouts and retries
    (`S3_CLIENT_CONFIG`) are added to `config_kwargs` where the caller did not set them.
    """
    if storage_options is None:
        storage_options = scoped_options(url)
    options = dict(storage_options or {})
    if not url.startswith(("s3://", "s3a://")):
        return options
    options["config_kwargs"] = {**S3_CLIENT_CONFIG, **(options.get("config_kwargs") or {})}
    if "endpoint_url" in options or "endpoint_url" in (options.get("client_kwargs") or {}):
        return options
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


_SCOPES: list[tuple[str, Mapping]] = []  # (URL prefix, options) of the runs in progress in this process
_SCOPES_LOCK = threading.Lock()


def scoped_options(url: str) -> Mapping | None:
    """The options a run in progress set for `url` (longest matching prefix), or None."""
    with _SCOPES_LOCK:  # the longest prefix; of equal ones, the latest entered
        matches = [(len(p), i, o) for i, (p, o) in enumerate(_SCOPES) if url.startswith(p)]
    return max(matches, key=lambda m: m[:2])[2] if matches else None


@contextlib.contextmanager
def options_scope(scopes: Mapping[str, Mapping]) -> Iterator[None]:
    """Within the block, calls that pass no storage options for a URL under one of the prefixes get
    that prefix's options: the client side of a run reaches its store and granules with the run's
    credentials without threading them through every call (tasks carry theirs explicitly)."""
    entries = [(p, o) for p, o in scopes.items()]
    with _SCOPES_LOCK:
        _SCOPES.extend(entries)
    try:
        yield
    finally:
        with _SCOPES_LOCK:
            for entry in entries:
                _SCOPES.remove(entry)


class EndpointUnreachable(ConnectionError):
    """An object-store endpoint that does not answer: the run stops (resume finishes it) instead of
    failing every granule after its own timeouts and retries."""


def s3_endpoint(storage_options: dict | None = None) -> str:
    """The S3 endpoint that a client configured by `fsspec_options` talks to, without credentials:
    the explicit or environment endpoint URL, else AWS's regional endpoint."""
    options = fsspec_options("s3://", storage_options)
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    if not endpoint:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        endpoint = f"https://s3.{region}.amazonaws.com" if region else "https://s3.amazonaws.com"
    return public_url(str(endpoint))


def public_url(url: str) -> str:
    """scheme://host[:port] of a URL: no user, password, path or query (which may carry secrets)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return parts.scheme or "unknown endpoint"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def put_whole(url: str, parts: list, storage_options: dict | None = None, *,
              in_place_if_new: bool = False) -> None:
    """Write the concatenation of `parts` (bytes-like) to `url`, whole or not at all (but see below).

    Local files are written beside their target and renamed over it; objects go in one PUT.

    `in_place_if_new`: a local file that does not exist yet is written in place instead, one directory
    entry rather than a temporary renamed over the target (two workers writing a store's chunks spent
    0.52 against 0.70 s of CPU in a one-cycle run's cell stage on this VM's ext4). A crash can leave such
    a file partial, so only for files whose completion something written after them records (a chunk:
    its task's ledger record; a partition: its granule's record); the redone write finds the file and
    replaces it whole.
    """
    if "://" not in url or url.startswith("file://"):
        path = url.removeprefix("file://")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            new = open(path, "xb") if in_place_if_new else None
        except FileExistsError:
            new = None
        if new is not None:
            with new:
                new.writelines(parts)
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.writelines(parts)
        os.replace(tmp, path)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **fsspec_options(url, storage_options))
    fs.pipe_file(path, b"".join(bytes(p) for p in parts))
