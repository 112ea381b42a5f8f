"""Cache keys: sha256 over canonical JSON, never over paths or run ids."""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def _normalise(value: Any) -> Any:
    """Make a value JSON-canonical: tuples -> lists, floats finite and stable, sets sorted."""
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_normalise(v) for v in value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite float {value!r} cannot be part of a cache key")
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _normalise(value.item())
    return value


def canonical_json(obj: Any) -> str:
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def artifact_key(stage: str, version: int, params: dict, models: list[dict], upstream: list[str]) -> str:
    """Key of one stage output: stage name + version, the params it reads, model identities, upstream keys.

    models: dicts with at least ``name`` and ``weights_sha256``; upstream: keys of the artifacts read.
    Per-image content hashes are not part of it: they address items inside the artifact.
    """
    model_ids = sorted((m["name"], m["weights_sha256"]) for m in models)
    payload = {"stage": stage, "version": version, "params": params, "models": model_ids,
               "upstream": list(upstream)}
    return sha256_text(canonical_json(payload))


def item_key(*parts: str) -> str:
    """Key of one item inside an artifact, e.g. item_key(image_sha256) or item_key(image_sha256, caption)."""
    if len(parts) == 1 and len(parts[0]) == 64:
        return parts[0]
    return sha256_text(canonical_json(list(parts)))
