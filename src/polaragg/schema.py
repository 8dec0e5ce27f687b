"""The output variables of a run and where each sits in a task's block.

A task's block is one float64 array (cells x columns): every per-bin variable takes `n_bins`
consecutive columns (bin order), then every per-cell variable one column. The store, the lazy
Dataset and the checksums all read the block through this one layout.

Per bin: the statistics of `stats.STATS` and, when the change fit is on, the fit's mergeable moments
(weighted means of x, y, t and the weighted central co-moments of x, y, t, h; with `sum_w` and
`h_mean` they are `change.MOMENT_NAMES`) and the anomaly `dh` with its sigma. Per cell: the fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .cycles import CF_TIME_UNITS, TIME_SCALE_NOTE
from .stats import QUANTILES, STAT_INDEX, STATS, ZERO_WHEN_EMPTY, StatSpec

# The fit's moments (change.MOMENT_NAMES order) and the stored variable holding each.
MOMENT_VARIABLES: dict[str, str] = {
    "w": "sum_w", "x": "x_mean", "y": "y_mean", "t": "t_fit_mean", "h": "h_mean",
    "xx": "m_xx", "xy": "m_xy", "xt": "m_xt", "xh": "m_xh", "yy": "m_yy", "yt": "m_yt", "yh": "m_yh",
    "tt": "m_tt", "th": "m_th", "hh": "m_hh",
}


def _moment_specs() -> tuple[StatSpec, ...]:
    specs = [
        StatSpec("x_mean", "float64", "m", "weighted mean x offset from the cell centre (polar stereographic)", True),
        StatSpec("y_mean", "float64", "m", "weighted mean y offset from the cell centre (polar stereographic)", True),
        StatSpec("t_fit_mean", "float64", "yr", "weighted mean time, years of 365.25 days since the fit reference",
                 True),
    ]
    for key, name in MOMENT_VARIABLES.items():
        if len(key) == 2:
            u, v = key
            m_exp, yr_exp = -2 + sum(c != "t" for c in key), sum(c == "t" for c in key)
            units = " ".join(f"{unit}{e if e != 1 else ''}" for unit, e in (("m", m_exp), ("yr", yr_exp)) if e) or "1"
            specs.append(StatSpec(name, "float64", units,
                                  f"weighted central co-moment sum w ({u} - mean {u})({v} - mean {v})", True))
    return tuple(specs)


MOMENTS: tuple[StatSpec, ...] = _moment_specs()
ANOMALY: tuple[StatSpec, ...] = (
    StatSpec("dh", "float64", "m", "height anomaly: the bin's weighted mean residual about the fitted surface at t0"),
    StatSpec("dh_sigma", "float64", "m", "1-sigma error of dh (the bin mean's error and the fitted surface's)"),
)
FIT: tuple[StatSpec, ...] = (
    StatSpec("dhdt", "float64", "m yr-1", "rate of elevation change from h = a + b x + c y + dhdt (t - t0)"),
    StatSpec("dhdt_sigma", "float64", "m yr-1", "1-sigma error of dhdt (formal, scaled by the residual when larger)"),
    StatSpec("h_fit", "float64", "m", "fitted height at the cell centre at t0 (a)"),
    StatSpec("slope_x", "float64", "1", "fitted surface slope along polar stereographic x (b)"),
    StatSpec("slope_y", "float64", "1", "fitted surface slope along polar stereographic y (c)"),
    StatSpec("h_rms", "float64", "m", "weighted RMS of the fit's residuals"),
    StatSpec("fit_bins", "int16", "1", "time bins with observations"),
    StatSpec("fit_status", "int8", "1", "outcome of the change fit (flag_meanings)"),
)
ZERO_WHEN_EMPTY_ALL: frozenset[str] = frozenset(ZERO_WHEN_EMPTY) | {s.name for s in MOMENTS if s.name.startswith("m_")} \
    | {"fit_bins"}


@dataclass(frozen=True)
class OutputSchema:
    """The variables of a run with `n_bins` time bins, with or without the change fit."""

    n_bins: int = 1
    fit: bool = False
    quantiles: bool = True  # False for orders merged from sufficient statistics: quantiles need observations

    @cached_property
    def per_bin(self) -> tuple[StatSpec, ...]:
        stats = tuple(s for s in STATS if self.quantiles or s.name not in QUANTILES)
        return stats + (MOMENTS + ANOMALY if self.fit else ())

    @cached_property
    def per_cell(self) -> tuple[StatSpec, ...]:
        return FIT if self.fit else ()

    @cached_property
    def variables(self) -> tuple[StatSpec, ...]:
        return self.per_bin + self.per_cell

    @cached_property
    def _offsets(self) -> dict[str, tuple[int, int]]:
        out, pos = {}, 0
        for spec in self.per_bin:
            out[spec.name] = (pos, pos + self.n_bins)
            pos += self.n_bins
        for spec in self.per_cell:
            out[spec.name] = (pos, pos + 1)
            pos += 1
        return out

    @property
    def n_columns(self) -> int:
        return len(self.per_bin) * self.n_bins + len(self.per_cell)

    def columns(self, name: str) -> slice:
        """The block columns of a variable: its bins in order, or its one column."""
        a, b = self._offsets[name]
        return slice(a, b)

    def is_per_bin(self, name: str) -> bool:
        return any(s.name == name for s in self.per_bin)

    def empty_value(self, name: str) -> float:
        return 0.0 if name in ZERO_WHEN_EMPTY_ALL else float("nan")


def variable_attrs(spec: StatSpec, schema: OutputSchema) -> dict[str, object]:
    """CF attributes of a stored variable: units, long name, and what decodes or explains it."""
    attrs: dict[str, object] = {"units": spec.units, "long_name": spec.long_name}
    if spec.name == "t_mean":
        attrs.update(units=CF_TIME_UNITS, calendar="proleptic_gregorian", comment=TIME_SCALE_NOTE)
    if spec.name == "fit_status":
        from .change import FIT_STATUS

        attrs.update(flag_values=list(FIT_STATUS), flag_meanings=" ".join(FIT_STATUS.values()))
    return attrs


def time_coordinates(bins) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Bin centres (n,) and bounds (n, 2) in seconds since 2018-01-01 (UTC), and the CF attributes of `time`."""
    attrs = {"units": CF_TIME_UNITS, "calendar": "proleptic_gregorian", "bounds": "time_bounds",
             "standard_name": "time", "long_name": f"centre of the time bin ({bins.kind})",
             "bin_labels": list(bins.labels), "comment": TIME_SCALE_NOTE}
    return np.asarray(bins.centres(), np.float64), np.asarray(bins.bounds(), np.float64), attrs


