"""Cloud executors: Cubed on AWS Lambda (through Lithops) and Dask / Cubed on Coiled.

Everything here is configuration plus fail-fast checks; nothing contacts a cloud service until an
executor is actually built, and building one first checks, within a few seconds, that the service
can be reached at all (otherwise `ExecutorError` naming the service).

- `lithops_config(opts)` -> the Lithops config dict (compute `aws_lambda`, storage `aws_s3`);
  `lambda_executor(opts)` -> Cubed's `LithopsExecutor` after a reachability check of
  `lambda.<region>.amazonaws.com:443`.
- `coiled_cluster_kwargs(opts)` / `coiled_function_kwargs(opts)` -> keyword arguments for
  `coiled.Cluster(...)` / `coiled.function(...)`; `coiled_client(opts)` -> a `distributed.Client` on a
  new Coiled cluster; `coiled_functions_executor(opts)` -> Cubed's `CoiledExecutor`.
- Credentials for workers: `worker_environment(creds)` (AWS_* variables), `reader_credentials(creds)`
  (the dict h5coro's S3 driver takes), `CredentialSource` (re-fetches before expiry), and `redact(text,
  secrets)` for every message that might contain them. Values returned by these helpers print as `***`.

The options these functions take are the recipe's `LambdaOptions` / `CoiledOptions` (the
`executor.lambda` / `executor.coiled` sections, in `polaragg.recipe`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .credentials import (  # noqa: F401 - re-exported: the credential helpers workers use
    CredentialError,
    CredentialSource,
    SecretDict,
    _secret_values,
    credentials_expiry,
    reader_credentials,
    redact,
    worker_environment,
)
from .domain import ExecutorError

if TYPE_CHECKING:
    from .recipe import CoiledOptions, LambdaOptions

logger = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_S = 3.0
COILED_DEFAULT_SERVER = "https://cloud.coiled.io"


# ------------------------------------------------------------------------------------------------
# AWS Lambda through Lithops
# ------------------------------------------------------------------------------------------------

def lithops_config(opts: LambdaOptions, *, credentials_env: bool = True) -> dict[str, Any]:
    """The Lithops config dict: compute backend `aws_lambda`, storage backend `aws_s3`.

    With `credentials_env=True` (the default) the dict holds no secrets: Lithops (boto3) finds the
    account's credentials itself, from AWS_* variables, ~/.aws or an instance role. With False, the
    current AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN are written into the `aws`
    section (which prints as `***`); Lithops then ships them inside every invocation payload, so
    prefer the default.
    """
    lam: dict[str, Any] = {
        "region": opts.region,
        "runtime": opts.runtime,
        "runtime_memory": opts.memory_mb,
        "runtime_timeout": opts.timeout_s,
        "architecture": opts.architecture,
        "max_workers": opts.max_workers,
    }
    if opts.role_arn is not None:
        lam["execution_role"] = opts.role_arn
    s3: dict[str, Any] = {"region": opts.region}
    if opts.storage_bucket is not None:
        s3["storage_bucket"] = opts.storage_bucket
    aws: dict[str, str] = {"region": opts.region}
    if not credentials_env:
        env = {
            "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": os.environ.get("AWS_SESSION_TOKEN"),
        }
        aws = SecretDict(aws, **{k: v for k, v in env.items() if v})
    return {
        "lithops": {"backend": "aws_lambda", "storage": "aws_s3", "log_level": "WARNING"},
        "aws": aws,
        "aws_lambda": lam,
        "aws_s3": s3,
    }


def lambda_host(opts: LambdaOptions) -> str:
    return f"lambda.{opts.region}.amazonaws.com"


def lambda_preflight(
    opts: LambdaOptions, *, allowed_mem: int | None = None, timeout: float = PREFLIGHT_TIMEOUT_S
) -> str:
    """Check, creating nothing, that AWS Lambda can run the tasks; returns the Lambda host.

    Raises `ExecutorError` (one line naming AWS Lambda and its host) within ~2 x `timeout` seconds
    when the endpoint cannot be resolved or connected to, when no execution role is configured, when
    `allowed_mem` (Cubed's per-task memory, bytes) exceeds the function memory, or when Lithops is
    not installed.
    """
    host = lambda_host(opts)
    check_reachable(
        f"AWS Lambda ({host})",
        host,
        443,
        timeout=timeout,
        hint="check the network route to AWS, or run offline with executor 'lithops-local'",
    )
    if opts.role_arn is None:
        raise ExecutorError(
            "AWS Lambda needs an execution role: set executor.lambda.role_arn to the ARN of the IAM role "
            "the functions run as (see deploy/README.md)"
        )
    if allowed_mem is not None and opts.memory_mb * 1_000_000 < allowed_mem:
        raise ExecutorError(
            f"AWS Lambda functions get executor.lambda.memory_mb={opts.memory_mb} MB, less than the "
            f"{allowed_mem / 1e6:.0f} MB each task may use (executor.memory_per_task); raise memory_mb"
        )
    try:
        import cubed.runtime.executors.lithops  # noqa: F401
    except ImportError:
        raise ExecutorError(
            "AWS Lambda needs the 'lithops' extra: pip install 'polaragg[lithops]' 'lithops[aws]'"
        ) from None
    return host


def lambda_executor(
    opts: LambdaOptions,
    *,
    credentials_env: bool = True,
    allowed_mem: int | None = None,
    timeout: float = PREFLIGHT_TIMEOUT_S,
):
    """Cubed's LithopsExecutor for AWS Lambda, after `lambda_preflight`.

    Building the executor contacts nothing; Lithops connects at compute time.
    """
    lambda_preflight(opts, allowed_mem=allowed_mem, timeout=timeout)
    from cubed.runtime.executors.lithops import LithopsExecutor

    return LithopsExecutor(config=lithops_config(opts, credentials_env=credentials_env))


def runtime_build_args() -> dict[str, str]:
    """Docker build arguments that make the Lambda image match this client.

    Lithops refuses a runtime whose Python minor version or Lithops version differs from the client's.
    Use Python >= 3.12: the 3.11 Lambda base image (Amazon Linux 2, glibc 2.26) gets no wheels of the
    numpy, h5py, pyarrow and pyproj releases polaragg needs (deploy/README.md).
    """
    args = {"PYTHON_VERSION": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    try:
        from lithops.version import __version__ as lithops_version

        args["LITHOPS_VERSION"] = lithops_version
    except ImportError:
        pass
    return args


def lithops_image_uri(
    runtime: str,
    *,
    account_id: str,
    user_id: str,
    region: str = "us-west-2",
    namespace: str | None = None,
    lithops_version: str | None = None,
) -> str:
    """Where `lithops runtime deploy -b aws_lambda RUNTIME` looks for a container image in ECR.

    Mirrors Lithops 3.x's naming (`lithops_v<version>_<last 4 of the IAM user id>/<image>:<tag>`), for
    images built outside `lithops runtime build` (which always builds linux/amd64), e.g. for arm64.
    `user_id` is `UserId` from `aws sts get-caller-identity`.
    """
    if lithops_version is None:
        from lithops.version import __version__ as lithops_version
    user_key = user_id.split(":")[0][-4:].lower()
    package = f"lithops_v{lithops_version.replace('.', '')}_{user_key}"
    if namespace:
        package = f"{package}_{namespace}"
    image, _, tag = runtime.partition(":")
    return f"{account_id}.dkr.ecr.{region}.amazonaws.com/{package}/{image}".lower() + f":{tag or 'latest'}"


# ------------------------------------------------------------------------------------------------
# Coiled
# ------------------------------------------------------------------------------------------------

def coiled_cluster_kwargs(opts: CoiledOptions) -> dict[str, Any]:
    """Keyword arguments for `coiled.Cluster(...)` (names checked against coiled 1.135)."""
    kwargs: dict[str, Any] = {
        "n_workers": opts.n_workers,
        "worker_vm_types": list(opts.worker_vm_types),
        "scheduler_vm_types": list(opts.scheduler_vm_types),
        "spot_policy": opts.spot_policy,
        "arm": opts.arm,
        "region": opts.region,
        "idle_timeout": opts.idle_timeout,
    }
    if opts.name is not None:
        kwargs["name"] = opts.name
    if opts.software is not None:
        kwargs["software"] = opts.software
    return kwargs


def coiled_function_kwargs(
    opts: CoiledOptions, credentials: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments for `coiled.function(...)` (and Cubed's CoiledExecutor).

    Workers use `worker_vm_types` (Coiled Functions have no separate scheduler type). Credentials, if
    given, go in `environ`, which Coiled Functions send privately to the cluster (not stored by Coiled);
    the value prints as `***`.
    """
    kwargs: dict[str, Any] = {
        "vm_type": list(opts.worker_vm_types),
        "n_workers": opts.n_workers,
        "spot_policy": opts.spot_policy,
        "arm": opts.arm,
        "region": opts.region,
        "idle_timeout": opts.idle_timeout,
    }
    if opts.name is not None:
        kwargs["name"] = opts.name
    if opts.software is not None:
        kwargs["software"] = opts.software
    if credentials:
        kwargs["environ"] = worker_environment(credentials)
    return kwargs


def coiled_server() -> str:
    """The Coiled API server this machine is configured for (dask config `coiled.server`).

    Read from dask's config (which holds ~/.config/dask/coiled.yaml and DASK_COILED__* variables)
    without importing coiled, which takes seconds.
    """
    try:
        import dask.config

        server = dask.config.get("coiled.server", None)
    except ImportError:
        server = os.environ.get("DASK_COILED__SERVER")
    return str(server or COILED_DEFAULT_SERVER)


def coiled_preflight(timeout: float = PREFLIGHT_TIMEOUT_S) -> str:
    """Check, creating nothing, that Coiled answers and a token is configured; returns the API host.

    Raises `ExecutorError` (one line naming Coiled and its host) within ~2 x `timeout` seconds.
    """
    host = _coiled_preflight(timeout)
    try:
        import coiled  # noqa: F401
    except ImportError:
        raise ExecutorError("Coiled needs the 'coiled' extra: pip install 'polaragg[coiled]'") from None
    return host


def _coiled_preflight(timeout: float) -> str:
    server = coiled_server()
    parts = urllib.parse.urlsplit(server if "://" in server else f"https://{server}")
    host = parts.hostname or server
    port = parts.port or (80 if parts.scheme == "http" else 443)
    check_reachable(
        f"Coiled ({host})",
        host,
        port,
        timeout=timeout,
        hint="check the network, or run locally with executor 'dask-distributed'",
    )
    try:
        import dask.config

        token = dask.config.get("coiled.token", None)
    except ImportError:
        token = None
    if not token:
        # Without a token coiled starts an interactive browser login and waits.
        raise ExecutorError(
            "Coiled has no API token on this machine: run `coiled login` (or set DASK_COILED__TOKEN)"
        )
    return host


def coiled_client(
    opts: CoiledOptions,
    *,
    credentials: Mapping[str, Any] | None = None,
    timeout: float = PREFLIGHT_TIMEOUT_S,
):
    """A `distributed.Client` on a new Coiled cluster (its `.cluster` is the `coiled.Cluster`).

    First checks that the Coiled API host answers (`ExecutorError` naming Coiled within ~2 x
    `timeout` s) and that a Coiled token is configured. `credentials` (Earthdata S3 or AWS keys) are
    sent to the scheduler and workers with `send_private_envs`, never through Coiled's servers.
    """
    host = _coiled_preflight(timeout)
    try:
        import coiled
    except ImportError:
        raise ExecutorError("Coiled needs the 'coiled' extra: pip install 'polaragg[coiled]'") from None
    secrets = _secret_values(credentials)
    failure = None
    try:
        cluster = coiled.Cluster(**coiled_cluster_kwargs(opts))
        if credentials:
            cluster.send_private_envs(dict(worker_environment(credentials)), raise_on_error=True)
        return cluster.get_client()
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear, redacted message
        failure = f"{type(exc).__name__}: {exc}"
    # Raised outside the except block so the original exception (and any secret in it) is not chained.
    raise ExecutorError(redact(f"Coiled ({host}) could not start a cluster: {failure}", secrets))


def coiled_functions_executor(
    opts: CoiledOptions,
    *,
    credentials: Mapping[str, Any] | None = None,
    timeout: float = PREFLIGHT_TIMEOUT_S,
):
    """Cubed's CoiledExecutor (each operation runs as a Coiled Function), after the same checks."""
    _coiled_preflight(timeout)
    try:
        from cubed.runtime.executors.coiled import CoiledExecutor
    except ImportError:
        raise ExecutorError("Coiled needs the 'coiled' extra: pip install 'polaragg[coiled]'") from None
    return CoiledExecutor(**coiled_function_kwargs(opts, credentials))


# ------------------------------------------------------------------------------------------------
# Reachability
# ------------------------------------------------------------------------------------------------


def check_reachable(
    service: str, host: str, port: int = 443, *, timeout: float = PREFLIGHT_TIMEOUT_S, hint: str = ""
) -> None:
    """Raise `ExecutorError("<service> is not reachable: <reason>")` unless host:port accepts a TCP
    connection (through the HTTPS proxy when one applies). Name resolution and connection are each
    bounded by `timeout`, so this returns or raises within about 2 x `timeout` seconds.
    """
    try:
        _connect(host, port, timeout)
    except Exception as exc:  # noqa: BLE001 - every failure mode means "not reachable"
        reason = str(exc) or type(exc).__name__
        message = f"{service} is not reachable: {reason}"
        if hint:
            message += f" ({hint})"
        raise ExecutorError(message) from None


def _connect(host: str, port: int, timeout: float) -> None:
    proxy = _https_proxy_for(host)
    if proxy is not None:
        import http.client

        phost, pport = proxy
        conn = http.client.HTTPConnection(phost, pport, timeout=timeout)
        try:
            conn.set_tunnel(host, port)
            conn.connect()  # CONNECT host:port through the proxy; OSError unless the proxy says 200
        finally:
            conn.close()
        return
    infos = _resolve(host, port, timeout)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    for family, kind, proto, _, address in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(address)
            return
        except OSError as exc:
            last = exc
        finally:
            sock.close()
    if last is None:
        raise TimeoutError(f"connecting to {host}:{port} timed out after {timeout:g} s")
    raise OSError(f"cannot connect to {host}:{port}: {last}")


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo with a deadline (the resolver itself has none; it runs in a daemon thread)."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in result:
        raise OSError(f"cannot resolve {host}: {result['error']}")
    if "infos" not in result:
        raise TimeoutError(f"resolving {host} timed out after {timeout:g} s")
    if not result["infos"]:
        raise OSError(f"cannot resolve {host}: no addresses")
    return result["infos"]


def _https_proxy_for(host: str) -> tuple[str, int] | None:
    proxies = urllib.request.getproxies()
    url = proxies.get("https")
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or 8080
