"""Every registered method, the same contract (timm's habit): on tiny random models, with a user's own classes and
preset=None (the settings for one's own images), it runs through ovss.Segmenter and returns finite logits of the
image's size, labels in range and a segment() result; and it appears everywhere a method appears (`ovss methods`,
its weights list, the app's menu, the survey's reported figures where the survey lists it)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ovss
from ovss.methods import MODULES, get_method, list_methods

CLASSES = ["sky", "grass, lawn", "horse"]
# the tiny random stand-ins of each model kind, and what a method needs on top to run on them
TINY = dict(clip="tiny-test", clip_weights="random", vfm="tiny_vit8", vfm_weights="random", sam="tiny-test",
            sam_weights="random", sd_weights="random-tiny", device="cpu")
# the tiny CLIP has 3 blocks (the methods' defaults read blocks 5..11 of ViT-B/16) and 3 heads of width 32
EXTRA = {"resclip": dict(rcs_layers=(0, 1)), "itaclip": dict(intermediate_layers=(0, 1)), "gem": dict(gem_depth=3),
         "clip_surgery": dict(surgery_blocks=2), "cass": dict(vfm="tiny_cass")}


def test_every_registered_method_is_implemented():
    assert [m.name for m in list_methods()] == list(MODULES)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 40 x 56 image with structure, as a file (CorrCLIP's region masks are found by the file's stem)."""
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, size=(5, 7, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    d = tmp_path_factory.mktemp("registry")
    Image.fromarray(img).save(d / "blocks.png")
    regions = np.kron(np.arange(35).reshape(5, 7) % 4, np.ones((8, 8))).astype(np.int32)
    np.savez(d / "blocks.npz", instance_mask=regions)     # 4 regions, 0 = unsegmented
    return d / "blocks.png"


@pytest.mark.parametrize("method", list(MODULES))
def test_method_runs_on_tiny_models_with_its_own_image_settings(method, image_file, monkeypatch):
    from ovss.backbones import vfm as vfm_mod    # CASS pairs DINO heads with CLIP heads: a tiny DINO like the CLIP
    monkeypatch.setitem(vfm_mod.CONFIGS, "tiny_cass", vfm_mod.VitConfig(8, 96, 2, 3, 4, "dino"))
    kw = dict(TINY, **EXTRA.get(method, {}))
    if method == "corrclip":
        kw["region_masks_dir"] = str(image_file.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # ITACLIP says it has no auxiliary texts for these names
        seg = ovss.Segmenter(method=method, classes=CLASSES, **kw)
    assert seg.preset is None and seg.config()["method"] == method
    pred = seg.run(str(image_file))
    K = len(seg.classes)
    assert K in (3, 4) and seg.classes[-3:] == ["sky", "grass", "horse"]   # CLIPer adds a background class 0
    assert pred.logits.shape == (K, 40, 56) and pred.logits.dtype == torch.float32
    assert not torch.isnan(pred.logits).any() and not torch.isposinf(pred.logits).any()
    assert pred.labels.shape == (40, 56) and pred.labels.dtype == torch.int64
    assert 0 <= int(pred.labels.min()) and int(pred.labels.max()) < K
    res = seg.segment(str(image_file))
    assert abs(sum(res.areas.values()) - 1) < 1e-9 and set(res.areas) <= set(seg.classes)


def test_every_method_appears_in_methods_weights_and_app(capsys):
    from ovss import weights as W
    from ovss.app import AppConfig
    from ovss.cli import main
    from ovss.methods.reported import reported
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    offered = AppConfig(clip="tiny-test", clip_weights="random").method_names()
    for m in MODULES:
        cls = get_method(m)
        assert cls.name == m and cls.paper and cls.repo and cls.summary
        assert any(ln.split()[:1] == [m] for ln in out.splitlines()), m
        keys = W.keys_for_method(m)
        assert keys and keys[0].startswith("clip:"), (m, keys)
        assert m in offered
        if m != "cliper_elf":     # the survey lists full CLIPer only
            assert reported(m) is not None, m
        assert cls.PRESETS and "voc21" in cls.PRESETS, m
