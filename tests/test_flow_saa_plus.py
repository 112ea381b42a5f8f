"""SAA+ end to end: expert tables, stage reuse rules with counted model calls, and the ablation."""
from __future__ import annotations

import json
import os

import numpy as np
import yaml

from stores import ArtifactStore

from tests.flow_helpers import AFTER_MAPS, run_cli, run_saa, stage_counts


def _table(tmp_path, captions=("crack",), n_multi=3):
    """A user expert table for the synthetic categories (synth_multi has several objects per image)."""
    entry = {"defect_captions": list(captions), "filter_word": "synth", "object_prompt": "object",
             "object_count": 1, "k": 2, "area_threshold": 0.5}
    table = {"dataset": "synth", "categories": {"synth_texture": entry, "synth_object": entry,
                                                "synth_multi": {**entry, "object_count": n_multi}}}
    path = tmp_path / "synth.yaml"
    path.write_text(yaml.safe_dump(table))
    return str(path)


def _plus(root, store, out, models_dir, *extra, dataset="mvtec"):
    return run_saa(root, store, out, models_dir, *extra, method="saa-plus", dataset=dataset)


def test_saa_plus_runs_caches_and_reuses_per_caption(synth_root, models_dir, tmp_path, counters):
    table = _table(tmp_path)
    store = str(tmp_path / "store")
    code, first, _ = _plus(synth_root, store, str(tmp_path / "o1"), models_dir, "--set", f"expert_table={table}")
    assert code == 0 and first["method"] == "saa-plus" and first["notes"] == []
    n = len(first["images"])
    assert stage_counts(first)["grounding_detections"] == (5 * n, 0)   # 3 general + 1 expert + object caption
    counters.reset_counters()
    code, again, _ = _plus(synth_root, store, str(tmp_path / "o2"), models_dir, "--set", f"expert_table={table}")
    assert counters.total_calls() == 0 and all(c == 0 for c, _ in stage_counts(again).values())
    # one more expert caption: the detector runs for that caption only
    more = _table(tmp_path, captions=("crack", "hole"))
    _, added, _ = _plus(synth_root, store, str(tmp_path / "o3"), models_dir, "--set", f"expert_table={more}")
    assert stage_counts(added)["grounding_detections"] == (n, 5 * n)
    assert stage_counts(added)["image_embedding"] == (0, n) and stage_counts(added)["saliency_map"] == (0, n)
    # a new K, or the saliency prompt off, reuses everything upstream of the map
    counters.reset_counters()
    for extra in (("--set", "k=1"), ("--set", "prompts.saliency=false")):
        _, r, _ = _plus(synth_root, store, str(tmp_path / "o4"), models_dir, "--set", f"expert_table={more}", *extra)
        counts = stage_counts(r)
        assert counts["saa_plus_map"] == (n, 0)
        assert all(c == 0 for name, (c, _) in counts.items() if name not in ("saa_plus_map", *AFTER_MAPS))
    assert counters.total_calls() == 0


def test_unknown_categories_fall_back_to_general_prompts_with_a_note(synth_root, models_dir, tmp_path):
    code, report, output = _plus(synth_root, str(tmp_path / "s"), str(tmp_path / "o"), models_dir)
    assert code == 0
    assert len(report["notes"]) == 2 and all("no entry in the 'mvtec' expert table" in n for n in report["notes"])
    assert "general prompts" in output
    n = len(report["images"])
    assert stage_counts(report)["grounding_detections"] == (4 * n, 0)   # 3 general + the object caption


