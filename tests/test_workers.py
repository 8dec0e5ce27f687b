"""Worker processes die with their client; cloud executors that cannot be reached fail before anything starts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from polaragg import executors
from polaragg.domain import ExecutorChoice, ExecutorError
from polaragg.executors import preflight
from polaragg.recipe import CoiledOptions, LambdaOptions

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]
POLARAGG = Path(sys.executable).with_name("polaragg")


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("executor", ["processes", "lithops-local", "dask-distributed"])
def test_sigkilled_client_leaves_no_worker_alive(executor, demo_cache, tmp_path):
    folder, recipe = demo_cache
    doc = recipe.model_dump(mode="json")
    doc["source"] = {"kind": "directory", "path": str(folder)}
    doc["aoi"] = {"bbox": SUB_BBOX}
    doc["output"] = {"store": str(tmp_path / "run.zarr")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k != executors.CLIENT_MARKER}
    semaphores_before = _semaphores()
    client = subprocess.Popen([str(POLARAGG), "run", str(path), "--executor", executor], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me = psutil.Process(client.pid)
    seen: dict[int, psutil.Process] = {}
    ledger = tmp_path / "run.zarr.ledger"
    deadline = time.monotonic() + 120
    try:
        # wait until a task has run in a worker (a granule's partition or a cell's record), so workers are busy
        partitions = tmp_path / "run.zarr.partitions"
        while time.monotonic() < deadline:
            for p in me.children(recursive=True):
                seen.setdefault(p.pid, p)
            done = (ledger.is_dir() and any(ledger.glob("*.json"))) or (partitions.is_dir() and
                                                                         any(partitions.glob("*.bin")))
            if done and len(seen) >= 2:
                break
            assert client.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail(f"no worker started within 120 s (children: {sorted(seen)})")
        for p in me.children(recursive=True):
            seen.setdefault(p.pid, p)
        client.send_signal(signal.SIGKILL)
        client.wait()
        records_at_kill = len(list(ledger.glob("*.json")))
        gone_by = time.monotonic() + 10  # every worker gone within 10 s, and none started again after
        while _alive(seen.values()) and time.monotonic() < gone_by:
            time.sleep(0.2)
        time.sleep(1.5)  # longer than the reaper's sweeps for a replacement worker (3 x 0.25 s)
        for p in me.children(recursive=True) if me.is_running() else ():
            seen.setdefault(p.pid, p)
        alive = _alive(seen.values())
        assert not alive, [(p.pid, " ".join(p.cmdline())[:100]) for p in alive]
        # The client's named semaphores were unlinked by its resource tracker (spared by the reaper),
        # not left in /dev/shm.
        assert not _semaphores() - semaphores_before
        # Nothing writes after its client is gone, beyond the tasks a pool already held at the kill:
        # one running per worker plus the prefetched calls (a process pool queues workers + 1 more),
        # which a worker can finish within the reaper's interval now that cell tasks take ~20 ms.
        workers = os.cpu_count() or 1
        after = len(list(ledger.glob("*.json")))
        assert after <= records_at_kill + 2 * workers + 1
        time.sleep(1)
        assert len(list(ledger.glob("*.json"))) == after
    finally:
        for p in _alive(seen.values()):
            p.kill()


def _semaphores() -> set[str]:
    """Named POSIX semaphores of multiprocessing on this machine (Linux keeps them in /dev/shm)."""
    shm = "/dev/shm"
    return {n for n in os.listdir(shm) if n.startswith("sem.mp-")} if os.path.isdir(shm) else set()


def test_reaper_kills_marked_processes_when_its_client_ends(tmp_path):
    """The reaper of a client that ends normally kills what the client left behind, nothing else."""
    script = (
        "import subprocess, sys, time\n"
        "from polaragg.executors import guard_workers\n"
        "guard_workers()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        env = {k: v for k, v in os.environ.items() if k != executors.CLIENT_MARKER}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
        orphan = psutil.Process(int(out.stdout.split()[0]))
        deadline = time.monotonic() + 10
        while _alive([orphan]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive([orphan]), "the client's leftover process outlived it by 10 s"
        assert bystander.poll() is None, "a process the client did not start was killed"
    finally:
        bystander.kill()
        bystander.wait()


def test_processes_executor_passes_the_recycling_setting():
    ex = executors.cubed_executor(ExecutorChoice("processes", 2))
    assert ex.kwargs["max_tasks_per_child"] == executors.TASKS_PER_WORKER
    assert os.environ.get(executors.CLIENT_MARKER) == executors.guard_workers()  # one reaper per client


def test_preflight_is_a_no_op_for_local_executors():
    for name in executors.LOCAL_EXECUTORS:
        assert preflight(ExecutorChoice(name)) is None


def _dead_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preflight_names_an_unreachable_lambda_within_seconds(monkeypatch):
    from polaragg import cloud

    port = _dead_port()
    monkeypatch.setattr(cloud, "lambda_host", lambda opts: "127.0.0.1")
    real = cloud.check_reachable
    monkeypatch.setattr(cloud, "check_reachable", lambda service, host, _port, **kw: real(service, host, port, **kw))
    opts = LambdaOptions(role_arn="arn:aws:iam::123456789012:role/polaragg")
    t0 = time.monotonic()
    with pytest.raises(ExecutorError) as info:
        preflight(ExecutorChoice("lambda", lambda_options=opts))
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert message.startswith("AWS Lambda (127.0.0.1) is not reachable") and "\n" not in message


def test_preflight_names_an_unreachable_coiled_within_seconds(monkeypatch):
    import dask

    port = _dead_port()
    t0 = time.monotonic()
    with dask.config.set({"coiled.server": f"http://127.0.0.1:{port}", "coiled.token": "t"}), \
            pytest.raises(ExecutorError) as info:
        preflight(ExecutorChoice("coiled", coiled_options=CoiledOptions()))
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert message.startswith("Coiled (127.0.0.1) is not reachable") and "\n" not in message


def test_preflight_refuses_lambda_without_a_role(monkeypatch):
    from polaragg import cloud

    monkeypatch.setattr(cloud, "check_reachable", lambda *a, **k: None)  # reachable
    with pytest.raises(ExecutorError, match="execution role"):
        preflight(ExecutorChoice("lambda", lambda_options=LambdaOptions()))


def _worker_state() -> tuple[int, bool]:
    """In a `processes` worker: objects moved out of the collector's generations, and whether Cubed came
    preloaded."""
    import gc

    return gc.get_freeze_count(), "cubed" in sys.modules


def test_processes_fork_server_starts_early_marked_and_preloaded():
    """`start_workers_early` starts the fork server before any task, carrying the client's marker (so the
    reaper kills it and every worker forked from it); its workers start with Cubed imported and the
    imported libraries frozen out of the garbage collector's generations."""
    import concurrent.futures as cf
    import multiprocessing as mp
    from multiprocessing import forkserver

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    executors.start_workers_early(ExecutorChoice("processes", 2))
    pid = forkserver._forkserver._forkserver_pid
    assert pid is not None and psutil.pid_exists(pid)
    assert psutil.Process(pid).environ().get(executors.CLIENT_MARKER) == os.environ[executors.CLIENT_MARKER]
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        frozen, preloaded = pool.submit(_worker_state).result(timeout=60)
    assert preloaded
    assert frozen > 10_000  # numpy, h5py, zarr, Cubed and polaragg's objects: far more than a bare interpreter's



