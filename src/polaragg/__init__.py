"""polaragg: exact, resumable aggregation of ICESat-2 ATL06 heights onto HEALPix cells.

Public API: `load_recipe`, `open_dataset`, `run`, and the `polaragg` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recipe import load_recipe
    from .runner import open_dataset, run

__all__ = ["load_recipe", "open_dataset", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command line and workers start faster without xarray/cubed.
    if name == "load_recipe":
        from .recipe import load_recipe

        return load_recipe
    if name in ("open_dataset", "run"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'polaragg' has no attribute {name!r}")
