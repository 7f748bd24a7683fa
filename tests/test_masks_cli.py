"""`ovss masks generate|check` with a monkeypatched generator: files, resume after Ctrl-C, bad files by name."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from ovss.backbones import mask_generator as MG
from ovss.cli import main
from ovss.inference.region_masks import read_region_masks


def fake_map(rgb: np.ndarray) -> np.ndarray:
    """A deterministic region map: 1 where red > green, else 0."""
    return (rgb[..., 0] > rgb[..., 1]).astype(np.int32)


class FakeGen:
    def __init__(self, fail_on: int | None = None):
        self.calls, self.fail_on = 0, fail_on

    def __call__(self, rgb):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt
        return fake_map(rgb)


@pytest.fixture
def images(tmp_path):
    """Three synthetic RGB images of different sizes in tmp/imgs."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(20, 30), (16, 16), (25, 12)]):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def gen(monkeypatch):
    """Install a FakeGen as the generator `ovss masks generate` loads; returns a setter."""
    state = {"gen": FakeGen(), "args": None}

    def load(kind="auto", weights=None, device=None, dtype=None, model=None, **params):
        state["args"] = dict(kind=kind, weights=weights, device=device, dtype=dtype, model=model, **params)
        return state["gen"]

    monkeypatch.setattr(MG, "load_mask_generator", load)
    monkeypatch.setattr(MG, "sam2_available", lambda: True)
    return state


def _expected(path):
    return fake_map(np.asarray(Image.open(path).convert("RGB")))