def assemble_block(schema: OutputSchema, stats: np.ndarray, moments: np.ndarray | None,
                   min_bins: int = 3) -> np.ndarray:
    """A (cells x columns) block from per-(bin, cell) statistics (n_bins, n_cells, len(STATS)) and, with the
    fit, moments (n_bins, n_cells, 15): the fit is solved here, so every order gets it the same way."""
    from .change import MOMENT_NAMES, fit_change

    n_cells = stats.shape[1]
    block = np.empty((n_cells, schema.n_columns))
    for k, spec in enumerate(STATS):
        if spec.name in schema._offsets:
            block[:, schema.columns(spec.name)] = stats[:, :, k].T
    if schema.fit:
        # The store keeps the statistics' sum_w and h_mean for the moments' w and h (they agree to rounding):
        # fitting with exactly those makes a fit from stored moments (appending, merging) equal this one.
        moments = moments.copy()
        moments[..., 0] = stats[:, :, STAT_INDEX["sum_w"]]
        moments[..., 4] = np.where(moments[..., 0] > 0, stats[:, :, STAT_INDEX["h_mean"]], np.nan)
        fit = fit_change(moments, stats[:, :, 0], min_bins=min_bins)
        for j, key in enumerate(MOMENT_NAMES):
            name = MOMENT_VARIABLES[key]
            if name not in ("sum_w", "h_mean"):  # the statistics hold these
                block[:, schema.columns(name)] = moments[:, :, j].T
        block[:, schema.columns("dh")] = fit.dh.T
        block[:, schema.columns("dh_sigma")] = fit.dh_sigma.T
        for name, values in (("dhdt", fit.dhdt), ("dhdt_sigma", fit.dhdt_sigma), ("h_fit", fit.h0),
                             ("slope_x", fit.slope_x), ("slope_y", fit.slope_y), ("h_rms", fit.h_rms),
                             ("fit_bins", fit.n_bins), ("fit_status", fit.status)):
            block[:, schema.columns(name)] = np.asarray(values, np.float64)[:, None]
    return block


def block_columns(block: np.ndarray, schema: OutputSchema = OutputSchema()) -> dict[str, np.ndarray]:
    """A task's (cells x columns) float64 block as the stored arrays: (bins, cells) or (cells,) each."""
    out = {}
    for spec in schema.variables:
        values = block[:, schema.columns(spec.name)]
        if np.dtype(spec.dtype).kind in "iu":
            values = np.where(np.isnan(values), 0, values)
        values = values.T.astype(spec.dtype) if schema.is_per_bin(spec.name) else values[:, 0].astype(spec.dtype)
        out[spec.name] = values
    return out


def stats_and_moments(values: dict[str, np.ndarray], schema: OutputSchema) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-bin statistics (bins, cells, len(STATS)) and fit moments (bins, cells, 15) from stored per-bin
    variables ((bins, cells) each): the inverse of `assemble_block` for what it stores per bin."""
    from .change import MOMENT_NAMES

    count = np.asarray(values["count"])
    stats = np.full(count.shape + (len(STATS),), np.nan)
    for k, spec in enumerate(STATS):
        if spec.name in values:
            stats[:, :, k] = values[spec.name]
    moments = None
    if schema.fit:
        moments = np.stack([np.asarray(values[MOMENT_VARIABLES[key]], np.float64) for key in MOMENT_NAMES], axis=-1)
    return stats, moments
