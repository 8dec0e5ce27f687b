"""The package's layers: a lower layer never imports a higher one, imports have no cycles, the recipe is
pure configuration, and the command line starts without the heavy libraries.

Imports are read from the source with `ast`. Module-level imports (those that run when a module is
imported, try/except included) and function-level imports (inside a def) are kept apart: module-level
imports must follow the layer order; a function-level import may go upward only if it is listed in
`UPWARD_IN_FUNCTIONS` with its reason. Imports under `if TYPE_CHECKING:` never run and are not counted.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "polaragg"

# Lowest first. A module may import modules of its own layer or of lower layers.
LAYERS: dict[str, set[str]] = {
    # standard library only: the small immutable types every layer shares
    "pure": {"domain", "cycles"},
    # the recipe: validated configuration (pydantic, yaml)
    "config": {"recipe", "prices"},
    # HEALPix conventions and cell assignment, exact coverage, geometry, reductions, the memory model
    "domain": {"fastest", "grid", "polar_cells", "products", "products.atl06", "stats", "coverage", "aoi", "memory", "projection", "change", "timebins", "schema", "pyramid"},
    # granules, Zarr store, ledger, lock, CMR, catalog, sources, synthetic granules, checks and maps of a store,
    # the retry policy they share
    "io": {"fs", "retry", "credentials", "chunks", "read", "intermediate", "ledger", "lock", "store", "cmr", "catalog", "sources", "synthetic", "validate", "viz"},
    # one task, the plan, executors and cloud services, cost, progress, the runner
    "execution": {"aggregate", "plan", "executors", "forkserver", "dask_plugin", "preflight", "cloud", "calibration", "cost", "progress", "runner"},
    # the public entry points: the package namespace, the command line, build scripts
    "interface": {"", "cli", "data.build_basins", "data.build_greenland"},
}

# Modules the recipe may import at module level: nothing but the standard library and each other.
PURE = {"domain", "cycles"}

# Function-level imports that go upward, each with why it is there (keep this list short).
UPWARD_IN_FUNCTIONS: dict[tuple[str, str], str] = {
    ("recipe", "grid"): "GridConfig.grid() builds the runtime Grid; importing the recipe stays free of numpy",
}

HEAVY = {
    "numpy", "xarray", "zarr", "cubed", "dask", "distributed", "h5py", "h5coro", "pandas", "pyarrow",
    "matplotlib", "shapely", "pyproj", "healpix_geo", "botocore", "boto3", "s3fs", "fsspec", "pydantic",
    "requests", "psutil", "lithops", "coiled",
}


def _module_name(path: Path) -> str:
    """'' for the package itself, else the dotted name below it ('products.atl06')."""
    parts = list(path.relative_to(SRC / PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _own(dotted: str, known: set[str]) -> str | None:
    """The package module a dotted name refers to (longest known prefix), or None if not ours."""
    if dotted != PACKAGE and not dotted.startswith(PACKAGE + "."):
        return None
    parts = dotted.split(".")[1:]
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(package modules imported at module level, package modules imported in functions, top-level
    names of other modules imported at module level)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = [PACKAGE] + ([p for p in package.split(".") if p])
    top: set[str] = set()
    inner: set[str] = set()
    external: set[str] = set()

    def record(targets: list[str], in_function: bool) -> None:
        for dotted in targets:
            own = _own(dotted, known)
            if own is None:
                if not in_function:
                    external.add(dotted.split(".")[0])
            elif own != name:
                (inner if in_function else top).add(own)

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            if isinstance(child, ast.Import):
                record([a.name for a in child.names], in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    origin = ".".join(base[: len(base) - (child.level - 1)] + ([child.module] if child.module else []))
                else:
                    origin = child.module or ""
                # `from x import y` imports x.y when y is a module, else x.
                record([f"{origin}.{a.name}" for a in child.names], in_function)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return top, inner, external


def _graph() -> dict[str, tuple[set[str], set[str], set[str]]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer_index() -> dict[str, int]:
    return {m: i for i, members in enumerate(LAYERS.values()) for m in members}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_path(sorted(c), edges) for c in components]


def _cycle_path(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A concrete cycle inside a strongly connected component, from its first module back to it."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ()) & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def _label(module: str) -> str:
    return f"{PACKAGE}.{module}" if module else PACKAGE


def test_every_module_has_a_layer():
    assigned = [m for members in LAYERS.values() for m in members]
    assert len(assigned) == len(set(assigned)), "a module is listed in two layers"
    modules = set(_modules())
    assert not modules - set(assigned), f"modules without a layer in LAYERS: {sorted(map(_label, modules - set(assigned)))}"
    assert not set(assigned) - modules, f"LAYERS names modules that do not exist: {sorted(set(assigned) - modules)}"


def test_no_import_cycles_at_module_level():
    graph = _graph()
    cycles = _cycles({m: top for m, (top, _, _) in graph.items()})
    assert not cycles, "module-level import cycles: " + "; ".join(" -> ".join(map(_label, c)) for c in cycles)


def test_no_import_cycles_counting_function_level_imports():
    graph = _graph()
    cycles = _cycles({m: top | inner for m, (top, inner, _) in graph.items()})
    assert not cycles, "import cycles (function-level imports included): " + "; ".join(
        " -> ".join(map(_label, c)) for c in cycles
    )


def test_module_level_imports_follow_the_layers():
    graph, layer, names = _graph(), _layer_index(), list(LAYERS)
    upward = [
        f"{_label(m)} ({names[layer[m]]}) imports {_label(t)} ({names[layer[t]]})"
        for m, (top, _, _) in sorted(graph.items()) for t in sorted(top) if layer[t] > layer[m]
    ]
    assert not upward, "module-level imports into a higher layer:\n  " + "\n  ".join(upward)


def test_function_level_upward_imports_are_the_documented_ones():
    graph, layer = _graph(), _layer_index()
    upward = {(m, t) for m, (_, inner, _) in graph.items() for t in inner if layer[t] > layer[m]}
    unlisted = sorted(upward - set(UPWARD_IN_FUNCTIONS))
    assert not unlisted, "function-level imports into a higher layer, not in UPWARD_IN_FUNCTIONS: " + ", ".join(
        f"{_label(m)} -> {_label(t)}" for m, t in unlisted
    )
    stale = sorted(set(UPWARD_IN_FUNCTIONS) - upward)
    assert not stale, f"UPWARD_IN_FUNCTIONS lists imports that no longer exist: {stale}"


def test_recipe_imports_only_pure_modules():
    graph = _graph()
    top, inner, _ = graph["recipe"]
    assert top <= PURE, f"polaragg.recipe imports {sorted(map(_label, top - PURE))} at module level"
    allowed = PURE | {t for (m, t) in UPWARD_IN_FUNCTIONS if m == "recipe"}
    assert inner <= allowed, f"polaragg.recipe imports {sorted(map(_label, inner - allowed))} in functions"


def test_pure_modules_use_only_the_standard_library():
    graph = _graph()
    for module in PURE:
        top, inner, external = graph[module]
        assert top | inner <= PURE, f"{_label(module)} imports {sorted(map(_label, (top | inner) - PURE))}"
        foreign = sorted(e for e in external if e not in sys.stdlib_module_names)
        assert not foreign, f"{_label(module)} imports {foreign}, outside the standard library"


_LOADED = f"""
import sys
heavy = {sorted(HEAVY)!r}
print(__import__("json").dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""

_CLI = """
import contextlib, io
import polaragg.cli as cli
parser = cli.build_parser()
for argv in (["--help"], *([name, "--help"] for name in ("demo", "run", "status", "validate", "catalog", "plan",
                                                         "synth", "map"))):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
"""

_RECIPE = """
from importlib import resources
from polaragg import load_recipe
recipe = load_recipe(str(resources.files("polaragg") / "recipes" / "demo.yaml"))
assert recipe.executor.aws_lambda.region and recipe.executor.coiled.n_workers
"""


@pytest.mark.parametrize(
    ("what", "code", "allowed"),
    [
        ("the command line and its --help", _CLI, set()),
        ("loading a recipe", _RECIPE, {"pydantic"}),
    ],
)
def test_heavy_modules_are_not_imported(what, code, allowed):
    """A structural check, not a timing one: --help stays fast when no heavy library is imported."""
    out = subprocess.run([sys.executable, "-c", code + _LOADED], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=True).stdout
    loaded = [m for m in json.loads(out.strip().splitlines()[-1]) if m.split(".")[0] not in allowed]
    assert loaded == [], f"{what} imports heavy modules: {loaded}"
