"""Foundation stages: SAM automatic masks on the cached embedding, WRN50 / DINOv2 features, CLIP image tokens and
prompt-ensembled text embeddings. Tiny models, 64 x 64 random PNGs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.datasets.image_io import file_sha256, read_image
from tasks.datasets.records import ImageRecord
from tasks.engine.context import ImageItem, RunContext
from tasks.models import calls
from tasks.models.loading import load_model
from tasks.models.sam import SamAdapter
from tasks.stages.clip import clip_image_tokens, clip_text_embeddings, text_prompt_set
from tasks.stages.features import dinov2_features, wrn50_features
from tasks.stages.sam import image_embedding
from tasks.stages.sam_auto import DEFAULT_PARAMS, MaskGeneratorRule, automatic_masks, sam_automatic_masks

SAM = {"sam": "tiny-sam"}
EMBED = {"color_order": "rgb"}
# tiny-sam has random weights: small logits and IoU predictions, masks whose boxes all span the image (box NMS
# would keep one); these thresholds let several through
TINY_AMG = dict(DEFAULT_PARAMS, points_per_side=4, points_per_batch=6, pred_iou_thresh=0.02,
                stability_score_thresh=0.4, stability_score_offset=0.01, box_nms_thresh=1.0,
                min_area_fraction=0.3, max_area_fraction=0.75)


def write_images(root, n: int, category: str = "c", seed: int = 0) -> list[ImageItem]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        path = root / f"{category}{k}.png"
        Image.fromarray(np.random.default_rng(seed + k).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        items.append(ImageItem(file_sha256(str(path)), ImageRecord(str(path), f"{category}/test/good/{k}.png",
                                                                   category, "test", 0, "good")))
    return items


@pytest.fixture
def ctx(tmp_path):
    return RunContext(store_url=str(tmp_path / "store"), models_dir=str(tmp_path / "models"), progress=False,
                      batch_size=4)


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 2)


def forbid_encoder(monkeypatch):
    """From now on SAM's image encoder may not run."""
    def refuse(self, images):
        raise AssertionError("the image encoder ran")
    monkeypatch.setattr(SamAdapter, "embed", refuse)


def read(ctx, result, item: str) -> dict[str, np.ndarray]:
    return ctx.store.open(result.ref).read(item).arrays


def pixels(image: ImageItem) -> np.ndarray:
    return read_image(image.record.path, None)


def warm_run_is_free(stage, ctx, items=(), **kwargs):
    """A second identical call computes nothing and calls no model."""
    calls.reset_counters()
    again = stage.run(ctx, items, **kwargs)
    assert (again.stats.computed, calls.total_calls()) == (0, 0)
    return again


# -------------------------------------------------------------------------------------- SAM automatic masks
def sam_reference(sam, embedding: np.ndarray, hw, params: dict) -> list[dict]:
    """segment-anything's own SamAutomaticMaskGenerator on the same model, its predictor holding the cached
    embedding (set_image is a no-op), then our area filter; sorted by predicted IoU."""
    from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator

    p = dict(params)
    lo, hi = p.pop("min_area_fraction"), p.pop("max_area_fraction")
    generator = SamAutomaticMaskGenerator(sam.model, **p)
    predictor = generator.predictor
    predictor.set_image = lambda image: None
    predictor.reset_image = lambda: None
    predictor.features = torch.as_tensor(embedding)[None]
    predictor.original_size, predictor.input_size = hw, sam.input_size(hw)
    predictor.is_image_set = True
    anns = [a for a in generator.generate(np.zeros((*hw, 3), np.uint8)) if lo <= a["area"] / (hw[0] * hw[1]) <= hi]
    return sorted(anns, key=lambda a: -a["predicted_iou"])


@pytest.mark.parametrize("variant", [{}, {"box_nms_thresh": 0.7, "min_mask_region_area": 30,
                                         "min_area_fraction": 0.0, "max_area_fraction": 1.0}])
