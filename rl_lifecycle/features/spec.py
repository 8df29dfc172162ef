"""The v2 feature-set contract: YAML files validated into frozen pydantic models.

A feature set lists indicators (TA-Lib functions, or a few native TA-Lib-free ones), every
parameter spelled out (TA-Lib defaults change between releases), the input series each one
reads, and how each output is normalised into a scale-free feature. Its fingerprint covers
the spec, the TA-Lib C library version and `PIPELINE_VERSION`, so any change that can move
a single bit of a feature changes the fingerprint.

A set may name **feature groups** (`groups:`, a mapping group -> features): every feature in exactly one
group, unknown or doubly assigned features refused by name. The grouping moves no value, so it is kept
out of `fingerprint` (the identity of the vectors: snapshots, datasets, policies key on it, and a stored
snapshot stays valid when only the grouping changes); it has a digest of its own, `grouping_digest`,
and `identity` is the pair (docs/features.md, "Feature groups"). Ablations record both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import talib
import talib.abstract
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from rl_lifecycle.config_files import read_yaml
from rl_lifecycle.errors import UserInputError
from rl_lifecycle.settings import Settings, load_settings

# Bump whenever pipeline.py changes how a feature value is computed (normalisations, natives, masks).
PIPELINE_VERSION = "2.0"
TALIB_C_VERSION = talib.__ta_version__.decode()
SERIES = ("open", "high", "low", "close", "volume")
SETS_DIR = Path(__file__).with_name("sets")
MAX_NATIVE_PERIOD = 100_000
_NAME = r"^[a-z][a-z0-9_]{0,62}$"  # feature and set names end up as column names and file names
_TALIB_FUNCTIONS = frozenset(talib.get_functions())
# TA-Lib flags these path-dependent too, but their level tracks price (a trailing stop), not a
# sum accumulated since the first candle, so the anchor only fixes them instead of shifting them.
_TRAILING = frozenset({"SAR", "SAREXT", "SUPERTREND"})

NormaliseKind = Literal["none", "relative_to_close", "log_ratio", "zscore", "difference"]
_ANCHOR_FREE = ("zscore", "difference")


@dataclass(frozen=True)
class FunctionInfo:
    """What a function needs and gives: parameter defaults, input names, output names."""

    name: str
    params: dict[str, int | float]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    native: bool = False
    cumulative: bool = False  # output level accumulates from the first candle (OBV, AD, ...)
    unstable: bool = False  # TA-Lib lets a global "unstable period" change its output


NATIVE_FUNCTIONS: dict[str, FunctionInfo] = {
    # log(close[t] / close[t - period])
    "LOGRET": FunctionInfo("LOGRET", {"period": 1}, ("close",), ("real",), native=True),
    # population std of the last `period` one-bar log returns
    "RVOL": FunctionInfo("RVOL", {"period": 24}, ("close",), ("real",), native=True),
    # log(high / low)
    "LOGRANGE": FunctionInfo("LOGRANGE", {}, ("high", "low"), ("real",), native=True),
}
_NATIVE_MIN_PERIOD = {"LOGRET": 1, "RVOL": 2}  # RVOL over one return is identically 0


@cache
def function_info(name: str) -> FunctionInfo | None:
    """Metadata of a native or TA-Lib function, None when the name is unknown."""
    if name in NATIVE_FUNCTIONS:
        return NATIVE_FUNCTIONS[name]
    if name not in _TALIB_FUNCTIONS:
        return None
    info = talib.abstract.Function(name).info
    inputs: list[str] = []
    for value in info["input_names"].values():
        inputs.extend([value] if isinstance(value, str) else value)
    flags = info.get("function_flags") or []
    return FunctionInfo(
        name=name,
        params=dict(info["parameters"]),
        inputs=tuple(inputs),
        outputs=tuple(info["output_names"]),
        cumulative="Output is path-dependent" in flags and name not in _TRAILING,
        unstable="Function has an unstable period" in flags,
    )


def _talib_lookback(name: str, params: dict[str, Any]) -> int:
    """TA-Lib's own lookback; -1 means a parameter is out of range (the authoritative check)."""
    func = talib.abstract.Function(name)
    func.set_parameters(dict(params))
    return int(func.lookback)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Normalise(_Frozen):
    kind: NormaliseKind
    period: StrictInt | None = None

    @model_validator(mode="after")
    def _period_matches_kind(self) -> Normalise:
        if self.kind == "zscore" and (self.period is None or self.period < 2):
            raise ValueError(f"zscore needs a period >= 2, got {self.period!r}")
        if self.kind == "difference" and (self.period is None or self.period < 1):
            raise ValueError(f"difference needs a period >= 1, got {self.period!r}")
        if self.kind not in _ANCHOR_FREE and self.period is not None:
            raise ValueError(f"{self.kind} takes no period, got {self.period!r}")
        if self.period is not None and self.period > MAX_NATIVE_PERIOD:
            raise ValueError(f"period {self.period} is larger than {MAX_NATIVE_PERIOD}")
        return self

    @property
    def extra_lookback(self) -> int:
        """Rows the normalisation adds to the indicator's lookback."""
        if self.kind == "zscore":
            return int(self.period or 0) - 1
        if self.kind == "difference":
            return int(self.period or 0)
        return 0


