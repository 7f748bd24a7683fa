"""ProxyCLIP: proxy attention on hand-built features, its limits, and end-to-end runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss.backbones.attention import last_block
from ovss.backbones.clip import load_clip
from ovss.inference.splice import proxy_attention, proxy_last_block, to_imagenet


def _feats(tokens):
    """tokens (L, C) -> (1, C, 1, L)"""
    t = torch.tensor(tokens, dtype=torch.float32)
    return t.T.reshape(1, t.shape[1], 1, t.shape[0])


def test_proxy_attention_hand_example():
    # tokens a, a', b with a ∥ a' (different lengths: only directions count) and b ⊥ a
    f = _feats([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    A = proxy_attention(f, beta=1.2, gamma=3.0)[0]
    # Sim = [[1,1,0],[1,1,0],[0,0,1]], mean 5/9, 3(1 - 1.2*5/9) = 1 > 0 kept, 3(0 - 2/3) < 0 masked
    want = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(A, want)
    # gamma sharpens the kept entries: with a partially similar token the weights follow exp(γ·(sim − βμ))
    f = _feats([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    sim = torch.tensor([[1, .8, 0], [.8, 1, .6], [0, .6, 1]])
    mu = sim.mean()
    a = (sim - 1.2 * mu) * 3.0
    a[a < 0] = float("-inf")
    torch.testing.assert_close(proxy_attention(f, 1.2, 3.0)[0], a.softmax(-1))


def test_mean_per_window_vs_joint():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 3, 3)
    f[1] = f[1].abs()                        # second window: all cosines positive, larger mean
    per = proxy_attention(f, 1.2, 3.0, joint=False)
    joint = proxy_attention(f, 1.2, 3.0, joint=True)
    torch.testing.assert_close(per[0], proxy_attention(f[:1], 1.2, 3.0)[0])   # batching keeps windows apart
    torch.testing.assert_close(per[1], proxy_attention(f[1:], 1.2, 3.0)[0])
    assert (per - joint).abs().max() > 1e-3
    torch.testing.assert_close(per.sum(-1), torch.ones(2, 9))


def test_fully_masked_row_falls_back_to_softmax():
    f = torch.ones(1, 4, 2, 2)              # uniform image: Sim = 1 everywhere, every entry < β·mean
    A = proxy_attention(f, 1.2, 3.0)
    torch.testing.assert_close(A, torch.full((1, 4, 4), 0.25))


def test_to_imagenet():
    from ovss.backbones.clip import CLIP_MEAN, CLIP_STD
    px = torch.rand(1, 3, 4, 5)
    clip_norm = (px - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    want = (px - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(to_imagenet(clip_norm), want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("tiny-test", "random", seed=1)


def test_identity_proxy_attention_gives_reduced_maskclip(tiny_clip):
    clip = tiny_clip
    x = torch.randn(2, 3, 64, 48)
    h, w = 4, 3
    L = h * w
    onehot = torch.eye(L).T.reshape(1, L, h, w).expand(2, -1, -1, -1)   # orthogonal tokens: Sim = I
    attn = proxy_attention(onehot, 1.2, 3.0)
    torch.testing.assert_close(attn, torch.eye(L).expand(2, -1, -1))
    out = proxy_last_block(clip, x, attn, (h, w))
    t, _, _ = clip.embed(x, pe="A")
    t = clip.run_blocks(t, 0, len(clip.blocks) - 1)
    ref = last_block(clip, t, "identity")[:, 1:]                          # MaskCLIP reduced (no residual/MLP)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_values_resized_to_proxy_grid(tiny_clip):
    """A proxy grid finer than CLIP's: uniform attention gives the mean of the bilinearly resized values."""
    clip = tiny_clip
    x = torch.randn(1, 3, 64, 64)                                         # CLIP grid 4x4
    attn = torch.full((1, 64, 64), 1 / 64)                                # proxy grid 8x8
    out = proxy_last_block(clip, x, attn, (8, 8))
    t, _, _ = clip.embed(x)
    t = clip.run_blocks(t, 0, len(clip.blocks) - 1)
    _, _, v = clip.qkv(len(clip.blocks) - 1, t[:, 1:])
    vr = torch.nn.functional.interpolate(v[0].transpose(1, 2).reshape(-1, 32, 4, 4), (8, 8), mode="bilinear",
                                         align_corners=False).reshape(v.shape[1], 32, 64).mean(-1)
    ref = clip.attn_out(len(clip.blocks) - 1, vr[None, :, None, :].expand(1, -1, 64, -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _segmenter(**kw):
    import ovss
    args = dict(method="proxyclip", classes=["sky; cloud", "horse", "grass"], class_format="proxyclip",
                clip="tiny-test", clip_weights="random", vfm="tiny_vit8", vfm_weights="random", device="cpu")
    args.update(kw)
    return ovss.Segmenter(**args)


def test_end_to_end_tiny_and_window_batching():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    seg = _segmenter(short_side=200, slide_crop=112, slide_stride=56)
    logits = seg.predict_logits(img)
    assert logits.shape == (3, 90, 130) and torch.isfinite(logits).all()
    one = _segmenter(short_side=200, slide_crop=112, slide_stride=56, window_batch=1).predict_logits(img)
    torch.testing.assert_close(logits, one, atol=1e-5, rtol=1e-5)   # batching never mixes windows
    labels = seg.predict(img)
    assert labels.shape == (90, 130) and int(labels.max()) < 3


def test_presets():
    from ovss.methods.proxyclip import ProxyCLIP
    p = ProxyCLIP.resolve_params("cityscapes", {})
    assert (p.short_side, p.slide_crop, p.slide_stride, p.pad_multiple) == (448, 224, 112, 56)
    p = ProxyCLIP.resolve_params("voc21", {})
    assert (p.prob_thd, p.logit_scale, p.beta, p.gamma, p.class_format) == (0.2, 40.0, 1.2, 3.0, "proxyclip")
    assert ProxyCLIP.resolve_params("coco_object", {}).prob_thd == 0.25
    assert ProxyCLIP.resolve_params("context60", {}).prob_thd == 0.15
    assert set(ProxyCLIP.PRESETS) >= {"voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff",
                                      "cityscapes", "ade20k", "context459", "ade847"}


@pytest.mark.slow
@pytest.mark.parametrize("vfm", ["dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16", "dinov2_vitb14",
                                 "sam_vitb", "mae_vitb16"])
def test_full_size_random_proxies(vfm):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    seg = _segmenter(clip="ViT-B/16", vfm=vfm, preset="voc20", classes=None)
    logits = seg.predict_logits(img)
    assert logits.shape == (20, 120, 160) and torch.isfinite(logits).all()


def test_cli_segment_and_eval(tmp_path):
    import json

    import fakedata
    from PIL import Image

    from ovss.cli import main
    rng = np.random.default_rng(5)
    img = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(img)
    tiny = ["--clip", "tiny-test", "--clip-weights", "random", "--vfm", "tiny_vit8", "--vfm-weights", "random"]
    small = ["--set", "short_side=112", "--set", "slide_crop=112", "--set", "slide_stride=56"]
    rc = main(["segment", str(img), "--method", "proxyclip", "-c", "horse, grass, sky", "-o", str(tmp_path / "seg"),
               *tiny, *small])
    assert rc == 0 and any(p.suffix == ".png" for p in (tmp_path / "seg").iterdir())
    fakedata.make_dataset(tmp_path / "data", "voc21", n=2, sizes=[(24, 32), (30, 20)])
    rc = main(["eval", "--method", "proxyclip", "--dataset", "voc21", "--data-root", str(tmp_path / "data"),
               "--out", str(tmp_path / "ev"), "--no-progress", *tiny, *small])
    assert rc == 0
    files = list((tmp_path / "ev").rglob("*.json"))
    assert files and any("miou" in json.dumps(json.load(open(f))).lower() for f in files)
