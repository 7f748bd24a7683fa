"""Colours, label PNGs and overlays (ovss.viz); device / dtype choice (ovss.device)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ovss.device import pick_device, pick_dtype
from ovss.errors import InputError
from ovss.viz import label_image, overlay, palette


def test_palette_is_the_voc_palette():
    p = palette(256)
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert p[:9].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128],
                              [0, 128, 128], [128, 128, 128], [64, 0, 0]]
    assert p[15].tolist() == [192, 128, 128]      # VOC "person"
    assert palette(300)[256:260].tolist() == p[:4].tolist()


def test_label_image_round_trip(tmp_path):
    lab = np.array([[0, 1, 2], [20, 255, 3]])
    im = label_image(lab)
    assert im.mode == "P"
    im.save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P" and np.array_equal(np.asarray(back), lab)
    assert back.getpalette()[3:6] == [128, 0, 0]
    big = label_image(np.array([[0, 300]]))
    assert np.array_equal(np.asarray(big), [[0, 300]])


def test_overlay_blends_and_adds_a_legend():
    img = np.full((40, 60, 3), 100, dtype=np.uint8)
    lab = np.zeros((40, 60), dtype=np.int64)
    lab[:, 30:] = 2
    out = overlay(img, lab, ["a", "b", "c"], alpha=0.25, legend=False)
    assert out.size == (60, 40)
    arr = np.asarray(out).astype(int)
    cols = palette(4)[1:].astype(float)           # class k gets colour k + 1 (colour 0 is black)
    np.testing.assert_array_equal(arr[0, 0], np.floor(0.75 * 100 + 0.25 * cols[0] + 0.5).astype(int))
    np.testing.assert_array_equal(arr[0, 59], np.floor(0.75 * 100 + 0.25 * cols[2] + 0.5).astype(int))
    with_legend = overlay(img, lab, ["a", "b", "c"], alpha=0.25)
    assert with_legend.size[0] > 60 and with_legend.size[1] >= 40
    assert np.array_equal(np.asarray(with_legend)[:40, :60], arr)


def test_pick_device_and_dtype():
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            pick_device("cuda")
    cpu = torch.device("cpu")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(cpu, "bf16") == torch.bfloat16 and pick_dtype(cpu, torch.float16) == torch.float16
    with pytest.raises(InputError, match="fp32, fp16, bf16"):
        pick_dtype(cpu, "int8")
