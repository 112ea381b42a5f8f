"""GroundingDINO foundation stage: raw detections per (image, caption), shared by SAA and SAA+.

  grounding_detections  per (image, caption): boxes Q x 4 cxcywh, logits Q x T, token_ids T
                        meta: height, width, caption

Items are keyed by (image, normalised caption), so adding a caption runs the detector for it alone, and two
methods that send the same caption share its detections. Work is caption-major: a batch holds several images
of one caption, which ``detect()`` runs as one forward per network input size (the official resize rule).
"""
from __future__ import annotations

from collections import defaultdict

from stores import ItemData, item_key
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage
from tasks.models.captions import normalize_caption


def detection_item(image_id: str, caption: str) -> str:
    return item_key(image_id, normalize_caption(caption))


# v3: declared form; v2: the official resize rule (short side rounded first) and unpadded one-size batches
@declare_stage("grounding_detections", 3, models=("detector",), produces="image_key", reads_pixels=True,
               key_rule=normalize_caption)
def grounding_detections(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """Raw GroundingDINO queries per (image, caption); ``keys`` at the call are the captions."""
    model = call.model("detector")
    by_caption: dict[str, list[int]] = defaultdict(list)
    for n, w in enumerate(batch):
        by_caption[w.payload[1]].append(n)
    out: list[ItemData | None] = [None] * len(batch)
    for caption, idx in by_caption.items():
        pixels = [call.pixels(batch[n].payload[0]) for n in idx]
        for n, p, det in zip(idx, pixels, model.detect(pixels, caption)):
            out[n] = ItemData({"boxes": det.boxes_cxcywh, "logits": det.token_logits, "token_ids": det.token_ids},
                              {"height": p.shape[0], "width": p.shape[1], "caption": caption})
    return out
