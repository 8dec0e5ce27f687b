"""What a newcomer meets: the README's Python snippet runs as a script, and every engine writes the same files."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polaragg
import polaragg.ledger
import polaragg.sources
from polaragg.validate import validate_store

REPO = Path(__file__).resolve().parents[1]
EDGE_BBOX = (55.0, -87.0, 95.0, -85.0)  # the demo's granules start near 70E: some tasks come out empty


def test_the_readme_snippet_runs_as_a_script_on_processes(demo_cache, tmp_path):
    readme = (REPO / "README.md").read_text()
    use = readme[readme.index("## Use"):]
    snippet = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    assert "processes" in snippet and '__name__ == "__main__"' in snippet
    (tmp_path / "recipes").mkdir()
    # The snippet names recipes/demo.yaml; the one-cycle recipe under that name keeps the test quick.
    shutil.copy(REPO / "recipes" / "one-cycle.yaml", tmp_path / "recipes" / "demo.yaml")
    (tmp_path / "snippet.py").write_text(snippet)
    env = dict(os.environ, POLARAGG_CACHE=str(demo_cache[0].parent))
    result = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stores = list(tmp_path.glob("*.zarr"))
    assert len(stores) == 1 and validate_store(str(stores[0])) == []


def _files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()}


def test_cubed_and_dask_write_the_same_chunk_files(demo_recipe, tmp_path):
    recipe = demo_recipe.model_copy(update={"aoi": demo_recipe.aoi.model_copy(update={"bbox": EDGE_BBOX})})
    stores, summaries = {}, {}
    for executor in ("single-threaded", "dask"):
        stores[executor] = tmp_path / f"{executor}.zarr"
        summaries[executor] = polaragg.run(recipe, store=str(stores[executor]), executor=executor, progress=False)
    cubed, dask = (_files(stores[e]) for e in ("single-threaded", "dask"))
    assert cubed == dask
    records = polaragg.ledger.read_records(str(stores["dask"]))
    assert any(r.observations == 0 for r in records)
    assert len([f for f in cubed if f.startswith("count/c/")]) == len(records)  # empty chunks written too
    # The summary's Granules are those of the planned tasks, not the whole catalog.
    planned = {g.granule_id for t in polaragg.runner.plan_recipe(recipe).tasks for g in t.granules}
    catalog = polaragg.sources.load_catalog(recipe)
    assert summaries["dask"].granules == len(planned) < len(catalog.granules)
