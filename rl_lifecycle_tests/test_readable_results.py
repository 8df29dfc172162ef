"""Results people can read (issue 21, point 6): plots large enough for the Dagster metadata panel,
gates named for what they test with rounded figures, a fold table that fits, one lineage group, and
Prometheus gauges for the champion's and the challenger's versions.

The plots' sizes are read from the PNGs' own IHDR headers; the gauges are scraped from the real
endpoint over real PostgreSQL and a real MLflow registry.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import urllib.request
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rl_lifecycle.evaluation.folds import FoldConfig
from rl_lifecycle.evaluation.service import FOLD_TABLE_HEADERS, cpcv_paths_png, equity_curves_png, fold_table
from rl_lifecycle.plots import line_png
from rl_lifecycle.promotion import gates as gate_module
from rl_lifecycle.promotion.gates import (
    FOLD_FAILED,
    GATE_TABLE_HEADERS,
    MANUAL_APPROVAL_REQUIRED,
    PSR_BELOW_MIN,
    REASON_CODES,
    evaluate,
    gate_rows,
)
from rl_lifecycle.windows import to_us
from rl_lifecycle_tests.test_cpcv_report import CPCV, _random_positions, _report
from rl_lifecycle_tests.test_promotion import POLICY, report

MIN_WIDTH, MIN_HEIGHT = 1000, 350  # px: the old plots were 540-653 x 198


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG signature and its first chunk, IHDR."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


# -- plots -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def candles():
    from rl_lifecycle.candles.frame import CandleArrays
    from rl_lifecycle.candles.synthetic import synthetic_candles
    from rl_lifecycle_tests.test_cpcv_report import MARKET

    return CandleArrays.from_frame(synthetic_candles(MARKET, to_us("2024-02-01"), to_us("2024-03-01"), seed=3))


def test_a_time_line_plot_is_readable_and_its_markdown_carries_it_whole():
    pytest.importorskip("dagster")
    from rl_lifecycle.orchestration.assets.presentation import line_plot

    ts = to_us("2024-01-01") + np.arange(24 * 365) * 3_600_000_000  # a year of hourly bars
    png = line_png(ts, {"close": np.cumsum(np.random.default_rng(0).normal(size=len(ts)))}, "close", time_axis=True)
    width, height = png_size(png)
    assert width >= MIN_WIDTH and height >= MIN_HEIGHT, (width, height)
    text = line_plot(ts, np.linspace(1, 2, len(ts)), "BTCUSDT-1h close").value
    (encoded,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert png_size(base64.b64decode(encoded)) == (width, height)
    assert "BTCUSDT-1h close" in text.split("![")[0]  # the title is written above the image


def test_equity_and_cpcv_plots_are_readable_whatever_the_number_of_folds(conn, candles, tmp_path):
    walk_forward = FoldConfig.create(scheme="expanding", n_folds=5, purge_bars=2, embargo_bars=1, min_train_size=50)
    positions = _random_positions(1, len(candles))
    wf, _, _ = _report(candles, walk_forward, lambda split: positions, tmp_path / "wf")
    assert len([f for f in wf.folds if f.equity_curve_uri]) == 5
    width, height = png_size(equity_curves_png(conn, wf))
    # the folds add rows, not width: each panel keeps a third of the width (the old plot was 5 x 256 px wide)
    assert width >= MIN_WIDTH and width <= 1400 and height >= 2 * 300, (width, height)

    cpcv, _, _ = _report(candles, CPCV, lambda split: _random_positions(split, len(candles)), tmp_path / "cpcv")
    width, height = png_size(cpcv_paths_png(conn, cpcv))
    assert width >= MIN_WIDTH and height >= MIN_HEIGHT, (width, height)


# -- the fold table ----------------------------------------------------------------------------------
def test_the_fold_table_fits_without_cut_off_columns():
    day = 86_400_000_000
    folds = [
        SimpleNamespace(index=0, split=0, test_group=None, status="ok",
                        test_span=(to_us("2024-03-01"), to_us("2024-03-15")),
                        metrics={"total_return": 0.012345678, "sharpe": 1.23456, "max_drawdown": 0.0321, "trades": 12},
                        baselines={"flat": {"total_return": 0.0}, "buy_and_hold": {"total_return": -0.0234567}}),
        SimpleNamespace(index=1, split=2, test_group=1, status="failed",
                        test_span=(to_us("2024-03-15") + 5 * 3_600_000_000, to_us("2024-03-15") + 20 * day),
                        metrics={}, baselines={}),
    ]
    rows = fold_table(SimpleNamespace(folds=folds))
    assert all(len(row) == len(FOLD_TABLE_HEADERS) for row in rows)
    assert "test from" not in FOLD_TABLE_HEADERS and "test until" not in FOLD_TABLE_HEADERS
    assert rows[0] == (0, "ok", "2024-03-01 .. 2024-03-15", "+1.23%", "1.23", "3.21%", 12, "+0.00%", "-2.35%")
    assert rows[1][:3] == ("1 (split 2, group 1)", "failed", "2024-03-15 05:00 .. 2024-04-04 00:00")
    assert rows[1][3:] == ("-", "-", "-", "-", "-", "-")
    width = max(len(" | ".join(str(c) for c in row)) for row in [FOLD_TABLE_HEADERS, *rows])
    assert width <= 110, width  # it was 136 with two ISO timestamps: the baselines fell off the panel


# -- the gate table ----------------------------------------------------------------------------------
def test_every_gate_is_named_for_what_it_tests():
    waiting = (MANUAL_APPROVAL_REQUIRED, gate_module.STABILITY_WINDOW_NOT_MET)  # reasons to wait, not gates
    gate_codes = [c for c in REASON_CODES if c not in waiting]
    names_of = getattr(gate_module, "GATE_NAMES", {})
    assert set(names_of) == set(gate_codes)
    names = list(names_of.values())
    assert len(set(names)) == len(names) and not set(names) & set(REASON_CODES)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names)


def test_gate_rows_read_as_the_test_with_rounded_figures_and_the_code_only_on_failure():
    gates = [
        {"code": FOLD_FAILED, "passed": True, "value": 0.0, "threshold": 0.0, "comparison": "<="},
        {"code": PSR_BELOW_MIN, "passed": False, "value": 0.36589686808461025, "threshold": 0.95, "comparison": ">="},
        {"code": "NOT_BETTER_THAN_FLAT", "passed": False, "value": None, "threshold": 0.0, "comparison": ">"},
        {"code": "SHARPE_BELOW_MIN", "passed": True, "value": 1.0, "threshold": 0.5, "comparison": ">="},  # retired code
    ]
    assert GATE_TABLE_HEADERS == ("gate", "value", "result")
    assert gate_rows(gates) == [
        ("fold_failures ≤ 0", "0", "pass"),
        ("psr ≥ 0.95", "0.3659", "FAIL (PSR_BELOW_MIN)"),
        ("excess_return_vs_flat > 0", "-", "FAIL (NOT_BETTER_THAN_FLAT)"),
        ("sharpe_below_min ≥ 0.5", "1", "pass"),
    ]


def test_figures_shown_as_metadata_are_rounded_to_four_significant_digits():
    pytest.importorskip("dagster")
    from rl_lifecycle.orchestration.assets import presentation

    rounded = getattr(presentation, "rounded", lambda value: value)
    assert rounded(0.36589686808461025) == 0.3659  # PSR / DSR / PBO beside the full-precision JSON
    assert rounded(1.23456789e-6) == 1.235e-6  # a small trial variance keeps its digits, not 0.0
    assert rounded(np.float64(0.123456)) == 0.1235
    assert rounded(None) is None and rounded(3) == 3 and math.isnan(rounded(math.nan))


def test_a_decisions_gate_table_names_codes_only_where_a_gate_failed():
    decision = evaluate(report([0.03, -0.02, 0.03], psr=0.36589686808461025, dsr=0.2), None, POLICY, False)
    rows = gate_rows(decision.gates_json())
    assert len(rows) == len(decision.gates)
    for row, gate in zip(rows, decision.gates, strict=True):
        assert row[0].startswith(gate_module.GATE_NAMES[gate.code] + " ")
        assert (gate.code in " ".join(row)) is (not gate.passed)
        assert row[2] == ("pass" if gate.passed else f"FAIL ({gate.code})")
        assert not re.search(r"\d\.\d{5,}", " ".join(row)), row  # rounded: no long decimals
    psr = next(g for g in decision.gates_json() if g["code"] == PSR_BELOW_MIN)
    assert psr["value"] == 0.36589686808461025  # the JSON (stored in the audit) keeps full precision
    assert not math.isnan(psr["threshold"])


# -- one lineage group -------------------------------------------------------------------------------
def test_every_asset_is_in_one_lineage_group():
    from rl_lifecycle.orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert len(keys) >= 6
    assert {graph.get(key).group_name for key in keys} == {"lifecycle"}


# -- champion and challenger gauges --------------------------------------------------------------------
def _scrape(url: str) -> dict[str, dict[tuple, float]]:
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_champion_and_challenger_versions_are_gauges_per_market(conn, rl_env, database_url, capsys, monkeypatch):
    import rl_lifecycle.ops.metrics as obs
    from rl_lifecycle.markets.keys import Market
    from rl_lifecycle.markets.table import add_market
    from rl_lifecycle.models.checks import sync_challenger_alias
    from rl_lifecycle.models.tracking import open_registry
    from rl_lifecycle.promotion.service import decide
    from rl_lifecycle_tests.test_promotion import register

    registry = open_registry(database_url)
    # MLflow's database outlives each test: markets of their own keep registered versions apart
    market, bare = (Market(f"G{uuid.uuid4().hex[:12].upper()}", "1h") for _ in range(2))
    add_market(conn, market)
    add_market(conn, bare)
    first, second = register(registry, market), register(registry, market)
    decide(conn, registry, market, first, report([0.03] * 3), None, POLICY, True, "test")  # bootstrap: promoted
    sync_challenger_alias(conn, registry, market)  # the newest checked version holds `challenger`

    server, thread = obs.serve_metrics(database_url, 0)
    try:
        m = _scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert m["rl_metrics_section_up"][(("section", "champions"),)] == 1
    assert m["rl_metrics_section_up"][(("section", "challengers"),)] == 1
    assert m["rl_champion_version"][(("market", market.key),)] == first
    assert m["rl_challenger_version"][(("market", market.key),)] == second
    assert m["rl_champion_version"][(("market", bare.key),)] == 0  # registered, nothing trained: 0, not absent
    assert m["rl_challenger_version"][(("market", bare.key),)] == 0

    # the JSON log lines say the same; without a registry only the MLflow section is down
    records = {r["metric"]: r for r in obs.family_records(obs.collect_families(conn))}
    assert {s["labels"]["market"]: s["value"] for s in records["rl_champion_version"]["samples"]} == \
        {market.key: first, bare.key: 0}
    up = {s["labels"]["section"]: s["value"] for s in records["rl_metrics_section_up"]["samples"]}
    assert up["challengers"] == 0 and up["champions"] == 1 and "rl_challenger_version" not in records

    # the stored decision's gate table, as `audit --gates` prints it: named for what each gate tests
    from rl_lifecycle_tests.cli_helpers import run_cli

    code, out, _ = run_cli(capsys, monkeypatch, "audit", "--market", market.key, "--gates")
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert lines[0] == ["gate", "value", "result"]
    assert ["fold_failures", "≤", "0", "0", "pass"] in lines, out
    assert not any(c in out for c in ("FOLD_FAILED", "<=")), out  # codes only on failure; signs as people write them


# -- `make mlflow` -----------------------------------------------------------------------------------
def test_make_mlflow_takes_a_port_and_starts_one_worker_without_the_job_runner(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    from rl_lifecycle.models.tracking import mlflow_server_command

    repo = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "mlflow", "MLFLOW_PORT=5123"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout
    assert "mlflow ui --port 5123" in dry, dry
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    registry = SimpleNamespace(tracking_uri="postgresql://u@127.0.0.1/x", artifacts_uri=str(tmp_path))  # what it reads
    argv, env = mlflow_server_command(registry, "127.0.0.1", 5123)
    assert argv[argv.index("--workers") + 1] == "1" and argv[argv.index("--port") + 1] == "5123"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # a person who wants MLflow's jobs keeps them
    assert mlflow_server_command(registry, "127.0.0.1", 5123, workers=3)[1]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    # the installed MLflow takes the option (MLflow 3: uvicorn workers)
    help_text = subprocess.run([str(Path(sys.executable).with_name("mlflow")), "server", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--workers" in help_text
