"""Cloud executors (AWS Lambda via Lithops, Coiled): configuration from the recipe, fail-fast when the
service is unreachable, credentials for workers and redaction. Offline: nothing here contacts a
cloud service (name resolution and connection are patched to fail, or fakes stand in)."""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

import polaragg
from polaragg import cloud
from polaragg.cloud import (
    CredentialError,
    CredentialSource,
    coiled_cluster_kwargs,
    coiled_function_kwargs,
    lithops_config,
    redact,
    worker_environment,
)
from polaragg.domain import ExecutorError
from polaragg.recipe import CoiledOptions, LambdaOptions, RecipeError

ROOT = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/lithops-execution"
BASE = {"name": "cloud", "source": {"kind": "synthetic"}, "aoi": {"bbox": [70.0, -88.0, 110.0, -83.0]}}

# Fake credentials in the shape NSIDC's s3credentials endpoint returns.
NSIDC = {
    "accessKeyId": "ASIAFAKEACCESSKEY123",
    "secretAccessKey": "fake/secret+access=key/0123456789abcdef",
    "sessionToken": "FwoGZXIvYXdzEFAKE//session+token==/with/slashes",
    "expiration": "2024-01-14 16:33:19+00:00",
}


def _recipe(executor: dict):
    return polaragg.load_recipe({**BASE, "executor": executor})


# --- Lambda options and the Lithops config ---------------------------------------------------------


def test_lambda_config_from_recipe():
    recipe = _recipe({"name": "lambda", "lambda": {
        "memory_mb": 4096, "timeout_s": 600, "role_arn": ROLE, "storage_bucket": "polaragg-scratch",
        "max_workers": 1700, "runtime": "polaragg-lambda:v1"}})
    opts = recipe.executor.aws_lambda
    cfg = lithops_config(opts)
    assert cfg["lithops"]["backend"] == "aws_lambda" and cfg["lithops"]["storage"] == "aws_s3"
    lam = cfg["aws_lambda"]
    assert lam == {
        "region": "us-west-2", "runtime": "polaragg-lambda:v1", "runtime_memory": 4096, "runtime_timeout": 600,
        "architecture": "arm64", "max_workers": 1700, "execution_role": ROLE,
    }
    assert cfg["aws_s3"] == {"region": "us-west-2", "storage_bucket": "polaragg-scratch"}
    # No secrets unless asked for: Lithops' boto3 session finds the account credentials itself.
    assert set(cfg["aws"]) == {"region"}


def test_lambda_defaults_and_architectures():
    default = _recipe({"name": "lambda"}).executor.aws_lambda
    assert default == LambdaOptions()
    cfg = lithops_config(default)
    assert cfg["aws_lambda"]["architecture"] == "arm64"
    assert cfg["aws_lambda"]["runtime_memory"] == 2048 and cfg["aws_lambda"]["runtime_timeout"] == 900
    assert "execution_role" not in cfg["aws_lambda"] and "storage_bucket" not in cfg["aws_s3"]
    x86 = _recipe({"name": "lambda", "lambda": {"architecture": "x86_64"}}).executor.aws_lambda
    assert lithops_config(x86)["aws_lambda"]["architecture"] == "x86_64"


def test_recipe_round_trip_keeps_lambda_section():
    recipe = _recipe({"name": "lambda", "lambda": {"memory_mb": 3008, "role_arn": ROLE}})
    dumped = recipe.model_dump(mode="json")
    assert polaragg.load_recipe(dumped).executor == recipe.executor


def test_lithops_accepts_the_config():
    pytest.importorskip("lithops")
    from lithops.config import default_config, extract_serverless_config, extract_storage_config

    cfg = lithops_config(LambdaOptions(role_arn=ROLE, storage_bucket="b", architecture="x86_64"))
    full = default_config(config_data=cfg)  # Lithops' own validation and defaults (offline)
    lam = extract_serverless_config(full)["aws_lambda"]
    assert lam["runtime_memory"] == 2048 and lam["architecture"] == "x86_64" and lam["execution_role"] == ROLE
    assert extract_storage_config(full)["aws_s3"]["storage_bucket"] == "b"


