"""The engine's item kinds and input roles: set items keyed by their members' content, failures of a set
propagated to every image that depends on it, support splits hashed and reported like the test images, and
declarations that refuse a call that does not match them before any work."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from stores import ItemData
from tasks.datasets.synth import write_synthetic_mvtec
from tasks.engine.context import RunContext
from tasks.engine.run_state import DatasetSpec, start_run
from tasks.engine.stage import ItemSet, StageCall, declare_stage
from tasks.models import calls


@declare_stage("test_support_mean", 1, params=("channels",), produces="set", reads_pixels=True)
def support_mean(call: StageCall, batch):
    """Per set: the mean image of its members (a stand-in for a memory bank)."""
    out = []
    for w in batch:
        calls.count_call("test-support")
        pixels = [call.pixels(m).astype(np.float64) for m in w.payload.members]
        out.append(ItemData({"mean": np.mean(pixels, axis=0)[..., :call.params["channels"]].astype(np.float32)},
                            {"members": len(pixels)}))
    return out


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_synthetic_mvtec(str(root), categories=2, images=4, seed=1, size=32)
    return root


def _settled(root) -> None:
    """Date every file a minute back: files written in the last seconds are hashed again, never cached."""
    import os
    import time
    for path in root.rglob("*"):
        os.utime(path, (time.time() - 60, time.time() - 60))


def _bank_sets(run):
    """One set per category: its usable support images make it, its test images depend on it."""
    support = run.roles["support"].items
    return [ItemSet(f"support:{cat}", tuple(m for m in support if m.record.category == cat),
                    tuple(i for i in run.alive if i.record.category == cat))
            for cat in sorted({i.record.category for i in run.alive})]


def test_support_role_is_hashed_checked_and_reported(data, tmp_path):
    broken = sorted((data / "synth_object" / "train" / "good").iterdir())[0]
    broken.write_bytes(b"")                                             # an empty file in the support split
    _settled(data)
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    spec = DatasetSpec("mvtec", str(data), support_splits=("train",))
    run = start_run.fn(ctx, "test", {}, spec, [])
    support = run.roles["support"]
    assert support.records == 8 and len(support.items) == 7
    assert support.tracker.failures == {str(broken): "empty file (0 bytes)"}
    assert all(i.record.split == "train" and i.record.label == 0 for i in support.items)
    assert run.files_hashed > 0
    again = start_run.fn(ctx, "test", {}, spec, [])
    assert again.files_hashed == 0 and [i.image_id for i in again.roles["support"].items] == \
        [i.image_id for i in support.items]                         # hashes come from the index


def test_set_items_are_keyed_by_member_content_and_a_failed_set_fails_its_dependents(data, tmp_path):
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    spec = DatasetSpec("mvtec", str(data), support_splits=("train",))
    run = start_run.fn(ctx, "test", {}, spec, [])
    sets = _bank_sets(run)
    first = support_mean.run(ctx, params={"channels": 3}, sets=sets)
    assert (first.stats.computed, first.failures) == (2, {})
    calls.reset_counters()
    warm = support_mean.run(ctx, params={"channels": 3}, sets=list(reversed(sets)))
    assert (warm.stats.computed, warm.stats.reused, calls.total_calls()) == (0, 2, 0)
    reordered = ItemSet(sets[0].name, tuple(reversed(sets[0].members)), sets[0].dependents)
    assert reordered.item() == sets[0].item()                       # sorted member hashes: order is irrelevant
    assert ItemSet(sets[0].name, sets[0].members[1:]).item() != sets[0].item()

    # a support image whose bytes change (same name, same size class) makes a new set item for its category only
    victim = sorted((data / "synth_object" / "train" / "good").iterdir())[1]
    shutil.copyfile(sorted((data / "synth_object" / "train" / "good").iterdir())[2], victim)
    _settled(data)
    rerun = start_run.fn(ctx, "test", {}, spec, [])
    changed = support_mean.run(ctx, params={"channels": 3}, sets=_bank_sets(rerun))
    assert (changed.stats.computed, changed.stats.reused) == (1, 1)

    # a member that cannot be decoded fails its set, and the set fails every test image of that category
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _settled(data)
    broken = start_run.fn(ctx, "test", {}, spec, [])
    result = support_mean.run(ctx, params={"channels": 2}, sets=_bank_sets(broken))
    dependents = {i.image_id for i in broken.alive if i.record.category == "synth_object"}
    assert set(result.failures) == dependents and result.stats.failed == 1
    reason = next(iter(result.failures.values()))
    assert reason == f"set support:synth_object (4 members) failed: {victim}: not an image: cannot identify image file"
    alive = broken.absorb(ctx, result)
    assert {i.record.category for i in alive} == {"synth_texture"}
    assert len(broken.tracker.failures) == len(dependents)
    assert all(r.startswith("set support:synth_object") for r in broken.tracker.failures.values())


def test_a_call_that_does_not_match_its_declaration_is_refused_before_any_work(tmp_path):
    ctx = RunContext(store_url=str(tmp_path / "s"), models_dir=str(tmp_path / "m"), progress=False)
    with pytest.raises(TypeError, match="stage test_support_mean: parameters"):
        support_mean.run(ctx, params={}, sets=[])
    with pytest.raises(TypeError, match="undeclared upstream"):
        support_mean.run(ctx, params={"channels": 1}, upstream={"maps": None}, sets=[])
    from tasks.saa import stages
    with pytest.raises(TypeError, match="missing upstream \\['masks'\\]"):
        stages.anomaly_map.run(ctx, params={"fusion": "mean", "top_k": None, "resolution": 8})
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("test_support_mean*"))
