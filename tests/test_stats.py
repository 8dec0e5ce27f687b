"""Grouped statistics against pandas/numpy computed independently, and exact merging."""

import numpy as np
import pandas as pd
import pytest

from polaragg.stats import STAT_INDEX, grouped_stats, merge_sufficient


def _random_obs(rng, n_obs=20000, n_cells=300):
    cell = rng.integers(0, n_cells, n_obs)
    cell[cell == 7] = 8  # cell 7 stays empty
    h = rng.normal(2000.0, 50.0, n_obs).astype(np.float32).astype(np.float64)
    sigma = rng.uniform(0.02, 0.2, n_obs).astype(np.float32).astype(np.float64)
    t = 1.9e8 + rng.uniform(0, 1e6, n_obs)
    return cell, h, sigma, t, n_cells


def _reference(cell, h, sigma, t):
    df = pd.DataFrame({"cell": cell, "h": h, "w": 1 / sigma**2, "t": t})
    df["wh"] = df.w * df.h
    g = df.groupby("cell")
    return pd.DataFrame({
        "count": g.size(),
        "h_mean": g.wh.sum() / g.w.sum(),
        "h_sigma": 1 / np.sqrt(g.w.sum()),
        "h_var": g.h.var(ddof=0),
        "h_min": g.h.min(),
        "h_max": g.h.max(),
        "h_q25": g.h.apply(lambda x: np.quantile(x.to_numpy(), 0.25)),
        "h_q50": g.h.apply(lambda x: np.quantile(x.to_numpy(), 0.50)),
        "h_q75": g.h.apply(lambda x: np.quantile(x.to_numpy(), 0.75)),
        "t_mean": g.t.mean(),
    })


def test_grouped_stats_match_pandas():
    rng = np.random.default_rng(1)
    cell, h, sigma, t, n_cells = _random_obs(rng)
    block = grouped_stats(cell, h, sigma, t, n_cells)
    ref = _reference(cell, h, sigma, t)
    idx = ref.index.to_numpy()
    assert block.shape == (n_cells, len(STAT_INDEX))
    np.testing.assert_array_equal(block[idx, STAT_INDEX["count"]], ref["count"].to_numpy())
    for name in ref.columns.drop("count"):
        np.testing.assert_allclose(block[idx, STAT_INDEX[name]], ref[name].to_numpy(), rtol=1e-12, err_msg=name)
    empty = np.setdiff1d(np.arange(n_cells), idx)
    assert 7 in empty
    assert (block[empty, STAT_INDEX["count"]] == 0).all()
    assert np.isnan(block[empty, STAT_INDEX["h_mean"]]).all()
    assert np.isnan(block[empty, STAT_INDEX["h_q50"]]).all()


def test_single_observation_cell():
    block = grouped_stats(np.array([2]), np.array([5.0]), np.array([0.5]), np.array([10.0]), 4)
    row = block[2]
    assert row[STAT_INDEX["count"]] == 1
    assert row[STAT_INDEX["h_mean"]] == 5.0
    assert row[STAT_INDEX["h_sigma"]] == pytest.approx(0.5)
    assert row[STAT_INDEX["h_var"]] == 0.0
    assert row[STAT_INDEX["h_q25"]] == row[STAT_INDEX["h_q75"]] == 5.0


def test_merge_equals_joint_computation():
    rng = np.random.default_rng(2)
    cell, h, sigma, t, n_cells = _random_obs(rng)
    half = rng.random(cell.size) < 0.4
    a = grouped_stats(cell[half], h[half], sigma[half], t[half], n_cells)
    b = grouped_stats(cell[~half], h[~half], sigma[~half], t[~half], n_cells)
    joint = grouped_stats(cell, h, sigma, t, n_cells)
    merged = merge_sufficient(a, b)
    for name in ("count", "sum_w", "sum_wh", "sum_h", "h_m2", "sum_t", "h_mean", "h_sigma", "h_var", "h_min",
                 "h_max", "t_mean"):
        np.testing.assert_allclose(merged[:, STAT_INDEX[name]], joint[:, STAT_INDEX[name]], rtol=1e-9,
                                   equal_nan=True, err_msg=name)