_MAIN_SCRIPT = '''
import os
import sys

import helper  # a module beside the script: found only with the client's sys.path

with open(sys.argv[1], "a") as log:
    log.write(f"{os.getpid()} {__name__}\\n")

def pid():
    return os.getpid(), "POLARAGG_FORKSERVER_MAIN" in os.environ, os.getppid()

if __name__ == "__main__":
    import concurrent.futures as cf
    import multiprocessing as mp

    from polaragg import executors
    from polaragg.domain import ExecutorChoice

    from multiprocessing import forkserver

    executors.start_workers_early(ExecutorChoice("processes", 2))
    server = forkserver._forkserver._forkserver_pid  # the server started early, before any pool
    leaked = "POLARAGG_FORKSERVER_MAIN" in os.environ
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as pool:
        got = [f.result(timeout=60) for f in [pool.submit(pid) for _ in range(6)]]
    with open(sys.argv[1], "a") as log:
        log.write(f"workers {' '.join(str(p) for p, _, _ in got)}\\n")
        log.write(f"leaked {leaked or any(seen for _, seen, _ in got)}\\n")
        log.write(f"early {all(parent == server for _, _, parent in got)}\\n")
'''


def _client(tmp_path, prologue: str = "", args: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, list]:
    """Run `_MAIN_SCRIPT` (after `prologue`) from another folder; its log lines, split."""
    folder = tmp_path / "scripts"
    folder.mkdir(exist_ok=True)
    (folder / "helper.py").write_text("VALUE = 1\n")
    script, log = folder / "client.py", tmp_path / "imports.log"
    script.write_text(prologue + _MAIN_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(log), *args], timeout=120, cwd=tmp_path,
                          capture_output=True, text=True)
    lines = log.read_text().split("\n") if log.exists() else []
    return done, [x.split() for x in lines if x]


