"""The SAA stage functions in a plain loop: no Prefect, no Zarr, everything in memory (benchmark baseline)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from tasks.datasets import load_dataset  # noqa: E402
from tasks.datasets.image_io import read_image  # noqa: E402
from tasks.models.captions import normalize_caption  # noqa: E402
from tasks.models.loading import load_grounding_dino, load_sam  # noqa: E402
from tasks.saa import fusion, regions  # noqa: E402
from tasks.saa.config import SAAConfig  # noqa: E402

MODELS = {"tiny": ("tiny-sam", "tiny-gdino", False, None), "random": ("sam-vit-b", "gdino-swint-ogc", True, 20)}


def main(data: str, models: str, dest: str) -> None:
    sam_name, det_name, random, max_boxes = MODELS[models]
    cfg = SAAConfig()
    imports = time.perf_counter() - T0
    start = time.perf_counter()
    sam = load_sam(sam_name, "/nonexistent", random)
    det = load_grounding_dino(det_name, "/nonexistent", random)
    load = time.perf_counter() - start
    records = load_dataset("mvtec", data)
    rule = regions.BoxFilter(cfg.box_threshold, cfg.text_threshold, cfg.max_box_area, 0.0, cfg.filter_word, max_boxes)
    captions = [normalize_caption(c) for c in cfg.defect_prompts]
    start = time.perf_counter()
    maps = []
    for i in range(0, len(records), cfg.batch_size):
        batch = records[i:i + cfg.batch_size]
        pixels = [read_image(r.path, data) for r in batch]
        embeddings = sam.embed([p[..., ::-1].copy() for p in pixels])
        dets = {c: det.detect([read_image(r.path, data) for r in batch], c) for c in captions}
        for n, (p, emb) in enumerate(zip(pixels, embeddings)):
            hw = p.shape[:2]
            per_caption = [regions.filter_queries(d[n].boxes_cxcywh, d[n].token_logits, d[n].token_ids, hw, rule)
                           for d in dets.values()]
            boxes, scores, _, _ = regions.pool_captions(per_caption)
            masks = sam.predict(emb, hw, boxes=boxes)[0][:, 0] if len(boxes) else regions.box_masks(boxes, hw)
            if len(masks) == 0:  # no surviving box: one empty mask with score 0, as the stage
                masks, scores = np.zeros((1, *hw), bool), np.zeros(1, np.float32)
            keep = fusion.top_k(scores, cfg.top_k)
            maps.append(fusion.resize_map(fusion.fuse_masks(masks[keep], scores[keep], cfg.fusion),
                                          cfg.eval_resolution))
    loop = time.perf_counter() - start
    Path(dest).write_text(json.dumps({"imports_s": imports, "model_load_s": load, "image_work_s": loop,
                                      "images": len(maps)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
