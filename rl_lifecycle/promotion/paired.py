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


def _circular_block_sums(y: np.ndarray, block: int) -> np.ndarray:
    """For every start s, the sum of y over the circular block [s, s + block) (n x k)."""
    wrapped = np.concatenate([y, y[: block - 1]]) if block > 1 else y
    cumulative = np.concatenate([np.zeros((1, y.shape[1])), np.cumsum(wrapped, axis=0)])
    return cumulative[block : block + len(y)] - cumulative[: len(y)]


def _resampled_moments_and_covariance(sums: np.ndarray, starts: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (its whole blocks, R x blocks): the means of y and its block-based long-run covariance.

    A circular block bootstrap resample is a row of blocks of the original series, so each block's sum is
    the precomputed circular sum at its start: nothing of length T is built per resample."""
    per_block = sums[starts]  # R x blocks x k
    n_bars = starts.shape[1] * block
    means = per_block.sum(axis=1) / n_bars
    centred = (per_block - block * means[:, None, :]) / math.sqrt(block)
    return means, np.matmul(centred.transpose(0, 2, 1), centred) / starts.shape[1]  # batched BLAS


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
    # each resample's whole blocks, by where they start in the original series
    starts = np.stack([bootstrap.update_indices()[: (n // block) * block : block] for _ in range(replications)])

    # the mean difference
    mean_d = float(d.mean())
    se = math.sqrt(max(_hac_covariance(d[:, None], block)[0, 0], 0.0) / n)
    mean_t = mean_d / se if se > 0 else math.nan
    r_mean, r_cov = _resampled_moments_and_covariance(_circular_block_sums(d[:, None], block), starts, block)
    r_n = starts.shape[1] * block
    with np.errstate(divide="ignore", invalid="ignore"):
        resampled_mean_t = (r_mean[:, 0] - mean_d) / np.sqrt(np.maximum(r_cov[:, 0, 0], 0.0) / r_n)

    # the Sharpe difference, by the delta method
    y = np.stack([a, b, a * a, b * b], axis=-1)
    delta, gradient = _sharpe_difference_and_gradient(y.mean(axis=0))
    psi = _hac_covariance(y, block)
    sharpe_se = math.sqrt(max(float(gradient @ psi @ gradient), 0.0) / n) if np.isfinite(gradient).all() else math.nan
    sharpe_t = float(delta) / sharpe_se if sharpe_se and math.isfinite(sharpe_se) else math.nan
    r_moments, r_psi = _resampled_moments_and_covariance(_circular_block_sums(y, block), starts, block)
    r_delta, r_gradient = _sharpe_difference_and_gradient(r_moments)
    quadratic = (np.matmul(r_psi, r_gradient[..., None])[..., 0] * r_gradient).sum(axis=1)
    r_se = np.sqrt(np.maximum(quadratic, 0.0) / r_n)
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
