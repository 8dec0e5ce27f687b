"""Filesystem options shared by every reader and writer of remote objects (fsspec, s3fs)."""

from __future__ import annotations

import os


def fsspec_options(url: str, storage_options: dict | None = None) -> dict:
    """fsspec options for `url`, with the S3 endpoint from the environment made explicit.

    s3fs, like every botocore client, already honours AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. Passing
    the endpoint explicitly only makes it part of fsspec's instance-cache key, so a process whose
    environment changes endpoint (tests, notebooks) never reuses a filesystem bound to the old one.
    Credentials are never added here: they stay with botocore's credential chain.
    """
    options = dict(storage_options or {})
    if not url.startswith(("s3://", "s3a://")):
        return options
    if "endpoint_url" in options or "endpoint_url" in (options.get("client_kwargs") or {}):
        return options
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


class EndpointUnreachable(ConnectionError):
    """An object-store endpoint that does not answer: the run stops (resume finishes it) instead of
    failing every granule after its own timeouts and retries."""
