"""`gates.false_promotion_rate` and `gates.power`: the default gate policy calibrated on a synthetic
hourly market (three monthly windows, the default dataset span), as `rl-lifecycle gates calibrate` runs it."""

from __future__ import annotations

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.windows import to_us

NULLS = 500
EDGE = 0.4  # docs/evaluation.md, "Calibration of the gates": the documented edge


def bench_gates(nulls: int = NULLS, edge: float = EDGE) -> dict:
    from rl_lifecycle.candles.frame import CandleArrays
    from rl_lifecycle.candles.synthetic import synthetic_candles
    from rl_lifecycle.promotion.calibration import Bars, calibrate
    from rl_lifecycle.promotion.policy import load_policy

    market = Market("BTCUSDT", "1h")
    candles = CandleArrays.from_frame(synthetic_candles(market, to_us("2024-04-01"), to_us("2024-07-01"), seed=7))
    result = calibrate(Bars(market, candles.ts, candles.close), load_policy(), nulls=nulls, edge=edge, seed=1)
    low, high = result.ci95
    details = {"nulls": result.nulls, "false_promotions": result.false_promotions, "ci95": [round(low, 4), round(high, 4)],
               "edge": edge, "edge_trials": result.edge_trials, "bars": result.bars, "folds": result.folds,
               "n_trials": result.n_trials, "policy_sha256": result.policy_sha256[:12]}
    return {
        "gates.false_promotion_rate": {
            "value": round(result.false_promotion_rate, 4), "unit": "per decision", "baseline": None, "ratio": None,
            "target": "<= 0.01, upper 95% <= 0.02 (N >= 500)",
            "met": result.false_promotion_rate <= 0.01 and high <= 0.02 and result.nulls >= 500, **details,
        },
        "gates.power": {
            "value": round(result.power, 3), "unit": f"at edge {edge:g}", "baseline": None, "ratio": None,
            "target": ">= 0.8", "met": result.power >= 0.8, **details,
        },
    }
