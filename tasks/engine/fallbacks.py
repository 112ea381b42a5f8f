"""Fallbacks: inputs on which the official code crashes (or yields NaN) and anomflow goes on with a stated rule.

A stage marks an item with ``meta["fallbacks"] = [name, ...]``. :func:`with_fallbacks` gathers the marks of every
item of a stage result, whether computed now or reused from the store, so a warm run reports the same images.
The run report names each fallback in ``notes`` with the images it touched and counts them in ``stages[].detail``.
"""
from __future__ import annotations

from typing import Sequence

from stores import ArtifactStore
from tasks.engine.runner import StageResult, WorkItem

FALLBACKS: dict[str, str] = {
    "no_object_box": "no object box passed the filters, so the object area is taken as the whole image (1.0); "
                     "the official code raises a TypeError here in a single-object category (an AttributeError "
                     "in a multi-object one)",
    "object_mask_empty_on_grid": "an object mask has no pixel on the multi-instance saliency grid and is left "
                                 "out of it; the official code raises a ValueError",
    "fewer_than_two_object_masks": "a multi-object category has fewer than two non-empty object masks, so the "
                                   "single-instance saliency is used; the official code raises an error",
    "constant_category_maps": "every anomaly map of the category has one value, so min-max normalisation is "
                              "undefined and the maps are set to 0; the official code gives NaN",
}
_LISTED = 5   # image paths named per note; the rest are counted


def with_fallbacks(store: ArtifactStore, result: StageResult, work: Sequence[WorkItem]) -> StageResult:
    """``result`` with ``fallbacks`` = {name: [image id, ...]} read from the committed items' meta."""
    view = store.open(result.ref)
    items = list({w.item: w.image for w in work}.items())
    view.prefetch([item for item, _ in items])
    found: dict[str, list[str]] = {}
    for item, image in items:
        if view.has(item):
            for name in view.meta(item).get("fallbacks", ()):
                found.setdefault(name, []).append(image)
    result.fallbacks = found
    return result


def fallback_note(stage: str, name: str, paths: Sequence[str]) -> str:
    """One report note: what happened, on how many images, which ones."""
    shown = ", ".join(paths[:_LISTED]) + (f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else "")
    return f"{stage}: fallback {name} on {len(paths)} image(s): {FALLBACKS.get(name, name)}. Images: {shown}"