@pytest.mark.parametrize(
    "section, field",
    [
        ({"memory_mb": 20000}, "executor.lambda.memory_mb"),
        ({"memory_mb": 64}, "executor.lambda.memory_mb"),
        ({"timeout_s": 901}, "executor.lambda.timeout_s"),
        ({"timeout_s": 0}, "executor.lambda.timeout_s"),
        ({"architecture": "aarch64"}, "executor.lambda.architecture"),
        ({"region": "Oregon"}, "executor.lambda.region"),
        ({"role_arn": "lithops-role"}, "executor.lambda.role_arn"),
        ({"max_workers": 0}, "executor.lambda.max_workers"),
        ({"memroy_mb": 1024}, "executor.lambda.memroy_mb"),
    ],
)
def test_invalid_lambda_section_names_the_field(section, field):
    with pytest.raises(RecipeError) as info:
        _recipe({"name": "lambda", "lambda": section})
    assert field in str(info.value)


def test_credentials_in_config_only_on_request(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", NSIDC["accessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", NSIDC["secretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", NSIDC["sessionToken"])
    assert set(lithops_config(LambdaOptions())["aws"]) == {"region"}
    cfg = lithops_config(LambdaOptions(), credentials_env=False)
    assert cfg["aws"]["secret_access_key"] == NSIDC["secretAccessKey"]
    assert NSIDC["secretAccessKey"] not in repr(cfg) and NSIDC["sessionToken"] not in str(cfg)


# --- Coiled options -------------------------------------------------------------------------------


def test_coiled_kwargs_from_recipe():
    recipe = _recipe({"name": "coiled", "coiled": {
        "n_workers": 40, "worker_vm_types": ["c7g.2xlarge", "m7g.2xlarge"], "spot_policy": "spot",
        "name": "polaragg-run", "software": "polaragg-env"}})
    opts = recipe.executor.coiled
    assert coiled_cluster_kwargs(opts) == {
        "n_workers": 40, "worker_vm_types": ["c7g.2xlarge", "m7g.2xlarge"], "scheduler_vm_types": ["c7g.large"],
        "spot_policy": "spot", "arm": True, "region": "us-west-2", "idle_timeout": "20 minutes",
        "name": "polaragg-run", "software": "polaragg-env",
    }
    fn = coiled_function_kwargs(opts)
    assert fn == {
        "vm_type": ["c7g.2xlarge", "m7g.2xlarge"], "n_workers": 40, "spot_policy": "spot", "arm": True,
        "region": "us-west-2", "idle_timeout": "20 minutes", "name": "polaragg-run", "software": "polaragg-env",
    }
    defaults = coiled_cluster_kwargs(CoiledOptions())
    assert "name" not in defaults and "software" not in defaults and defaults["n_workers"] == 10


def test_coiled_kwargs_are_coiled_parameters():
    coiled = pytest.importorskip("coiled")
    opts = CoiledOptions(name="x", software="y")
    cluster_params = inspect.signature(coiled.Cluster.__init__).parameters
    assert set(coiled_cluster_kwargs(opts)) <= set(cluster_params)
    function_params = inspect.signature(coiled.function).parameters
    assert set(coiled_function_kwargs(opts, NSIDC)) <= set(function_params)


def test_coiled_function_credentials_print_redacted():
    kwargs = coiled_function_kwargs(CoiledOptions(), NSIDC)
    assert kwargs["environ"]["AWS_SESSION_TOKEN"] == NSIDC["sessionToken"]
    assert NSIDC["sessionToken"] not in repr(kwargs) and NSIDC["secretAccessKey"] not in f"{kwargs}"


@pytest.mark.parametrize(
    "section, field",
    [
        ({"worker_vm_types": ["c7i.xlarge"]}, "worker_vm_types"),  # x86 type on an arm cluster
        ({"arm": False}, "worker_vm_types"),  # default Graviton types on an x86 cluster
        ({"n_workers": 0}, "executor.coiled.n_workers"),
        ({"spot_policy": "cheap"}, "executor.coiled.spot_policy"),
        ({"mode": "batch"}, "executor.coiled.mode"),
        ({"worker_vm_types": []}, "executor.coiled.worker_vm_types"),
    ],
)
def test_invalid_coiled_section_names_the_field(section, field):
    with pytest.raises(RecipeError) as info:
        _recipe({"name": "coiled", "coiled": section})
    assert field in str(info.value)


def test_coiled_architecture_check_accepts_matching_types():
    CoiledOptions(arm=False, worker_vm_types=["c7i.xlarge", "m6a.large"], scheduler_vm_types=["t3.large"])
    CoiledOptions(worker_vm_types=["c7gn.xlarge", "m6gd.large", "r8g.2xlarge", "t4g.large", "a1.large"])
    CoiledOptions(worker_vm_types=["t2a-standard-4"], scheduler_vm_types=["t2a-standard-2"])  # GCP: Coiled judges


# --- fail fast when the service cannot be reached ---------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Name resolution and connections fail at once (these machines have no route out anyway)."""

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_lambda_executor_fails_fast_when_unreachable(no_network):
    opts = _recipe({"name": "lambda", "lambda": {"role_arn": ROLE}}).executor.aws_lambda
    start = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        cloud.lambda_executor(opts)
    elapsed = time.monotonic() - start
    assert elapsed < 10
    message = str(info.value)
    assert message.startswith("AWS Lambda (lambda.us-west-2.amazonaws.com) is not reachable:")
    assert "lithops-local" in message


def test_coiled_client_fails_fast_when_unreachable(no_network):
    dask_config = pytest.importorskip("dask.config")
    with dask_config.set({"coiled.server": "https://cloud.coiled.io"}):
        for call in (cloud.coiled_client, cloud.coiled_functions_executor):
            start = time.monotonic()
            with pytest.raises(ExecutorError) as info:
                call(CoiledOptions())
            assert time.monotonic() - start < 10
            assert str(info.value).startswith("Coiled (cloud.coiled.io) is not reachable:")


def test_hanging_name_resolution_is_cut_off(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    try:
        start = time.monotonic()
        with pytest.raises(ExecutorError, match=r"AWS Lambda .* not reachable: resolving .* timed out"):
            cloud.lambda_executor(LambdaOptions(role_arn=ROLE), timeout=0.5)
        assert time.monotonic() - start < 2
    finally:
        release.set()


def test_unreachable_address_without_patches():
    # A closed local port: refused at once, nothing leaves the machine.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ExecutorError, match=r"^Local test service is not reachable: cannot connect"):
        cloud.check_reachable("Local test service", "127.0.0.1", port, timeout=1.0)
    assert time.monotonic() - start < 3


def test_reachable_local_port_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        cloud.check_reachable("Local test service", "127.0.0.1", server.getsockname()[1], timeout=1.0)


def test_lambda_executor_builds_lithops_executor_offline(monkeypatch):
    pytest.importorskip("lithops")
    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)
    opts = LambdaOptions(role_arn=ROLE, memory_mb=3008)
    executor = cloud.lambda_executor(opts, allowed_mem=2_000_000_000)
    assert executor.name == "lithops"
    assert executor.kwargs["config"] == lithops_config(opts)


def test_lambda_executor_checks_role_and_memory(monkeypatch):
    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)
    with pytest.raises(ExecutorError, match="executor.lambda.role_arn"):
        cloud.lambda_executor(LambdaOptions())
    with pytest.raises(ExecutorError, match="executor.lambda.memory_mb=1024"):
        cloud.lambda_executor(LambdaOptions(role_arn=ROLE, memory_mb=1024), allowed_mem=2_000_000_000)


