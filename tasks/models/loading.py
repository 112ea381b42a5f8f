"""Model identity and memoised loaders for the SAM and GroundingDINO adapters.

Three ways a model comes to exist, always from local files or from a seed, never from a hub:

* tiny specs (``spec.tiny``): seeded random weights at the tiny size;
* official specs with ``random_weights=True``: the official architecture at full size, seeded random weights
  (for speed/memory benchmarks; the checkpoint is not read even if present, so the identity stays honest);
* official specs otherwise: the checkpoint files under ``<models_dir>/<spec.name>/``, verified by
  ``tasks.models.weights`` (missing -> ``WeightsMissingError``).

The identity says which of these produced the outputs; caches key on it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.models import calls, registry

if TYPE_CHECKING:  # pragma: no cover
    from tasks.models.grounding_dino import GroundingDinoAdapter
    from tasks.models.sam import SamAdapter
    from tasks.models.wrn50 import Wrn50Adapter

RANDOM_PREFIX = "seeded-random:"


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a model's outputs: the verified weights hash, or a hash of the seeded-random recipe."""

    name: str
    weights_sha256: str
    tiny: bool
    random_weights: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uses_random_weights(spec: registry.ModelSpec, random_weights: bool) -> bool:
    return spec.tiny or random_weights


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
        return "absent"


def random_recipe_sha256(spec: registry.ModelSpec) -> str:
    """sha256 of the canonical JSON of what determines seeded-random weights.
    GroundingDINO's init code lives in transformers, so its version is part of the recipe too."""
    recipe: dict[str, Any] = {"name": spec.name, "arch": spec.arch, "seed": spec.seed, "torch": _version("torch")}
    if spec.family == "grounding_dino":
        recipe["transformers"] = _version("transformers")
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def model_identity(name: str, models_dir: str | Path | None, random_weights: bool = False) -> ModelIdentity:
    """Cheap (no model construction). Official & present: the verified sha256 of the primary weights file.
    Tiny specs, or official specs with ``random_weights=True``: ``"seeded-random:" + sha256(recipe)``.
    Official, files missing, ``random_weights=False``: raises ``WeightsMissingError``."""
    spec = registry.get_spec(name)
    random = _uses_random_weights(spec, random_weights)
    if random:
        sha = RANDOM_PREFIX + random_recipe_sha256(spec)
    else:
        from tasks.models.weights import primary_weights_sha256

        sha = primary_weights_sha256(spec, _models_dir(models_dir))
    return ModelIdentity(name=spec.name, weights_sha256=sha, tiny=spec.tiny, random_weights=random)


def _models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else registry.default_models_dir()


# ---------------------------------------------------------------------------------------------------- memo
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.RLock()


def _cache_key(family: str, name: str, models_dir: str | Path | None, random_weights: bool, device: str) -> tuple:
    spec = registry.get_spec(name)
    random = _uses_random_weights(spec, random_weights)
    where = None if random else str(_models_dir(models_dir).expanduser().resolve())
    # the spec itself is part of the key: a test may swap MODEL_SPECS entries under the same name
    return family, spec, where, random, str(device)


def _memoised(family: str, name: str, models_dir, random_weights: bool, device: str, build):
    key = _cache_key(family, name, models_dir, random_weights, device)
    with _LOCK:
        if key not in _CACHE:
            start = time.perf_counter()
            _CACHE[key] = build()
            calls.add_load_seconds(name, time.perf_counter() - start)
        return _CACHE[key]


def _check_family(name: str, family: str) -> registry.ModelSpec:
    spec = registry.get_spec(name)
    if spec.family != family:
        raise ValueError(f"model {name!r} is a {spec.family} model, not {family}")
    return spec


_BUILDERS = {"sam": ("tasks.models.sam", "build_sam_adapter"),
             "grounding_dino": ("tasks.models.grounding_dino", "build_grounding_dino_adapter"),
             "wrn50": ("tasks.models.wrn50", "build_wrn50_adapter")}


def _load(family: str, name: str, models_dir, random_weights: bool, device: str):
    """Build (once per process, per models_dir / random_weights / device) the adapter of a family's model."""
    spec = _check_family(name, family)

    def build():
        module, builder = _BUILDERS[family]
        identity = model_identity(name, models_dir, random_weights)
        return getattr(importlib.import_module(module), builder)(spec, _models_dir(models_dir), identity, device)

    return _memoised(family, name, models_dir, random_weights, device, build)


def load_sam(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
             device: str = "cpu") -> "SamAdapter":
    """The SAM adapter for ``name``."""
    return _load("sam", name, models_dir, random_weights, device)


def load_grounding_dino(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
                        device: str = "cpu") -> "GroundingDinoAdapter":
    """The GroundingDINO adapter for ``name``."""
    return _load("grounding_dino", name, models_dir, random_weights, device)


def load_wrn50(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
               device: str = "cpu") -> "Wrn50Adapter":
    """The WideResNet-50-2 feature adapter for ``name``."""
    return _load("wrn50", name, models_dir, random_weights, device)


def clear_model_cache() -> None:
    """Forget every memoised adapter (the next load constructs afresh and counts a load)."""
    with _LOCK:
        _CACHE.clear()

