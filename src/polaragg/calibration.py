"""Calibration: the seconds of a task from its size, fitted on a ledger or shipped.

A task's seconds are modelled as a * rows_in_cell + b * granules + c, so a plan can be priced before it
runs. `calibrate(records)` fits the model on ledger records (non-negative least squares);
`default_calibration()` is a fit shipped in `prices.yaml` for when no ledger exists.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from .ledger import TaskRecord
from .prices import PriceError, shipped_section


@dataclass(frozen=True)
class Calibration:
    """seconds of one task = seconds_per_row * rows + seconds_per_granule * granules + seconds_per_task."""

    seconds_per_row: float
    seconds_per_granule: float
    seconds_per_task: float = 0.0
    observations_per_row: float = 1.0
    name: str = "custom"
    n_records: int = 0
    rejected: int = 0
    r2: float | None = None
    source: str = ""
    machine: str = ""

    def predict(self, rows: Any, granules: Any) -> Any:
        """Predicted task seconds (scalars or arrays)."""
        return (self.seconds_per_row * np.asarray(rows, dtype=np.float64)
                + self.seconds_per_granule * np.asarray(granules, dtype=np.float64) + self.seconds_per_task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrations() -> dict[str, Calibration]:
    """The calibrations shipped in `prices.yaml`, by name."""
    section = shipped_section("calibrations")
    names = [k for k in section if k != "default"]
    out = {}
    for n in names:
        spec = {f.name: section[n][f.name] for f in fields(Calibration) if f.name in section[n]}
        for k in ("seconds_per_row", "seconds_per_granule", "seconds_per_task", "observations_per_row"):
            spec[k] = float(spec.get(k, 0.0 if k != "observations_per_row" else 1.0))
        if spec.get("r2") is not None:
            spec["r2"] = float(spec["r2"])
        out[n] = Calibration(**{**spec, "name": n, "source": str(spec.get("source", "")).strip()})
    return out


def default_calibration(name: str | None = None) -> Calibration:
    """A shipped calibration (the default one unless `name` is given)."""
    known = calibrations()
    name = name or shipped_section("calibrations")["default"]
    if name not in known:
        raise PriceError(f"unknown calibration {name!r}; shipped: {', '.join(known)}")
    return known[name]


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a few columns.

    The optimum is the unconstrained least-squares solution on its own support, so trying every support
    (2^k for k <= 3 columns here) and keeping the best feasible one is exact. Uses scipy when present.
    """
    try:  # pragma: no cover - scipy is optional
        from scipy.optimize import nnls

        return nnls(a, y)[0]
    except ImportError:
        pass
    k = a.shape[1]
    best, best_res = np.zeros(k), float(np.sum(y * y))
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = list(support)
            sol, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if (sol < 0).any():
                continue
            x = np.zeros(k)
            x[cols] = sol
            res = float(np.sum((a @ x - y) ** 2))
            if res < best_res - 1e-15 * max(best_res, 1.0):
                best, best_res = x, res
    return best


def calibrate(records: Sequence[TaskRecord], *, intercept: bool = True, robust: bool = True,
              name: str = "ledger", source: str = "", machine: str = "") -> Calibration:
    """Fit seconds = a * rows_in_cell + b * granules (+ c per task) by non-negative least squares.

    A record's seconds include the granule stage of the granules it reports, and its granules are those
    it reports (each granule is read once); records without granule reports count the granules they
    read. Failed tasks are left out. With `robust`, one pass drops tasks whose residual exceeds 3 robust standard
    deviations (1.4826 MAD, at least 1 ms) and refits: the first task of a process pays imports and cold
    caches.
    """
    usable = [r for r in records if r.status != "failed"]
    if not usable:
        raise ValueError("no usable task records to calibrate on (all failed, or none)")
    one_pass = any(r.granule_reports for r in usable)
    cols = [[float(r.rows_in_cell), float(len(r.granule_reports) if one_pass else r.granules)]
            + ([1.0] if intercept else []) for r in usable]
    a = np.asarray(cols, dtype=np.float64)
    y = np.asarray([r.seconds + r.granule_seconds for r in usable], dtype=np.float64)
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)  # column scaling for conditioning

    def fit(mask: np.ndarray) -> np.ndarray:
        return _nnls(a[mask] / scale, y[mask]) / scale

    keep = np.ones(len(y), dtype=bool)
    coef = fit(keep)
    if robust and len(y) > a.shape[1] + 1:
        res = y - a @ coef
        spread = 1.4826 * float(np.median(np.abs(res - np.median(res))))
        cand = np.abs(res) <= max(3.0 * spread, 1e-3)
        if cand.sum() >= a.shape[1] + 1 and not cand.all():
            keep = cand
            coef = fit(keep)
    pred = a[keep] @ coef
    ss_tot = float(np.sum((y[keep] - y[keep].mean()) ** 2))
    r2 = 1.0 - float(np.sum((y[keep] - pred) ** 2)) / ss_tot if ss_tot > 0 else None
    rows = sum(r.rows_in_cell for r in usable)
    obs = sum(r.observations for r in usable)
    return Calibration(
        seconds_per_row=float(coef[0]), seconds_per_granule=float(coef[1]),
        seconds_per_task=float(coef[2]) if intercept else 0.0,
        observations_per_row=obs / rows if rows else 1.0,
        name=name, n_records=len(usable), rejected=int((~keep).sum()), r2=r2, source=source, machine=machine,
    )
