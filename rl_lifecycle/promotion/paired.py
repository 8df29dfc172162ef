"""The paired test: is the challenger better than the champion on the same test bars, beyond luck?

Both contenders' net returns on the identical test bars of every fold (bar for bar, after fees) are
compared two ways, each one-sided (H0: the challenger is not better):

- the **mean difference** of the per-bar returns, d_t = r_challenger,t - r_champion,t;
- the **Sharpe difference**, SR(challenger) - SR(champion) per bar, by the delta method of Ledoit &
  Wolf (2008, "Robust performance hypothesis testing with the Sharpe ratio").

Returns are serially dependent (a position is held over many bars), so neither uses iid standard
errors. Each statistic is studentized with a heteroskedasticity-and-autocorrelation-consistent
standard error (Bartlett kernel, bandwidth = the block length) and its null distribution comes from
a circular block bootstrap (`arch.bootstrap.CircularBlockBootstrap`; block length from
`arch.bootstrap.optimal_block_length` unless given): each resample's statistic is centred at the
sample's and studentized with the resample's own block-based standard error, as Ledoit & Wolf's
studentized bootstrap does. The p-value is the share of resampled t-statistics at or above the
observed one (with the +1 correction, so it is never 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_REPLICATIONS = 999
DEFAULT_SEED = 20080101  # fixed: the same reports always give the same decision


@dataclass(frozen=True)
class PairedTest:
    n_bars: int
    block_size: int
    replications: int
    mean_difference: float  # per bar, challenger minus champion
    mean_t: float
    mean_p_value: float  # one-sided: H0 mean difference <= 0
    sharpe_challenger: float  # per bar
    sharpe_champion: float
    sharpe_difference: float
    sharpe_t: float
    sharpe_p_value: float  # one-sided: H0 Sharpe difference <= 0

    def to_json(self) -> dict:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in asdict(self).items()}


def _nan_test(n: int, block: int, replications: int) -> PairedTest:
    nan = math.nan
    return PairedTest(n, block, replications, nan, nan, nan, nan, nan, nan, nan, nan)


def block_length(differences: np.ndarray) -> int:
    """The circular block bootstrap's block length for these differences (Politis & White 2004, as
    corrected by Patton, Politis & White 2009): at least 1, at most a tenth of the sample."""
    from arch.bootstrap import optimal_block_length

    if np.allclose(differences, differences[0]):
        return 1
    estimate = float(optimal_block_length(differences)["circular"].iloc[0])
    if not math.isfinite(estimate):
        return 1
    return int(min(max(1, round(estimate)), max(1, len(differences) // 10)))


def _moments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(mean a, mean b, mean a², mean b²) along the last axis."""
    return np.stack([a.mean(-1), b.mean(-1), (a * a).mean(-1), (b * b).mean(-1)], axis=-1)


