"""``anomflow calibrate-areas sam-lad``: pick each category's object area bounds on normal training images.

SAM's automatic masks of every train/good image (the same cached stages a SAM-LAD run uses, so a later run
reuses them), then, per category, the [min, max] area fractions under which the most normal images yield exactly
the expected object count (METHODS.md §4.3). The expected count comes from the current table (the paper's counts
for breakfast_box and screw_bag) or ``--expected``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tasks.engine.context import RunContext
from tasks.engine.run_state import RunState
from tasks.sam_lad import objects as object_tables
from tasks.sam_lad.config import SAMLADConfig
from tasks.stages.sam import image_embedding
from tasks.stages.sam_auto import DEFAULT_PARAMS as AMG_DEFAULTS, sam_automatic_masks


@dataclass
class CategoryCalibration:
    category: str
    rule: object_tables.AreaRule
    share_exact: float            # normal images with exactly the expected count under the rule
    images: int
    counts: dict[int, int]        # objects per image -> images, under the rule


def mask_areas(ctx: RunContext, run: RunState, config: SAMLADConfig) -> dict[str, list[np.ndarray]]:
    """Area fractions of SAM's automatic masks, per category, one array per normal image (cached stages)."""
    images = run.alive
    embeddings = image_embedding(ctx, images, params={"color_order": "rgb"}, models={"sam": config.models.sam})
    run.absorb(ctx, embeddings)
    amg = {**AMG_DEFAULTS, **config.mask_generator.model_dump(), "min_area_fraction": 0.0, "max_area_fraction": 1.0}
    masks = sam_automatic_masks(ctx, run.alive, params=amg, models={"sam": config.models.sam},
                                upstream={"embeddings": embeddings.ref})
    run.absorb(ctx, masks)
    view = ctx.store.open(masks.ref)
    areas: dict[str, list[np.ndarray]] = defaultdict(list)
    for item in run.alive:
        stored = view.read(item.image_id, names=["masks"]).arrays["masks"]
        total = float(stored.shape[1] * stored.shape[2]) if stored.ndim == 3 else 1.0
        areas[item.record.category].append(stored.reshape(stored.shape[0], -1 if len(stored) else 0).sum(1) / total)
    return dict(areas)


def calibrate(areas: dict[str, list[np.ndarray]], table: dict[str, object_tables.AreaRule],
              expected: int | None) -> list[CategoryCalibration]:
    """Per category: the bounds that give the expected count most often. A category with no expected count
    (neither in the table nor ``expected``) cannot be calibrated: ValueError naming it."""
    out = []
    for category, per_image in sorted(areas.items()):
        want = expected or object_tables.rule_for(table, category).expected_objects
        if want is None:
            raise ValueError(f"category {category}: no expected object count in the table; pass --expected N")
        rule, share = object_tables.calibrate_bounds(per_image, want)
        counts: dict[int, int] = defaultdict(int)
        for a in per_image:
            counts[int(((a >= rule.min_fraction) & (a <= rule.max_fraction)).sum())] += 1
        out.append(CategoryCalibration(category, rule, share, len(per_image), dict(sorted(counts.items()))))
    return out
