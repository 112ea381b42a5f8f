"""SAA+ fed by oracle stages (defect boxes from the ground-truth masks, object masks from the synthetic object
labels, box-filling refiner): property filtering, saliency rescoring, top-K and fusion give exactly the maps
recomputed here, independently, from the ground truth and the stored saliency maps."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from stores import ArtifactStore
from tasks.datasets import load_dataset
from tasks.engine.inputs import item_of, prepare_images
from tasks.datasets.synth import object_labels_path, write_synthetic_mvtec
from tests.flow_helpers import run_saa, stage_counts

SIZE, K, THETA = 64, 2, 0.5
ORACLE = ("--set", "region_generator=oracle", "--set", "refiner=oracle", "--set", "object_generator=oracle",
          "--set", f"eval_resolution={SIZE}", "--set", "normalise=none", "--set", "multi_instance_size=128")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    data = root / "data"
    write_synthetic_mvtec(str(data), categories=3, images=6, seed=3, size=SIZE)
    entry = {"defect_captions": ["defect"], "filter_word": "", "object_prompt": "object", "object_count": 1,
             "k": K, "area_threshold": THETA}
    table = {"dataset": "synth", "categories": {"synth_texture": entry, "synth_object": entry,
                                                "synth_multi": {**entry, "object_count": 3}}}
    (root / "table.yaml").write_text(yaml.safe_dump(table))
    return data, str(root / "table.yaml")


def _components(mask: np.ndarray) -> np.ndarray:
    """Filled tight box of each 8-connected ground-truth component, N x H x W bool."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    out = np.zeros((n, *mask.shape), bool)
    for i in range(n):
        ys, xs = np.nonzero(labels == i + 1)
        out[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    return out


def _objects(data, relpath: str) -> np.ndarray:
    labels = np.asarray(Image.open(os.path.join(data, object_labels_path(relpath))))
    return np.stack([labels == v for v in np.unique(labels) if v])


def _expected(masks, objects, saliency, k, theta, on="boxes", location=False) -> np.ndarray:
    """The SAA+ map from first principles: property prompt, exp(3 * mean saliency) rescoring, top-K, fusion."""
    hw = float(SIZE * SIZE)
    if on == "boxes":   # a box's area vs the largest object box, both normalised
        obj_box = max((np.ptp(np.nonzero(o)[0]) + 1) * (np.ptp(np.nonzero(o)[1]) + 1) for o in objects) / hw
        masks = [m for m in masks if m.sum() / hw < theta * obj_box]
    else:               # the mask's area vs the largest object mask
        masks = [m for m in masks if m.sum() <= theta * max(o.sum() for o in objects)]
    if location:
        union = objects.any(0)
        masks = [m for m in masks if (m & union).sum() >= 0.5 * m.sum()]
    scores = [np.exp(3.0 * saliency[m].astype(np.float64).mean()) if saliency is not None else 1.0 for m in masks]
    order = np.argsort(np.asarray(scores, np.float32), kind="stable")
    keep = order if k is None else order[-k:]
    top = np.zeros((SIZE, SIZE))
    weight = np.ones((SIZE, SIZE))
    for i in keep:
        top += masks[i] * np.float32(scores[i])
        weight += masks[i]
    return top / weight


def _stored(store_path: str, report: dict, stage: str) -> dict[str, np.ndarray]:
    """image relpath -> the stage's map array, read from the artifacts this run used.

    Items of an artifact whose lineage read oracle files carry those files' hashes in their ids."""
    store = ArtifactStore(store_path)
    root = report["dataset"]["root"]
    images, _ = prepare_images(load_dataset("mvtec", root), root, side_inputs=("labels", "mask"))
    by_image = {}
    for path in (a for a in store.run_info(report["run_id"]).artifacts if a.startswith(stage + "/")):
        view = store.open(store.ref(*path.split("/", 1)))
        side = tuple(store.artifact_record(*path.split("/", 1))["side"])
        for image in images:
            if view.has(item_of(image, side)):
                by_image[image.image_id] = view.read(item_of(image, side)).arrays["map"]
    return {os.path.relpath(img["path"], root): by_image[img["id"]] for img in report["images"]}


@pytest.mark.parametrize("extra, k, theta, on, location", [
    ((), K, THETA, "boxes", False),                                                  # official defaults
    (("--set", "property_on=masks", "--set", "location_constraint=true"), K, THETA, "masks", True),  # paper form
    (("--set", "k=50"), None, THETA, "boxes", False),                                # K larger than candidates
    (("--set", "area_threshold=0.0001"), K, 0.0001, "boxes", False),                 # every box filtered
])
def test_oracle_saa_plus_maps_are_exact(dataset, models_dir, tmp_path, extra, k, theta, on, location):
    data, table = dataset
    store = str(tmp_path / "s")
    code, report, _ = run_saa(str(data), store, str(tmp_path / "o"), models_dir, *ORACLE,
                              "--set", f"expert_table={table}", *extra, method="saa-plus")
    assert code == 0 and report["failures"] == []
    counts = stage_counts(report)
    assert "grounding_detections" not in counts and "image_embedding" not in counts   # no detector, no SAM
    maps, saliency = _stored(store, report, "saa_plus_map"), _stored(store, report, "saliency_map")
    zero_maps = 0
    for relpath, got in maps.items():
        defect = relpath.split("/")[2]
        gt = np.asarray(Image.open(os.path.join(data, relpath.split("/")[0], "ground_truth", defect,
                                                relpath.split("/")[3][:-4] + "_mask.png"))) > 0 \
            if defect != "good" else np.zeros((SIZE, SIZE), bool)
        sal_full = cv2.resize(saliency[relpath], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        want = _expected(_components(gt), _objects(data, relpath), sal_full, k, theta, on, location)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=relpath)
        zero_maps += not got.any()
    good = sum(r.split("/")[2] == "good" for r in maps)
    if theta < 0.001:
        assert zero_maps == len(maps)                 # all boxes filtered: every map is zero
    else:
        assert good <= zero_maps < len(maps)          # good images have no boxes; defects light up


def test_a_missing_object_label_fails_that_image_only(tmp_path, models_dir):
    data = tmp_path / "data"
    write_synthetic_mvtec(str(data), categories=1, images=3, seed=1, size=SIZE)
    victim = "synth_texture/test/good/000.png"
    os.remove(data / object_labels_path(victim))
    code, report, _ = run_saa(str(data), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, *ORACLE,
                              "--set", "prompts.saliency=false", method="saa-plus")
    assert code == 3 and len(report["images"]) == 2
    (failure,) = report["failures"]
    assert failure["path"].endswith(victim) and "object_labels" in failure["reason"] \
        and "not found" in failure["reason"]