def test_automatic_masks_read_the_cached_embedding_and_equal_segment_anything(ctx, images, monkeypatch, variant):
    params = {**TINY_AMG, **variant}
    embeddings = image_embedding.run(ctx, images, params=EMBED, models=SAM)
    forbid_encoder(monkeypatch)
    calls.reset_counters()
    result = sam_automatic_masks.run(ctx, images, params=params, models=SAM, upstream={"embeddings": embeddings.ref})
    assert result.stats.computed == 2 and not result.failures
    assert calls.MODEL_CALLS["tiny-sam"] == 2 * 3    # 16 points in batches of 6: 3 decoder calls per image
    sam = load_model("tiny-sam", ctx.models_dir)
    for image in images:
        out = read(ctx, result, image.image_id)
        ref = sam_reference(sam, read(ctx, embeddings, image.image_id)["embedding"], (64, 64), params)
        assert len(out["masks"]) == len(ref) >= (1 if variant else 3)
        assert np.array_equal(out["masks"], np.stack([a["segmentation"] for a in ref]))
        assert np.array_equal(out["scores"], np.float32([a["predicted_iou"] for a in ref]))
        assert np.array_equal(out["stability"], np.float32([a["stability_score"] for a in ref]))
        assert np.array_equal(out["points"], np.float32([a["point_coords"][0] for a in ref]))
        x, y, w, h = np.float32([a["bbox"] for a in ref]).T
        assert np.array_equal(out["boxes"], np.stack([x, y, x + w, y + h], 1))
        if not variant:   # the adapter's own decode of a mask's point: that mask, its IoU up to float rounding
            #               (the adapter feeds float32 point coordinates, segment-anything float64)
            embedding = read(ctx, embeddings, image.image_id)["embedding"]
            for mask, score, point in list(zip(out["masks"], out["scores"], out["points"]))[:3]:
                masks, ious = sam.predict(embedding, (64, 64), points=point[None], multimask=True)
                slot = int(np.argmin(np.abs(ious[0] - score)))
                assert abs(ious[0, slot] - score) < 1e-6 and np.array_equal(masks[0, slot], mask)


def test_automatic_masks_warm_run_and_a_parameter_change_recompute_only_that_stage(ctx, images, monkeypatch):
    embeddings = image_embedding.run(ctx, images, params=EMBED, models=SAM)
    forbid_encoder(monkeypatch)
    first = sam_automatic_masks.run(ctx, images, params=TINY_AMG, models=SAM, upstream={"embeddings": embeddings.ref})
    warm_run_is_free(sam_automatic_masks, ctx, images, params=TINY_AMG, models=SAM,
                     upstream={"embeddings": embeddings.ref})
    calls.reset_counters()
    again = image_embedding.run(ctx, images, params=EMBED, models=SAM)
    changed = sam_automatic_masks.run(ctx, images, params={**TINY_AMG, "pred_iou_thresh": 0.04}, models=SAM,
                                      upstream={"embeddings": again.ref})
    assert (again.ref.key, again.stats.computed) == (embeddings.ref.key, 0)
    assert changed.ref.key != first.ref.key and changed.stats.computed == 2
    assert dict(calls.MODEL_CALLS) == {"tiny-sam": 2 * 3}     # decoder calls only


# Oracle: a fake decoder with known logits. points_per_side 2 on a 20 x 20 image -> points (5, 5), (15, 5),
# (5, 15), (15, 15); each gives 3 candidate masks (logits, predicted IoU).
HW = (20, 20)


def box_logits(rows, cols, inside=5.0) -> torch.Tensor:
    logits = torch.full(HW, -5.0)
    logits[rows[0]:rows[1], cols[0]:cols[1]] = inside
    return logits


def soft_logits() -> torch.Tensor:
    """A 4 x 4 core at +5 inside a 6 x 6 ring at +0.5: cut at +1 -> 16 px, at -1 -> 36 px (stability 16/36);
    at +-0.25 both cuts give 36 px (stability 1)."""
    logits = box_logits((10, 16), (2, 8), 0.5)
    logits[11:15, 3:7] = 5.0
    return logits


