"""Paper/backtest parity: the paper decider driven over a stretch of stored bars, then re-run through the
backtest's path (stored snapshots, the rollout): zero differences; a tampered record is listed. A real
tiny SB3 champion in a real MLflow registry, real TA-Lib and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from rl_lifecycle.decisions import safety
from rl_lifecycle.decisions.replay import replay_decisions
from rl_lifecycle.decisions.service import ChampionCache, decide, load_champion
from rl_lifecycle.decisions.store import append_decision, decision_history
from rl_lifecycle.features.spec import load_feature_set
from rl_lifecycle.features.vectors import load_vectors
from rl_lifecycle.trading import POSITION_NAMES
from rl_lifecycle.windows import iso, to_us
from rl_lifecycle_tests.cli_helpers import run_cli
from rl_lifecycle_tests.test_decisions import champion_market, registry  # noqa: F401 (fixtures)

HOUR = 3_600_000_000
START, END = to_us("2024-04-10"), to_us("2024-04-11T12:00:00")  # out of sample: trained on 2024-01..03


def _drive(conn, registry, market) -> list:  # noqa: F811
    champions = ChampionCache()
    return [decide(conn, market, registry=registry, at_us=bar + HOUR + 2_000_000, champions=champions).record
            for bar in range(START, END, HOUR)]


def test_paper_decisions_equal_the_backtests_actions_bar_for_bar(conn, registry, champion_market):  # noqa: F811
    made = _drive(conn, registry, champion_market)
    assert [r.bar_ts_us for r in made] == list(range(START, END, HOUR))
    result = replay_decisions(conn, champion_market, registry=registry, from_us=START, to_us=END)
    assert result.decisions == len(made) == 36
    assert result.compared + result.held == len(made) and result.compared >= 12, result.to_json()
    assert result.differences == [] and result.agrees
    # a stretch inside: the policy picks up from the paper position held before it
    inner = replay_decisions(conn, champion_market, registry=registry, from_us=START + 7 * HOUR, to_us=END - 5 * HOUR)
    assert inner.agrees and inner.decisions == 24


def test_a_decision_that_differs_is_listed_and_the_cli_fails(capsys, monkeypatch, conn, registry,  # noqa: F811
                                                             champion_market, rl_env):  # noqa: F811
    made = _drive(conn, registry, champion_market)
    free = next(r for r in made if not r.reason_codes)
    # what the champion does on that bar's vector from the position the forged record will find held
    champion = load_champion(registry, champion_market, free.champion_version)
    frame = load_vectors(conn, champion_market, load_feature_set("ta_v2"), free.bar_ts_us, free.bar_ts_us + 1).frame
    vector = safety.impute(frame.values[0], frame.missing[0], champion.ood.statistics)
    held = np.array([made[-1].position], dtype=np.int8)
    answer = POSITION_NAMES[int(champion.policy.act(vector[None, :], held, fingerprint=free.fingerprint)[0])]
    other = {"long": "flat", "flat": "long"}[answer]
    forged = append_decision(conn, replace(free, as_of_us=END + HOUR, action=other,
                                           position={"flat": 0, "long": 1}[other], vector_sha256="0" * 64))
    result = replay_decisions(conn, champion_market, registry=registry, from_us=START, to_us=END)
    mine = [d for d in result.differences if d.decision_id == forged.id]
    assert {d.field for d in mine} == {"vector_sha256", "action"} and len(result.differences) == 2, result.to_json()
    (action,) = [d for d in mine if d.field == "action"]
    assert (action.recorded, action.replayed) == (other, answer)

    code, out, err = run_cli(capsys, monkeypatch, "paper", "replay", "--market", champion_market.key, "--from",
                             iso(START), "--to", iso(END), "--json")
    assert code == 1, err
    printed = json.loads(out)
    assert not printed["agrees"] and {d["field"] for d in printed["differences"]} == {"vector_sha256", "action"}
    assert len(decision_history(conn, champion_market.key)) == len(made) + 1  # the replay records nothing
