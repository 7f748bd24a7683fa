"""`ovss segment`, `ovss methods`, `ovss bench` end to end (in-process through ovss.cli.main), and the `ovss` entry
point once in a subprocess (offline: one clear error, no traceback)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ovss.cli import main
from ovss.text.templates import resource_path

HORSES = resource_path("samples", "horses_1024.jpg")
TINY = ["--clip", "tiny-test", "--clip-weights", "random", "--device", "cpu"]
CLASSES = "sky, hill, tree, horse, grass"


def test_segment_writes_labels_overlay_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["segment", HORSES, "--classes", CLASSES, *TINY, "-o", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["horses_1024.json", "horses_1024_labels.png", "horses_1024_overlay.png"]
    W, H = Image.open(HORSES).size
    lab = Image.open(out / "horses_1024_labels.png")
    assert lab.mode == "P" and lab.size == (W, H)
    arr = np.asarray(lab)
    assert arr.max() < 5
    ov = Image.open(out / "horses_1024_overlay.png")
    assert ov.mode == "RGB" and ov.size[0] > W and ov.size[1] >= H      # legend column on the right
    info = json.loads((out / "horses_1024.json").read_text())
    assert info["classes"] == ["sky", "hill", "tree", "horse", "grass"]
    assert (info["height"], info["width"]) == (H, W)
    assert sum(info["areas"].values()) == pytest.approx(1.0)
    names = info["classes"]
    for k in np.unique(arr):
        assert info["areas"][names[k]] == pytest.approx(float((arr == k).mean()))
    assert set(info["scores"]) == set(info["areas"])
    assert info["method"] == "sclip" and info["image"] == os.path.abspath(HORSES)
    assert "horses_1024" in capsys.readouterr().out


@pytest.fixture
def small_images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(d / name)
    (d / "broken.jpg").write_bytes(b"not an image at all")
    return d


FAST = ["--set", "short_side=None", "--set", "slide_crop=32", "--set", "slide_stride=16", "--set", "templates=none"]


def test_batch_with_an_unreadable_file_goes_on_and_exits_1(small_images, tmp_path, capsys):
    out = tmp_path / "out"
    missing = str(tmp_path / "missing.png")
    rc = main(["segment", str(small_images / "a.png"), str(small_images / "broken.jpg"), missing,
               str(small_images / "b.jpg"), "--classes", "cat, dog", *TINY, *FAST, "-o", str(out)])
    assert rc == 1
    assert sorted(os.listdir(out)) == ["a.json", "a_labels.png", "a_overlay.png", "b.json", "b_labels.png",
                                       "b_overlay.png"]
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "not a readable image" in err and "missing.png" in err
    assert "2 of 4 inputs failed" in err
    assert "Traceback" not in err


def test_folder_input_and_name_clashes(small_images, tmp_path):
    (small_images / "broken.jpg").unlink()
    (small_images / "sub").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(small_images / "sub" / "a.png")
    out = tmp_path / "out"
    rc = main(["segment", str(small_images), "--classes", "cat; dog, puppy", *TINY, *FAST, "-o", str(out)])
    assert rc == 0
    jsons = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert jsons == ["a.json", "a_2.json", "b.json"]          # two a.png files do not overwrite each other
    info = json.loads((out / "a.json").read_text())
    assert info["classes"] == ["cat", "dog"]


def test_class_file(tmp_path, small_images):
    cf = tmp_path / "classes.txt"
    cf.write_text("cat, kitty\ndog\nsky\n")
    out = tmp_path / "out"
    assert main(["segment", str(small_images / "a.png"), "--class-file", str(cf), *TINY, *FAST, "-o", str(out)]) == 0
    assert json.loads((out / "a.json").read_text())["classes"] == ["cat", "dog", "sky"]
    assert np.asarray(Image.open(out / "a_labels.png")).max() < 3


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, small_images, monkeypatch):
    monkeypatch.chdir(tmp_path)          # the default output folder ./ovss_out must not land in the repository
    img = str(small_images / "a.png")
    cases = [
        (["segment", img, *TINY], "give the classes"),
        (["segment", img, "--class-file", str(tmp_path / "nope.txt"), *TINY], "no such file"),
        (["segment", img, "--classes", "cat, cat", *TINY], "given twice"),
        (["segment", img, "--classes", "cat", *TINY, "--set", "nonsense=1"], "no parameter 'nonsense'"),
        (["segment", img, "--classes", "cat", *TINY, "--method", "nope"], "unknown method"),
        (["segment", str(tmp_path / "nothing*.png"), "--classes", "cat", *TINY], "no input images"),
    ]
    for argv, text in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = [ln for ln in err.splitlines() if ln.startswith("ovss segment: error:")]
        assert len(line) == 1 and text in line[0], (argv, err)
    # a single missing file is a failed input (exit 1), reported by name
    assert main(["segment", str(tmp_path / "nothing_here.png"), "--classes", "cat", *TINY, *FAST,
                 "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "nothing_here.png: no such file" in err and "Traceback" not in err


def test_methods_lists_the_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("\n\n")[:2]
    lines = first.splitlines()
    assert lines[0].split()[:3] == ["method", "weights", "on"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert {"clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "trident", "cliper"} <= set(rows)
    assert "clip:ViT-B/16, dino_vitb8" in rows["proxyclip"] and "sd21_base" in rows["cliper"]
    # the survey's reported mIoU, one row per method, 8 benchmarks in the survey's order
    head, *body = second.splitlines()[1:]
    assert head.split()[:9] == ["method", "voc21", "context60", "coco_object", "voc20", "cityscapes", "context59",
                                "ade20k", "coco_stuff"]
    rep = {ln.split()[0]: ln.split()[1:9] for ln in body}
    assert rep["sclip"] == ["59.1", "30.4", "30.5", "80.4", "32.2", "34.2", "16.1", "22.4"]
    assert rep["cliptrase"][4] == "-" and rep["cliper_elf"] == ["-"] * 8
    assert "Survey on Training-free" in second


def test_methods_markdown_is_the_readme_table(capsys):
    assert main(["methods", "--markdown"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| `method=` | models (defaults) | paper | official code | voc21 |")
    row = next(ln for ln in out if ln.startswith("| `trident` |"))
    assert "| CLIP ViT-B/16 + DINO ViT-B/16 + Segment Anything ViT-B |" in row and row.endswith("| 67.1 | 38.6 | 41.1 | 84.5 | 42.9 | 42.2 | 21.9 | 28.3 |")
    corr = next(ln for ln in out if ln.startswith("| `corrclip` |"))
    assert "| MetaCLIP ViT-B/16 + DINO ViT-B/8 + SAM 2 Hiera-L |" in corr   # whether or not sam2 is installed here
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for line in out:   # the README carries this table verbatim (regenerate it with `ovss methods --markdown`)
        assert line in readme, f"README method table is stale: {line[:60]}..."


def test_bench_json(capsys):
    rc = main(["bench", *TINY, "--n", "1", "--warmup", "0", "--size", "64x48", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images_per_s"] > 0 and res["classes"] == 21 and res["queries"] >= 21
    assert res["image"] == "synthetic 64x48" and res["method"] == "sclip" and res["device"] == "cpu"
    assert set(res["latency_s"]) == {"mean", "p50", "p90", "max"}


def test_bench_text_and_bad_size(capsys):
    assert main(["bench", *TINY, "--n", "1", "--warmup", "0", "--size", "40x30", "--classes", "cat, dog"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "2 classes" in out
    assert main(["bench", *TINY, "--size", "big"]) == 2
    assert "expected WxH" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "segment" in capsys.readouterr().out


def _ovss_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ovss")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("ovss")
    return [found] if found else [sys.executable, "-m", "ovss"]


def test_entry_point_offline_missing_weights_is_one_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               OVSS_CACHE=str(tmp_path / "ovss"))
    r = subprocess.run([*_ovss_command(), "segment", HORSES, "--classes", CLASSES, "--device", "cpu",
                        "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("ovss segment: error: weights for CLIP ViT-B/16")
    assert "ViT-B-16.pt" in r.stderr and "`ovss weights download clip:ViT-B/16`" in r.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
