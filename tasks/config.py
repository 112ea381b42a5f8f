"""Run-level configuration shared by every method, and ``--set key=value`` overrides."""
from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

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


def field_annotation(model: type[BaseModel], key: str) -> Any:
    """The type annotation of the field at dotted ``key``, following nested models."""
    *parents, leaf = key.split(".")
    for name in parents:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf].annotation


def is_string_like(ann: Any) -> tuple[bool, bool]:
    """(string-like, accepts None) for ``str``, ``str | None`` and ``Literal`` of strings."""
    if ann is str:
        return True, False
    origin = get_origin(ann)
    if origin is Literal:
        values = [a for a in get_args(ann) if a is not None]
        return bool(values) and all(isinstance(a, str) for a in values), None in get_args(ann)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        accepts_none = len(args) < len(get_args(ann))
        return bool(args) and all(is_string_like(a)[0] for a in args), accepts_none
    return False, False


def _parse_value(text: str, ann: Any = Any) -> Any:
    """The override's value for a field annotated ``ann``.

    String-like fields take the text as is, stripped (``expert_table=123`` stays "123"), except that a quoted
    YAML string is unquoted and ``null``/``~`` mean None where None is allowed. Other fields parse it as
    YAML: 0.2 -> float, true -> bool, [a, b] -> list, anything unparsable stays a string.
    """
    string_like, accepts_none = is_string_like(ann)
    stripped = text.strip()
    if string_like:
        if accepts_none and stripped in ("null", "~"):
            return None
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            try:
                value = yaml.safe_load(stripped)
            except yaml.YAMLError:
                return stripped
            return value if isinstance(value, str) else stripped
        return stripped
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
        if not raw.strip():
            raise ConfigError(f"--set {key}=: empty value; to use the default, omit --set {key}")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _parse_value(raw, field_annotation(type(config), key))
    try:
        return type(config).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"--set {loc}: {first['msg']} (got {json.dumps(first.get('input'), default=str)})") from None