def test_coiled_needs_a_token(monkeypatch):
    dask_config = pytest.importorskip("dask.config")
    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)
    with dask_config.set({"coiled.token": None}):
        with pytest.raises(ExecutorError, match="coiled login"):
            cloud.coiled_client(CoiledOptions())


# --- credentials for workers ------------------------------------------------------------------------


def test_worker_environment_from_nsidc_and_aws_names():
    env = worker_environment(NSIDC)
    assert env == {
        "AWS_ACCESS_KEY_ID": NSIDC["accessKeyId"],
        "AWS_SECRET_ACCESS_KEY": NSIDC["secretAccessKey"],
        "AWS_SESSION_TOKEN": NSIDC["sessionToken"],
    }
    assert worker_environment(dict(env)) == env
    lower = {"aws_access_key_id": "AKIAFAKE0000", "aws_secret_access_key": "s3cr3t-long-term"}
    assert worker_environment(lower) == {"AWS_ACCESS_KEY_ID": "AKIAFAKE0000",
                                         "AWS_SECRET_ACCESS_KEY": "s3cr3t-long-term"}
    assert worker_environment(None) == {} and worker_environment({}) == {}
    assert set(worker_environment(NSIDC, prefix="EARTHDATA_")) == {
        "EARTHDATA_AWS_ACCESS_KEY_ID", "EARTHDATA_AWS_SECRET_ACCESS_KEY", "EARTHDATA_AWS_SESSION_TOKEN"}
    assert cloud.reader_credentials(NSIDC) == {
        "aws_access_key_id": NSIDC["accessKeyId"], "aws_secret_access_key": NSIDC["secretAccessKey"],
        "aws_session_token": NSIDC["sessionToken"]}
    for secret in (NSIDC["secretAccessKey"], NSIDC["sessionToken"]):
        assert secret not in repr(env) and secret not in str(cloud.reader_credentials(NSIDC))


