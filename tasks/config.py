"""Run-level configuration shared by every method, and ``--set key=value`` overrides."""
from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A bad ``--set`` or config value; the message names the key and what is allowed."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _leaf_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _parse_value(text: str) -> Any:
    """YAML scalars: 0.2 -> float, true -> bool, [a, b] -> list, anything else stays a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: BaseModel, overrides: list[str]) -> BaseModel:
    """Return a validated copy of ``config`` with each ``dotted.key=value`` applied."""
    data = config.model_dump()
    valid = _leaf_keys(type(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ConfigError(f"--set {key}: unknown key. Valid keys: {', '.join(valid)}")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _parse_value(raw)
    try:
        return type(config).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"--set {loc}: {first['msg']} (got {json.dumps(first.get('input'), default=str)})") from None
