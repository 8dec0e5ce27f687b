"""polaragg writes only new paths or its own stores, deletes only its own stores when asked, and one run
holds a store at a time."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import polaragg
from polaragg.cli import main
from polaragg.ledger import LEDGER_SUFFIX, LOCK_NAME
from polaragg.lock import StoreLocked, acquire

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]


@pytest.fixture(scope="module")
def small_recipe(demo_recipe):
    """The demo recipe over a few parent cells (fast runs)."""
    return demo_recipe.model_copy(update={"aoi": demo_recipe.aoi.model_copy(update={"bbox": tuple(SUB_BBOX)})})


def _recipe_file(folder: Path, recipe, **changes) -> str:
    doc = recipe.model_dump(mode="json", by_alias=True)
    for key, value in changes.items():
        doc[key] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(tmp_path: Path) -> Path:
    """A folder of a user's own files, subfolders included."""
    folder = tmp_path / "work"
    (folder / "notes" / "deep").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "notes" / "a.txt").write_text("field notes")
    (folder / "notes" / "deep" / "data.csv").write_text("1,2,3\n")
    return folder


@pytest.mark.parametrize("target", [".", "", "./", "..", "HOME"])
def test_the_current_folder_its_parents_home_and_empty_paths_are_refused(target, small_recipe, tmp_path,
                                                                         monkeypatch, capsys):
    folder = _user_folder(tmp_path)
    recipe = _recipe_file(folder, small_recipe)
    monkeypatch.chdir(folder / "notes")
    if target == "HOME":
        home = tmp_path / "home"
        (home / ".config").mkdir(parents=True)
        (home / ".config" / "settings").write_text("mine")
        monkeypatch.setenv("HOME", str(home))
        target = "~"
    before = _snapshot(tmp_path)
    assert main(["run", recipe, "--store", target, "--executor", "single-threaded"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before  # every file in place, nothing added


def test_an_empty_store_in_the_recipe_is_refused(small_recipe, tmp_path, monkeypatch, capsys):
    folder = _user_folder(tmp_path)
    monkeypatch.chdir(folder)
    doc = small_recipe.model_dump(mode="json", by_alias=True)
    doc["output"]["store"] = ""
    (folder / "empty.yaml").write_text(yaml.safe_dump(doc))
    before = _snapshot(tmp_path)
    assert main(["run", str(folder / "empty.yaml"), "--executor", "single-threaded"]) == 2
    assert "empty" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_an_existing_folder_or_a_foreign_zarr_store_is_never_written(small_recipe, tmp_path, capsys):
    folder = _user_folder(tmp_path)
    foreign = tmp_path / "other.zarr"
    xr.Dataset({"x": ("i", np.arange(5.0))}).to_zarr(foreign, zarr_format=3)
    recipe = _recipe_file(tmp_path, small_recipe)
    before = _snapshot(tmp_path)
    for target in (folder, foreign, folder / "thesis.tex"):
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main(["run", recipe, "--store", str(target), "--executor", "single-threaded", *extra]) == 2
            assert "not a polaragg store" in capsys.readouterr().err or target.is_file()
    assert _snapshot(tmp_path) == before
    np.testing.assert_array_equal(xr.open_zarr(foreign)["x"].values, np.arange(5.0))


def test_a_polaragg_store_is_replaced_only_when_asked(small_recipe, tmp_path, capsys):
    recipe = _recipe_file(tmp_path, small_recipe)
    store = tmp_path / "out.zarr"
    assert main(["run", recipe, "--store", str(store), "--executor", "single-threaded"]) == 0
    created = json.loads((store / "zarr.json").read_text())["attributes"]["created"]
    capsys.readouterr()
    assert main(["run", recipe, "--store", str(store), "--executor", "single-threaded"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((store / "zarr.json").read_text())["attributes"]["created"] == created
    time.sleep(1.1)  # `created` has one-second resolution
    assert main(["run", recipe, "--store", str(store), "--executor", "single-threaded", "--overwrite"]) == 0
    assert json.loads((store / "zarr.json").read_text())["attributes"]["created"] != created
    assert main(["validate", str(store)]) == 0


def test_a_ledger_folder_with_files_polaragg_did_not_write_is_refused(small_recipe, tmp_path, capsys):
    recipe = _recipe_file(tmp_path, small_recipe)
    store = tmp_path / "new.zarr"
    ledger = Path(str(store) + LEDGER_SUFFIX)
    ledger.mkdir()
    (ledger / "mine.txt").write_text("keep me")
    assert main(["run", recipe, "--store", str(store), "--executor", "single-threaded"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (ledger / "mine.txt").read_text() == "keep me" and not store.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "x" * 101])
def test_a_recipe_name_cannot_place_files_outside_the_output_folder(name, small_recipe, tmp_path, capsys):
    recipe = _recipe_file(tmp_path, small_recipe, name=name)
    assert main(["catalog", recipe]) == 2
    assert "name" in capsys.readouterr().err


def test_catalog_and_map_never_write_over_a_users_file(small_recipe, tmp_path, capsys):
    recipe = _recipe_file(tmp_path, small_recipe)
    mine = tmp_path / "mine.parquet"
    mine.write_bytes(b"my own bytes")
    picture = tmp_path / "holiday.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert main(["catalog", recipe, "--out", str(mine), "--overwrite"]) == 2
    assert mine.read_bytes() == b"my own bytes"
    ours = tmp_path / "ours.parquet"
    assert main(["catalog", recipe, "--out", str(ours)]) == 0
    assert main(["catalog", recipe, "--out", str(ours)]) == 2  # ours, but not asked to overwrite
    assert main(["catalog", recipe, "--out", str(ours), "--overwrite"]) == 0
    assert main(["plan", recipe, "--map", str(picture), "--overwrite"]) == 2
    assert picture.read_bytes() == b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    capsys.readouterr()


def test_two_concurrent_runs_give_one_refusal(small_recipe, tmp_path, capsys):
    recipe = _recipe_file(tmp_path, small_recipe)
    store = tmp_path / "shared.zarr"
    first = subprocess.Popen([sys.executable, "-m", "polaragg.cli", "run", recipe, "--store", str(store),
                              "--executor", "single-threaded"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = Path(str(store) + LEDGER_SUFFIX) / LOCK_NAME
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    codes = [main(["run", recipe, "--store", str(store), "--executor", "single-threaded", flag])
             for flag in ("--resume", "--overwrite")]
    err = capsys.readouterr().err
    assert codes == [2, 2] and err.count("being written by another run") == 2
    assert str(first.pid) in err
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0
    assert not lock.exists()
    assert main(["validate", str(store)]) == 0


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path):
    store = str(tmp_path / "s.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    Path(store + LEDGER_SUFFIX).mkdir()
    import socket

    (Path(store + LEDGER_SUFFIX) / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                                     "token": "old", "started": "then"}))
    with acquire(store) as held:
        assert json.loads((Path(store + LEDGER_SUFFIX) / LOCK_NAME).read_text())["token"] == held.token
        with pytest.raises(StoreLocked, match="being written by another run"):
            acquire(store)
    assert not (Path(store + LEDGER_SUFFIX) / LOCK_NAME).exists()


def test_the_lock_is_exclusive_on_s3(s3_env):
    import boto3

    boto3.client("s3").create_bucket(Bucket="lock-test", CreateBucketConfiguration={
        "LocationConstraint": "us-west-2"})
    store = "s3://lock-test/run.zarr"
    held = acquire(store)
    with pytest.raises(StoreLocked):
        acquire(store)
    held.release()
    acquire(store).release()


def test_the_demo_replaces_only_its_own_output(tmp_path, monkeypatch, capsys, demo_cache):
    out = tmp_path / "out"
    (out / "demo.zarr").mkdir(parents=True)
    (out / "demo.zarr" / "precious.txt").write_text("not polaragg's")
    monkeypatch.setenv("POLARAGG_CACHE", str(demo_cache[0].parent))
    assert main(["demo", "--out", str(out), "--executor", "single-threaded"]) == 2
    assert (out / "demo.zarr" / "precious.txt").read_text() == "not polaragg's"
    capsys.readouterr()


def test_the_gitignore_covers_what_polaragg_writes(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    paths = ["polaragg-out/demo.zarr/zarr.json", "x/run.zarr.ledger/00000000000000032772-00000.json",
             "polaragg-out/demo.catalog.parquet"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo, capture_output=True, text=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(result.stdout.split()) == sorted(paths)


def test_put_whole_in_place_if_new_writes_a_new_file_in_place_and_replaces_an_existing_one_whole(tmp_path, monkeypatch):
    """A file that is not there yet gets one directory entry and no temporary (nothing is renamed); an
    existing one, left by a write a crash cut short, is replaced whole through a temporary."""
    from polaragg import fs

    renames = []
    real_replace = os.replace
    monkeypatch.setattr(fs.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b))[1])
    target = tmp_path / "a" / "c" / "0"
    fs.put_whole(str(target), [b"abc", memoryview(b"def")], in_place_if_new=True)
    assert target.read_bytes() == b"abcdef" and renames == []
    target.write_bytes(b"ab")  # partial
    fs.put_whole(str(target), [b"whole"], in_place_if_new=True)
    assert target.read_bytes() == b"whole"
    assert len(renames) == 1 and renames[0][1] == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["0"]  # no temporary left
