"""Grouped statistics against pandas/numpy computed independently, bit for bit against a lexsort
formulation of the same statistics, and exact merging."""

import warnings

import numpy as np
import pandas as pd
import pytest

from polaragg.stats import QUANTILES, STAT_INDEX, STAT_NAMES, empty_block, grouped_stats, merge_sufficient


# --- the lexsort formulation, kept verbatim as the bit-for-bit reference -------------------------
def _reference_grouped_stats(cell, h, sigma, t, n_cells):
    cell = np.asarray(cell, dtype=np.intp)
    h = np.asarray(h, dtype=np.float64)
    w = 1.0 / np.square(np.asarray(sigma, dtype=np.float64))
    t = np.asarray(t, dtype=np.float64)
    block = empty_block(n_cells)
    if cell.size == 0:
        return block
    col = STAT_INDEX
    count = np.bincount(cell, minlength=n_cells).astype(np.float64)
    has = count > 0
    sum_w = np.bincount(cell, weights=w, minlength=n_cells)
    sum_wh = np.bincount(cell, weights=w * h, minlength=n_cells)
    sum_h = np.bincount(cell, weights=h, minlength=n_cells)
    sum_t = np.bincount(cell, weights=t, minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum_h / count
        m2 = np.bincount(cell, weights=np.square(h - mean[cell]), minlength=n_cells)
        block[:, col["count"]] = count
        block[:, col["sum_w"]] = sum_w
        block[:, col["sum_wh"]] = sum_wh
        block[:, col["sum_h"]] = sum_h
        block[:, col["h_m2"]] = m2
        block[:, col["sum_t"]] = sum_t
        block[has, col["h_mean"]] = sum_wh[has] / sum_w[has]
        block[has, col["h_sigma"]] = 1.0 / np.sqrt(sum_w[has])
        block[has, col["h_var"]] = m2[has] / count[has]
        block[has, col["t_mean"]] = sum_t[has] / count[has]

    order = np.lexsort((h, cell))
    hs = h[order]
    n = count[has].astype(np.intp)
    start = np.concatenate(([0], np.cumsum(n)[:-1]))
    block[has, col["h_min"]] = hs[start]
    block[has, col["h_max"]] = hs[start + n - 1]
    for name, q in QUANTILES.items():
        block[has, col[name]] = _reference_sorted_quantile(hs, start, n, q)
    return block


def _reference_sorted_quantile(hs, start, n, q):
    pos = q * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    a = hs[start + lo]
    b = hs[start + hi]
    return np.where(frac >= 0.5, b - (b - a) * (1.0 - frac), a + (b - a) * frac)


# --- inputs ------------------------------------------------------------------------------------
def _random_obs(rng, n_obs=20000, n_cells=300, *, float32=True, ties=False, negative=False, singles=0):
    """Random observations; cell 7 stays empty, and `singles` further cells get one observation each."""
    cell = rng.integers(0, n_cells, n_obs)
    cell[cell == 7] = 8
    lonely = rng.choice(np.setdiff1d(np.arange(n_cells), [7, 8]), size=singles, replace=False)
    cell[np.isin(cell, lonely)] = 8
    cell[rng.choice(n_obs, size=singles, replace=False)] = lonely
    h = rng.normal(-30.0 if negative else 2000.0, 50.0, n_obs)
    if ties:
        # Few distinct values, so many equal heights per cell (+ 0.0 turns -0.0 into +0.0; signed
        # zeros have their own test). 0.1 m steps are not float32 values.
        h = np.round(h / 5.0) * (5.0 if float32 else 0.1) + 0.0
    if float32:
        h = h.astype(np.float32).astype(np.float64)
    sigma = rng.uniform(0.02, 0.2, n_obs).astype(np.float32).astype(np.float64)
    t = 1.9e8 + rng.uniform(0, 1e6, n_obs)
    return cell, h, sigma, t, n_cells


def _bits(block):
    return np.ascontiguousarray(block).view(np.uint64)


def _assert_bit_identical(cell, h, sigma, t, n_cells):
    new = grouped_stats(cell, h, sigma, t, n_cells)
    old = _reference_grouped_stats(cell, h, sigma, t, n_cells)
    assert new.dtype == np.float64 and new.shape == (n_cells, len(STAT_NAMES))
    for i, name in enumerate(STAT_NAMES):
        np.testing.assert_array_equal(_bits(new[:, i]), _bits(old[:, i]), err_msg=name)
    return new


# --- independent brute force -------------------------------------------------------------------
def _brute_force(cell, h, sigma, t):
    """pandas groupby for sums and extremes, numpy.quantile on each cell's heights for quantiles."""
    df = pd.DataFrame({"cell": cell, "h": h, "w": 1 / sigma**2, "t": t})
    df["wh"] = df.w * df.h
    g = df.groupby("cell")
    quant = {name: {} for name in QUANTILES}
    for c, x in g.h:
        values = x.to_numpy()
        for name, q in QUANTILES.items():
            quant[name][c] = np.quantile(values, q)
    return pd.DataFrame({
        "count": g.size(),
        "h_mean": g.wh.sum() / g.w.sum(),
        "h_sigma": 1 / np.sqrt(g.w.sum()),
        "h_var": g.h.var(ddof=0),
        "h_min": g.h.min(),
        "h_max": g.h.max(),
        **{name: pd.Series(v) for name, v in quant.items()},
        "t_mean": g.t.mean(),
        "sum_w": g.w.sum(),
        "sum_wh": g.wh.sum(),
        "sum_h": g.h.sum(),
        "h_m2": g.h.var(ddof=0) * g.size(),
        "sum_t": g.t.sum(),
    })


def _assert_matches_brute_force(cell, h, sigma, t, n_cells):
    block = grouped_stats(cell, h, sigma, t, n_cells)
    ref = _brute_force(cell, h, sigma, t)
    idx = ref.index.to_numpy()
    assert block.shape == (n_cells, len(STAT_NAMES))
    np.testing.assert_array_equal(block[idx, STAT_INDEX["count"]], ref["count"].to_numpy())
    # Order statistics are values of the input (or numpy's own lerp of two of them): exact.
    for name in ("h_min", "h_max", *QUANTILES):
        np.testing.assert_array_equal(block[idx, STAT_INDEX[name]], ref[name].to_numpy(), err_msg=name)
    # Sums in another order (pandas) agree to rounding; a variance is also absolute to rounding of
    # the mean, which matters when a cell's heights are all equal.
    scale = np.abs(h).max() ** 2 * 1e-12
    for name in ("h_mean", "h_sigma", "t_mean", "sum_w", "sum_wh", "sum_h", "sum_t"):
        np.testing.assert_allclose(block[idx, STAT_INDEX[name]], ref[name].to_numpy(), rtol=1e-12,
                                   err_msg=name)
    for name in ("h_var", "h_m2"):
        np.testing.assert_allclose(block[idx, STAT_INDEX[name]], ref[name].to_numpy(), rtol=1e-12,
                                   atol=scale * (1 if name == "h_var" else cell.size), err_msg=name)
    empty = np.setdiff1d(np.arange(n_cells), idx)
    assert (block[empty, STAT_INDEX["count"]] == 0).all()
    for name in ("sum_w", "sum_wh", "sum_h", "h_m2", "sum_t"):
        assert (block[empty, STAT_INDEX[name]] == 0).all()
    for name in ("h_mean", "h_sigma", "h_var", "h_min", "h_max", *QUANTILES, "t_mean"):
        assert np.isnan(block[empty, STAT_INDEX[name]]).all(), name
    return block, ref


CASES = {
    "float32": {},
    "ties": {"ties": True},
    "negative": {"negative": True},
    "not-float32": {"float32": False},
    "not-float32-ties": {"float32": False, "ties": True},
    "singles": {"singles": 40},
    "negative-ties-singles": {"negative": True, "ties": True, "singles": 25},
}


@pytest.mark.parametrize("case", CASES)
def test_grouped_stats_match_brute_force(case):
    rng = np.random.default_rng(list(CASES).index(case) + 1)
    cell, h, sigma, t, n_cells = _random_obs(rng, **CASES[case])
    block, ref = _assert_matches_brute_force(cell, h, sigma, t, n_cells)
    assert 7 not in ref.index
    if CASES[case].get("singles"):
        ones = ref.index[ref["count"] == 1].to_numpy()
        assert ones.size >= CASES[case]["singles"]
        for name in ("h_min", "h_max", *QUANTILES):
            np.testing.assert_array_equal(block[ones, STAT_INDEX[name]], ref.loc[ones, "h_min"].to_numpy())
        # (w * h) / w rounds twice, so the weighted mean of one height is that height to an ulp.
        np.testing.assert_allclose(block[ones, STAT_INDEX["h_mean"]], ref.loc[ones, "h_min"].to_numpy(),
                                   rtol=2**-52)
        assert (block[ones, STAT_INDEX["h_var"]] == 0).all()


@pytest.mark.parametrize("case", CASES)
def test_bit_identical_to_lexsort_formulation(case):
    rng = np.random.default_rng(list(CASES).index(case) + 101)
    _assert_bit_identical(*_random_obs(rng, **CASES[case]))


def test_large_case_brute_force_and_bit_identical():
    rng = np.random.default_rng(12)
    cell, h, sigma, t, n_cells = _random_obs(rng, n_obs=1_000_000, n_cells=4096, negative=True, singles=30)
    _assert_matches_brute_force(cell, h, sigma, t, n_cells)
    _assert_bit_identical(cell, h, sigma, t, n_cells)
    # One height that float32 cannot hold sends everything down the other sort; still identical.
    h = h.copy()
    h[12345] += 1e-9
    _assert_bit_identical(cell, h, sigma, t, n_cells)


def test_bit_identical_float32_input_and_edge_values():
    rng = np.random.default_rng(5)
    cell, h, sigma, t, n_cells = _random_obs(rng, n_obs=5000, n_cells=50, negative=True, ties=True)
    # float32 arrays as the reader returns them: no float64 copy is needed for the key.
    new = grouped_stats(cell, h.astype(np.float32), sigma.astype(np.float32), t, n_cells)
    np.testing.assert_array_equal(_bits(new), _bits(_reference_grouped_stats(cell, h, sigma, t, n_cells)))
    _assert_bit_identical(cell, h.astype(np.float32), sigma, t, n_cells)
    # Extreme and subnormal float32 values, infinities, zeros.
    tiny, huge = np.float32(1e-45).item(), np.float32(3.4e38).item()
    extreme = np.array([0.0, tiny, -tiny, huge, -huge, np.inf, -np.inf, 1.0, -1.0])
    h2 = h.copy()
    h2[: extreme.size * 20] = np.tile(extreme, 20)
    with np.errstate(invalid="ignore"):
        _assert_bit_identical(cell, h2, sigma, t, n_cells)


def test_heights_beyond_float32_range_quietly_take_the_other_sort():
    rng = np.random.default_rng(8)
    cell, h, sigma, t, n_cells = _random_obs(rng, n_obs=2000, n_cells=30)
    h[::97] = 1e39  # beyond float32: the cast overflows
    h[1::89] = -1e-300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_bit_identical(cell, h, sigma, t, n_cells)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bit_identical_with_signed_zeros_and_nans(dtype):
    """+0.0 and -0.0 (and NaNs) compare equal with different bits: the stable order decides which
    one is a cell's minimum or quantile, exactly as before."""
    rng = np.random.default_rng(6)
    cell, h, sigma, t, n_cells = _random_obs(rng, n_obs=3000, n_cells=20, ties=True)
    h = (h - 2000.0).astype(dtype)
    h[rng.choice(h.size, 400, replace=False)] = -0.0
    h[rng.choice(h.size, 400, replace=False)] = 0.0
    _assert_bit_identical(cell, h, sigma, t, n_cells)
    h[rng.choice(h.size, 30, replace=False)] = np.nan
    with np.errstate(invalid="ignore"):
        _assert_bit_identical(cell, h, sigma, t, n_cells)


@pytest.mark.parametrize("n_cells", [1, 3, 70_000])
def test_bit_identical_cell_counts(n_cells):
    rng = np.random.default_rng(n_cells)
    for float32 in (True, False):
        cell, h, sigma, t, _ = _random_obs(rng, n_obs=4000, n_cells=max(n_cells, 9), float32=float32)
        cell = cell % n_cells
        _assert_bit_identical(cell, h, sigma, t, n_cells)


def test_no_observations():
    block = grouped_stats(np.empty(0, np.intp), np.empty(0), np.empty(0), np.empty(0), 5)
    np.testing.assert_array_equal(_bits(block), _bits(empty_block(5)))


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


def test_coarser_stats_equal_the_statistics_of_the_coarsened_cells():
    """Merging groups of 4 cells (sums, Chan's second moment, the keys re-sorted for order statistics) gives
    what grouping the rows by the coarser cell gives: order statistics bit for bit, sums to rounding."""
    from polaragg.stats import STAT_INDEX, coarser_stats, grouped_stats_keys

    rng = np.random.default_rng(11)
    n, cells = 200_000, 4096
    cell = rng.integers(0, cells, n)
    cell[rng.random(n) < 0.3] = 17  # a busy cell, and (below) empty ones
    cell[(cell >= 128) & (cell < 256)] = 99  # cells 128-255 empty: whole coarse cells at every factor here
    h = rng.normal(1500.0, 800.0, n).astype(np.float32)
    sigma = rng.uniform(0.02, 0.2, n).astype(np.float32)
    t = rng.uniform(0, 1e8, n)
    block, key = grouped_stats_keys(cell, h, sigma, t, cells)
    for factor_steps in (1, 2, 3):
        merged, mkey = block, key
        for _ in range(factor_steps):
            merged, mkey = coarser_stats(merged, mkey)
        direct = grouped_stats(cell >> (2 * factor_steps), h, sigma, t, cells >> (2 * factor_steps))
        for name in ("h_min", "h_max", "h_q25", "h_q50", "h_q75"):
            np.testing.assert_array_equal(merged[:, STAT_INDEX[name]], direct[:, STAT_INDEX[name]], err_msg=name)
        np.testing.assert_array_equal(merged[:, STAT_INDEX["count"]], direct[:, STAT_INDEX["count"]])
        np.testing.assert_allclose(merged, direct, rtol=1e-10, atol=1e-6, equal_nan=True)
        assert (direct[:, STAT_INDEX["count"]] == 0).any()  # empty coarse cells are part of the check


def test_coarser_stats_of_a_task_without_observations():
    from polaragg.stats import STAT_INDEX, coarser_stats, grouped_stats_keys

    block, key = grouped_stats_keys(np.empty(0, np.intp), np.empty(0, np.float32), np.empty(0, np.float32),
                                    np.empty(0), 64)
    merged, mkey = coarser_stats(block, key)
    assert merged.shape[0] == 16 and mkey.size == 0
    assert (merged[:, STAT_INDEX["count"]] == 0).all() and np.isnan(merged[:, STAT_INDEX["h_q50"]]).all()


@pytest.mark.parametrize("kind", [None, "stable"])
def test_bit_identical_whichever_sort_the_machine_picks(kind, monkeypatch):
    """The key sort's kind is chosen by timing; both kinds must give the lexsort's bits, ties included."""
    import polaragg.stats as stats

    monkeypatch.setattr(stats, "key_sort_kind", lambda: kind)
    rng = np.random.default_rng(77)
    cell, h, sigma, t, n_cells = _random_obs(rng, n_obs=200_000, n_cells=4096, negative=True, ties=True)
    h32 = h.astype(np.float32)
    h32[::7] = h32[0]  # many equal keys
    _assert_bit_identical(cell, h32, sigma, t, n_cells)
    order = np.argsort(cell, kind="stable")  # along-track-like runs: rows grouped by cell
    _assert_bit_identical(cell[order], h32[order], sigma[order], t[order], n_cells)


def test_key_sort_kind_is_one_of_numpys():
    from polaragg.stats import key_sort_kind

    assert key_sort_kind() in (None, "stable")
