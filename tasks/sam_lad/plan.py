"""SAM-LAD's plan (METHODS.md §4.1): which stages run on which images with which parameters. The flow
(``flows/sam_lad.py``) only wires.

Images in two roles: the split to score (queries) and the category's normal support images (train/good, plus
validation/good when asked). DINOv2 features of both; a memory bank per category; each query's k nearest bank
images; then objects, upsampled features and descriptors of the queries and of the references actually used
(each computed once, however many queries use it); matching and scoring per (query, references) set; the map.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from stores import ArtifactRef
from tasks.engine.context import ImageItem, RunContext
from tasks.engine.run_state import RunState
from tasks.engine.runner import StageResult
from tasks.sam_lad import objects as object_tables
from tasks.sam_lad.objects import is_synthetic  # noqa: F401 (the flow's wiring reads it here)
from tasks.sam_lad.config import SAMLADConfig
from tasks.sam_lad.stages_bank import bank_set, memory_bank, nearest_references, references_set
from tasks.sam_lad.stages_match import match_set, object_matching, object_scores, sam_lad_map
from tasks.sam_lad.stages_objects import JBU_DEFAULTS, object_descriptors, upsampled_features
from tasks.saa_plus.oracle import oracle_object_masks
from tasks.stages.features import dinov2_features
from tasks.stages.sam import image_embedding
from tasks.stages.sam_auto import DEFAULT_PARAMS as AMG_DEFAULTS, sam_automatic_masks


def resolve_upsampler(config: SAMLADConfig, ctx: RunContext) -> tuple[SAMLADConfig, list[str]]:
    """``upsampler=auto`` -> featup when FeatUp's official weights are present (or random weights are asked
    for), else joint_bilateral, with a note for the report."""
    if config.upsampler != "auto":
        return config, []
    from tasks.models.registry import get_spec
    from tasks.models.resolve import official_present
    spec = get_spec(config.models.upsampler)
    if ctx.random_weights or (not spec.tiny and official_present(spec.name, ctx.models_dir)):
        return config.model_copy(update={"upsampler": "featup"}), []
    note = (f"upsampler: {config.models.upsampler} weights not found in {ctx.models_dir}: using the non-learned "
            "joint bilateral upsampler (a substitute for FeatUp's JBU, not FeatUp)")
    return config.model_copy(update={"upsampler": "joint_bilateral"}), [note]


def model_names(config: SAMLADConfig) -> list[str]:
    m = config.models
    return [m.backbone] + [m.sam] * (config.object_source == "sam") + \
        [m.upsampler] * (config.upsampler == "featup" and config.upsample_factor > 1)


def side_inputs(config: SAMLADConfig) -> tuple[str, ...]:
    return ("labels",) if config.object_source == "oracle" else ()


def support_splits(config: SAMLADConfig) -> tuple[str, ...]:
    return ("train", "validation") if config.include_validation else ("train",)


@dataclass
class Plan:
    """What the driver learned between stages: each query's references, per category."""

    run: RunState
    references: dict[str, list[ImageItem]] = field(default_factory=dict)   # query image id -> references
    map_items: dict[str, str] = field(default_factory=dict)   # query image id -> its map's item in sam_lad_map

    def absorb(self, ctx: RunContext, result: StageResult) -> None:
        """A stage over queries and references: failed queries leave the run, failed references the support."""
        self.run.absorb(ctx, result)
        if "support" in self.run.roles:
            self.run.roles["support"].tracker.drop(result.failures)


def _by_category(items: list[ImageItem]) -> dict[str, list[ImageItem]]:
    out: dict[str, list[ImageItem]] = defaultdict(list)
    for item in items:
        out[item.record.category].append(item)
    return out


def _unique(items) -> list[ImageItem]:
    return list({i.image_id: i for i in items}.values())


def find_references(ctx: RunContext, run: RunState, config: SAMLADConfig, features: ArtifactRef) -> Plan:
    """Banks and nearest references; returns each surviving query's references."""
    plan = Plan(run)
    support = _by_category(run.roles["support"].items)
    queries = _by_category(run.alive)
    banks = [bank_set(c, support.get(c, []), queries[c]) for c in sorted(queries)]
    bank = memory_bank(ctx, params={"coreset_fraction": config.coreset_fraction, "coreset_seed": config.coreset_seed},
                       upstream={"features": features}, sets=banks)
    run.absorb(ctx, bank)
    alive = _by_category(run.alive)
    sets = [references_set(b.payload["category"], b.item(bank.ref.side), alive[b.payload["category"]])
            for b in banks if alive.get(b.payload["category"])]
    found = nearest_references(ctx, params={"k": config.k_references, "seed": config.reference_seed,
                                            "random_single_reference": config.random_single_reference},
                               upstream={"bank": bank.ref, "features": features}, sets=sets)
    run.absorb(ctx, found)
    view = ctx.store.open(found.ref)
    support_by_id = {i.image_id: i for i in run.roles["support"].items}
    for s in sets:
        item = s.item(found.ref.side)
        if not view.has(item):
            continue
        meta = view.meta(item)
        for query, refs in zip(meta["queries"], meta["references"]):
            plan.references[query] = [support_by_id[r] for r in refs if r in support_by_id]
    return plan


