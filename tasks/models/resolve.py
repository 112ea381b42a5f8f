"""Choose the model each slot of a config uses: official if present, else random or tiny when allowed."""
from __future__ import annotations

from pydantic import BaseModel

from tasks.models.registry import get_spec, tiny_twin


def official_present(name: str, models_dir: str) -> bool:
    spec = get_spec(name)
    return spec.tiny or all(spec.file_path(models_dir, f.filename).is_file() for f in spec.files)


def resolve_models(config: BaseModel, models_dir: str, allow_tiny: bool, random_weights: bool) -> tuple[BaseModel, list[str]]:
    """Return the config with absent official models swapped for their tiny twins (when allowed), and notes.

    ``config.models`` is a pydantic model whose fields are model names. Without allow_tiny or random_weights,
    absent weights are left for the loader, which raises an error naming the file and the fetch command.
    """
    models = config.models
    notes, changes = [], {}
    for slot, name in models.model_dump().items():
        get_spec(name)  # unknown names fail here, with the registered list
        if official_present(name, models_dir) or random_weights or not allow_tiny:
            continue
        twin = tiny_twin(name)
        if twin:
            changes[slot] = twin
            notes.append(f"{name} weights not found in {models_dir}: using the stand-in {twin} (random weights)")
    if changes:
        config = config.model_copy(update={"models": models.model_copy(update=changes)})
    return config, notes