def test_incomplete_credentials_name_the_gap_not_the_values():
    with pytest.raises(CredentialError) as info:
        worker_environment({"accessKeyId": NSIDC["accessKeyId"], "sessionToken": NSIDC["sessionToken"]})
    message = str(info.value)
    assert "secret access key" in message
    assert NSIDC["accessKeyId"] not in message and NSIDC["sessionToken"] not in message


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-01-14 16:33:19+00:00", 1705249999.0),  # NSIDC s3credentials
        ("2024-01-14T16:33:19Z", 1705249999.0),  # AWS / ISO 8601
        ("2024-01-14T16:33:19", 1705249999.0),  # naive: UTC
        (1705249999, 1705249999.0),
    ],
)
def test_expiration_formats(value, expected):
    assert cloud.credentials_expiry({**NSIDC, "expiration": value}) == expected


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    """Hands out numbered credentials valid for `lifetime` seconds from the clock's time."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0):
        self.clock, self.lifetime, self.calls, self.fail = clock, lifetime, 0, None

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise self.fail
        from datetime import datetime, timezone

        expiry = datetime.fromtimestamp(self.clock() + self.lifetime, timezone.utc)
        return {"accessKeyId": f"ASIAKEY{self.calls:04d}", "secretAccessKey": f"secret-{self.calls:04d}-xyz",
                "sessionToken": f"token-{self.calls:04d}-abcdef", "expiration": expiry.isoformat(sep=" ")}


def test_credential_source_refreshes_ten_minutes_before_expiry():
    clock = FakeClock()
    fetch = FakeFetch(clock)
    source = CredentialSource(fetch, clock=clock)
    assert source.environment()["AWS_ACCESS_KEY_ID"] == "ASIAKEY0001" and fetch.calls == 1
    clock.now += 49 * 60  # 11 minutes left: still good
    assert source.get()["accessKeyId"] == "ASIAKEY0001" and fetch.calls == 1
    assert source.remaining() == pytest.approx(11 * 60)
    clock.now += 2 * 60  # 9 minutes left: re-fetch
    assert source.environment()["AWS_SESSION_TOKEN"] == "token-0002-abcdef" and fetch.calls == 2
    assert source.remaining() == pytest.approx(3600)
    clock.now += 3600 + 60  # long expired (e.g. a paused run): re-fetch
    assert source.get()["accessKeyId"] == "ASIAKEY0003"
    assert source.secrets()[:3] == ["ASIAKEY0001", "secret-0001-xyz", "token-0001-abcdef"]


def test_credential_source_without_expiration_uses_default_lifetime():
    clock = FakeClock()
    calls = []

    def fetch():
        calls.append(clock())
        return {"AWS_ACCESS_KEY_ID": "AKIAFAKE0001", "AWS_SECRET_ACCESS_KEY": "long-term-secret"}

    source = CredentialSource(fetch, clock=clock, default_lifetime_s=3600)
    source.get()
    clock.now += 3000  # 600 s left is not < 600
    source.get()
    assert len(calls) == 1
    clock.now += 1
    source.get()
    assert len(calls) == 2


def test_failed_refresh_keeps_valid_credentials_and_redacts(caplog):
    clock = FakeClock()
    fetch = FakeFetch(clock)
    source = CredentialSource(fetch, clock=clock, min_interval_s=30)
    first = source.get()
    clock.now += 55 * 60  # 5 minutes left
    fetch.fail = RuntimeError(f"server said no to token {first['sessionToken']}")
    with caplog.at_level(logging.WARNING, logger="polaragg.cloud"):
        assert source.get()["accessKeyId"] == "ASIAKEY0001"
    assert "could not refresh" in caplog.text and first["sessionToken"] not in caplog.text
    calls = fetch.calls
    clock.now += 10  # within min_interval_s: no hammering of the credentials endpoint
    source.get()
    assert fetch.calls == calls
    clock.now += 10 * 60  # expired and the endpoint still fails: a clear, redacted error
    with pytest.raises(CredentialError) as info:
        source.get()
    assert "could not fetch credentials" in str(info.value)
    assert first["sessionToken"] not in str(info.value) and "***" in str(info.value)


def test_first_fetch_failure_raises():
    def broken():
        raise ConnectionError("s3credentials endpoint unreachable")

    with pytest.raises(CredentialError, match="s3credentials endpoint unreachable"):
        CredentialSource(broken).get()
    with pytest.raises(CredentialError, match="secret access key"):
        CredentialSource(lambda: {"accessKeyId": "ASIAONLY"}).get()


# --- redaction ------------------------------------------------------------------------------------------


def test_redact_plain_and_url_encoded():
    from urllib.parse import quote

    token = NSIDC["sessionToken"]
    text = f"GET /x?X-Amz-Security-Token={quote(token, safe='')} failed; key {NSIDC['accessKeyId']}; {token}"
    out = redact(text, NSIDC)
    assert token not in out and quote(token, safe="") not in out and NSIDC["accessKeyId"] not in out
    assert out.count("***") == 3
    assert redact("expires 2024-01-14 16:33:19+00:00", NSIDC) == "expires 2024-01-14 16:33:19+00:00"
    assert redact("nothing to hide", None) == "nothing to hide"
    assert redact("a b c", ["b", ""]) == "a b c"  # too short to redact safely


def test_failure_message_with_secret_is_redacted(monkeypatch, caplog):
    coiled = pytest.importorskip("coiled")
    dask_config = pytest.importorskip("dask.config")
    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)

    class LeakyCluster:
        def __init__(self, **kwargs):
            raise RuntimeError(
                f"cluster rejected environment AWS_SECRET_ACCESS_KEY={NSIDC['secretAccessKey']} "
                f"AWS_SESSION_TOKEN={NSIDC['sessionToken']}")

    monkeypatch.setattr(coiled, "Cluster", LeakyCluster)
    with dask_config.set({"coiled.token": "fake-coiled-token", "coiled.server": "https://cloud.coiled.io"}):
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(ExecutorError) as info:
                cloud.coiled_client(CoiledOptions(), credentials=NSIDC)
    err = info.value
    message = str(err)
    assert message.startswith("Coiled (cloud.coiled.io) could not start a cluster: RuntimeError")
    assert NSIDC["secretAccessKey"] not in message and NSIDC["sessionToken"] not in message
    assert "***" in message
    assert err.__cause__ is None and err.__context__ is None  # the raw exception is not chained
    assert NSIDC["secretAccessKey"] not in caplog.text and NSIDC["sessionToken"] not in caplog.text


def test_coiled_client_sends_credentials_privately(monkeypatch):
    coiled = pytest.importorskip("coiled")
    dask_config = pytest.importorskip("dask.config")
    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)
    seen = {}

    class FakeCluster:
        def __init__(self, **kwargs):
            seen["kwargs"] = kwargs

        def send_private_envs(self, env, raise_on_error=None):
            seen["env"] = env

        def get_client(self):
            return "client"

    monkeypatch.setattr(coiled, "Cluster", FakeCluster)
    with dask_config.set({"coiled.token": "fake-coiled-token"}):
        assert cloud.coiled_client(CoiledOptions(n_workers=3), credentials=NSIDC) == "client"
    assert seen["kwargs"] == coiled_cluster_kwargs(CoiledOptions(n_workers=3))
    assert "environ" not in seen["kwargs"]  # environ would be stored by Coiled; private envs are not
    assert type(seen["env"]) is dict and seen["env"]["AWS_ACCESS_KEY_ID"] == NSIDC["accessKeyId"]


# --- the Lambda runtime image ------------------------------------------------------------------------------


def test_lithops_image_uri_and_build_args():
    uri = cloud.lithops_image_uri("polaragg-lambda:latest", account_id="123456789012",
                                  user_id="AIDAEXAMPLEUSERABCD", lithops_version="3.8.0")
    assert uri == "123456789012.dkr.ecr.us-west-2.amazonaws.com/lithops_v380_abcd/polaragg-lambda:latest"
    args = cloud.runtime_build_args()
    assert args["PYTHON_VERSION"].count(".") == 1


def test_dockerfile_is_a_lithops_lambda_runtime():
    text = (ROOT / "deploy" / "lambda" / "Dockerfile").read_text()
    assert "public.ecr.aws/lambda/python:${PYTHON_VERSION}" in text
    assert "lithops.serverless.backends.aws_lambda.entry_point.lambda_handler" in text
    assert "ARG PYTHON_VERSION=3.12" in text and "ARG LITHOPS_VERSION=" in text
    assert (ROOT / "deploy" / "README.md").exists()