class Output(_Frozen):
    output: StrictStr
    feature: StrictStr = Field(pattern=_NAME)
    normalise: Normalise
    critical: StrictBool = False


class Indicator(_Frozen):
    function: StrictStr
    params: dict[str, Any]
    inputs: tuple[StrictStr, ...]
    outputs: tuple[Output, ...]

    @model_validator(mode="before")
    @classmethod
    def _ints_to_floats(cls, data: Any) -> Any:
        # `nbdevup: 2` and `nbdevup: 2.0` are the same parameter: store one form so they fingerprint alike.
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            return data
        info = function_info(data["function"]) if isinstance(data.get("function"), str) else None
        if info is None:
            return data
        params = {
            key: float(value)
            if isinstance(info.params.get(key), float) and isinstance(value, int) and not isinstance(value, bool)
            else value
            for key, value in data["params"].items()
        }
        return {**data, "params": params}

    @model_validator(mode="after")
    def _check_against_function(self) -> Indicator:
        if not self.outputs:
            raise ValueError("outputs: at least one output is required")
        info = function_info(self.function)
        if info is None:
            hint = f" (did you mean {self.function.upper()!r}?)" if function_info(self.function.upper()) else ""
            raise ValueError(
                f"function: unknown function {self.function!r}{hint}; expected a TA-Lib {TALIB_C_VERSION.split()[0]} "
                f"function or one of {', '.join(NATIVE_FUNCTIONS)}"
            )
        self._check_params(info)
        if len(self.inputs) != len(info.inputs):
            raise ValueError(
                f"inputs: {self.function} takes {len(info.inputs)} input series "
                f"(TA-Lib order: {', '.join(info.inputs) or 'none'}), got {len(self.inputs)}: {list(self.inputs)}"
            )
        unknown = [name for name in self.inputs if name not in SERIES]
        if unknown:
            raise ValueError(f"inputs: unknown series {unknown}; expected names among {', '.join(SERIES)}")
        for j, out in enumerate(self.outputs):
            if out.output not in info.outputs:
                raise ValueError(
                    f"outputs[{j}].output: {self.function} has no output {out.output!r}; "
                    f"its outputs are {', '.join(info.outputs)}"
                )
            if info.cumulative and out.normalise.kind not in _ANCHOR_FREE:
                raise ValueError(
                    f"outputs[{j}].normalise: {self.function} accumulates from the first candle, so its level "
                    f"depends on the window anchor; normalise feature {out.feature!r} with zscore or difference, "
                    f"not {out.normalise.kind}"
                )
        return self

    def _check_params(self, info: FunctionInfo) -> None:
        unknown = sorted(set(self.params) - set(info.params))
        missing = [name for name in info.params if name not in self.params]
        expected = ", ".join(info.params) or "none"
        if unknown:
            raise ValueError(f"params: unknown parameter(s) {unknown} for {self.function} (expected: {expected})")
        if missing:
            raise ValueError(
                f"params: missing parameter(s) {missing} for {self.function}; list every parameter "
                f"explicitly (expected: {expected}; TA-Lib defaults change between releases)"
            )
        for name, value in self.params.items():
            wants_int = isinstance(info.params[name], int)
            if isinstance(value, bool) or not isinstance(value, int | float) or (wants_int and isinstance(value, float)):
                raise ValueError(
                    f"params.{name}: expected {'an integer' if wants_int else 'a number'}, got {value!r}"
                )
        if info.native:
            for name, value in self.params.items():
                low = _NATIVE_MIN_PERIOD[self.function]
                if not low <= value <= MAX_NATIVE_PERIOD:
                    raise ValueError(f"params.{name}: {name}={value} is out of range [{low}, {MAX_NATIVE_PERIOD}]")
            return
        try:
            lookback = _talib_lookback(self.function, self.params)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"params: {self.function} refused them: {exc}") from exc
        if lookback == -1:
            # Name the culprits: a parameter that is out of range on its own, with defaults elsewhere.
            bad = [k for k, v in self.params.items() if _talib_lookback(self.function, {**info.params, k: v}) == -1]
            shown = ", ".join(f"{k}={self.params[k]!r}" for k in bad or self.params)
            raise ValueError(f"params: out of range for {self.function} (TA-Lib lookback is -1): {shown}")

    @property
    def info(self) -> FunctionInfo:
        info = function_info(self.function)
        assert info is not None  # validated
        return info

    @property
    def lookback(self) -> int:
        """Index of the first defined output when computed from the first candle of a segment."""
        if self.info.native:
            return int(self.params.get("period", 0))
        return _talib_lookback(self.function, self.params)


