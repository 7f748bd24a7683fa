"""The speed floor (`ovss.floor`, `ovss bench --floor`): the recorded passes are the ones the method makes (hand-counted
windows), each replays the *unmodified* network (the CLIP floor pass is open_clip's own tower), and every method's
backbones are seen."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import ovss
from ovss import floor as F
from ovss.methods import MODULES, get_method

from test_registry import EXTRA, TINY

IMAGE = np.kron(np.random.default_rng(1).integers(0, 256, size=(5, 7, 3)), np.ones((8, 8, 1))).astype(np.uint8)


def _segmenter(method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ovss.Segmenter(method=method, classes=["sky", "grass", "horse"], **dict(TINY, **EXTRA.get(method, {})),
                              **kw)


def test_clip_floor_pass_is_open_clips_own_image_tower():
    seg = _segmenter("clip")
    clip = seg.method.models.clip
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = F._clip_pass(clip, x)()
        pooled = clip.model.encode_image(x)
    assert tokens.shape == (2, 1 + 14 * 14, clip.info.embed_dim)
    torch.testing.assert_close(tokens[:, 0], pooled, rtol=1e-5, atol=1e-5)


def test_recorded_passes_are_the_windows_the_method_sends():
    # 40 x 56 as is, 32-pixel windows every 16: rows (40-32+15)//16+1 = 2, cols (56-32+15)//16+1 = 3 -> 6 windows,
    # 4 per pass -> a pass of 4 and a pass of 2, each at the window size
    seg = _segmenter("sclip", short_side=None, slide_crop=32, slide_stride=16, window_batch=4)
    out, passes = F.record_passes(seg.method, lambda: seg.predict_logits(IMAGE))
    assert out.shape == (3, 40, 56)
    assert [(p.model, p.shape) for p in passes] == [("clip", (4, 3, 32, 32)), ("clip", (2, 3, 32, 32))]
    assert F.describe(passes) == "clip 4x3x32x32, clip 2x3x32x32"
    F.replay(passes)
    # the hooks are gone after recording: a second run records nothing new and gives the same logits
    again, more = F.record_passes(seg.method, lambda: seg.predict_logits(IMAGE))
    assert torch.equal(out, again) and len(more) == 2
    assert not seg.method.models.clip.visual.conv1._forward_pre_hooks


@pytest.mark.parametrize("method", [m for m in MODULES if m not in ("clip", "sclip")])
def test_every_backbone_a_method_needs_is_in_its_floor(method, monkeypatch, tmp_path):
    from ovss.backbones import vfm as vfm_mod
    monkeypatch.setitem(vfm_mod.CONFIGS, "tiny_cass", vfm_mod.VitConfig(8, 96, 2, 3, 4, "dino"))
    kw = {}
    if method == "corrclip":
        np.savez(tmp_path / "img.npz", instance_mask=np.kron(np.arange(35).reshape(5, 7) % 4,
                                                              np.ones((8, 8))).astype(np.int32))
        kw["region_masks_dir"] = str(tmp_path)
    seg = _segmenter(method, **kw)
    image = ovss.images.load_image(IMAGE)
    image = type(image)(**{**image.__dict__, "path": str(tmp_path / "img.png")}) if method == "corrclip" else image
    _, passes = F.record_passes(seg.method, lambda: seg.predict_logits(image))
    kinds = {p.model for p in passes}
    needs = set(get_method(method).needs)
    expected = {"clip"} & needs | {"vfm"} & needs | {"sam"} & needs | ({"vae", "unet"} if "sd" in needs else set())
    if method == "trident":     # Trident's proxy may be DINO or SAM's encoder: either way a pass of it
        assert "clip" in kinds and kinds & {"vfm", "sam"}
    else:
        assert expected <= kinds, (method, kinds)
    if "unet" in kinds:         # CLIPer's pass stops at its last attention layer: so does the floor's
        unet = [p for p in passes if p.model == "unet"]
        assert len(unet) == 1 and unet[0].stop in seg.params.sd_layers
    F.replay(passes)


def test_bench_floor_json(capsys):
    from ovss.cli import main
    rc = main(["bench", "--method", "sclip", "--clip", "tiny-test", "--clip-weights", "random", "--size", "48x40",
               "--n", "3", "--warmup", "0", "--floor", "--json", "--set", "short_side=None", "--set", "slide_crop=32",
               "--set", "slide_stride=16", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["floor_s"] > 0 and res["floor_passes"] == "clip 4x3x32x32"
    # the ratio is of the medians (p50 is printed to the millisecond)
    assert res["floor_ratio"] == pytest.approx(res["latency_s"]["p50"] / res["floor_s"], abs=6e-4 / res["floor_s"])


def test_a_mask_generators_own_generate_call_is_a_floor_pass():
    from types import SimpleNamespace

    from ovss.backbones.mask_generator import MaskGenerator

    calls = []

    class FakeAMG:    # the library's automatic mask generator: generate(rgb) -> [{"segmentation": (H, W) bool}]
        def generate(self, rgb):
            calls.append(rgb.shape)
            return [{"segmentation": rgb[..., 0] > 100}]

    gen = MaskGenerator(FakeAMG(), "sam2", "hiera_l", torch.device("cpu"), torch.float32, {})
    method = SimpleNamespace(models=None, _generator=gen)
    rgb = np.ascontiguousarray(IMAGE)
    regions, passes = F.record_passes(method, lambda: gen(rgb))
    assert regions.shape == (40, 56) and [p.label() for p in passes] == ["mask_generator 40x56x3"]
    assert "generate" not in gen.amg.__dict__           # the library's method is back
    F.replay(passes)
    assert calls == [(40, 56, 3)] * 2
