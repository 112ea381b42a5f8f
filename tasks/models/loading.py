"""Memoised loaders: one adapter per process per (model, models_dir, random_weights, device).

Three ways a model comes to exist, always from local files or from a seed, never from a hub:

* tiny specs (``spec.tiny``): seeded random weights at the tiny size;
* official specs with ``random_weights=True``: the official architecture at full size, seeded random weights
  (for speed/memory benchmarks; the checkpoint is not read even if present, so the identity stays honest). The
  weights belong to the architecture: every tag of it loads the same model, named after the architecture;
* official specs otherwise: the checkpoint files under ``<models_dir>/<spec.name>/``, verified by
  ``tasks.models.weights`` (missing -> ``WeightsMissingError``).

Each family's module (and its library) is imported only when a model of that family is first built.
Identity lives in :mod:`tasks.models.identity`; its names are re-exported here for older callers.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tasks.models import calls, registry
from tasks.models.identity import (RANDOM_PREFIX, ModelIdentity, model_identity,  # noqa: F401 (re-exported)
                                   models_dir_or_default, random_recipe_sha256, uses_random_weights)

if TYPE_CHECKING:  # pragma: no cover
    from tasks.models.clip import ClipAdapter
    from tasks.models.dinov2 import Dinov2Adapter
    from tasks.models.featup import FeatUpAdapter
    from tasks.models.grounding_dino import GroundingDinoAdapter
    from tasks.models.sam import SamAdapter
    from tasks.models.wrn50 import Wrn50Adapter


# ------------------------------------------------------------------------------------------------- builders
# family -> builder(spec, models_dir, identity, device); each imports its module (and library) lazily.
def _build_sam(*args):
    from tasks.models.sam import build_sam_adapter
    return build_sam_adapter(*args)


def _build_grounding_dino(*args):
    from tasks.models.grounding_dino import build_grounding_dino_adapter
    return build_grounding_dino_adapter(*args)


def _build_wrn50(*args):
    from tasks.models.wrn50 import build_wrn50_adapter
    return build_wrn50_adapter(*args)


def _build_dinov2(*args):
    from tasks.models.dinov2 import build_dinov2_adapter
    return build_dinov2_adapter(*args)


def _build_clip(*args):
    from tasks.models.clip import build_clip_adapter
    return build_clip_adapter(*args)


def _build_featup(*args):
    from tasks.models.featup import build_featup_adapter
    return build_featup_adapter(*args)


_BUILDERS: dict[str, Callable[..., Any]] = {"sam": _build_sam, "grounding_dino": _build_grounding_dino,
                                            "wrn50": _build_wrn50, "dinov2": _build_dinov2, "clip": _build_clip,
                                            "featup": _build_featup}


# ---------------------------------------------------------------------------------------------------- memo
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.RLock()


def _check_family(name: str, family: str) -> registry.ModelSpec:
    spec = registry.get_spec(name)
    if spec.family != family:
        raise ValueError(f"model {name!r} is a {spec.family} model, not {family}")
    return spec


def _load(family: str, name: str, models_dir, random_weights: bool, device: str):
    """Build (once per process, per models_dir / random_weights / device) the adapter of a family's model.
    Random weights are built from the architecture's spec, so all its tags share one memoised model."""
    spec = _check_family(name, family)
    random = uses_random_weights(spec, random_weights)
    built = registry.random_spec(spec) if random else spec
    where = None if random else str(models_dir_or_default(models_dir).expanduser().resolve())
    # the spec itself is part of the key: a test may swap MODEL_SPECS entries under the same name
    key = (family, built, where, random, str(device))
    with _LOCK:
        if key not in _CACHE:
            start = time.perf_counter()
            identity = model_identity(name, models_dir, random_weights)
            _CACHE[key] = _BUILDERS[family](built, models_dir_or_default(models_dir), identity, device)
            calls.add_load_seconds(built.name, time.perf_counter() - start)
        return _CACHE[key]


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


def load_dinov2(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
                device: str = "cpu") -> "Dinov2Adapter":
    """The DINOv2 patch-token adapter for ``name``."""
    return _load("dinov2", name, models_dir, random_weights, device)


def load_clip(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
              device: str = "cpu") -> "ClipAdapter":
    """The CLIP image/text adapter for ``name``."""
    return _load("clip", name, models_dir, random_weights, device)


def load_featup(name: str, models_dir: str | Path | None = None, random_weights: bool = False,
                device: str = "cpu") -> "FeatUpAdapter":
    """The FeatUp JBU feature-upsampler adapter for ``name``."""
    return _load("featup", name, models_dir, random_weights, device)


def load_model(name: str, models_dir: str | Path | None = None, random_weights: bool = False, device: str = "cpu"):
    """The adapter of any registered model (its family decides which)."""
    return _load(registry.get_spec(name).family, name, models_dir, random_weights, device)


def clear_model_cache() -> None:
    """Forget every memoised adapter (the next load constructs afresh and counts a load)."""
    with _LOCK:
        _CACHE.clear()
