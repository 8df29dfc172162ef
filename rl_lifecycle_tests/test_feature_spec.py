"""Feature-set contract: shipped sets, every refusal rule, fingerprints, selection by RL_FEATURE_SET."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rl_lifecycle.errors import UserInputError
from rl_lifecycle.features.spec import (
    NATIVE_FUNCTIONS,
    SETS_DIR,
    active_feature_set,
    available_feature_sets,
    function_info,
    load_feature_set,
    parse_feature_set,
)


def _raw(name: str = "ta_v2") -> dict[str, Any]:
    return yaml.safe_load((SETS_DIR / f"{name}.yaml").read_text())


def _index(data: dict[str, Any], function: str) -> int:
    return next(i for i, ind in enumerate(data["indicators"]) if ind["function"] == function)


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(UserInputError) as info:
        parse_feature_set(data, source="test.yaml")
    return str(info.value)


# -- shipped sets ----------------------------------------------------------------------------


def test_shipped_sets_load() -> None:
    assert {"core_v1", "ta_v2"} <= set(available_feature_sets())
    for name in available_feature_sets():
        spec = load_feature_set(name)
        assert spec.name == name
        assert spec.warmup >= spec.max_lookback
        assert len(set(spec.feature_names)) == len(spec.feature_names)


def test_ta_v2_breadth() -> None:
    spec = load_feature_set("ta_v2")
    assert len(spec.feature_names) >= 15
    assert len(spec.talib_functions) >= 8
    assert spec.warmup == 200
    assert spec.feature_names[0] == "logret_1"
    assert {"logret_1", "rsi_14"} <= set(spec.critical_features)
    assert {"RSI", "MACD", "ADX", "ATR", "BBANDS", "MFI", "OBV", "ADOSC"} <= set(spec.talib_functions)
    assert all(function_info(f) is not None and not function_info(f).native for f in spec.talib_functions)


def test_core_v1_needs_no_talib() -> None:
    spec = load_feature_set("core_v1")
    assert spec.talib_functions == ()
    assert {ind.function for ind in spec.indicators} <= set(NATIVE_FUNCTIONS)
    assert spec.feature_names == ("logret_1", "logret_4", "logret_24", "rvol_24", "rvol_96", "logrange")
    assert spec.max_lookback == 96


def test_feature_names_keep_declared_order_and_lookback() -> None:
    data = {
        "name": "tiny", "version": 1, "description": "", "warmup": 40,
        "indicators": [
            {"function": "SMA", "params": {"timeperiod": 30}, "inputs": ["close"],
             "outputs": [{"output": "real", "feature": "b", "normalise": {"kind": "log_ratio"}}]},
            {"function": "RSI", "params": {"timeperiod": 14}, "inputs": ["close"],
             "outputs": [{"output": "real", "feature": "a", "normalise": {"kind": "zscore", "period": 20}}]},
        ],
    }
    spec = parse_feature_set(data)
    assert spec.feature_names == ("b", "a")
    assert spec.max_lookback == 14 + 19  # RSI lookback + zscore period - 1 beats SMA's 29
    assert spec.critical_features == ()


def test_load_by_path(tmp_path: Path) -> None:
    data = _raw()
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_feature_set(path).fingerprint == load_feature_set("ta_v2").fingerprint
    assert load_feature_set(str(path)).name == "ta_v2"


def test_unknown_set_lists_available() -> None:
    with pytest.raises(UserInputError, match="available: .*core_v1.*ta_v2"):
        load_feature_set("ta_v9")


def test_active_feature_set_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RL_FEATURE_SET", raising=False)
    assert active_feature_set().name == "ta_v2"
    monkeypatch.setenv("RL_FEATURE_SET", "core_v1")
    assert active_feature_set().name == "core_v1"
    monkeypatch.setenv("RL_FEATURE_SET", "nope")
    with pytest.raises(UserInputError, match=r"RL_FEATURE_SET 'nope'.*available: core_v1, ta_v2"):
        active_feature_set()


# -- refusals: each names the entry (index and function) and the field --------------------


def test_refuses_unknown_function() -> None:
    data = _raw()
    i = _index(data, "RSI")
    data["indicators"][i]["function"] = "RSX"
    msg = _refused(data)
    assert f"indicators[{i}] (RSX)" in msg and "function" in msg and "unknown function 'RSX'" in msg


def test_refuses_lowercase_function_with_hint() -> None:
    data = _raw()
    i = _index(data, "RSI")
    data["indicators"][i]["function"] = "rsi"
    assert "did you mean 'RSI'" in _refused(data)


def test_refuses_unknown_parameter() -> None:
    data = _raw()
    i = _index(data, "RSI")
    data["indicators"][i]["params"]["period"] = 14
    msg = _refused(data)
    assert f"indicators[{i}] (RSI)" in msg and "params" in msg and "unknown parameter(s) ['period']" in msg


def test_refuses_missing_parameter() -> None:
    data = _raw()
    i = _index(data, "MACD")
    del data["indicators"][i]["params"]["signalperiod"]
    msg = _refused(data)
    assert f"indicators[{i}] (MACD)" in msg and "missing parameter(s) ['signalperiod']" in msg


def test_refuses_missing_native_parameter() -> None:
    data = _raw("core_v1")
    data["indicators"][3]["params"] = {}
    msg = _refused(data)
    assert "indicators[3] (RVOL)" in msg and "missing parameter(s) ['period']" in msg


@pytest.mark.parametrize(
    ("function", "param", "value"),
    [("RSI", "timeperiod", 1), ("RSI", "timeperiod", 1_000_000), ("STOCH", "slowk_matype", 42),
     ("BBANDS", "nbdevup", -1e40)],
)
def test_refuses_out_of_range_parameter(function: str, param: str, value: float) -> None:
    data = _raw()
    i = _index(data, function)
    data["indicators"][i]["params"][param] = value
    msg = _refused(data)
    assert f"indicators[{i}] ({function})" in msg and "out of range" in msg and f"{param}=" in msg


def test_refuses_non_integer_parameter() -> None:
    data = _raw()
    i = _index(data, "RSI")
    data["indicators"][i]["params"]["timeperiod"] = 14.5
    msg = _refused(data)
    assert f"indicators[{i}] (RSI)" in msg and "params.timeperiod: expected an integer" in msg


def test_refuses_native_period_out_of_range() -> None:
    data = _raw("core_v1")
    data["indicators"][0]["params"]["period"] = 0
    msg = _refused(data)
    assert "indicators[0] (LOGRET)" in msg and "period=0 is out of range" in msg


def test_refuses_wrong_number_of_inputs() -> None:
    data = _raw()
    i = _index(data, "ATR")
    data["indicators"][i]["inputs"] = ["high", "low"]
    msg = _refused(data)
    assert f"indicators[{i}] (ATR)" in msg and "inputs" in msg and "takes 3 input series" in msg


def test_refuses_unknown_input() -> None:
    data = _raw()
    i = _index(data, "OBV")
    data["indicators"][i]["inputs"] = ["close", "vol"]
    msg = _refused(data)
    assert f"indicators[{i}] (OBV)" in msg and "unknown series ['vol']" in msg


def test_refuses_unknown_output() -> None:
    data = _raw()
    i = _index(data, "MACD")
    data["indicators"][i]["outputs"][0]["output"] = "hist"
    msg = _refused(data)
    assert f"indicators[{i}] (MACD)" in msg and "outputs[0].output" in msg and "no output 'hist'" in msg


def test_refuses_duplicate_feature_names() -> None:
    data = _raw()
    i = _index(data, "WILLR")
    data["indicators"][i]["outputs"][0]["feature"] = "rsi_14"
    msg = _refused(data)
    assert f"indicators[{i}] (WILLR) outputs[0].feature" in msg and "duplicate feature name 'rsi_14'" in msg


def test_refuses_warmup_shorter_than_lookback() -> None:
    data = _raw()
    data["warmup"] = 100
    msg = _refused(data)
    i = _index(data, "ADOSC")  # lookback 9 + zscore(96) - 1 = 104
    assert "warmup" in msg and f"indicators[{i}] (ADOSC)" in msg and "104 bars" in msg


def test_refuses_warmup_shorter_than_native_period() -> None:
    data = _raw("core_v1")
    data["warmup"] = 95
    msg = _refused(data)
    assert "warmup" in msg and "indicators[4] (RVOL)" in msg and "96 bars" in msg


@pytest.mark.parametrize("kind", ["none", "relative_to_close", "log_ratio"])
def test_refuses_cumulative_obv_without_anchor_free_normalisation(kind: str) -> None:
    data = _raw()
    i = _index(data, "OBV")
    data["indicators"][i]["outputs"][0]["normalise"] = {"kind": kind}
    msg = _refused(data)
    assert f"indicators[{i}] (OBV)" in msg and "outputs[0].normalise" in msg and "zscore or difference" in msg


def test_refuses_adosc_and_ad_without_anchor_free_normalisation() -> None:
    data = _raw()
    i = _index(data, "ADOSC")
    data["indicators"][i]["outputs"][0]["normalise"] = {"kind": "none"}
    assert f"indicators[{i}] (ADOSC)" in _refused(data)
    data = _raw()
    data["indicators"][i] = {"function": "AD", "params": {}, "inputs": ["high", "low", "close", "volume"],
                             "outputs": [{"output": "real", "feature": "ad", "normalise": {"kind": "none"}}]}
    assert f"indicators[{i}] (AD)" in _refused(data)


def test_accepts_cumulative_with_difference_and_trailing_stop_as_ratio() -> None:
    data = _raw()
    i = _index(data, "OBV")
    data["indicators"][i]["outputs"][0]["normalise"] = {"kind": "difference", "period": 1}
    data["indicators"].append({"function": "SAR", "params": {"acceleration": 0.02, "maximum": 0.2},
                               "inputs": ["high", "low"],
                               "outputs": [{"output": "real", "feature": "sar", "normalise": {"kind": "log_ratio"}}]})
    data["groups"]["trend"].append("sar")  # every feature belongs to a group
    assert "sar" in parse_feature_set(data).feature_names


def test_refuses_bad_normalise_period() -> None:
    data = _raw()
    i = _index(data, "OBV")
    data["indicators"][i]["outputs"][0]["normalise"] = {"kind": "zscore"}
    msg = _refused(data)
    assert f"indicators[{i}] (OBV) outputs[0].normalise" in msg and "zscore needs a period" in msg
    data["indicators"][i]["outputs"][0]["normalise"] = {"kind": "log_ratio", "period": 3}
    assert "log_ratio takes no period" in _refused(data)


def test_type_errors_name_file_and_field(tmp_path: Path) -> None:
    data = _raw()
    data["version"] = "two"
    i = _index(data, "RSI")
    data["indicators"][i]["outputs"][0]["critical"] = "yes"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserInputError) as info:
        load_feature_set(path)
    msg = str(info.value)
    assert str(path) in msg and "version:" in msg and f"indicators[{i}] (RSI) outputs[0].critical" in msg


def test_extra_fields_refused() -> None:
    data = _raw()
    data["indicators"][0]["outputs"][0]["scale"] = 2
    assert "indicators[0] (LOGRET) outputs[0].scale: Extra inputs are not permitted" in _refused(data)


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nindicators: [\n")
    with pytest.raises(UserInputError, match=r"broken\.yaml is not valid YAML"):
        load_feature_set(path)


def test_non_mapping_document_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UserInputError, match="expected a mapping"):
        load_feature_set(path)


# -- fingerprint ---------------------------------------------------------------------------


def test_fingerprint_is_stable() -> None:
    first = load_feature_set("ta_v2").fingerprint
    assert first == load_feature_set("ta_v2").fingerprint == parse_feature_set(_raw()).fingerprint
    assert len(first) == 64 and first != load_feature_set("core_v1").fingerprint


def test_fingerprint_treats_int_and_float_parameter_alike() -> None:
    data = _raw()
    data["indicators"][_index(data, "BBANDS")]["params"]["nbdevup"] = 2
    assert parse_feature_set(data).fingerprint == load_feature_set("ta_v2").fingerprint


def test_fingerprint_changes_with_every_parameter() -> None:
    base = _raw()
    reference = parse_feature_set(base).fingerprint
    seen = {reference}
    for i, ind in enumerate(base["indicators"]):
        for name, value in ind["params"].items():
            data = copy.deepcopy(base)
            data["indicators"][i]["params"][name] = value + (0.5 if isinstance(value, float) else 1)
            if name.endswith("matype"):
                data["indicators"][i]["params"][name] = 1
            fingerprint = parse_feature_set(data).fingerprint
            assert fingerprint not in seen, (ind["function"], name)
            seen.add(fingerprint)


def test_fingerprint_changes_with_normalisation_warmup_and_order() -> None:
    reference = load_feature_set("ta_v2").fingerprint
    data = _raw()
    data["indicators"][_index(data, "OBV")]["outputs"][0]["normalise"]["period"] = 97
    assert parse_feature_set(data).fingerprint != reference
    data = _raw()
    data["warmup"] = 201
    assert parse_feature_set(data).fingerprint != reference
    data = _raw()
    data["indicators"][1], data["indicators"][2] = data["indicators"][2], data["indicators"][1]
    assert parse_feature_set(data).fingerprint != reference
