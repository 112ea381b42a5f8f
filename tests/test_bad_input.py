"""Bad input: each bad item is reported with its reason, the rest of the batch completes; usage errors exit 2."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from tests.flow_helpers import run_cli, run_saa


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _messy_folder(root, outside):
    line = root / "line"
    line.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8))
    rgb.save(line / "good_rgb.png")
    Image.fromarray((rng.integers(0, 65535, (48, 48))).astype(np.uint16)).save(line / "gray16.png")
    rgb.convert("P").save(line / "palette.png")
    rgb.convert("RGBA").save(line / "rgba.png")
    rgb.convert("CMYK").save(line / "cmyk.jpg")
    rgb.convert("L").save(line / "gray8.png")
    (line / "zero.png").write_bytes(b"")
    (line / "notes.png").write_text("this is not an image")
    (line / "truncated.png").write_bytes(_png_bytes(rgb)[:300])
    big = Image.new("1", (20000, 20000))
    big.save(line / "bomb.png")
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", line / "escape.png")
    return root


def test_messy_folder_reports_each_bad_item_and_processes_the_rest(tmp_path, models_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = _messy_folder(tmp_path / "data", outside)
    code, report, output = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, dataset="folder")
    assert code == 3
    reasons = {os.path.basename(f["path"]): f["reason"] for f in report["failures"]}
    assert set(reasons) == {"zero.png", "notes.png", "truncated.png", "bomb.png", "escape.png"}
    assert "empty file" in reasons["zero.png"]
    assert "not an image" in reasons["notes.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "too large" in reasons["bomb.png"] or "decompression bomb" in reasons["bomb.png"]
    assert "outside the dataset root" in reasons["escape.png"]
    scored = sorted(os.path.basename(i["path"]) for i in report["images"])
    assert scored == ["cmyk.jpg", "good_rgb.png", "gray16.png", "gray8.png", "palette.png", "rgba.png"]
    assert "failed:" in output
    # nothing done is lost: a rerun recomputes nothing for the good images and reports the same failures
    code, again, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o2"), models_dir, dataset="folder")
    assert code == 3 and len(again["failures"]) == 5
    assert all(s["computed"] == 0 for s in again["stages"])


def test_mask_of_the_wrong_size_is_reported_for_that_item(tmp_path, models_dir):
    from tasks.datasets.synth import write_synthetic_mvtec

    root = tmp_path / "d"
    write_synthetic_mvtec(str(root), categories=1, images=4, seed=0, size=64)
    mask = next(root.rglob("ground_truth/*/*.png"))
    Image.new("L", (32, 32)).save(mask)
    code, report, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir)
    assert code == 3
    [failure] = report["failures"]
    assert "differs from image size" in failure["reason"] and mask.name.replace("_mask", "") in failure["path"]
    assert len(report["images"]) == 3 and report["metrics"]


def test_usage_errors_exit_2_with_a_clear_message(tmp_path, models_dir, synth_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    common = ("--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--models-dir", models_dir)
    code, out = run_cli("run", "saa", "--dataset", "folder", "--root", str(empty), "--allow-tiny", *common)
    assert code == 2 and "no images found" in out
    code, out = run_cli("run", "saa", "--dataset", "mvtec", "--root", synth_root, "--allow-tiny", "--set",
                        "box_treshold=0.2", *common)
    assert code == 2 and "box_treshold: unknown key" in out and "box_threshold" in out
    code, out = run_cli("run", "saa", "--dataset", "mvtec", "--root", synth_root, "--allow-tiny", "--set",
                        "box_threshold=2", *common)
    assert code == 2 and "box_threshold" in out and "less than or equal to 1" in out
    code, out = run_cli("run", "saa", "--dataset", "mvtec", "--root", synth_root, *common)
    assert code == 2 and "anomflow models pull sam-vit-h" in out and os.path.join(models_dir, "sam-vit-h") in out
    code, out = run_cli("run", "nope", "--dataset", "mvtec", "--root", synth_root, *common)
    assert code == 2 and "unknown method" in out
    code, out = run_cli("run", "saa", "--dataset", "mvtec", "--root", synth_root, "--category", "nope",
                        "--allow-tiny", *common)
    assert code == 2 and "nope" in out


def write_visa_candles(root):
    """A tiny VisA tree: candle, 2 normal + 2 anomalous JPEGs with masks, and split_csv/1cls.csv."""
    rng = np.random.default_rng(1)
    rows = ["object,split,label,image,mask"]
    for kind, n in (("Normal", 2), ("Anomaly", 2)):
        (root / "candle/Data/Images" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rel = f"candle/Data/Images/{kind}/{i:03d}.JPG"
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(root / rel, format="JPEG")
            mask = ""
            if kind == "Anomaly":
                (root / "candle/Data/Masks/Anomaly").mkdir(parents=True, exist_ok=True)
                m = np.zeros((60, 80), np.uint8)
                m[10:20, 10:30] = 1
                mask = f"candle/Data/Masks/Anomaly/{i:03d}.png"
                Image.fromarray(m).save(root / mask)
            rows.append(f"candle,test,{'anomaly' if kind == 'Anomaly' else 'normal'},{rel},{mask}")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_layout_runs_with_its_split_csv(tmp_path, models_dir):
    root = write_visa_candles(tmp_path / "visa")
    code, report, _ = run_saa(str(root), str(tmp_path / "s"), str(tmp_path / "o"), models_dir, dataset="visa",
                              *("--set", "region_generator=oracle", "--set", "refiner=oracle"))
    assert code == 0 and len(report["images"]) == 4
    # bilinear map vs nearest ground truth at 400 x 400 blurs the box edges by a pixel
    assert report["metrics"]["candle"]["pixel_auroc"] > 0.999 and report["metrics"]["candle"]["image_auroc"] == 1.0
