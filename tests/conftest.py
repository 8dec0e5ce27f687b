import pytest


# --- local CMR server (tests/cmr_server.py) -------------------------------------------------------
@pytest.fixture
def cmr_server_factory(monkeypatch):
    """Start `CmrServer(records)` on 127.0.0.1 (ephemeral port); every server is stopped at teardown.

    Proxy variables are cleared so requests to 127.0.0.1 go straight to the server.
    """
    try:
        from cmr_server import CmrServer
    except ImportError:  # tests/ imported as a package
        from tests.cmr_server import CmrServer

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers = []

    def start(records):
        server = CmrServer(records).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- the demo, built once per session ------------------------------------------------------------
DEMO_RECIPE = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes" / "one-cycle.yaml"


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """Folder with the demo's synthetic granules (generated once per session)."""
    import os

    from polaragg.recipe import load_recipe
    from polaragg.sources import synthetic_folder

    cache = os.environ.get("POLARAGG_TEST_CACHE") or str(tmp_path_factory.mktemp("demo-cache"))
    recipe = load_recipe(DEMO_RECIPE)
    source = recipe.source.model_copy(update={"cache_dir": cache})
    return synthetic_folder(source), recipe.model_copy(update={"source": source})


@pytest.fixture(scope="session")
def demo_recipe(demo_cache):
    """The demo recipe, pointing at the session's generated granules."""
    return demo_cache[1]


@pytest.fixture(scope="session")
def demo_store(demo_recipe, tmp_path_factory):
    """The demo computed once on the `threads` executor; returns (store path, run summary)."""
    import polaragg

    store = str(tmp_path_factory.mktemp("demo-out") / "demo.zarr")
    summary = polaragg.run(demo_recipe, store=store, executor="threads", progress=False)
    return store, summary


# --- local S3 (moto_server) -----------------------------------------------------------------------
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(scope="session")
def _moto(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the session: (endpoint URL, path of its request log)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    sibling = Path(sys.executable).with_name("moto_server")
    command = [str(sibling)] if sibling.exists() else [sys.executable, "-m", "moto.server"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    # urllib honours proxy variables; talk to the server directly
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30.0
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with opener.open(f"{url}/moto-api/", timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {url} within 30 s")
                time.sleep(0.1)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_server(_moto):
    """Endpoint URL (http://127.0.0.1:PORT) of the session's moto S3 server."""
    return _moto[0]


@pytest.fixture(scope="session")
def moto_server_log(_moto):
    """Path of the moto server's request log (one line per HTTP request)."""
    return _moto[1]


S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "polaragg-test-access-key",
    "AWS_SECRET_ACCESS_KEY": "polaragg-test-secret-key",
    "AWS_SESSION_TOKEN": "polaragg-test-session-token",
}


@pytest.fixture
def s3_env(monkeypatch, moto_server, tmp_path):
    """Point every S3 client (boto3, s3fs, h5coro) at the moto server through the environment only.

    Fake credentials; no shared config or credentials files (a developer's real profile is never
    read); proxies cleared for 127.0.0.1. Returns the endpoint URL.
    """
    for name in _PROXY_VARS + ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
                               "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server
