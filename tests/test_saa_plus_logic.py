"""SAA+ scoring and candidate stages checked exactly with oracle inputs (no models)."""
from __future__ import annotations

import numpy as np
import pytest

from stores import ItemData
from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem, RunContext
from tasks.saa import stages as saa_stages
from tasks.saa.regions import BoxFilter, defect_box_params
from tasks.stages.grounding_dino import detection_item
from tasks.saa_plus import stages
from tasks.saa_plus.scoring import ScoringRule, location_filter, mask_area_filter, score_map


def _rescore(scores, masks, saliency, scale):
    """The official saliency prompt, written out independently: s * exp(scale * mean saliency in the mask)."""
    out = []
    for s, m in zip(scores, masks):
        out.append(s * np.exp(scale * saliency[m].mean()) if m.any() else s)
    return np.array(out)


def _masks():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = True                 # 1 px
    masks[1, :2, :2] = True               # 4 px
    masks[2, 2:, :] = True                # 8 px
    return masks


def test_rescore_top_k_and_official_fusion_exactly():
    masks, scores = _masks(), np.array([0.5, 0.4, 0.3], np.float32)
    saliency = np.zeros((4, 4), np.float32)
    saliency[2:, :] = 0.5
    rule = ScoringRule(k=2, fusion="official", rescore_scale=3.0)
    out = score_map(masks, scores, saliency, None, rule, _rescore)
    s2 = 0.3 * np.exp(1.5)                # the salient mask rises to the top; 0.5 beats 0.4 for second place
    expected = np.zeros((4, 4))
    expected[0, 0] = 0.5 / 2
    expected[2:, :] = s2 / 2
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_k_larger_than_candidates_and_no_saliency_is_plain_fusion():
    masks, scores = _masks(), np.array([0.5, 0.4, 0.3], np.float32)
    out = score_map(masks, scores, None, None, ScoringRule(k=10, fusion="mean"), _rescore)
    assert out[0, 0] == pytest.approx(0.45) and out[3, 3] == pytest.approx(0.3) and out[1, 3] == 0


def test_property_on_masks_and_location_filters():
    masks = _masks()
    objects = np.zeros((1, 4, 4), bool)
    objects[0, :2, :] = True              # 8 px object on the top half
    assert mask_area_filter(masks, objects, 0.5).tolist() == [True, True, False]
    assert location_filter(masks, objects, 0.5).tolist() == [True, True, False]
    assert location_filter(masks, np.zeros((0, 4, 4), bool), 0.9).tolist() == [True, True, True]
    rule = ScoringRule(k=None, property_on_masks=True, area_threshold=0.1)   # limit 0.8 px: all filtered
    out = score_map(masks, np.ones(3, np.float32), None, objects, rule, _rescore)
    assert out.shape == (4, 4) and out.sum() == 0


def test_empty_object_mask_and_no_candidates():
    masks = _masks()
    empty_obj = np.zeros((1, 4, 4), bool)
    # an empty object mask counts as area 1 px: only masks of <= θ px survive
    assert mask_area_filter(masks, empty_obj, 1.0).tolist() == [True, False, False]
    none = score_map(np.zeros((0, 4, 4), bool), np.zeros(0, np.float32), np.zeros((4, 4)), None, ScoringRule(),
                     _rescore)
    assert none.shape == (4, 4) and none.sum() == 0


def _store_with_detections(tmp_path):
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    rec = ImageRecord(str(tmp_path / "x.png"), "c/test/good/x.png", "c", "test", 0, "good")
    item = ImageItem("a" * 64, rec)
    ref = ctx.store.ensure_artifact("grounding_detections", "oracle", {})
    boxes = np.array([[0.5, 0.5, 0.8, 0.8], [0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.3]], np.float32)
    for caption, logits in (("bottle.", [[0.9], [0.05], [0.05]]), ("crack.", [[0.05], [0.6], [0.7]])):
        ctx.store.write_item(ref, detection_item(item.image_id, caption),
                             ItemData({"boxes": boxes, "logits": np.array(logits, np.float32),
                                       "token_ids": np.array([5])}, {"height": 100, "width": 100}))
    return ctx, item, ref


