"""What a step needs from another comes from the database, not a disk they share (issue 19, point 2):
a dataset missing on this machine is rebuilt from the stored snapshots and verified against its hash,
step outputs go through the PostgreSQL IO manager, equity curves through `rl_equity_curves`."""

from __future__ import annotations

import numpy as np
import pytest
from dagster import DynamicOut, DynamicOutput, job, op

from rl_lifecycle.candles.service import ingest_synthetic
from rl_lifecycle.datasets.builder import build_dataset, read_dataset
from rl_lifecycle.datasets.service import (
    check_no_unwarm_rows,
    check_reproducible,
    latest_version,
    spec_ending_at,
)
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.evaluation.backtest import FoldResult
from rl_lifecycle.evaluation.curves import curves_returns, database_curve_writer, read_curve
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.markets.keys import Market
from rl_lifecycle.models.service import training_data
from rl_lifecycle.orchestration.resources import PostgresResource
from rl_lifecycle.orchestration.step_io import PostgresStepIO
from rl_lifecycle.settings import load_settings
from rl_lifecycle.windows import WindowScheme, to_us

MARKET = Market("DISKLESS", "1h")
SCHEME = WindowScheme("monthly")
WINDOW = SCHEME.parse("2024-03-01")


@pytest.fixture
def built_elsewhere(conn, rl_env, tmp_path):
    """A dataset built by 'another machine' (its own datasets dir), whose file this machine cannot see."""
    ingest_synthetic(conn, MARKET, to_us("2023-12-01"), to_us("2024-04-01"), seed=11)
    build = build_dataset(conn, spec_ending_at(MARKET, WINDOW, SCHEME, "ta_v2", 3), tmp_path / "builder" / "datasets",
                          load_feature_set("ta_v2"))
    original = read_dataset(build.storage_uri, build.spec, load_feature_set("ta_v2").feature_names)
    (tmp_path / "builder").rename(tmp_path / "builder-out-of-reach")
    return build, original


def test_a_dataset_built_on_another_machine_is_rebuilt_here_and_verified(conn, built_elsewhere):
    build, original = built_elsewhere
    data = training_data(conn, MARKET, WINDOW)
    local = load_settings().datasets_dir / MARKET.key / f"{build.dataset_hash}.parquet"
    assert data.dataset.storage_uri == str(local) and local.is_file()
    assert data.dataset.dataset_hash == build.dataset_hash
    np.testing.assert_array_equal(data.content.values, original.values)
    np.testing.assert_array_equal(data.content.ts, original.ts)
    # the record still names the builder's file: a local copy is this machine's business
    assert latest_version(conn, MARKET, WINDOW).storage_uri == build.storage_uri
    check = check_reproducible(conn, MARKET, WINDOW)  # the local copy is re-hashed like the stored file
    assert check.passed and "rebuild and stored file both hash" in check.summary
    local.unlink()
    check = check_reproducible(conn, MARKET, WINDOW)
    assert check.passed and "not on this machine" in check.summary, check.summary
    assert not local.exists()  # the check verifies, it does not copy


def test_a_rebuild_that_hashes_otherwise_is_refused_and_writes_nothing(conn, built_elsewhere):
    build, _ = built_elsewhere
    conn.execute("UPDATE market_candles SET close = close * 1.001 WHERE pair = %s AND ts = "
                 "(SELECT max(ts) FROM market_candles WHERE pair = %s)", (MARKET.pair, MARKET.pair))
    with pytest.raises(UserInputError, match=f"dataset {build.dataset_hash[:12]} is not on this machine"):
        training_data(conn, MARKET, WINDOW)
    assert not check_reproducible(conn, MARKET, WINDOW).passed
    check = check_no_unwarm_rows(conn, MARKET, WINDOW)
    assert not check.passed and "span changed since it was built" in check.summary
    assert not (load_settings().datasets_dir / MARKET.key).exists()


@op(out=DynamicOut(int))
def _numbers():
    for n in (1, 2, 3):
        yield DynamicOutput(n, mapping_key=f"n{n}")


@op
def _square(n: int) -> dict:
    return {"n": n, "square": n * n}


@op
def _total(results: list) -> int:
    return sum(r["square"] for r in results)


@job
def _fan_out():
    _total(_numbers().map(_square).collect())


def test_step_outputs_go_through_the_database(conn, database_url):
    resource = PostgresResource(url=database_url)
    result = _fan_out.execute_in_process(resources={"io_manager": PostgresStepIO(database=resource)})
    assert result.success and result.output_for_node("_total") == 14
    keys = {k for (k,) in conn.execute("SELECT output_key FROM rl_step_outputs WHERE run_id = %s",
                                       (result.run_id,)).fetchall()}
    assert {"_numbers/result/n1", "_square[n2]/result", "_total/result"} <= keys, keys


def test_equity_curves_are_read_back_from_the_database_and_a_missing_one_is_none(conn):
    equity = np.array([100.0, 101.0, 99.99, 102.0])
    result = FoldResult(0, "ok", close_ts=np.arange(4, dtype=np.int64) * 3_600_000_000, close=equity / 10,
                        equity=equity, positions=np.array([0, 1, 1, 0], np.int8), starting_balance=100.0)
    uri = database_curve_writer(conn, "M-1h/key")(0, result, equity)
    assert uri == "db:M-1h/key/fold-0"
    np.testing.assert_array_equal(read_curve(conn, uri)["equity"].to_numpy(), equity)
    gone, elsewhere = "db:M-1h/key/fold-9", "file:///nowhere.parquet"
    returns = curves_returns(conn, [uri, gone, elsewhere])
    np.testing.assert_allclose(returns[uri], equity[1:] / equity[:-1] - 1)
    assert returns[gone] is None and returns[elsewhere] is None and read_curve(conn, gone) is None
    with pytest.raises(ValueError, match="s3://bucket/curve: not a db: or file: URI"):
        read_curve(conn, "s3://bucket/curve")