AnchorCadence = Literal["monthly", "weekly", "daily"]


class FeatureGroup(_Frozen):
    """A named group of a set's features (momentum, trend, volatility, ...): what an ablation removes."""

    name: StrictStr = Field(pattern=_NAME)
    features: tuple[StrictStr, ...]


def _groups_from_mapping(value: Any) -> Any:
    """YAML writes `groups: {momentum: [rsi_14, ...], ...}`; stored specs dump a list of {name, features}."""
    if isinstance(value, dict):
        return [{"name": name, "features": features} for name, features in value.items()]
    return value


class FeatureSetSpec(_Frozen):
    name: StrictStr = Field(pattern=_NAME)
    version: StrictInt = Field(ge=1)
    description: StrictStr
    warmup: StrictInt = Field(ge=0)
    indicators: tuple[Indicator, ...]
    # The window cadence of anchor(t). It moves every value, so it is part of the spec and of the
    # fingerprint; load_feature_set fills it from RL_WINDOW_CADENCE unless the YAML declares it.
    anchor: AnchorCadence = "monthly"
    # Every feature in exactly one named group; None: the set declares no grouping (no ablation by group).
    groups: tuple[FeatureGroup, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _groups_mapping(cls, data: Any) -> Any:
        if isinstance(data, dict) and "groups" in data:
            return {**data, "groups": _groups_from_mapping(data["groups"])}
        return data

    @model_validator(mode="after")
    def _check_features(self) -> FeatureSetSpec:
        if not self.indicators:
            raise ValueError("indicators: at least one indicator is required")
        seen: dict[str, str] = {}
        for i, ind in enumerate(self.indicators):
            entry = f"indicators[{i}] ({ind.function})"
            for j, out in enumerate(ind.outputs):
                where = f"{entry} outputs[{j}].feature"
                if out.feature in seen:
                    raise ValueError(f"{where}: duplicate feature name {out.feature!r} (first declared at {seen[out.feature]})")
                seen[out.feature] = where
                need = ind.lookback + out.normalise.extra_lookback
                if need > self.warmup:
                    raise ValueError(
                        f"warmup: {self.warmup} bars is shorter than the lookback of {entry} "
                        f"feature {out.feature!r}: {need} bars (indicator {ind.lookback} + "
                        f"{out.normalise.kind} {out.normalise.extra_lookback})"
                    )
        return self

    @model_validator(mode="after")
    def _check_groups(self) -> FeatureSetSpec:  # after _check_features: duplicates are named first
        if self.groups is None:
            return self
        if not self.groups:
            raise ValueError("groups: at least one group is required when groups are given")
        known = set(self.feature_names)
        owner: dict[str, str] = {}
        names: set[str] = set()
        for group in self.groups:
            if group.name in names:
                raise ValueError(f"groups.{group.name}: group declared twice")
            names.add(group.name)
            if not group.features:
                raise ValueError(f"groups.{group.name}: a group needs at least one feature")
            for feature in group.features:
                if feature not in known:
                    raise ValueError(f"groups.{group.name}: unknown feature {feature!r}; the set's features are "
                                     f"{', '.join(self.feature_names)}")
                if feature in owner:
                    where = "twice in it" if owner[feature] == group.name else f"also in group {owner[feature]!r}"
                    raise ValueError(f"groups.{group.name}: feature {feature!r} is assigned {where}; "
                                     "every feature belongs to exactly one group")
                owner[feature] = group.name
        missing = [name for name in self.feature_names if name not in owner]
        if missing:
            raise ValueError(f"groups: feature(s) {', '.join(missing)} belong to no group; every feature belongs "
                             "to exactly one group")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(out.feature for ind in self.indicators for out in ind.outputs)

    @property
    def critical_features(self) -> tuple[str, ...]:
        return tuple(out.feature for ind in self.indicators for out in ind.outputs if out.critical)

    @property
    def max_lookback(self) -> int:
        return max(ind.lookback + out.normalise.extra_lookback for ind in self.indicators for out in ind.outputs)

    @property
    def talib_functions(self) -> tuple[str, ...]:
        """Distinct TA-Lib functions used, in declaration order."""
        return tuple(dict.fromkeys(ind.function for ind in self.indicators if not ind.info.native))

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(group.name for group in self.groups or ())

    def group_features(self, name: str) -> tuple[str, ...]:
        """The features of group `name`, in the set's column order; an unknown group is refused by name."""
        if self.groups is None:
            raise UserInputError(f"feature set {self.name} declares no feature groups (add `groups:` to its YAML)")
        for group in self.groups:
            if group.name == name:
                members = set(group.features)
                return tuple(f for f in self.feature_names if f in members)
        raise UserInputError(f"feature set {self.name} has no group {name!r}; its groups are "
                             f"{', '.join(self.group_names)}")

    def group_of(self, feature: str) -> str | None:
        return next((g.name for g in self.groups or () if feature in g.features), None)

    @property
    def grouping_digest(self) -> str | None:
        """sha256 of the grouping (groups in declaration order, members sorted); None without groups."""
        if self.groups is None:
            return None
        canonical = json.dumps([[g.name, sorted(g.features)] for g in self.groups], separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def identity(self) -> dict[str, str | None]:
        """What names this set exactly: the vectors' fingerprint and the grouping's digest."""
        return {"fingerprint": self.fingerprint, "grouping": self.grouping_digest}

    @property
    def fingerprint(self) -> str:
        """The identity of the vectors: the spec without its grouping (labels move no value), TA-Lib, pipeline."""
        payload = {
            "spec": self.model_dump(mode="json", exclude={"groups"}),
            "talib": TALIB_C_VERSION,
            "pipeline": PIPELINE_VERSION,
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


# -- loading ------------------------------------------------------------------


def _where(loc: tuple[int | str, ...], data: Any) -> str:
    """Pydantic location -> `indicators[3] (RSI) outputs[0].normalise`, naming the entry's function."""
    text = ""
    for pos, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            if loc[:pos] == ("indicators",):
                try:
                    text += f" ({data['indicators'][part]['function']}) "
                except (KeyError, IndexError, TypeError):
                    pass
        else:
            text += f".{part}" if text and not text.endswith(" ") else str(part)
    return text.strip()


def parse_feature_set(data: Any, source: str = "<dict>") -> FeatureSetSpec:
    """Validate a decoded YAML document; every problem becomes a UserInputError naming source and field."""
    if not isinstance(data, dict):
        raise UserInputError(f"feature set {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return FeatureSetSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            if err["type"] != "value_error" and not isinstance(err.get("input"), dict | list):
                msg += f" (got {err.get('input')!r})"
            where = _where(tuple(err["loc"]), data)
            lines.append(f"{where}: {msg}" if where else msg)
        raise UserInputError(f"feature set {source} is invalid:\n  " + "\n  ".join(lines)) from None


def available_feature_sets() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in SETS_DIR.glob("*.yaml")))


def _unknown_set(name: str, prefix: str = "feature set") -> UserInputError:
    return UserInputError(
        f"{prefix} {name!r} is not a known feature set; available: {', '.join(available_feature_sets())}"
    )


def _is_name(name_or_path: str | Path) -> bool:
    raw = str(name_or_path).strip()
    return not isinstance(name_or_path, Path) and not raw.endswith((".yaml", ".yml")) and "/" not in raw


def load_feature_set(name_or_path: str | Path, anchor: str | None = None) -> FeatureSetSpec:
    """Load a shipped set by name (`ta_v2`) or any YAML file by path.

    `anchor` (default: RL_WINDOW_CADENCE) is the window cadence the set is computed under, unless
    the YAML declares its own; a YAML anchor that contradicts an explicit `anchor` is refused.
    """
    raw = str(name_or_path).strip()
    by_name = _is_name(name_or_path)
    if by_name:
        path = SETS_DIR / f"{raw}.yaml"
        if not re.match(_NAME, raw) or not path.is_file():
            raise _unknown_set(raw)
    else:
        path = Path(raw).expanduser()
    data = read_yaml(path, "feature set file")
    wanted = anchor or load_settings().window_cadence
    if isinstance(data, dict) and "anchor" not in data:
        data = {**data, "anchor": wanted}
    spec = parse_feature_set(data, source=str(path))
    if anchor is not None and spec.anchor != anchor:
        raise UserInputError(f"feature set {path} declares anchor {spec.anchor!r}; this use needs {anchor!r}")
    if by_name and spec.name != raw:
        raise UserInputError(f"feature set file {path} declares name {spec.name!r}; expected {raw!r}")
    return spec


def active_feature_set(settings: Settings | None = None) -> FeatureSetSpec:
    """The set `settings.feature_set` selects (default `load_settings()`: RL_FEATURE_SET, default ta_v2;
    rollback = point it at core_v1). Pass `rl_lifecycle.switches.settings_in_force(conn)` for the
    `feature_set` rollout switch as in force (stored in the database, else the environment)."""
    name = (settings or load_settings()).feature_set
    if _is_name(name) and name.strip() not in available_feature_sets():
        raise _unknown_set(name, prefix="RL_FEATURE_SET")
    return load_feature_set(name)


# -- constrained sets from evidence (issue 18) -------------------------------------------------------------


def derive_feature_set(base: FeatureSetSpec, drop: tuple[str, ...] | list[str], name: str, *,
                       version: int = 1, base_declares_anchor: bool = False) -> dict:
    """The YAML document of a new set: `base` without the features of the groups in `drop` (each refused by
    name when `base` has no such group), its groups minus those, named `name`. The warmup stays the base's,
    so the kept features are computed from the same first candle by the same pipeline: their values are the
    base set's, bit for bit (under the new set's own fingerprint). The anchor is written only when the base
    declares one (otherwise the new set follows RL_WINDOW_CADENCE like the base)."""
    if not re.match(_NAME, name):
        raise UserInputError(f"--name {name!r}: a feature-set name is [a-z][a-z0-9_]{{0,62}}")
    if not drop:
        raise UserInputError("give at least one group to drop (--drop GROUP)")
    removed = {f for group in drop for f in base.group_features(group)}
    if len(removed) == len(base.feature_names):
        raise UserInputError(f"dropping {', '.join(drop)} leaves feature set {base.name} without features")
    data = base.model_dump(mode="json", exclude={"groups"} if base.groups is None else None)
    indicators = []
    for ind in data["indicators"]:
        outputs = [out for out in ind["outputs"] if out["feature"] not in removed]
        if outputs:
            indicators.append({**ind, "outputs": outputs})
    derived = {
        "name": name, "version": version,
        "description": f"{base.name} v{base.version} (fingerprint {base.fingerprint[:12]}) without the feature "
                       f"group(s) {', '.join(drop)}. " + base.description,
        "warmup": base.warmup, "indicators": indicators,
        "groups": {g.name: list(g.features) for g in base.groups or () if g.name not in drop},
    }
    if base_declares_anchor:
        derived["anchor"] = base.anchor
    parse_feature_set(derived, source=f"<derived {name}>")  # a set the loader accepts
    return derived


def write_derived_feature_set(base_name: str, drop: list[str], name: str, out: Path | None = None,
                              version: int = 1) -> Path:
    """`derive_feature_set` of a shipped set, written as `<sets dir>/<name>.yaml` (or `out`); an existing
    file is never overwritten."""
    import yaml

    by_name = _is_name(base_name)
    path = SETS_DIR / f"{base_name.strip()}.yaml" if by_name else Path(base_name).expanduser()
    if by_name and not path.is_file():
        raise _unknown_set(base_name.strip())
    raw = read_yaml(path, "feature set file")
    base = load_feature_set(base_name)
    data = derive_feature_set(base, drop, name, version=version,
                              base_declares_anchor=isinstance(raw, dict) and "anchor" in raw)
    target = out or SETS_DIR / f"{name}.yaml"
    if target.exists():
        raise UserInputError(f"{target} exists: choose another --name (or --out); nothing was written")
    header = (f"# Derived by `rl-lifecycle feature-set derive --from {base.name} --drop {' --drop '.join(drop)} "
              f"--name {name}`:\n# the same canonical pipeline, a fingerprint of its own.\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + yaml.safe_dump(data, sort_keys=False, width=110))
    return target