def _fork_server_or_skip():
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("no fork server on this platform")


def test_workers_find_the_client_script_imported_by_the_fork_server(tmp_path):
    """A client script is imported once more, by the fork server (with the client's sys.path: the script
    imports a module beside it), and not again by each worker, which multiprocessing does when the server
    has not imported it; the variable that carries it reaches neither the client's nor a worker's
    environment."""
    _fork_server_or_skip()
    done, lines = _client(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    imports = [x for x in lines if x[0] not in ("workers", "leaked", "early")]
    assert [name for _, name in imports] == ["__main__", "__mp_main__"], imports
    assert ["leaked", "False"] in lines
    assert ["early", "True"] in lines  # every worker was forked by the server started early
    assert len(next(x for x in lines if x[0] == "workers")) == 7  # six tasks ran


def test_a_long_argv_is_not_passed_to_the_fork_server(tmp_path):
    """An argv too long for one environment string (Linux allows 128 KiB) is not sent: the server and the
    resource tracker start as usual and the workers import the script themselves."""
    _fork_server_or_skip()
    done, lines = _client(tmp_path, args=tuple(f"granule-{i:06d}-" + "x" * 40 for i in range(3000)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "died unexpectedly" not in done.stderr
    assert ["early", "True"] in lines  # the server started early did start, and forked the workers
    names = [x[1] for x in lines if x[0] not in ("workers", "leaked", "early")]
    assert names[0] == "__main__" and names.count("__mp_main__") == 2  # by the two workers


@pytest.mark.parametrize("failure", ["raise RuntimeError('only the client may import this')",
                                     "sys.exit('only the client may import this')"])
def test_a_client_script_the_fork_server_cannot_import_fails_in_the_workers_as_before(tmp_path, failure):
    """A main script that fails or exits at import in any other process (it needs a file the client deletes
    first) leaves the fork server running: the workers import it themselves, as without the server's
    import, and the pool breaks with their error, not with the server's death (`EOFError` when forking)."""
    _fork_server_or_skip()
    flag = tmp_path / "first"
    flag.write_text("")
    prologue = f"import os, sys\nif not os.path.exists(sys.argv[2]):\n    {failure}\n"
    script = _MAIN_SCRIPT.replace('if __name__ == "__main__":', 'if __name__ == "__main__":\n    os.remove(sys.argv[2])')
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "helper.py").write_text("VALUE = 1\n")
    (folder / "client.py").write_text(prologue + script)
    done = subprocess.run([sys.executable, str(folder / "client.py"), str(tmp_path / "log"), str(flag)],
                          timeout=120, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    if failure.startswith("raise"):  # a worker's traceback; an exiting worker says nothing
        assert "only the client may import this" in done.stderr
    assert "BrokenProcessPool" in done.stderr and "unexpected EOF" not in done.stderr, done.stderr[-2000:]
