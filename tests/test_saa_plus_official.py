"""Issue 8: SAA+ defaults follow the official code (caoyunkang/Segment-Any-Anomaly @ 23acbd9) where anomflow
says they do. Each official rule is written out here, with the file it comes from, and compared with ours."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.models import calls
from tasks.models.grounding_dino import normalize_caption, resized_shape
from tasks.models.loading import load_grounding_dino
from tasks.saa_plus.expert import load_table, prompts_for

# SAA/prompts/{mvtec,visa}_parameters.py, ``property_prompts``: the official per-category property sentences.
OFFICIAL_PROPERTY_SENTENCES = {
    "carpet": "the image of carpet have 1 dissimilar carpet, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "grid": "the image of grid have 1 dissimilar grid, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "leather": "the image of leather have 1 dissimilar leather, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "tile": "the image of tile have 1 dissimilar tile, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "wood": "the image of wood have 1 dissimilar wood, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "bottle": "the image of bottle have 1 dissimilar bottle, with a maximum of 5 anomaly. The anomaly would not exceed 0.3 object area. ",
    "cable": "the image of cable have 1 dissimilar cable, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "capsule": "the image of capsule have 1 dissimilar capsule, with a maximum of 5 anomaly. The anomaly would not exceed 0.6 object area. ",
    "hazelnut": "the image of hazelnut have 1 dissimilar hazelnut, with a maximum of 5 anomaly. The anomaly would not exceed 0.9 object area. ",
    "metal_nut": "the image of metal_nut have 1 dissimilar metal_nut, with a maximum of 5 anomaly. The anomaly would not exceed 1. object area. ",
    "pill": "the image of pill have 1 dissimilar pill, with a maximum of 5 anomaly. The anomaly would not exceed 1. object area. ",
    "screw": "the image of screw have 1 dissimilar screw, with a maximum of 5 anomaly. The anomaly would not exceed 0.1 object area. ",
    "toothbrush": "the image of toothbrush have 1 dissimilar toothbrush, with a maximum of 5 anomaly. The anomaly would not exceed 0.5 object area. ",
    "transistor": "the image of transistor have 1 dissimilar transistor, with a maximum of 5 anomaly. The anomaly would not exceed 1. object area. ",
    "zipper": "the image of zipper have 1 dissimilar zipper, with a maximum of 5 anomaly. The anomaly would not exceed 0.5 object area. ",
    "candle": "the image of candle have 4 similar candle, with a maximum of 1 anomaly. The anomaly would not exceed 0.3 object area. ",
    "capsules": "the image of capsule have 20 dissimilar capsule, with a maximum of 15 anomaly. The anomaly would not exceed 1. object area. ",
    "cashew": "the image of cashew have 1 dissimilar cashew, with a maximum of 17 anomaly. The anomaly would not exceed 0.05 object area. ",
    "chewinggum": "the image of chewinggum have 1 dissimilar chewinggum with a maximum of 50 anomaly. The anomaly would not exceed 0.2 object area. ",
    "fryum": "the image of fryum have 1 dissimilar fryum, with a maximum of 5 anomaly. The anomaly would not exceed 1. object area. ",
    "macaroni1": "the image of macaroni1 have 4 similar macaroni, with a maximum of 5 anomaly. The anomaly would not exceed 0.3 object area. ",
    "macaroni2": "the image of macaroni2 have 4 dissimilar macaroni, with a maximum of 50 anomaly. The anomaly would not exceed 0.3 object area. ",
    "pcb1": "the image of pcb1 have 1 dissimilar printed_circuit_board, with a maximum of 1 anomaly. The anomaly would not exceed 0.3 object area. ",
    "pcb2": "the image of pcb2 have 1 dissimilar pcb, with a maximum of 9 anomaly. The anomaly would not exceed 0.3 object area. ",
    "pcb3": "the image of pcb3 have 1 dissimilar printed_circuit_board, with a maximum of 5 anomaly. The anomaly would not exceed 0.3 object area. ",
    "pcb4": "the image of pcb4 have 1 dissimilar pcb, with a maximum of 7 anomaly. The anomaly would not exceed 0.3 object area. ",
    "pipe_fryum": "the image of pipe_fryum have 1 dissimilar pipe_fryum, with a maximum of 19 anomaly. The anomaly would not exceed 0.3 object area. ",
}


def official_property_parse(sentence: str) -> dict:
    """SAA/model.py ``Model.set_property_text_prompts``: fields by word position of ``sentence.split(' ')``."""
    words = sentence.split(" ")
    return {"object_prompt": words[7], "object_number": int(words[5]), "k_mask": int(words[12]),
            "defect_area_threshold": float(words[19])}


def official_caption(caption: str) -> str:
    """SAA/model.py ``Model.get_grounding_output``: lower, strip, append '.' unless it ends with one."""
    caption = caption.lower().strip()
    return caption if caption.endswith(".") else caption + "."


def official_resized_shape(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """GroundingDINO/groundingdino/datasets/transforms.py ``resize.get_size_with_aspect_ratio`` (returns (oh, ow))."""
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return (oh, ow)


# ------------------------------------------------------------------------------------- 1. object caption
@pytest.mark.parametrize("table", ["mvtec", "visa"])
def test_default_object_caption_is_the_official_one_with_its_trailing_comma(table):
    entries = load_table(table).categories
    for category, entry in entries.items():
        parsed = official_property_parse(OFFICIAL_PROPERTY_SENTENCES[category])
        cp = prompts_for(load_table(table), category)
        sent = normalize_caption(cp.object_caption("official"))
        assert sent == official_caption(parsed["object_prompt"]), category
        assert (cp.object_count, cp.k, cp.area_threshold) == (
            parsed["object_number"], parsed["k_mask"], parsed["defect_area_threshold"]), category
        assert cp.object_caption("clean") == entry.object_prompt and not entry.object_prompt.endswith(",")
    commas = sum(official_property_parse(s)["object_prompt"].endswith(",") for s in OFFICIAL_PROPERTY_SENTENCES.values())
    assert commas == 26   # every category but chewinggum
    bottle = prompts_for(load_table("mvtec"), "bottle")
    assert normalize_caption(bottle.object_caption("official")) == "bottle,."
    assert normalize_caption(bottle.object_caption("clean")) == "bottle."


def test_saa_plus_config_defaults_to_the_official_object_caption():
    from tasks.saa_plus.config import SAAPlusConfig

    assert SAAPlusConfig().object_caption == "official"
    assert SAAPlusConfig(object_caption="clean").object_caption == "clean"


# ------------------------------------------------------------------------------------- 2. resize rule
def test_wide_image_resize_rounds_the_short_side_first():
    assert resized_shape(500, 1000, 800, 1333) == official_resized_shape(500, 1000, 800, 1333) == (666, 1332)
    assert resized_shape(1000, 500, 800, 1333) == (1332, 666)


def test_resize_rule_equals_the_official_formula_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(16, 4000, (2000, 2))]
    sizes += [(900, 900), (1024, 1024), (1000, 1500), (1500, 1000), (480, 640), (100, 1000), (1, 3)]
    for h, w in sizes:
        for size, max_size in ((800, 1333), (128, 192), (800, None)):
            assert resized_shape(h, w, size, max_size) == official_resized_shape(h, w, size, max_size), (h, w)


# ------------------------------------------------------------------------------------- 3. batching
@pytest.mark.usefixtures("fresh_models")
def test_mixed_size_batch_equals_batch_one(tmp_path):
    """tiny-gdino resizes to short side 128, long side <= 192: 100x100 and 200x200 -> 128x128, 100x150 -> 128x192."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((100, 100), (100, 150), (200, 200))]
    gd = load_grounding_dino("tiny-gdino", tmp_path)
    batched = gd.detect(images, "crack")
    assert calls.MODEL_CALLS["tiny-gdino"] == 2   # one forward per input size, never a padded one
    singles = [gd.detect([im], "crack")[0] for im in images]
    for b, s in zip(batched, singles):
        np.testing.assert_allclose(b.boxes_cxcywh, s.boxes_cxcywh, atol=1e-5)
        np.testing.assert_allclose(b.token_logits, s.token_logits, atol=1e-5)