def chain(ctx: RunContext, run: RunState, config: SAMLADConfig, dataset_kind: str,
          synthetic: bool) -> tuple[dict[str, ArtifactRef], dict[str, str]]:
    """Every stage; returns the sam_lad_map artifact of each category and each query's item in it."""
    table = object_tables.load_table(object_tables.table_path(config.object_areas, dataset_kind, synthetic))
    m = config.models
    feature_params = {"size": config.feature_size}
    support_features = dinov2_features(ctx, run.roles["support"].items, params=feature_params,
                                       models={"backbone": m.backbone})
    run.absorb(ctx, support_features, role="support")
    query_features = dinov2_features(ctx, run.alive, params=feature_params, models={"backbone": m.backbone})
    run.absorb(ctx, query_features)
    plan = find_references(ctx, run, config, query_features.ref)

    def used(items: list[ImageItem]) -> list[ImageItem]:   # queries and the references they use
        return _unique([*items, *(r for q in items for r in plan.references.get(q.image_id, []))])

    everyone = used(run.alive)
    whole = {c for c in _by_category(everyone) if object_tables.rule_for(table, c).whole_image}
    objects_ref = _objects(ctx, plan, config, [i for i in everyone if i.record.category not in whole])
    upsampler = m.upsampler if config.upsampler == "featup" and config.upsample_factor > 1 else None
    upsampled = upsampled_features(ctx, everyone, params={"upsampler": config.upsampler,
                                                          "factor": config.upsample_factor,
                                                          "feature_size": config.feature_size, "jbu": JBU_DEFAULTS},
                                   models={"upsampler": upsampler}, upstream={"features": query_features.ref})
    plan.absorb(ctx, upsampled)
    maps = {}
    for category, queries in sorted(_by_category(run.alive).items()):
        maps[category] = _score_category(ctx, plan, config, table, category, queries, used, objects_ref,
                                         upsampled.ref)
    return {c: r for c, r in maps.items() if r is not None}, plan.map_items


def _objects(ctx: RunContext, plan: Plan, config: SAMLADConfig, images: list[ImageItem]) -> ArtifactRef | None:
    """SAM's automatic masks (no area filter here: it is per category, in object_descriptors), or the oracle's."""
    if config.object_source == "oracle":
        result = oracle_object_masks(ctx, images, params={"generator": "oracle"})
        plan.absorb(ctx, result)
        return result.ref
    embeddings = image_embedding(ctx, images, params={"color_order": "rgb"}, models={"sam": config.models.sam})
    plan.absorb(ctx, embeddings)
    amg = {**AMG_DEFAULTS, **config.mask_generator.model_dump(), "min_area_fraction": 0.0, "max_area_fraction": 1.0}
    masks = sam_automatic_masks(ctx, images, params=amg, models={"sam": config.models.sam},
                                upstream={"embeddings": embeddings.ref})
    plan.absorb(ctx, masks)
    return masks.ref


def _score_category(ctx: RunContext, plan: Plan, config: SAMLADConfig, table, category: str,
                    queries: list[ImageItem], used, objects_ref: ArtifactRef | None,
                    features: ArtifactRef) -> ArtifactRef | None:
    rule = object_tables.rule_for(table, category)
    images = used(queries)
    descriptors = object_descriptors(
        ctx, images, upstream={"objects": None if rule.whole_image else objects_ref, "features": features},
        params={**{k: v for k, v in rule.as_params().items()}, "max_objects": config.max_objects,
                "dcga_mode": config.dcga_mode, "dcga_w": config.dcga_w, "pool_inside_mask": config.pool_inside_mask})
    plan.absorb(ctx, descriptors)
    alive = {i.image_id for i in plan.run.alive}
    sets = [match_set(q, plan.references[q.image_id]) for q in queries
            if q.image_id in alive and plan.references.get(q.image_id)]
    if not sets:
        return None
    matching = object_matching(ctx, params={"dustbin_z": config.dustbin_z, "temperature": config.match_temperature,
                                            "iterations": config.sinkhorn_iterations,
                                            "threshold": config.match_threshold, "rule": config.match_rule},
                               upstream={"descriptors": descriptors.ref}, sets=sets)
    plan.run.absorb(ctx, matching)
    scores = object_scores(ctx, params={"eps": config.eps, "align": config.align, "variant": config.variant,
                                        "score_missing_objects": config.score_missing_objects},
                           upstream={"matching": matching.ref, "descriptors": descriptors.ref, "features": features},
                           sets=sets)
    plan.run.absorb(ctx, scores)
    alive = {i.image_id for i in plan.run.alive}
    kept = [s for s in sets if s.payload["query"].image_id in alive]
    result = sam_lad_map(ctx, upstream={"scores": scores.ref}, sets=kept,
                         params={"resolution": config.eval_resolution, "smoothing_sigma": config.smoothing_sigma})
    plan.run.absorb(ctx, result)
    plan.map_items.update({s.payload["query"].image_id: s.item(result.ref.side) for s in kept})
    return result.ref

