"""Bad input is refused with exit 2 and one line naming the option (or field) and the value, before
anything runs (issue 22, point 9): CLI numbers, RL_* settings, market pairs, fold options the stored
dataset cannot serve, model spec values; and a PostgreSQL that dies under a command is named, not dumped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rl_lifecycle.markets.keys import Market
from rl_lifecycle.markets.table import add_market
from rl_lifecycle_tests.cli_helpers import run_cli

# Refused before the database is opened; were a command to get that far, it fails at once (port 1).
NO_DATABASE = "postgresql://nobody@127.0.0.1:1/none"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _nothing_ran(home: Path) -> bool:
    return not (home / "dagster").exists()


@pytest.fixture
def no_database(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "rl_home"
    monkeypatch.setenv("RL_HOME", str(home))
    monkeypatch.setenv("RL_DATABASE_URL", NO_DATABASE)
    return home


# -- CLI numbers --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["audit", "--market", "BTCUSDT-1h", "--limit", "-1"], "--limit -1 is invalid: the number of records shown must be 1..1000000"),
    (["audit", "--market", "BTCUSDT-1h", "--limit", "99999999999999999999"], "--limit 99999999999999999999 is invalid"),
    (["audit", "--market", "BTCUSDT-1h", "--limit", "0"], "--limit 0 is invalid"),
    (["metrics", "serve", "--port", "99999"], "--port 99999 is invalid: a TCP port (0: a free one) must be 0..65535"),
    (["metrics", "serve", "--port", "-1"], "--port -1 is invalid"),
    (["dev", "--port", "70000"], "--port 70000 is invalid: a TCP port must be 1..65535"),
    (["dev", "--port", "0"], "--port 0 is invalid"),
])
def test_cli_numbers_out_of_range_are_refused_before_the_database(args, message, no_database, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and message in _one_error_line(err)
    assert _nothing_ran(no_database)


# -- RL_* settings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variable,value,message", [
    ("RL_WINDOW_START", "garbage", "RL_WINDOW_START='garbage' is not a date such as 2024-01-01"),
    ("RL_WINDOW_START", "2024-13-01", "RL_WINDOW_START='2024-13-01' is not a date such as 2024-01-01 (month must be in 1..12)"),
    ("RL_DATABASE_URL", "mysql://x:s3cretPW@y/z", "RL_DATABASE_URL='mysql://x:***@y/z' is not a PostgreSQL URL"),
    ("RL_DATABASE_URL", "postgresql://x@y:port/z", "RL_DATABASE_URL='postgresql://x@y:port/z' is not a PostgreSQL URL"),
    ("RL_HOME", "/proc/1", "RL_HOME='/proc/1' cannot be the state dir: files cannot be created in /proc/1"),
])
def test_bad_settings_are_refused_naming_the_variable_and_value(variable, value, message, rl_env, capsys, monkeypatch):
    monkeypatch.setenv(variable, value)
    code, _, err = run_cli(capsys, monkeypatch, "market", "list")
    line = _one_error_line(err)
    assert code == 2 and message in line and "s3cretPW" not in err


def test_rl_home_must_be_a_directory_and_good_settings_still_load(tmp_path, monkeypatch):
    from rl_lifecycle.errors import UserInputError
    from rl_lifecycle.settings import load_settings

    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("RL_HOME", str(afile / "home"))
    with pytest.raises(UserInputError, match=f"RL_HOME='{afile}/home' cannot be the state dir: {afile} is not a directory"):
        load_settings()
    monkeypatch.setenv("RL_HOME", str(tmp_path / "new" / "home"))  # created later, under a writable parent
    monkeypatch.setenv("RL_WINDOW_START", "2017-03-01")
    monkeypatch.setenv("RL_DATABASE_URL", "postgresql+psycopg2://u:p@localhost:5432/db")
    settings = load_settings()
    assert settings.home == tmp_path / "new" / "home" and settings.window_start == "2017-03-01"
    assert list(tmp_path.iterdir()) == [afile]  # the write check left nothing behind


# -- market pairs -----------------------------------------------------------------------------------
def test_a_pair_that_is_not_ascii_is_refused_not_case_folded(rl_env, conn, capsys, monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, "market", "add", "ßtc/usdt", "1h")
    line = _one_error_line(err)
    assert code == 2 and "pair 'ßtc/usdt' is invalid: only ASCII letters" in line and "'ß'" in line
    assert conn.execute("SELECT count(*) FROM markets").fetchone()[0] == 0
    assert _nothing_ran(Path(rl_env["RL_HOME"]))
    code, _, err = run_cli(capsys, monkeypatch, "report", "show", "--market", "ßTCUSDT-1h")
    assert code == 2 and "pair 'ßTCUSDT' is invalid" in err
    assert Market.parse("btc/usdt-1h").key == "BTCUSDT-1h"


# -- model spec values (train) ----------------------------------------------------------------------
@pytest.mark.parametrize("hyperparameters,message", [
    ({"learning_rate": -1}, "hyperparameters.learning_rate=-1 must be > 0"),
    ({"n_steps": 0}, "hyperparameters.n_steps=0 must be >= 1"),
    ({"gamma": 5.0}, "hyperparameters.gamma=5.0 must be in (0, 1]"),
    ({"batch_size": 100000000}, "hyperparameters.batch_size=100000000 must be at most the rollout size"),
])
def test_train_refuses_spec_values_sb3_would_assert_on_or_turn_into_nan(
    hyperparameters, message, no_database, tmp_path, capsys, monkeypatch,
):
    from rl_lifecycle.models.spec import load_model_spec

    fields = {**load_model_spec("ppo_small").model_dump(mode="json"), "hyperparameters": hyperparameters}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(fields))
    code, _, err = run_cli(capsys, monkeypatch, "train", "--market", "BTCUSDT-1h", "--window", "2024-03-01",
                           "--spec", str(spec))
    assert code == 2 and message in _one_error_line(err) and str(spec) in err
    assert _nothing_ran(no_database)


# -- fold options against the partition's stored dataset (evaluate) ---------------------------------
HORIZON = 4


@pytest.fixture
def btc_dataset(rl_env, conn):
    """BTCUSDT-1h's dataset of the window 2024-03-01 (January and February supply the warmup), label
    horizon 4 bars; stored in the domain tables only: no Dagster instance is touched."""
    from rl_lifecycle.candles.service import ingest_synthetic
    from rl_lifecycle.datasets.builder import build_dataset
    from rl_lifecycle.datasets.service import spec_ending_at
    from rl_lifecycle.windows import WindowScheme

    scheme, market = WindowScheme("monthly"), Market("BTCUSDT", "1h")
    ingest_synthetic(conn, market, scheme.parse("2024-01-01").start, scheme.parse("2024-03-01").end, seed=7)
    spec = spec_ending_at(market, scheme.parse("2024-03-01"), scheme, "ta_v2", 1, forward_return_horizon=HORIZON)
    return build_dataset(conn, spec, Path(rl_env["RL_HOME"]) / "datasets")


EVALUATE = ["evaluate", "--market", "BTCUSDT-1h", "--window", "2024-03-01"]


@pytest.mark.parametrize("options,message", [
    (["--purge", "0"], f"--purge 0 is below the label horizon of BTCUSDT-1h|2024-03-01's dataset {{hash}} ({HORIZON} bars)"),
    (["--purge", "3"], f"use --purge {HORIZON} or more"),
    (["--test-size", "100000000"], "--test-size 100000000 is invalid: BTCUSDT-1h|2024-03-01's dataset {hash} has {rows} rows"),
    (["--test-size", "600"], "n_folds=3: {rows} rows cannot hold 3 folds with test_size=600"),
    (["--folds", "1000"], "n_folds=1000: {rows} rows cannot hold 1000 folds"),
    (["--folds", "1001"], "--folds 1001 is invalid: the walk-forward folds (each trains a model) must be 1..1000"),
    (["--scheme", "cpcv", "--groups", "10", "--test-groups", "9"], "scheme='cpcv': {rows} rows cannot hold n_groups=10 groups"),
])
def test_evaluate_refuses_folds_the_dataset_cannot_serve_before_a_run(
    options, message, btc_dataset, rl_env, capsys, monkeypatch,
):
    code, _, err = run_cli(capsys, monkeypatch, *EVALUATE, *options)
    line = _one_error_line(err)
    assert code == 2 and message.format(hash=btc_dataset.dataset_hash[:12], rows=btc_dataset.rows) in line
    assert _nothing_ran(Path(rl_env["RL_HOME"]))


def test_evaluate_without_a_dataset_or_the_candles_to_build_one_is_refused_before_a_run(conn, rl_env, capsys,
                                                                                        monkeypatch):
    code, _, err = run_cli(capsys, monkeypatch, *EVALUATE)
    assert code == 2 and "market BTCUSDT-1h is not registered" in _one_error_line(err)
    add_market(conn, Market("BTCUSDT", "1h"))
    code, _, err = run_cli(capsys, monkeypatch, *EVALUATE)
    line = _one_error_line(err)
    assert code == 2 and "the market's span 3: a span of 3 window(s) (2024-01-01 .. 2024-03-01) holds 0 stored" in line
    assert "too few for these folds" in line and "nothing was run" in line
    assert _nothing_ran(Path(rl_env["RL_HOME"]))


def test_fold_options_the_dataset_serves_pass_the_check(btc_dataset, database_url):
    from rl_lifecycle.cli.evaluation import _check_dataset_serves
    from rl_lifecycle.config_files import validated
    from rl_lifecycle.orchestration.assets.evaluation import FoldReportConfig

    market, window = Market("BTCUSDT", "1h"), btc_dataset.spec.windows()[-1]
    for options in ({}, {"purge": HORIZON, "test_size": 100}, {"folds": 5},
                    {"scheme": "cpcv", "groups": 6, "test_groups": 2}):
        _check_dataset_serves(database_url, market, window, validated(FoldReportConfig, options, "options", "test"))


# -- a PostgreSQL that dies under a command ---------------------------------------------------------
@pytest.fixture
def throwaway_server(tmp_path):
    """A PostgreSQL of this test alone (pgserver), stopped at the end if it still runs."""
    from rl_lifecycle.db import embedded

    pgdata = tmp_path / "pgdata"
    url = embedded.start(pgdata)
    yield pgdata, url
    embedded.stop(pgdata)


def test_a_database_that_dies_under_a_command_is_named_without_its_password(
    throwaway_server, tmp_path, capsys, monkeypatch,
):
    import rl_lifecycle.promotion.audit as audit
    from rl_lifecycle.db import embedded

    pgdata, url = throwaway_server
    monkeypatch.setenv("RL_HOME", str(tmp_path / "rl_home"))
    monkeypatch.setenv("RL_DATABASE_URL", url.replace("postgres@", "postgres:s3cretPW@"))
    code, out, err = run_cli(capsys, monkeypatch, "audit", "--market", "BTCUSDT-1h")
    assert code == 0 and "no promotion decisions yet" in out, err

    real_history = audit.history

    def server_dies_first(conn, *args, **kwargs):
        embedded.stop(pgdata)  # the real server goes away while the command holds its connection
        return real_history(conn, *args, **kwargs)

    monkeypatch.setattr(audit, "history", server_dies_first)
    code, _, err = run_cli(capsys, monkeypatch, "audit", "--market", "BTCUSDT-1h")
    line = _one_error_line(err)
    assert code == 2 and "the database is unreachable: postgresql://postgres:***@/rl_lifecycle?host=" in line
    assert str(pgdata) in line and "s3cretPW" not in err
    # and while it is down, the next command says the same instead of a traceback
    code, _, err = run_cli(capsys, monkeypatch, "market", "list")
    assert code == 2 and "the database is unreachable" in _one_error_line(err) and "s3cretPW" not in err
