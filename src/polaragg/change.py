"""Per-cell elevation change: mergeable weighted moments, and the fit h = a + b x + c y + dhdt t.

Observations arrive grouped by (time bin, cell). Each group is kept as a 15-number block of weighted
moments (`MOMENT_NAMES`): the weight sum, the weighted means of x, y, t, h and the weighted central
co-moments of those four. Blocks merge exactly (up to rounding) across tasks, time bins and, after
`shift_origin`, into coarser cells, and the least-squares fit of a cell needs nothing else. Central
co-moments rather than raw sums, because h is ~3000 m while the residuals that matter are centimetres:
raw sums of w h^2 would lose them to cancellation.

Model, per cell: h = a + b x + c y + dhdt t, where x, y are polar stereographic offsets (m) of an
observation from the cell centre and t is years (365.25 d) since the caller's reference epoch t0;
weights are w = 1 / h_li_sigma^2. Its limits: one plane per cell (~1.6 km at order 12), so curvature
and sub-cell topography become residual; a single linear rate (no seasonal term, no firn-densification
or dynamic correction); observations are treated as independent. The scaling of the errors by the
residual (`fit_change`) is the only guard against roughness and correlated errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOMENT_NAMES: tuple[str, ...] = (
    "w", "x", "y", "t", "h", "xx", "xy", "xt", "xh", "yy", "yt", "yh", "tt", "th", "hh",
)
MOMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(MOMENT_NAMES)}
N_MOMENTS = len(MOMENT_NAMES)
# Co-moment columns 5.. are the upper triangle of the 4x4 matrix over (x, y, t, h), row by row.
_I, _J = np.triu_indices(4)
# Columns of the full symmetric 3x3 co-moment matrix over (x, y, t), and of (xh, yh, th).
_C3 = np.array([[MOMENT_INDEX["".join(sorted(u + v, key="xyt".index))] for v in "xyt"] for u in "xyt"])
_CH = np.array([MOMENT_INDEX[u + "h"] for u in "xyt"])

FIT_STATUS: dict[int, str] = {
    0: "ok",
    1: "no_data",
    2: "few_bins",
    3: "degenerate_geometry",
    4: "short_time_span",
    5: "few_observations",
}
FIT_STATUS_CODE: dict[str, int] = {name: code for code, name in FIT_STATUS.items()}
FIT_STATUS_FLAG_VALUES: tuple[int, ...] = tuple(FIT_STATUS)
FIT_STATUS_FLAG_MEANINGS: str = " ".join(FIT_STATUS.values())  # CF flag_meanings, in flag_values order

# A cell's weighted standard deviation of time must be at least this fraction of min_span_years: the
# span of bin times alone passes a cell whose weight sits almost entirely in one bin.
TIME_STD_FRACTION = 0.25
# Reciprocal condition number (smallest / largest eigenvalue of the x, y, t correlation matrix) below
# which the 3x3 system counts as numerically singular.
MIN_RCOND = 1e-10


def empty_moments(shape: int | tuple[int, ...]) -> np.ndarray:
    """Moment blocks of empty groups, shape (*shape, 15): weight 0, means NaN, co-moments 0."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    m = np.zeros((*shape, N_MOMENTS))
    m[..., 1:5] = np.nan
    return m