def test_object_area_bounds_defect_boxes(tmp_path):
    ctx, item, ref = _store_with_detections(tmp_path)
    def object_boxes(n):
        rule = BoxFilter(0.1, 0.1, max_area=1.0 / n)
        return stages.object_boxes.run(ctx, [item], params={"caption": "bottle.", "rule": dict(rule.__dict__)},
                                       upstream={"detections": ref})

    def defect_boxes(objects, theta):
        return saa_stages.defect_boxes.run(ctx, [item], models={"detector": "tiny-gdino"},
                                           params=defect_box_params(BoxFilter(0.1, 0.1), ["crack"], "", theta),
                                           upstream={"detections": ref, "objects": objects})

    objects = object_boxes(1)
    obj = ctx.store.open(objects.ref).read(item.image_id)
    assert obj.meta["object_area"] == pytest.approx(0.64) and len(obj.arrays["boxes"]) == 1
    cands = defect_boxes(objects.ref, 0.1)  # max area 0.1 * 0.64: keeps the 0.01 box, drops the 0.09 box
    got = ctx.store.open(cands.ref).read(item.image_id)
    np.testing.assert_allclose(got.arrays["boxes"], [[15, 15, 25, 25]])
    np.testing.assert_allclose(got.arrays["scores"], [0.6])
    no_property = defect_boxes(None, None)
    assert len(ctx.store.open(no_property.ref).read(item.image_id).arrays["boxes"]) == 2
    # n = 2 objects: an object box may cover at most half the image; the 0.64 box goes, object_area -> 1
    two = object_boxes(2)
    assert ctx.store.open(two.ref).read(item.image_id).meta["object_area"] == 1.0


def test_saliency_stage_falls_back_when_fewer_than_two_objects(tmp_path):
    """n > 1 with oracle object masks: two objects -> multi-instance; one (or none) -> single-instance fallback."""
    from PIL import Image

    from tasks.datasets.image_io import file_sha256

    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    objects = ctx.store.ensure_artifact("object_masks", "oracle", {})
    items = []
    for name, count in (("two", 2), ("one", 1), ("none", 0)):
        path = tmp_path / f"{name}.png"
        Image.fromarray(np.random.default_rng(count).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
        item = ImageItem(file_sha256(str(path)), ImageRecord(str(path), f"c/test/good/{name}.png", "c", "test", 0, "good"))
        masks = np.zeros((count, 32, 32), bool)
        for i in range(count):
            masks[i, 4:12, 4 + 14 * i:12 + 14 * i] = True
        ctx.store.write_item(objects, item.image_id, ItemData({"masks": masks, "scores": np.ones(count)}))
        items.append(item)
    result = stages.saliency_map.run(ctx, items, models={"backbone": "tiny-wrn50"}, upstream={"objects": objects},
                                     params={"multi": True, "k": 5, "neighbours": "farthest", "color_order": "rgb",
                                             "single_size": 32, "multi_size": 64, "object_count": 4})
    view = ctx.store.open(result.ref)
    modes = {it.record.stem: view.read(it.image_id).meta["mode"] for it in items}
    assert modes == {"two": "multi", "one": "single-fallback", "none": "single-fallback"}
    assert view.read(items[0].image_id).arrays["map"].shape == (16, 16)    # 64 / 4
    assert view.read(items[1].image_id).arrays["map"].shape == (8, 8)      # single size 32 / 4
    multi = view.read(items[0].image_id).arrays["map"]
    assert multi[8:, :].sum() == 0 and multi[1:3, 1:3].min() >= 0         # outside the objects: 0


def test_ablation_variants_keep_models_and_stage_slots():
    from tasks.saa_plus.ablation import variant_config
    from tasks.saa_plus.config import SAAPlusConfig

    base = SAAPlusConfig(region_generator="oracle", refiner="oracle", color_order="rgb", k=3)
    vanilla = variant_config(base, "saa")
    assert (vanilla.region_generator, vanilla.refiner, vanilla.sam_color_order) == ("oracle", "oracle", "rgb")
    assert vanilla.top_k is None and vanilla.defect_prompts == ["defect"]
    no_saliency = variant_config(base, "no_saliency")
    assert no_saliency.prompts.saliency is False and no_saliency.prompts.property and no_saliency.k == 3
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(base, "no_everything")