def test_the_flow_sends_the_official_object_caption_unless_asked_for_the_clean_one(synth_root, models_dir, tmp_path):
    import yaml

    from stores import ArtifactStore
    from stores.maintenance import list_artifacts
    from tests.flow_helpers import run_saa

    entry = {"defect_captions": ["crack"], "filter_word": "synth", "object_prompt": "object",
             "object_caption_official": "object,", "object_count": 1, "k": 2, "area_threshold": 0.5}
    table = tmp_path / "t.yaml"
    table.write_text(yaml.safe_dump({"dataset": "synth", "categories": {"synth_texture": entry,
                                                                         "synth_object": entry}}))
    store = str(tmp_path / "s")
    for extra, caption in (((), "object,."), (("--set", "object_caption=clean"), "object.")):
        code, report, _ = run_saa(synth_root, store, str(tmp_path / caption), models_dir, "--set",
                                  f"expert_table={table}", *extra, method="saa-plus")
        assert code == 0 and report["config"]["object_caption"] == ("clean" if extra else "official")
    s = ArtifactStore(store)
    captions = {s.artifact_record(*a.path.split("/"))["params"]["caption"] for a in list_artifacts(s)
                if a.path.startswith("object_boxes/")}
    assert captions == {"object,.", "object."}


@pytest.mark.usefixtures("fresh_models")
def test_detection_batches_hold_images_of_one_caption(tmp_path):
    """4 same-size images x 2 captions with batch size 4: one forward per caption (image-major order needed 4)."""
    from PIL import Image

    from tasks.datasets.image_io import file_sha256
    from tasks.datasets.records import ImageRecord
    from tasks.engine.context import ImageItem, RunContext
    from tasks.stages.grounding_dino import grounding_detections

    items = []
    for n in range(4):
        path = tmp_path / f"{n}.png"
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        items.append(ImageItem(file_sha256(str(path)), ImageRecord(str(path), f"c/test/good/{n}.png", "c", "test", 0,
                                                                   "good")))
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False, batch_size=4)
    result = grounding_detections.run(ctx, items, models={"detector": "tiny-gdino"}, keys=["crack", "hole"])
    assert result.stats.computed == 8 and calls.MODEL_CALLS["tiny-gdino"] == 2