def speckled_logits() -> torch.Tensor:
    """An 8 x 8 square with a 2 px hole, plus a 3 px island two rows above it."""
    logits = box_logits((12, 20), (12, 20))
    logits[15, 15:17] = -5.0
    logits[9, 15:18] = 5.0
    return logits


EMPTY = torch.full(HW, -5.0)
A = box_logits((0, 10), (0, 10))          # 100 px, box [0, 0, 9, 9]
ORACLE = {   # point -> [(logits, predicted IoU)] x 3
    (5, 5): [(A, 0.95), (box_logits((0, 10), (0, 11)), 0.93),     # box IoU 81/90 with A: suppressed by NMS
             (box_logits((0, 20), (0, 20)), 0.97)],                # the whole image: above max_area_fraction
    (15, 5): [(box_logits((2, 12), (12, 18)), 0.5),                # predicted IoU too low
              (box_logits((2, 12), (12, 18)), 0.88),               # exactly at the threshold (kept only if >)
              (box_logits((0, 1), (19, 20)), 0.96)],               # 1 px: below min_area_fraction
    (5, 15): [(soft_logits(), 0.92), (EMPTY, 0.0), (EMPTY, 0.1)],
    (15, 15): [(speckled_logits(), 0.90), (EMPTY, 0.0), (box_logits((13, 17), (0, 4)), 0.89)],
}


def oracle_decode(points: np.ndarray):
    table = [ORACLE[tuple(int(v) for v in p)] for p in points]
    return (torch.stack([torch.stack([m for m, _ in row]) for row in table]),
            torch.tensor([[s for _, s in row] for row in table]))


def oracle_rule(**changes) -> MaskGeneratorRule:
    return MaskGeneratorRule(**{**DEFAULT_PARAMS, "points_per_side": 2, "points_per_batch": 3,
                                "min_area_fraction": 0.01, "max_area_fraction": 0.9, **changes})


def test_oracle_filters_keep_exactly_the_expected_masks():
    out = automatic_masks(oracle_decode, HW, oracle_rule())
    expected = [A > 0, speckled_logits() > 0, box_logits((13, 17), (0, 4)) > 0]   # the soft mask is unstable
    assert np.array_equal(out["masks"], torch.stack(expected).numpy())
    assert np.array_equal(out["scores"], np.float32([0.95, 0.90, 0.89]))
    assert np.array_equal(out["stability"], np.float32([1, 1, 1]))
    assert np.array_equal(out["boxes"], np.float32([[0, 0, 9, 9], [12, 9, 19, 19], [0, 13, 3, 16]]))
    assert np.array_equal(out["points"], np.float32([[5, 5], [15, 15], [15, 15]]))


def test_oracle_stability_score_uses_the_offset():
    rule = oracle_rule(stability_score_thresh=0.0, min_area_fraction=0.0)
    unfiltered = automatic_masks(oracle_decode, HW, rule)
    soft = [n for n, m in enumerate(unfiltered["masks"]) if np.array_equal(m, (soft_logits() > 0).numpy())]
    assert len(soft) == 1 and unfiltered["stability"][soft[0]] == np.float32(16 / 36)
    loose = automatic_masks(oracle_decode, HW, oracle_rule(stability_score_offset=0.25))
    assert np.float32(0.92) in loose["scores"]             # stable (16 + 20 px at both cuts) with offset 0.25


def test_oracle_iou_threshold_is_strict():
    out = automatic_masks(oracle_decode, HW, oracle_rule(pred_iou_thresh=0.87))
    assert np.float32(0.88) in out["scores"] and np.float32(0.5) not in out["scores"]
    assert np.float32(0.88) not in automatic_masks(oracle_decode, HW, oracle_rule())["scores"]


def test_oracle_box_nms_keeps_the_higher_predicted_iou():
    assert np.float32(0.93) not in automatic_masks(oracle_decode, HW, oracle_rule())["scores"]
    out = automatic_masks(oracle_decode, HW, oracle_rule(box_nms_thresh=0.95))    # box IoU 0.9 < 0.95
    assert out["scores"].tolist()[:2] == pytest.approx([0.95, 0.93])


