"""Cubed's work folder: where the recipe says (a folder of the run's own inside it), removed after success."""

import polaragg
from polaragg.intermediate import Location


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
