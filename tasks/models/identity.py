"""Model identity: which weights produced a model's outputs. Caches key on ``model_identity(...).as_dict()``.

Cheap: no model is built. Three cases, never a hub:

* tiny specs, or any spec with ``random_weights=True``: ``"seeded-random:" + sha256(recipe)``, where the recipe is
  the ARCHITECTURE's (name, arch, seed, library versions), so every tag of one architecture gives one identity;
* official specs otherwise: the verified sha256 of the primary weights file under ``<models_dir>/<spec.name>/``
  (missing -> ``WeightsMissingError``).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.models import registry
from tasks.models.weights import primary_weights_sha256

RANDOM_PREFIX = "seeded-random:"
# libraries whose init code decides a family's seeded-random weights (besides torch)
_INIT_LIBRARIES = {"grounding_dino": "transformers", "dinov2": "timm", "clip": "open_clip_torch"}


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a model's outputs: the verified weights hash, or a hash of the seeded-random recipe."""

    name: str
    weights_sha256: str
    tiny: bool
    random_weights: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def uses_random_weights(spec: registry.ModelSpec, random_weights: bool) -> bool:
    return spec.tiny or random_weights


@functools.lru_cache(maxsize=None)   # reading dist-info is slow, and an installed version is fixed for the process
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover - all are dependencies
        return "absent"


def random_recipe_sha256(spec: registry.ModelSpec) -> str:
    """sha256 of the canonical JSON of what determines the seeded-random weights of ``spec``'s architecture:
    its name, arch and seed, torch's version and that of the library holding the family's init code."""
    arch = registry.random_spec(spec)
    recipe: dict[str, Any] = {"name": arch.name, "arch": arch.arch, "seed": arch.seed, "torch": _version("torch")}
    if arch.family in _INIT_LIBRARIES:
        dist = _INIT_LIBRARIES[arch.family]
        recipe[dist.removesuffix("_torch")] = _version(dist)
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def models_dir_or_default(models_dir: str | Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else registry.default_models_dir()


def model_identity(name: str, models_dir: str | Path | None, random_weights: bool = False) -> ModelIdentity:
    """Official & present: the verified sha256 of the primary weights file, under the model's registered name.
    Tiny, or ``random_weights=True``: the architecture's seeded-random recipe, under the architecture's name.
    Official, files missing, ``random_weights=False``: raises ``WeightsMissingError``."""
    spec = registry.get_spec(name)
    if uses_random_weights(spec, random_weights):
        arch = registry.random_spec(spec)
        return ModelIdentity(name=arch.name, weights_sha256=RANDOM_PREFIX + random_recipe_sha256(spec),
                             tiny=spec.tiny, random_weights=True)
    sha = primary_weights_sha256(spec, models_dir_or_default(models_dir))
    return ModelIdentity(name=spec.name, weights_sha256=sha, tiny=False, random_weights=False)