def _sharpe_difference_and_gradient(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Δ = μa/σa - μb/σb from moments (μa, μb, γa, γb), and ∇Δ (Ledoit & Wolf 2008, eq. 3)."""
    mu_a, mu_b, g_a, g_b = np.moveaxis(m, -1, 0)
    var_a, var_b = g_a - mu_a**2, g_b - mu_b**2
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = mu_a / np.sqrt(var_a) - mu_b / np.sqrt(var_b)
        gradient = np.stack([g_a / var_a**1.5, -g_b / var_b**1.5, -mu_a / (2 * var_a**1.5), mu_b / (2 * var_b**1.5)],
                            axis=-1)
    return delta, gradient


def _hac_covariance(y: np.ndarray, bandwidth: int) -> np.ndarray:
    """Long-run covariance of the rows of y (T x k, centred here) with Bartlett weights (Newey & West)."""
    y = y - y.mean(axis=0)
    t = len(y)
    cov = y.T @ y / t
    for lag in range(1, min(bandwidth, t - 1) + 1):
        weight = 1.0 - lag / (bandwidth + 1.0)
        gamma = y[lag:].T @ y[:-lag] / t
        cov += weight * (gamma + gamma.T)
    return cov


def _block_covariance(y: np.ndarray, block: int) -> np.ndarray:
    """Per resample (R x T x k), the block-based long-run covariance over its whole blocks (R x k x k)."""
    n_blocks = y.shape[1] // block
    centred = y[:, : n_blocks * block] - y[:, : n_blocks * block].mean(axis=1, keepdims=True)
    sums = centred.reshape(y.shape[0], n_blocks, block, y.shape[2]).sum(axis=2) / math.sqrt(block)
    return np.einsum("rjk,rjl->rkl", sums, sums) / n_blocks


def _p_value(observed_t: float, resampled_t: np.ndarray) -> float:
    finite = resampled_t[np.isfinite(resampled_t)]
    if not math.isfinite(observed_t) or not len(finite):
        return math.nan
    return float((1 + np.count_nonzero(finite >= observed_t)) / (1 + len(finite)))


def paired_test(challenger: np.ndarray, champion: np.ndarray, *, replications: int = DEFAULT_REPLICATIONS,
                block_size: int | None = None, seed: int = DEFAULT_SEED) -> PairedTest:
    """The one-sided paired tests of challenger over champion on the same bars (see the module docstring).

    Undefined statistics (fewer than 8 bars, a contender with constant returns) give NaN, which fails
    any gate that reads them.
    """
    from arch.bootstrap import CircularBlockBootstrap

    a = np.asarray(challenger, dtype=np.float64)
    b = np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired returns must be two series of one length, got {a.shape} and {b.shape}")
    n = len(a)
    if n < 8 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return _nan_test(n, 1, 0)
    d = a - b
    block = block_size or block_length(d)
    bootstrap = CircularBlockBootstrap(block, np.arange(n), seed=seed)
    index = np.stack([bootstrap.update_indices() for _ in range(replications)])  # R x n
    ra, rb = a[index], b[index]

    # the mean difference
    mean_d = float(d.mean())
    se = math.sqrt(max(_hac_covariance(d[:, None], block)[0, 0], 0.0) / n)
    mean_t = mean_d / se if se > 0 else math.nan
    rd = ra - rb
    rse = np.sqrt(np.maximum(_block_covariance(rd[..., None], block)[:, 0, 0], 0.0) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled_mean_t = (rd.mean(axis=1) - mean_d) / rse

    # the Sharpe difference, by the delta method
    delta, gradient = _sharpe_difference_and_gradient(_moments(a, b))
    y = np.stack([a, b, a * a, b * b], axis=-1)
    psi = _hac_covariance(y, block)
    sharpe_se = math.sqrt(max(float(gradient @ psi @ gradient), 0.0) / n) if np.isfinite(gradient).all() else math.nan
    sharpe_t = float(delta) / sharpe_se if sharpe_se and math.isfinite(sharpe_se) else math.nan
    r_delta, r_gradient = _sharpe_difference_and_gradient(_moments(ra, rb))
    r_psi = _block_covariance(np.stack([ra, rb, ra * ra, rb * rb], axis=-1), block)
    r_se = np.sqrt(np.maximum(np.einsum("rk,rkl,rl->r", r_gradient, r_psi, r_gradient), 0.0) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled_sharpe_t = (r_delta - float(delta)) / r_se

    sharpe_a = float(a.mean() / a.std()) if a.std() > 0 else math.nan
    sharpe_b = float(b.mean() / b.std()) if b.std() > 0 else math.nan
    return PairedTest(
        n_bars=n, block_size=int(block), replications=int(replications),
        mean_difference=mean_d, mean_t=float(mean_t), mean_p_value=_p_value(mean_t, resampled_mean_t),
        sharpe_challenger=sharpe_a, sharpe_champion=sharpe_b, sharpe_difference=float(delta),
        sharpe_t=float(sharpe_t), sharpe_p_value=_p_value(sharpe_t, resampled_sharpe_t),
    )
