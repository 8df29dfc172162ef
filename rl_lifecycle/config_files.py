"""YAML config files validated by pydantic models: one way to read them and to word their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rl_lifecycle.errors import UserInputError

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, what: str, source: str) -> M:
    """`data` as `model`, or a UserInputError naming every unknown key and every bad field with its value."""
    if not isinstance(data, dict):
        raise UserInputError(f"{what} {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserInputError(f"invalid {what} {source}: " + "; ".join(problems(exc))) from None


def problems(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            out.append(f"unknown key {where!r}")
        elif not where:  # a whole-model check: its message names the field and value itself
            out.append(message)
        else:
            value = error.get("input")
            out.append(f"{where}: {message}" + ("" if isinstance(value, dict) else f" (got {value!r})"))
    return out


def read_yaml(path: Path, what: str) -> Any:
    """The parsed file (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{what} {path} is not valid YAML: {exc}") from None
    return {} if data is None else data