def test_oracle_area_fractions_bound_the_masks():
    out = automatic_masks(oracle_decode, HW, oracle_rule(min_area_fraction=0.0, max_area_fraction=1.0))
    assert out["scores"].tolist() == pytest.approx([0.97, 0.96, 0.95, 0.90, 0.89])
    areas = out["masks"].sum((1, 2)) / 400
    assert areas.tolist() == [1.0, 1 / 400, 100 / 400, 65 / 400, 16 / 400]
    only_mid = automatic_masks(oracle_decode, HW, oracle_rule(min_area_fraction=16 / 400, max_area_fraction=0.25))
    assert only_mid["scores"].tolist() == pytest.approx([0.95, 0.90, 0.89])   # both bounds inclusive


def test_oracle_small_regions_are_removed_as_segment_anything_does():
    out = automatic_masks(oracle_decode, HW, oracle_rule(min_mask_region_area=4))
    cleaned = (box_logits((12, 20), (12, 20)) > 0).numpy()     # the 2 px hole filled, the 3 px island gone
    assert np.array_equal(out["masks"][1], cleaned) and out["boxes"][1].tolist() == [12, 12, 19, 19]
    assert out["scores"].tolist() == pytest.approx([0.95, 0.90, 0.89])


# ---------------------------------------------------------------------------------------------- features
def test_wrn50_features_equal_the_adapter_and_a_warm_run_is_free(ctx, images):
    params = {"size": 64, "color_order": "bgr"}
    result = wrn50_features.run(ctx, images, params=params, models={"backbone": "tiny-wrn50"})
    assert result.stats.computed == 2 and not result.failures
    direct = load_model("tiny-wrn50", ctx.models_dir).features([pixels(i)[..., ::-1].copy() for i in images], 64)
    for image, expected in zip(images, direct):
        out = read(ctx, result, image.image_id)["features"]
        assert out.shape == (448, 16, 16) and out.dtype == np.float32 and np.array_equal(out, expected)
    warm_run_is_free(wrn50_features, ctx, images, params=params, models={"backbone": "tiny-wrn50"})
    rgb = wrn50_features.run(ctx, images, params={**params, "color_order": "rgb"}, models={"backbone": "tiny-wrn50"})
    assert rgb.stats.computed == 2 and not np.array_equal(read(ctx, rgb, images[0].image_id)["features"], direct[0])


def test_dinov2_features_equal_the_adapter_and_a_warm_run_is_free(ctx, images):
    result = dinov2_features.run(ctx, images, params={"size": 56}, models={"backbone": "tiny-dinov2"})
    assert result.stats.computed == 2 and not result.failures
    patches, cls = load_model("tiny-dinov2", ctx.models_dir).tokens([pixels(i) for i in images], 56)
    view = ctx.store.open(result.ref)
    for n, image in enumerate(images):
        out = view.read(image.image_id)
        assert out.arrays["features"].shape == (32, 4, 4) and out.meta["grid"] == [4, 4]
        assert np.array_equal(out.arrays["features"], patches[n]) and np.array_equal(out.arrays["cls"], cls[n])
    warm_run_is_free(dinov2_features, ctx, images, params={"size": 56}, models={"backbone": "tiny-dinov2"})


def test_a_features_stage_refuses_a_model_of_another_family(ctx, images):
    result = wrn50_features.run(ctx, images, params={"size": 64, "color_order": "rgb"},
                                models={"backbone": "tiny-dinov2"})
    assert result.stats.computed == 0 and set(result.failures) == {i.image_id for i in images}
    assert all("not wrn50" in reason for reason in result.failures.values())