def test_bad_expert_table_is_a_usage_error(synth_root, models_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\ncategories:\n  synth_object: {defect_captions: [a], filter_word: a, "
                   "object_prompt: a, object_count: 0, k: 1, area_threshold: 0.5}\n")
    code, out = run_cli("run", "saa-plus", "--dataset", "mvtec", "--root", synth_root, "--store",
                        str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--models-dir", models_dir, "--allow-tiny",
                        "--set", f"expert_table={bad}")
    assert code == 2 and "synth_object" in out and "object_count" in out


def test_ablate_writes_all_variants_from_one_cache(synth_root, models_dir, tmp_path, counters):
    out = tmp_path / "abl"
    code, output = run_cli("ablate", "saa-plus", "--dataset", "mvtec", "--root", synth_root, "--store",
                           str(tmp_path / "s"), "--out", str(out), "--models-dir", models_dir, "--allow-tiny",
                           "--no-progress", "--set", f"expert_table={_table(tmp_path)}")
    assert code == 0 and "| saa_plus |" in output
    summary = json.load(open(out / "ablation.json"))
    assert list(summary["variants"]) == ["saa", "saa_plus", "no_language", "no_property", "no_saliency",
                                         "no_confidence"]
    assert summary["variants"]["saa_plus"]["paper_pixel_f1_max"] == 39.40
    assert all(os.path.exists(out / v / "report.json") for v in summary["variants"])
    full = {s["name"]: s for s in summary["variants"]["saa_plus"]["stages"]}
    assert full["image_embedding"]["computed"] == 0          # computed once, by the vanilla SAA variant
    for variant in ("no_saliency", "no_confidence"):
        stages = {s["name"]: s for s in summary["variants"][variant]["stages"]}
        assert all(s["computed"] == 0 for name, s in stages.items() if name not in ("saa_plus_map", *AFTER_MAPS))
    no_property = {s["name"]: s for s in summary["variants"]["no_property"]["stages"]}
    decoded = no_property["defect_masks"]["detail"]
    assert decoded["boxes_from_memo"] > decoded["boxes_decoded"]   # its boxes mostly decoded by earlier variants
    markdown = (out / "ablation.md").read_text()
    assert "no_saliency" in markdown and f"boxes from memo {decoded['boxes_from_memo']}" in markdown


def test_saa_plus_on_visa_layout_uses_the_visa_table(tmp_path, models_dir):
    """candle is in the VisA table: its expert captions run, and n = 4 asks for the multi-object saliency."""
    from tests.test_bad_input import write_visa_candles

    root = write_visa_candles(tmp_path / "visa")
    code, report, _ = _plus(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir,
                            "--set", "multi_instance_size=128", "--save-maps", str(tmp_path / "m"), dataset="visa")
    assert code == 0 and report["notes"] == [] and len(report["images"]) == 4
    n = len(report["images"])
    # 3 general captions + the candle caption (five phrases, one caption) + the object prompt
    assert stage_counts(report)["grounding_detections"] == (5 * n, 0)
    assert sorted(p.name for p in (tmp_path / "m" / "candle" / "test" / "bad").iterdir()) == ["000.tiff", "001.tiff"]


def _run_artifacts(store: ArtifactStore, run_id: str, stage: str) -> list:
    """The refs of a stage's artifacts that a run used (one per category for per-category stages)."""
    named = store.run_info(run_id).artifacts
    return [store.ref(stage, a.split("/", 1)[1]) for a in named if a.startswith(stage + "/")]


def _items(store: ArtifactStore, refs: list, name: str) -> dict[str, np.ndarray]:
    views = [store.open(ref) for ref in refs]
    return {item: view.read(item).arrays[name] for view in views for item in view.items()}


def test_a_variant_decodes_only_the_boxes_no_earlier_pass_decoded(synth_root, models_dir, tmp_path):
    """SAA+ then "without property prompt": its extra boxes are decoded, the rest come from the SAM mask memo,
    and the masks equal a from-scratch run's."""
    path = str(tmp_path / "store")
    _, full, _ = _plus(synth_root, path, str(tmp_path / "o1"), models_dir)
    store = ArtifactStore(path)
    seen: dict[str, set[bytes]] = {}
    for item, keys in _items(store, _run_artifacts(store, full["run_id"], "sam_prompt_masks"), "prompt_keys").items():
        # a single-mask box prompt's memo key is b"b" + 16 box bytes + b"p" + b"m" + b"\x00"
        seen.setdefault(item.split(".")[0], set()).update(row[1:17].tobytes() for row in keys)

    _, variant, output = _plus(synth_root, path, str(tmp_path / "o2"), models_dir, "--set", "prompts.property=false")
    detail = {s["name"]: s for s in variant["stages"]}["defect_masks"]["detail"]
    assert f"boxes from memo {detail['boxes_from_memo']}" in output          # the summary shows the counts
    wanted = _items(store, _run_artifacts(store, variant["run_id"], "defect_boxes"), "boxes")
    unseen = sum(len({row.tobytes() for row in boxes} - seen.get(image, set())) for image, boxes in wanted.items())
    assert detail["boxes_decoded"] == unseen, (detail, unseen)
    assert detail["boxes_from_memo"] > 0 and detail["boxes_from_memo"] + unseen <= sum(map(len, wanted.values()))

    _plus(synth_root, str(tmp_path / "fresh"), str(tmp_path / "o3"), models_dir, "--set", "prompts.property=false")
    masks_refs = _run_artifacts(store, variant["run_id"], "defect_masks")
    via_memo = _items(store, masks_refs, "masks")
    from_scratch = _items(ArtifactStore(str(tmp_path / "fresh")), masks_refs, "masks")   # same keys, other store
    assert via_memo.keys() == from_scratch.keys()
    for image in via_memo:
        np.testing.assert_array_equal(via_memo[image], from_scratch[image])


def test_saa_then_saa_plus_on_one_store_share_the_foundation_stages(synth_root, models_dir, tmp_path, counters):
    """The SAM embedding is a foundation stage (tasks/stages): SAA computes it, SAA+ reuses every one; an RGB run
    (a clean method's colour order) gets its own key and computes them again."""
    store = str(tmp_path / "store")
    code, saa, _ = run_saa(synth_root, store, str(tmp_path / "saa"), models_dir)
    n = len(saa["images"])
    assert code == 0 and stage_counts(saa)["image_embedding"] == (n, 0)
    counters.reset_counters()
    code, plus, _ = _plus(synth_root, store, str(tmp_path / "plus"), models_dir, "--set",
                          f"expert_table={_table(tmp_path)}")
    assert code == 0 and stage_counts(plus)["image_embedding"] == (0, n)
    _, rgb, _ = _plus(synth_root, store, str(tmp_path / "rgb"), models_dir, "--set",
                      f"expert_table={_table(tmp_path)}", "--set", "color_order=rgb")
    assert stage_counts(rgb)["image_embedding"] == (n, 0)
