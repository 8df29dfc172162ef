"""Settings: one declarative table of the RL_* variables, read in one place, documented, with safe defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.settings import VARIABLES, Settings, load_settings, rollout_switches

REPO = Path(__file__).resolve().parents[1]
SET_FOR_CHILDREN = {"RL_DAGSTER_STORAGE_URL"}  # written by orchestration/instance.py for Dagster's processes
_READ = re.compile(r"""(?:environ\.get|getenv)\(\s*["'](RL_[A-Z_]+)|environ\[\s*["'](RL_[A-Z_]+)["']\](?!\s*=[^=])""")


def _source_files():
    return [p for p in (REPO / "rl_lifecycle").rglob("*.py")]


def test_every_rl_variable_the_code_names_is_in_the_table():
    declared = {v.name for v in VARIABLES} | SET_FOR_CHILDREN
    named = {m for p in _source_files() for m in re.findall(r"\bRL_[A-Z][A-Z_]*[A-Z]\b", p.read_text())}
    assert named - declared == set()


def test_only_settings_reads_rl_variables_from_the_environment():
    readers = [f"{p.relative_to(REPO)}: {name}" for p in _source_files() if p.name != "settings.py"
               for name in (a or b for a, b in _READ.findall(p.read_text())) if name not in SET_FOR_CHILDREN]
    assert readers == []


def test_every_variable_is_documented_with_its_default():
    operations = (REPO / "docs" / "operations.md").read_text()
    for variable in VARIABLES:
        row = next((line for line in operations.splitlines() if line.startswith(f"| `{variable.name}` |")), None)
        assert row is not None, f"{variable.name} is missing from docs/operations.md's table"
        if variable.default is not None:
            assert variable.default in row, f"{variable.name}: docs/operations.md does not give its default {variable.default}"


def test_every_variable_has_its_settings_field():
    fields = set(Settings.__dataclass_fields__)
    assert {v.field for v in VARIABLES} == fields


def test_defaults_are_the_safe_ones_and_bad_values_are_named(monkeypatch):
    for variable in VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    settings = load_settings()
    assert (settings.strict_backtest, settings.online_learning_enabled, settings.auto_promotion,
            settings.paper_decisions_enabled) == (True, False, False, False)
    assert settings.feature_set == "ta_v2" and settings.window_start == "2000-01-01"
    assert [v.stage for v in rollout_switches()] == sorted(v.stage for v in rollout_switches())
    monkeypatch.setenv("RL_AUTO_PROMOTION", "maybe")
    with pytest.raises(UserInputError, match=r"RL_AUTO_PROMOTION='maybe' is not a boolean"):
        load_settings()
    monkeypatch.setenv("RL_AUTO_PROMOTION", "1")
    monkeypatch.setenv("RL_ALERT_WEBHOOK_TIMEOUT_SECONDS", "soon")
    with pytest.raises(UserInputError, match=r"RL_ALERT_WEBHOOK_TIMEOUT_SECONDS='soon' is not a number"):
        load_settings()