def group_moments(group: np.ndarray, n_groups: int, w: np.ndarray, x: np.ndarray, y: np.ndarray,
                  t: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (n_groups, 15) moment blocks of observations grouped by index (0 <= group < n_groups).

    Two passes of `np.bincount` over the rows, in any order: the weighted means, then the weighted
    products of deviations from them (scratch: six float64 per row). Weights must be positive and
    finite (a zero weight would make a group with rows indistinguishable from an empty one), and
    x, y, t, h finite (one NaN would poison its group and every merge it enters)."""
    group = np.asarray(group, dtype=np.intp)
    w = np.asarray(w, dtype=np.float64)
    cols = [np.asarray(v, dtype=np.float64) for v in (x, y, t, h)]
    if any(v.shape != group.shape for v in (w, *cols)):
        raise ValueError("group_moments: group, w, x, y, t and h must have the same shape")
    out = empty_moments(n_groups)
    if group.size == 0:
        return out
    if group.min() < 0 or group.max() >= n_groups:
        raise ValueError(f"group_moments: group indices must lie in [0, {n_groups})")
    if not np.all((w > 0) & np.isfinite(w)):
        raise ValueError("group_moments: weights must be positive and finite")
    if not all(np.isfinite(v).all() for v in cols):
        raise ValueError("group_moments: x, y, t and h must be finite")
    W = np.bincount(group, weights=w, minlength=n_groups)
    has = W > 0
    out[:, 0] = W
    dev = np.empty((4, group.size))  # deviations of x, y, t, h from their group means
    wdev, buf = np.empty(group.size), np.empty(group.size)
    for k, v in enumerate(cols):
        np.multiply(w, v, out=buf)
        mean = np.divide(np.bincount(group, weights=buf, minlength=n_groups), W,
                         out=np.full(n_groups, np.nan), where=has)
        out[:, 1 + k] = mean
        np.take(np.where(has, mean, 0.0), group, out=buf)
        np.subtract(v, buf, out=dev[k])
    col = 5
    for i in range(4):
        np.multiply(w, dev[i], out=wdev)
        for j in range(i, 4):  # the (i, j) order of _I, _J, i.e. of MOMENT_NAMES
            np.multiply(wdev, dev[j], out=buf)
            out[:, col] = np.bincount(group, weights=buf, minlength=n_groups)
            col += 1
    return out


def merge_moments(m: np.ndarray, axis: int) -> np.ndarray:
    """Merge moment blocks along `axis` (not the last, moment axis): the blocks of the union of groups.

    The weighted multivariate Chan et al. merge: W = sum W_k, mu = sum W_k mu_k / W,
    M = sum [M_k + W_k (mu_k - mu)(mu_k - mu)^T]. Empty blocks (W_k = 0) are skipped, so their NaN
    means never reach the result; a merge of only empty blocks is empty. Exact up to rounding, so any
    partition of the rows, merged in any order, gives the moments of all of them."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim < 2 or m.shape[-1] != N_MOMENTS:
        raise ValueError(f"merge_moments: expected blocks of shape (..., {N_MOMENTS}), got {m.shape}")
    axis = axis + m.ndim if axis < 0 else axis
    if not 0 <= axis < m.ndim - 1:
        raise ValueError(f"merge_moments: axis {axis} is not a group axis of an array of shape {m.shape}")
    has = m[..., 0] > 0
    W_k = np.where(has, m[..., 0], 0.0)
    mu_k = np.where(has[..., None], m[..., 1:5], 0.0)
    W = W_k.sum(axis=axis)
    nonempty = W > 0
    mu = np.divide((W_k[..., None] * mu_k).sum(axis=axis), W[..., None],
                   out=np.full(W.shape + (4,), np.nan), where=nonempty[..., None])
    d = np.where(has[..., None], mu_k - np.expand_dims(np.where(nonempty[..., None], mu, 0.0), axis), 0.0)
    comoments = np.where(has[..., None], m[..., 5:], 0.0).sum(axis=axis)
    comoments += (W_k[..., None] * d[..., _I] * d[..., _J]).sum(axis=axis)
    return np.concatenate([W[..., None], mu, comoments], axis=-1)


def shift_origin(m: np.ndarray, dx: np.ndarray | float, dy: np.ndarray | float) -> np.ndarray:
    """The same moments with positions x + dx, y + dy: measured from an origin moved by (-dx, -dy).

    To merge child cells into their parent, dx, dy are each child's centre minus the parent's centre
    (both in the same projected metres); `dx`, `dy` broadcast against m[..., 0]. Only the means change:
    central co-moments do not depend on the origin. Empty blocks stay empty."""
    out = np.array(m, dtype=np.float64, copy=True)
    out[..., 1] += dx
    out[..., 2] += dy
    return out


@dataclass(frozen=True)
class ChangeFit:
    """Per-cell fit of h = a + b x + c y + dhdt t; every float is NaN where status is not 0 ("ok").

    Per cell (shape (n_cells,)): dhdt and its 1-sigma error (m/yr); h0 = a, the fitted height at the
    cell centre at t0, and its error (m); slope_x, slope_y = b, c (m/m); h_rms, the weighted RMS of
    the residuals, sqrt(RSS_w / sum w) (m); n_bins, bins with data; n_obs, observations; status, a
    FIT_STATUS code. Per bin and cell (shape (n_bins, n_cells)): dh, the bin's weighted mean residual
    about the fitted plane at t0 (so dh ~ dhdt * t_mean of the bin), and dh_sigma (see `fit_change`).
    """

    dhdt: np.ndarray
    dhdt_sigma: np.ndarray
    h0: np.ndarray
    h0_sigma: np.ndarray
    slope_x: np.ndarray
    slope_y: np.ndarray
    h_rms: np.ndarray
    n_bins: np.ndarray
    n_obs: np.ndarray
    status: np.ndarray
    dh: np.ndarray
    dh_sigma: np.ndarray


def fit_change(m: np.ndarray, counts: np.ndarray, *, min_bins: int = 3, min_spread_m: float = 5.0,
               min_span_years: float = 0.2, max_time_inflation: float = 100.0) -> ChangeFit:
    """Weighted least-squares elevation change of every cell, from its (bin, cell) moment blocks.

    m is (n_bins, n_cells, 15), counts (n_bins, n_cells) the observations of each block. A cell's
    blocks are merged over all bins and the fit solved from the merged central moments: with C the
    3x3 co-moments of (x, y, t) and c_h = (xh, yh, th), (b, c, dhdt) = C^-1 c_h and
    RSS_w = hh - c_h . C^-1 c_h. Errors are formal errors scaled by the residual where that is larger,
    at two levels. Observations: s^2 = RSS_w / (n - 4). Bins: observations of one pass share errors
    (a seasonal signal, a surface the plane does not follow, different across-track positions from
    pass to pass), so each bin's mean residual r_k about the fitted model is treated as one sample:
    the regression of the bins alone would give dhdt a variance of sum r_k^2 / (n_bins - 2) /
    sum (t_k - mean t_k)^2 (unweighted over bins), and s_b^2 is the scale that makes the formal error
    equal it. scale^2 = max(1, s^2, s_b^2), Cov(b, c, dhdt) = scale^2 C^-1. a = h_mean - b x_mean -
    c y_mean - dhdt t_mean, with Var(a) = scale^2 / W + mu^T Cov mu (mu = the mean x, y, t).

    The residual scaling is exact when the unmodelled noise is proportional to h_li_sigma. Roughness of
    the same size for every observation is not: the small-sigma observations carry too much weight and
    the errors come out too small (on the tests' data, sigma 0.02-0.1 m and roughness up to 0.3 m,
    dhdt's errors are about 1.4 times too small, though ~97% of cells stay within 3 sigma).

    dh_sigma_k = sqrt(scale^2 / W_k + Var(a + b x_k + c y_k)) combines the error of the bin's mean with
    that of the fitted plane at the bin's mean position (x_k, y_k). The second part is common to all
    bins of a cell: their dh errors are correlated through it (it partly cancels in differences between
    bins). The two are added as if independent although the bin's observations are part of the fit,
    so dh_sigma is not the exact error of dh_k (on the tests' data 0.85 to 3 times it, median 1.13).

    status, in order of precedence (the first rule that applies):
      1 no_data: no bin has observations.
      2 few_bins: fewer than `min_bins` bins have observations.
      5 few_observations: n <= 4 observations in all (no degree of freedom for the residual).
      4 short_time_span: the bins' mean times span less than `min_span_years`, or the weighted
        standard deviation of time, sqrt(C_tt / W), is below TIME_STD_FRACTION * min_span_years.
      3 degenerate_geometry: the smaller eigenvalue of the weighted x, y covariance (C_xx, C_xy, C_yy) / W is
        below min_spread_m^2 (points on a line: no cross-track slope); or C is numerically singular
        (reciprocal condition of its correlation matrix below MIN_RCOND); or time is nearly a linear
        function of position: its variance inflation C_tt (C^-1)_tt = 1 / (1 - R^2 of t on x, y)
        exceeds `max_time_inflation` (dhdt's variance that many times an independent design's, and
        an error in the plane, such as curvature, leaks into dhdt by the same confounding).
    Counting rules come first, so a cell is reported for the most basic thing it lacks.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 3 or m.shape[2] != N_MOMENTS:
        raise ValueError(f"fit_change: moments must have shape (n_bins, n_cells, {N_MOMENTS}), got {m.shape}")
    counts = np.asarray(counts)
    if counts.shape != m.shape[:2]:
        raise ValueError(f"fit_change: counts has shape {counts.shape}, moments {m.shape[:2]}")
    if counts.size and (counts.min() < 0 or not np.array_equal(counts, np.floor(counts))):
        raise ValueError("fit_change: counts must be non-negative integers")
    has_k = m[..., 0] > 0
    if not np.array_equal(has_k, counts > 0):
        raise ValueError("fit_change: counts and moments disagree on which groups have observations")
    if min_bins < 1 or min_spread_m < 0 or min_span_years < 0 or max_time_inflation < 1:
        raise ValueError("fit_change: need min_bins >= 1, min_spread_m >= 0, min_span_years >= 0, "
                         "max_time_inflation >= 1")

    n_bins_total, n_cells = m.shape[:2]
    nb = has_k.sum(axis=0).astype(np.int32)
    n = counts.sum(axis=0).astype(np.int64)
    cell = merge_moments(m, axis=0)
    W = cell[:, 0]
    if not np.isfinite(cell[W > 0]).all():
        raise ValueError("fit_change: some cells' moments are not finite")
    C = cell[:, _C3]  # (n_cells, 3, 3) over x, y, t
    c_h = cell[:, _CH]
    status = np.zeros(n_cells, dtype=np.int8)

    def flag(name: str, rule: np.ndarray) -> None:
        status[(status == 0) & rule] = FIT_STATUS_CODE[name]

    with np.errstate(divide="ignore", invalid="ignore"):
        flag("no_data", nb == 0)
        flag("few_bins", nb < min_bins)
        flag("few_observations", n <= 4)
        t_k = m[..., 3]
        span = np.where(has_k, t_k, -np.inf).max(axis=0) - np.where(has_k, t_k, np.inf).min(axis=0)
        t_std = np.sqrt(C[:, 2, 2] / W)
        flag("short_time_span", ~(span >= min_span_years) | ~(t_std >= TIME_STD_FRACTION * min_span_years))
        vxx, vxy, vyy = C[:, 0, 0] / W, C[:, 0, 1] / W, C[:, 1, 1] / W
        spread = 0.5 * (vxx + vyy) - np.hypot(0.5 * (vxx - vyy), vxy)
        flag("degenerate_geometry", ~(spread >= min_spread_m**2))

    # The joint 3x3 system of the remaining cells, equilibrated to its correlation matrix R = D C D.
    # A zero variance of x, y or t (reachable only when min_spread_m or min_span_years is 0).
    flag("degenerate_geometry", ~np.all(np.einsum("kii->ki", C) > 0, axis=1))
    idx = np.flatnonzero(status == 0)
    d = 1.0 / np.sqrt(np.einsum("kii->ki", C[idx]))
    R = C[idx] * d[:, :, None] * d[:, None, :]
    eig = np.linalg.eigvalsh(R) if idx.size else np.ones((0, 3))
    regular = eig[:, 0] >= MIN_RCOND * eig[:, 2]
    R_inv = np.full_like(R, np.nan)
    R_inv[regular] = np.linalg.inv(R[regular])
    regular &= R_inv[:, 2, 2] <= max_time_inflation
    status[idx[~regular]] = FIT_STATUS_CODE["degenerate_geometry"]
    idx, d, R_inv = idx[regular], d[regular], R_inv[regular]

    C_inv = R_inv * d[:, :, None] * d[:, None, :]
    beta = np.einsum("kij,kj->ki", C_inv, c_h[idx])  # b, c, dhdt
    rss = np.maximum(cell[idx, 14] - np.einsum("ki,ki->k", c_h[idx], beta), 0.0)
    mu = cell[idx, 1:4]  # mean x, y, t
    a = cell[idx, 4] - np.einsum("ki,ki->k", beta, mu)
    # Bin level: r_k, the weighted mean residual of bin k about the fitted model (at its mean x, y, t).
    mk = m[:, idx]
    with np.errstate(invalid="ignore"):
        r_k = mk[..., 4] - (a + np.einsum("bki,ki->bk", mk[..., 1:4], beta))
    has = has_k[:, idx]
    r_k = np.where(has, r_k, 0.0)
    tb = np.where(has, mk[..., 3], 0.0)
    tb_mean = tb.sum(axis=0) / nb[idx]
    sxx_bins = np.where(has, np.square(tb - tb_mean), 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_bins = np.where(nb[idx] > 2, np.square(r_k).sum(axis=0) / (nb[idx] - 2), 0.0)
        # The error scale that would make dhdt's formal error equal the bins' own regression error.
        scale2_bins = np.where(sxx_bins > 0, var_bins / sxx_bins / C_inv[:, 2, 2], 0.0)
    scale2 = np.maximum(np.maximum(1.0, rss / (n[idx] - 4)), scale2_bins)
    cov = scale2[:, None, None] * C_inv
    var_a = scale2 / W[idx] + np.einsum("ki,kij,kj->k", mu, cov, mu)

    # The plane at bin k's mean position at t0: a + b x_k + c y_k = h_mean - beta . v, with
    # v = (x_mean - x_k, y_mean - y_k, t_mean); h_mean is uncorrelated with beta, hence the variance.
    v = mu[None, :, :] - np.concatenate([mk[..., 1:3], np.zeros(mk.shape[:2] + (1,))], axis=-1)
    surface = cell[idx, 4] - np.einsum("bki,ki->bk", v, beta)
    var_surface = scale2 / W[idx] + np.einsum("bki,kij,bkj->bk", v, cov, v)
    with np.errstate(divide="ignore", invalid="ignore"):
        dh_sigma_ok = np.sqrt(scale2 / mk[..., 0] + np.maximum(var_surface, 0.0))

    def per_cell(values: np.ndarray) -> np.ndarray:
        out = np.full(n_cells, np.nan)
        out[idx] = values
        return out

    dh = np.full((n_bins_total, n_cells), np.nan)
    dh_sigma = np.full((n_bins_total, n_cells), np.nan)
    dh[:, idx] = np.where(has_k[:, idx], mk[..., 4] - surface, np.nan)
    dh_sigma[:, idx] = np.where(has_k[:, idx], dh_sigma_ok, np.nan)
    return ChangeFit(
        dhdt=per_cell(beta[:, 2]),
        dhdt_sigma=per_cell(np.sqrt(cov[:, 2, 2])),
        h0=per_cell(a),
        h0_sigma=per_cell(np.sqrt(var_a)),
        slope_x=per_cell(beta[:, 0]),
        slope_y=per_cell(beta[:, 1]),
        h_rms=per_cell(np.sqrt(rss / W[idx])),
        n_bins=nb,
        n_obs=n,
        status=status,
        dh=dh,
        dh_sigma=dh_sigma,
    )

