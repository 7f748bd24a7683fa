"""CLIP Surgery: feature surgery by hand, the surgery positional embedding, the CLS of the original path, maps,
presets and runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.errors import InputError
from ovss.inference.resize import pil_warp_to_tensor
from ovss.inference.surgery import feature_surgery
from ovss.methods import get_method
from ovss.methods.warped import BENCHMARKS
from ovss.text import load_templates

CLASSES = ["sky", "grass", "horse"]
TINY = dict(clip="tiny-test", clip_weights="random", device="cpu")


def test_feature_surgery_hand_example():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]], dtype=torch.float64)     # CLS, one patch
    # CLS cosines [1, 0]: p = softmax(2·[1, 0]) = [e²/(e²+1), 1/(e²+1)], w = p / mean(p) = 2p
    e2 = math.e ** 2
    w = [2 * e2 / (e2 + 1), 2 / (e2 + 1)]
    # patch cosines [0.6, 0.8]: w·cos minus its mean over the two classes
    a, b = 0.6 * w[0], 0.8 * w[1]
    want = torch.tensor([[[w[0] / 2, -w[0] / 2], [(a - b) / 2, (b - a) / 2]]], dtype=torch.float64)
    torch.testing.assert_close(feature_surgery(feats, text), want)


def test_feature_surgery_equals_the_per_channel_redundancy_form():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(2, 6, 8, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    # the official form: f_ikc = F_ic T_kc w_k, redundant r_ic = mean_k f_ikc, sim = Σ_c (f − r)
    w = torch.softmax(2 * feats[:, :1] @ text.T, dim=-1)
    w = w / w.mean(-1, keepdim=True)                                          # (B, 1, K)
    f = feats[:, :, None, :] * text[None, None] * w[..., None]                # (B, T, K, E)
    want = (f - f.mean(2, keepdim=True)).sum(-1)
    out = feature_surgery(feats, text)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(out.sum(-1), torch.zeros(2, 6, dtype=torch.float64))   # zero mean over classes
    # temperature 0: every class weight 1, sim = cos − mean over classes of cos
    cos = feats @ text.T
    torch.testing.assert_close(feature_surgery(feats, text, 0.0), cos - cos.mean(-1, keepdim=True))


def test_pe_s_is_bilinear_to_size_and_skipped_at_the_pretraining_grid(tiny_clip):
    G = tiny_clip.info.grid
    pe = tiny_clip.visual.positional_embedding
    grid = pe[1:].reshape(G, G, -1)
    out = tiny_clip.pos_embed(2 * G, 2 * G, "S")[1:].reshape(2 * G, 2 * G, -1)
    # x2 bilinear, align_corners False: index 0 reads -0.25 (clamped to 0), index 1 reads 0.25
    torch.testing.assert_close(out[0, 0], grid[0, 0])
    torch.testing.assert_close(out[0, 1], 0.75 * grid[0, 0] + 0.25 * grid[0, 1])
    torch.testing.assert_close(out[1, 1], 0.75 * (0.75 * grid[0, 0] + 0.25 * grid[0, 1])
                               + 0.25 * (0.75 * grid[1, 0] + 0.25 * grid[1, 1]))
    torch.testing.assert_close(tiny_clip.pos_embed(G, G, "S"), pe)


def _seg(classes=CLASSES, **kw):
    return ovss.Segmenter(method="clip_surgery", classes=classes, **{"image_size": 64, "surgery_blocks": 2, **kw},
                          **TINY)


def test_cls_row_comes_from_the_unmodified_clip(smooth_rgb, tiny_clip):
    seg = _seg()
    x = pil_warp_to_tensor(smooth_rgb, 64)
    f, h, w = seg.method.surgery_features(x)
    assert f.shape == (1, 1 + h * w, tiny_clip.info.embed_dim) and (h, w) == (4, 4)
    t, _, _ = tiny_clip.embed(x, pe="S")
    plain = tiny_clip.head(tiny_clip.run_blocks(t))
    torch.testing.assert_close(f[:, 0], F.normalize(plain[:, 0], dim=-1))
    assert (f[:, 1:] - F.normalize(plain[:, 1:], dim=-1)).abs().max() > 1e-3    # the patches are the v-v stream's


def test_maps_are_per_class_minmax_and_logits_their_renormalised_log(smooth_rgb):
    seg = _seg()
    # an image of the grid's size (4 x 4 pixels for 64 / 16): the final resize is the identity, so every map
    # spans exactly [0, 1]
    tiny_img = np.ascontiguousarray(smooth_rgb[::10, ::14][:4, :4])
    maps = seg.method.surgery_maps(pil_warp_to_tensor(tiny_img, 64), (4, 4))
    torch.testing.assert_close(maps.amax((1, 2)), torch.ones(3))
    torch.testing.assert_close(maps.amin((1, 2)), torch.zeros(3))
    # on any image: softmax(logits) = maps / Σ maps, labels = argmax of the maps
    H, W = smooth_rgb.shape[:2]
    maps = seg.method.surgery_maps(pil_warp_to_tensor(smooth_rgb, 64), (H, W))
    logits = seg.predict_logits(smooth_rgb)
    assert logits.shape == (3, H, W) and torch.isfinite(logits).all()
    assert 0 <= float(maps.min()) and float(maps.max()) <= 1
    torch.testing.assert_close(logits.softmax(0), maps / maps.sum(0, keepdim=True))
    assert torch.equal(seg.predict(smooth_rgb), maps.argmax(0))


def test_label_set_is_the_redundancy_reference_and_synonyms_take_the_max(smooth_rgb):
    p3 = _seg().predict_logits(smooth_rgb).softmax(0)
    # dropping a class changes the other classes' maps (the redundant feature is their weighted mean)
    p2 = _seg(["sky", "grass"]).predict_logits(smooth_rgb).softmax(0)
    assert (p2 - p3[:2] / p3[:2].sum(0)).abs().max() > 1e-3
    # a class of two queries: max over its queries of the renormalised maps
    syn = _seg(["sky", "grass, horse"], class_format="ovss").predict_logits(smooth_rgb).exp()
    torch.testing.assert_close(syn[0], p3[0])
    torch.testing.assert_close(syn[1], p3[1:].amax(0))


def test_background_threshold_and_parameters_change_the_output(smooth_rgb):
    logits = _seg().predict_logits(smooth_rgb)
    best = logits.softmax(0).amax(0)
    thd = float(best.median())
    labels = _seg(prob_thd=thd).predict(smooth_rgb)
    assert torch.equal(labels, torch.where(best < thd, 0, logits.argmax(0)))
    assert 0 < float((labels == 0).float().mean()) < 1
    for kw in (dict(surgery_blocks=1), dict(surgery_temperature=1.0), dict(templates="photo")):
        assert (_seg(**kw).predict_logits(smooth_rgb).softmax(0) - logits.softmax(0)).abs().max() > 1e-4


def test_presets_are_the_demo_settings_on_every_benchmark():
    cls = get_method("clip_surgery")
    assert set(cls.PRESETS) == set(BENCHMARKS)
    for bench in BENCHMARKS:
        p = cls.resolve_params(bench, {})
        assert (p.image_size, p.templates, p.surgery_blocks, p.surgery_temperature, p.prob_thd,
                p.class_format) == (512, "clip_surgery", 6, 2.0, 0.0, "lines")
        assert not cls.default_classes(p).has_synonyms
    assert cls.resolve_params("voc21", {}).classes_file.endswith("official/clearclip/cls_voc21.txt")
    t = load_templates("clip_surgery")
    assert len(t) == 85 and t[:80] == load_templates("imagenet")
    assert t[80:] == ("there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
                      "this is the {} in the scene.", "this is one {} in the scene.")
    d = cls.resolve_params(None, {})
    assert (d.image_size, d.templates, d.surgery_blocks) == (512, "clip_surgery", 6)


def test_half_precision_runs_and_stays_close(smooth_rgb):
    a = _seg(dtype="fp16").predict_logits(smooth_rgb).softmax(0)
    b = _seg().predict_logits(smooth_rgb).softmax(0)
    assert torch.isfinite(a).all() and (a - b).abs().max() < 0.05


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="surgery_blocks=4: 4 modified blocks requested, but this CLIP has 3"):
        ovss.Segmenter(method="clip_surgery", classes=CLASSES, surgery_blocks=4, **TINY)
    with pytest.raises(InputError, match="surgery_blocks=0"):
        ovss.Segmenter(method="clip_surgery", classes=CLASSES, surgery_blocks=0, **TINY)
    with pytest.raises(InputError, match="image_size=10"):
        ovss.Segmenter(method="clip_surgery", classes=CLASSES, image_size=10, **TINY)
