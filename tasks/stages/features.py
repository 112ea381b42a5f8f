"""Dense backbone features, shared by every method that reads them (SAA+ saliency, PatchCore-style banks, SAM-LAD).

  wrn50_features   per image: features C x h x w float32, WideResNet layer1..layer3 nearest-upsampled to the
                   layer-1 grid (h = w = size/4 rounded up), concatenated and L2-normalised per location
                   (``Wrn50Adapter.features``: C = 1792 official, 448 tiny)               meta: grid [h, w]
  dinov2_features  per image: features C x h x w float32, DINOv2 patch tokens after the final LayerNorm on the
                   h = w = size / patch grid; cls C float32, the class token (``Dinov2Adapter.tokens``)
                                                                                          meta: grid [h, w]

Each image is squashed to size x size by the adapter (WRN: cv2 bilinear; DINOv2: PIL bicubic), scaled to [0, 1]
and normalised with the model's ImageNet mean / std. The WRN's layer set is fixed by the adapter (the official
SAA+ ``ModelINet`` layers 1-3), so it is no parameter. The colour order fed to the WRN is one (the official SAA+
code feeds BGR); DINOv2 is always fed RGB.
"""
from __future__ import annotations

from stores import ItemData
from tasks.engine.runner import WorkItem
from tasks.engine.stage import StageCall, declare_stage


def backbone(call: StageCall, family: str):
    """The ``backbone`` model, checked to be of ``family`` (a DINOv2 has a ``features`` method too)."""
    model = call.model("backbone")
    if model.spec.family != family:
        raise TypeError(f"stage {call.stage.name}: model {model.spec.name!r} is a {model.spec.family} model, "
                        f"not {family}")
    return model


def checked_size(call: StageCall) -> int:
    size = call.params["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"stage {call.stage.name}: size must be a positive int, got {size!r}")
    return size


@declare_stage("wrn50_features", 1, params=("size", "color_order"), models=("backbone",), reads_pixels=True)
def wrn50_features(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """WideResNet features of each image; the batch is one forward."""
    size = checked_size(call)
    model = backbone(call, "wrn50")
    pixels = [call.pixels(w.payload, call.params["color_order"]) for w in batch]
    return [ItemData({"features": f}, {"grid": list(f.shape[1:])}) for f in model.features(pixels, size)]


@declare_stage("dinov2_features", 1, params=("size",), models=("backbone",), reads_pixels=True)
def dinov2_features(call: StageCall, batch: list[WorkItem]) -> list[ItemData]:
    """DINOv2 patch-token grid and class token of each image; the batch is one forward."""
    size = checked_size(call)
    model = backbone(call, "dinov2")
    patches, cls = model.tokens([call.pixels(w.payload) for w in batch], size)
    return [ItemData({"features": p, "cls": c}, {"grid": list(p.shape[1:])}) for p, c in zip(patches, cls)]