# --------------------------------------------------------------------------------------------------- CLIP
def test_clip_image_tokens_equal_the_adapter_and_a_warm_run_is_free(ctx, images):
    result = clip_image_tokens.run(ctx, images, params={"size": 64}, models={"clip": "tiny-clip"})
    assert result.stats.computed == 2 and not result.failures
    pooled, tokens = load_model("tiny-clip", ctx.models_dir).encode_image_tokens([pixels(i) for i in images], 64)
    for n, image in enumerate(images):
        out = read(ctx, result, image.image_id)
        assert out["tokens"].shape == (16, 32) and np.array_equal(out["tokens"], tokens[n])
        assert np.array_equal(out["embedding"], pooled[n])
    warm_run_is_free(clip_image_tokens, ctx, images, params={"size": 64}, models={"clip": "tiny-clip"})


TEXT = {"templates": "test", "states": ["normal", "anomalous"]}
BOTTLE = {"normal": ["a photo of a good bottle", "a flawless bottle"],
          "anomalous": ["a photo of a damaged bottle", "a bottle with a crack", "a broken bottle"]}


def test_text_set_items_are_named_by_their_prompts(tmp_path):
    a, b = write_images(tmp_path / "a", 2), write_images(tmp_path / "b", 2, seed=7)
    same = text_prompt_set("bottle", BOTTLE, a + b)
    assert same.name.startswith("text:bottle:") and same.members == ()
    assert text_prompt_set("bottle", dict(reversed(list(BOTTLE.items()))), b[::-1] + a).item() == same.item()
    reworded = {**BOTTLE, "normal": ["a photo of a good bottle", "a perfect bottle"]}
    reordered = {**BOTTLE, "normal": BOTTLE["normal"][::-1]}                 # rows of the embeddings move
    ids = {text_prompt_set("bottle", p, a).item() for p in (BOTTLE, reworded, reordered)}
    assert len(ids) == 3 and text_prompt_set("cable", BOTTLE, a).item() not in ids


def test_text_embeddings_are_normalised_and_ensembled_per_state(ctx, tmp_path):
    bottles = write_images(tmp_path / "bottle", 2, "bottle")
    cable = {s: [t.replace("bottle", "cable") for t in texts] for s, texts in BOTTLE.items()}
    sets = [text_prompt_set("bottle", BOTTLE, bottles), text_prompt_set("cable", cable)]
    result = clip_text_embeddings.run(ctx, sets=sets, params=TEXT, models={"clip": "tiny-clip"})
    assert result.stats.computed == 2 and not result.failures
    clip = load_model("tiny-clip", ctx.models_dir)
    out = ctx.store.open(result.ref).read(sets[0].item())
    expected = clip.encode_text(BOTTLE["normal"] + BOTTLE["anomalous"])
    assert np.allclose(out.arrays["embeddings"], expected, atol=1e-6)
    assert out.arrays["state"].tolist() == [0, 0, 1, 1, 1] and out.meta["prompts"] == BOTTLE
    means = np.stack([expected[:2].mean(0), expected[2:].mean(0)])
    assert np.allclose(out.arrays["means"], means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(np.linalg.norm(out.arrays["means"], axis=1), 1, atol=1e-6)
    warm_run_is_free(clip_text_embeddings, ctx, sets=sets, params=TEXT, models={"clip": "tiny-clip"})
    calls.reset_counters()
    more = sets + [text_prompt_set("bottle", {**BOTTLE, "normal": ["a good bottle"]}, bottles)]
    assert clip_text_embeddings.run(ctx, sets=more, params=TEXT, models={"clip": "tiny-clip"}).stats.computed == 1
    assert calls.total_calls() == 1


def test_a_failing_text_set_fails_every_dependent_image(ctx, tmp_path):
    bottles, cables = write_images(tmp_path / "b", 2, "bottle"), write_images(tmp_path / "c", 3, "cable", seed=5)
    good = text_prompt_set("bottle", BOTTLE, bottles)
    bad = text_prompt_set("cable", {"normal": ["a good cable"], "anomalous": []}, cables)   # a state without prompts
    result = clip_text_embeddings.run(ctx, sets=[good, bad], params=TEXT, models={"clip": "tiny-clip"})
    assert result.stats.computed == 1 and set(result.failures) == {i.image_id for i in cables}
    assert all(bad.name in reason and "'anomalous'" in reason for reason in result.failures.values())