def test_generate_writes_one_valid_file_per_image(tmp_path, images, gen, capsys):
    out = tmp_path / "masks"
    assert main(["masks", "generate", str(tmp_path / "imgs"), "--out", str(out), "--weights", "random",
                 "--set", "points_per_side=4", "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["im0.npz", "im1.npz", "im2.npz", "masks_info.json"]
    for p in images:
        stem = os.path.splitext(os.path.basename(p))[0]
        m = read_region_masks(str(out / f"{stem}.npz"), _expected(p).shape)
        np.testing.assert_array_equal(m, _expected(p))
    assert gen["gen"].calls == 3
    assert gen["args"] == dict(kind="auto", weights="random", device=None, dtype=None, model=None, points_per_side=4)
    info = json.loads((out / "masks_info.json").read_text())
    assert info["generator"] == "sam2" and info["model"] == "hiera_l" and info["params"] == {"points_per_side": 4}
    assert "3 written, 0 already there" in capsys.readouterr().out


def test_interrupt_then_resume_generates_only_the_rest(tmp_path, images, gen, capsys):
    out = str(tmp_path / "masks")
    gen["gen"] = FakeGen(fail_on=2)          # Ctrl-C while the second image is being processed
    assert main(["masks", "generate", *images, "--out", out, "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "progress saved: 1 of 3 masks" in err and "Run the same command again" in err
    assert sorted(f for f in os.listdir(out) if f.endswith(".npz")) == ["im0.npz"]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    gen["gen"] = FakeGen()
    assert main(["masks", "generate", *images, "--out", out, "--no-progress"]) == 0
    assert gen["gen"].calls == 2              # im0 was kept
    assert "1 already done, 2 to generate" in capsys.readouterr().err
    for p in images:
        np.testing.assert_array_equal(np.load(os.path.join(out, os.path.basename(p)[:-4] + ".npz"))["instance_mask"],
                                      _expected(p))
    gen["gen"] = FakeGen()                    # a third run has nothing to do
    assert main(["masks", "generate", *images, "--out", out, "--no-progress"]) == 0
    assert gen["gen"].calls == 0


def test_an_invalid_existing_file_is_regenerated_and_overwrite_redoes_all(tmp_path, images, gen):
    out = tmp_path / "masks"
    assert main(["masks", "generate", *images, "--out", str(out), "--no-progress"]) == 0
    np.savez(out / "im1.npz", instance_mask=np.zeros((3, 3), np.int32))      # wrong size
    (out / "im2.npz").write_bytes(b"garbage")
    gen["gen"] = FakeGen()
    assert main(["masks", "generate", *images, "--out", str(out), "--no-progress"]) == 0
    assert gen["gen"].calls == 2
    np.testing.assert_array_equal(np.load(out / "im1.npz")["instance_mask"], _expected(images[1]))
    gen["gen"] = FakeGen()
    assert main(["masks", "generate", *images, "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert gen["gen"].calls == 3


def test_other_settings_in_the_same_folder_are_refused(tmp_path, images, gen, capsys):
    out = str(tmp_path / "masks")
    assert main(["masks", "generate", *images, "--out", out, "--no-progress"]) == 0
    assert main(["masks", "generate", *images, "--out", out, "--set", "points_per_side=32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds masks made with other settings" in err and "--overwrite" in err


def test_bad_image_stops_with_its_name_or_is_skipped(tmp_path, images, gen, capsys):
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not an image")
    out = str(tmp_path / "masks")
    assert main(["masks", "generate", *images, str(bad), "--out", out, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable image" in err and "Traceback" not in err
    assert main(["masks", "generate", *images, str(bad), str(tmp_path / "nope.jpg"), "--out", out, "--skip-bad",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "2 unreadable or missing input(s) skipped" in err and str(bad) in err and "nope.jpg" in err
    assert sorted(f for f in os.listdir(out) if f.endswith(".npz")) == ["im0.npz", "im1.npz", "im2.npz"]


def test_a_missing_input_is_named_before_any_model_loads(tmp_path, images, gen, capsys):
    assert main(["masks", "generate", images[0], str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "no such file or no image in it" in err and "nope.jpg" in err and gen["args"] is None


def test_same_stem_twice_is_refused(tmp_path, images, gen, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.open(images[0]).save(other / "im0.png")
    assert main(["masks", "generate", images[0], str(other / "im0.png"), "--out", str(tmp_path / "m")]) == 2
    assert "have the same file stem" in capsys.readouterr().err


def _voc(tmp_path, n=3):
    base = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(1)
    stems = [f"2007_00000{i}" for i in range(n)]
    for s in stems:
        Image.fromarray(rng.integers(0, 256, (14, 18, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{s}.jpg")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(stems) + "\n")
    return str(tmp_path / "data"), stems


def test_dataset_mode_follows_the_image_list_and_limit(tmp_path, gen):
    root, stems = _voc(tmp_path)
    out = tmp_path / "masks"
    assert main(["masks", "generate", "--dataset", "voc21", "--data-root", root, "--out", str(out), "--limit", "2",
                 "--generator", "sam", "--no-progress"]) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".npz")) == [f"{s}.npz" for s in stems[:2]]
    assert gen["args"]["kind"] == "sam"
    assert json.loads((out / "masks_info.json").read_text())["model"] == "vit_h"


def test_check_lists_each_bad_file_by_name(tmp_path, images, gen, capsys):
    out = tmp_path / "masks"
    assert main(["masks", "generate", *images, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["masks", "check", "--masks", str(out), *images]) == 0
    assert "checked 3 image(s)" in (text := capsys.readouterr().out) and text.rstrip().endswith("0 problem(s) - OK")
    os.remove(out / "im0.npz")
    np.savez(out / "im1.npz", instance_mask=np.zeros((2, 2), np.int32))
    np.savez(out / "im2.npz", other=np.zeros((25, 12), np.int32))
    assert main(["masks", "check", "--masks", str(out), *images]) == 1
    text = capsys.readouterr().out
    assert f"{out / 'im0.npz'}: region-mask file not found" in text
    assert f"{out / 'im1.npz'}: 'instance_mask' is 2x2 pixels but the image is 16x16" in text
    assert f"{out / 'im2.npz'}: no 'instance_mask' array" in text
    assert "3 problem(s)" in text and "Traceback" not in text


def test_check_dataset_mode_and_usage_errors(tmp_path, gen, capsys):
    root, stems = _voc(tmp_path, n=2)
    out = tmp_path / "masks"
    assert main(["masks", "generate", "--dataset", "voc21", "--data-root", root, "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["masks", "check", "--masks", str(out), "--dataset", "voc21", "--data-root", root]) == 0
    assert main(["masks", "check", "--masks", str(tmp_path / "none"), "--dataset", "voc21", "--data-root", root]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["masks", "check", "--masks", str(out), "--dataset", "voc21"]) == 2
    assert "also give --data-root" in capsys.readouterr().err
    assert main(["masks", "check", "--masks", str(out)]) == 2
    assert "name the images" in capsys.readouterr().err
    assert main(["masks"]) == 2
