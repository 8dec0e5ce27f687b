"""Cubed's work folder: where the recipe says (a folder of the run's own inside it), removed after success."""

import os

import pytest

import polaragg
from polaragg.intermediate import Location
from helpers import killed_client_leftover


def test_recipe_work_dir_holds_the_run_and_is_emptied_after_success(demo_recipe, tmp_path, monkeypatch):
    client_tmp = tmp_path / "client-tmp"
    client_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(client_tmp))
    work = tmp_path / "shared-work"
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": [85.0, -87.0, 95.0, -85.0]}
    doc["executor"] = {**doc["executor"], "work_dir": str(work)}
    seen = []
    real_remove = Location.remove

    def remove(self):
        if self.url.startswith(str(work)):
            seen.append(sorted(p.name for p in work.iterdir()))  # what the run left there, just before removal
        return real_remove(self)

    monkeypatch.setattr(Location, "remove", remove)
    summary = polaragg.run(doc, store=str(tmp_path / "out.zarr"), executor="processes", max_workers=2,
                           progress=False)
    assert summary.observations > 0
    assert seen and all(len(names) == 1 and names[0].startswith("polaragg-") for names in seen)
    assert work.is_dir() and not any(work.iterdir())  # the run's folder is gone, the user's folder stays
    assert not list(client_tmp.glob("polaragg-cubed*"))  # nothing in the local temporary folder


@pytest.mark.parametrize("executor", ["single-threaded", "threads"])
def test_in_process_run_removes_what_a_killed_client_left_next_to_the_store(demo_recipe, tmp_path, executor):
    """In-process runs keep Cubed's intermediates in memory, and still remove a marked `<store>.cubed`
    an earlier client left; a folder of that name polaragg did not mark is left alone."""
    doc = demo_recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": [85.0, -87.0, 95.0, -85.0]}
    store = str(tmp_path / "out.zarr")
    work = killed_client_leftover(store)
    assert polaragg.run(doc, store=store, executor=executor, progress=False).observations > 0
    assert not os.path.exists(work)

    foreign = tmp_path / "theirs.zarr.cubed"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    polaragg.run(doc, store=str(tmp_path / "theirs.zarr"), executor=executor, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
