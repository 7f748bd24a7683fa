"""Class probabilities (spec §1.7: synonyms, Trident's rule, SCLIP's area filter, background threshold) and PAMR
(§1.8), on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.images import load_image
from ovss.inference.pamr import pamr
from ovss.inference.probs import area_filter, class_log_probs, threshold_labels


def _cos(*cols):
    """Pixels given as columns of query cosines -> (Q, 1, n)."""
    return torch.tensor(cols, dtype=torch.float64).T.unsqueeze(1)


# ---------------------------------------------------------------------------------------------- synonyms
def test_synonyms_reduce_by_max_over_the_softmax_of_all_queries():
    # λ = 10: pixel A logits [1, 3, 2], pixel B logits [1, 2, 3]; queries 1 and 2 are synonyms of class 1
    cos = _cos([0.1, 0.3, 0.2], [0.1, 0.2, 0.3])
    out = class_log_probs(cos, (0, 1, 1), 10.0)
    assert out.shape == (2, 1, 2)
    Z = math.e + math.e ** 2 + math.e ** 3
    P = out.exp()
    for px in range(2):
        assert P[0, 0, px].item() == pytest.approx(math.e / Z, rel=1e-6)
        assert P[1, 0, px].item() == pytest.approx(math.e ** 3 / Z, rel=1e-6)
    # not renormalised: the class probabilities do not sum to 1 when a class has several queries
    assert P.sum(0)[0, 0].item() == pytest.approx((math.e + math.e ** 3) / Z, rel=1e-6)


def test_without_synonyms_it_is_the_plain_log_softmax():
    cos = torch.randn(4, 3, 5, dtype=torch.float64)
    out = class_log_probs(cos, (0, 1, 2, 3), 40.0)     # computed in float32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.log_softmax(40.0 * cos.float(), 0))


def test_non_adjacent_synonyms():
    cos = _cos([0.5, 0.0, 0.7, 0.1])
    P = class_log_probs(cos, (0, 1, 0, 2), 1.0).exp().flatten()
    e = np.exp([0.5, 0.0, 0.7, 0.1])
    np.testing.assert_allclose(P.numpy(), [e[2] / e.sum(), e[1] / e.sum(), e[3] / e.sum()], rtol=1e-6)


def test_trident_first_rule():
    cos = _cos([0.2, 0.9, 0.1, 0.4])
    e = np.exp(np.array([0.2, 0.9, 0.1, 0.4]) * 2.0)
    p = e / e.sum()
    # query 0..1 -> class 0 (the first Q - K + 1 = 2 queries), then one query per class
    first = class_log_probs(cos, (0, 0, 1, 2), 2.0, mode="first").exp().flatten().numpy()
    np.testing.assert_allclose(first, [max(p[0], p[1]), p[2], p[3]], rtol=1e-6)
    same = class_log_probs(cos, (0, 0, 1, 2), 2.0, mode="max").exp().flatten().numpy()
    np.testing.assert_allclose(same, first, rtol=1e-7)
    # when a later class has the synonyms, "first" still gives them to class 0 (Trident's assumption)
    first = class_log_probs(cos, (0, 1, 1, 2), 2.0, mode="first").exp().flatten().numpy()
    np.testing.assert_allclose(first, [max(p[0], p[1]), p[2], p[3]], rtol=1e-6)
    mx = class_log_probs(cos, (0, 1, 1, 2), 2.0, mode="max").exp().flatten().numpy()
    np.testing.assert_allclose(mx, [p[0], max(p[1], p[2]), p[3]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- area filter
def _logp(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64)).unsqueeze(1)   # (K, 1, n)


def test_area_filter_hand_example():
    # argmax per pixel: 0 0 1 1 1 1 1 1 1 2  -> foreground areas: class 1: 7, class 2: 1 (total 8)
    P = [[0.6, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3],
         [0.2, 0.3, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.2],
         [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5]]
    lp = _logp(P)
    assert area_filter(lp, None) is lp
    kept = area_filter(lp, 0.1)                  # 1 > 0.8: class 2 kept
    assert torch.equal(kept, lp)
    dropped = area_filter(lp, 0.15)              # 1 > 1.2 fails: class 2 dropped (-inf), others unchanged
    assert torch.all(dropped[2] == float("-inf"))
    assert torch.equal(dropped[:2], lp[:2])
    assert threshold_labels(dropped, 0.0).flatten().tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0]


def test_area_filter_is_strict_and_never_drops_background():
    # foreground areas 9 and 1 of 10: 1 > 0.1 * 10 is false -> class 2 dropped
    P = [[0.1] * 10, [0.8] * 9 + [0.1], [0.1] * 9 + [0.8]]
    out = area_filter(_logp(P), 0.1)
    assert torch.all(out[2] == float("-inf")) and torch.isfinite(out[1]).all()
    # background wins everywhere: no foreground area, every foreground class is dropped, class 0 stays
    P = [[0.9] * 4, [0.05] * 4, [0.05] * 4]
    out = area_filter(_logp(P), 0.1)
    assert torch.isfinite(out[0]).all() and torch.all(out[1:] == float("-inf"))


# ---------------------------------------------------------------------------------------------- threshold
def test_threshold_labels_ties_and_background():
    lp = _logp([[0.2, 0.5, 0.1, 1 / 3],
                [0.4, 0.5, 0.45, 1 / 3],
                [0.4, 0.0, 0.45, 1 / 3]])
    lab = threshold_labels(lp, 0.0)
    assert lab.dtype == torch.int64 and lab.shape == (1, 4)
    assert lab.flatten().tolist() == [1, 0, 1, 0]           # ties -> first index
    assert threshold_labels(lp, 0.42).flatten().tolist() == [0, 0, 1, 0]   # 0.4 < 0.42 -> background
    assert threshold_labels(lp, 0.3).flatten().tolist() == [1, 0, 1, 0]
    assert threshold_labels(lp, 0.99).flatten().tolist() == [0, 0, 0, 0]


def test_segmenter_logits_and_labels_follow_the_probability_rules(smooth_rgb):
    """logits = log P_c (so softmax = P_c renormalised); labels threshold the un-renormalised P_c."""
    seg = ovss.Segmenter(method="sclip", classes=["sky", "grass, lawn, meadow", "horse"], clip="tiny-test",
                         clip_weights="random", device="cpu", templates="none", prob_thd=0.5, short_side=None,
                         slide_crop=32, slide_stride=16)
    img = load_image(smooth_rgb)
    pred = seg.run(img)
    with torch.no_grad():
        cos = seg.method.cosine_logits(seg.method.preprocess(img), img.size)
    p = torch.softmax(40.0 * cos.double(), 0)
    P = torch.stack([p[0], p[1:4].max(0).values, p[4]])
    torch.testing.assert_close(pred.logits.double().exp(), P, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.softmax(pred.logits.double(), 0), P / P.sum(0), rtol=1e-4, atol=1e-6)
    best, lab = P.max(0)
    lab[best < 0.5] = 0
    margin = (best - 0.5).abs() > 1e-4
    assert torch.equal(pred.labels[margin], lab[margin])
    assert pred.labels.dtype == torch.int64 and pred.labels.shape == img.size


# ---------------------------------------------------------------------------------------------- PAMR
def test_pamr_constant_image_averages_the_eight_replicate_neighbours():
    x = torch.full((1, 3, 1, 2), 0.7)
    m = torch.tensor([0.0, 8.0]).view(1, 1, 1, 2)
    # pixel 0: neighbours (replicate) a a b a b a a b -> (5a + 3b)/8 ; pixel 1: (3a + 5b)/8
    out = pamr(x, m, iters=1, dilations=(1,))
    torch.testing.assert_close(out.flatten(), torch.tensor([3.0, 5.0]), rtol=0, atol=1e-6)
    out = pamr(x, m, iters=2, dilations=(1,))
    torch.testing.assert_close(out.flatten(), torch.tensor([30 / 8, 34 / 8]), rtol=0, atol=1e-6)
    # two dilations: 16 equally weighted neighbours; at dilation 2 the padded row is a a a b b b ->
    # pixel 0 reads a a b a b a a b again (offsets -2, 0, +2 clamp the same way)
    torch.testing.assert_close(pamr(x, m, iters=1, dilations=(1, 2)).flatten(), torch.tensor([3.0, 5.0]),
                               rtol=0, atol=1e-6)


def test_pamr_edge_weights_hand_computed():
    # image [0, 1] (all channels): both pixels have local std 0.5 (3 ones and 6 zeros, or 6 and 3, unbiased),
    # so a neighbour across the edge gets exp(-1 / (1e-8 + 0.05)) relative weight, a same-valued one exp(0)
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    m = torch.tensor([0.0, 8.0]).view(1, 1, 1, 2)
    out = pamr(x, m, iters=1, dilations=(1,)).flatten().double()
    q = math.exp(-1.0 / (1e-8 + 0.1 * 0.5))
    # pixel 0: 5 same-valued neighbours (mask 0) and 3 across the edge (mask 8); pixel 1 the mirror image
    assert out[0].item() == pytest.approx(3 * 8 * q / (5 + 3 * q), rel=1e-4, abs=1e-12)
    assert out[1].item() == pytest.approx(5 * 8 / (5 + 3 * q), rel=1e-6)


def _pamr_reference(x: np.ndarray, m: np.ndarray, iters: int, dilations) -> np.ndarray:
    """spec §1.8 written with loops over pixels (float64)."""
    C, H, W = x.shape
    offs = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    at = lambda arr, i, j: arr[:, min(max(i, 0), H - 1), min(max(j, 0), W - 1)]  # noqa: E731 (replicate)
    weights = np.zeros((H, W, 8 * len(dilations)))
    for i in range(H):
        for j in range(W):
            win = np.stack([at(x, i + a * d, j + b * d) for d in dilations for a, b in offs], 1)   # (C, 9·nd)
            sd = win.std(axis=1, ddof=1)
            nb = [at(x, i + a * d, j + b * d) for d in dilations for a, b in offs if (a, b) != (0, 0)]
            aff = np.stack([(-np.abs(x[:, i, j] - n) / (1e-8 + 0.1 * sd)).mean() for n in nb])
            e = np.exp(aff - aff.max())
            weights[i, j] = e / e.sum()
    for _ in range(iters):
        new = np.zeros_like(m)
        for i in range(H):
            for j in range(W):
                nb = [at(m, i + a * d, j + b * d) for d in dilations for a, b in offs if (a, b) != (0, 0)]
                new[:, i, j] = sum(w * n for w, n in zip(weights[i, j], nb))
        m = new
    return m


def test_pamr_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 7))
    m = rng.normal(size=(2, 6, 7))
    ref = _pamr_reference(x, m, iters=3, dilations=(1, 2))
    out = pamr(torch.from_numpy(x)[None].float(), torch.from_numpy(m)[None].float(), iters=3, dilations=(1, 2))
    np.testing.assert_allclose(out[0].double().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_pamr_keeps_a_constant_mask_constant():
    x = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    m = torch.full((1, 4, 20, 24), 2.5)
    torch.testing.assert_close(pamr(x, m, iters=10, dilations=(8, 16)), m, rtol=0, atol=1e-5)


def test_naclip_applies_pamr_to_cosine_logits_before_the_softmax(smooth_rgb):
    seg = ovss.Segmenter(method="naclip", classes=["sky", "grass", "horse"], clip="tiny-test", clip_weights="random",
                         device="cpu", templates="none", pamr_steps=2, pamr_dilations=(1, 2), short_side=64)
    img = load_image(smooth_rgb)
    with torch.no_grad():
        x = seg.method.preprocess(img)
        cos = seg.method.cosine_logits(x, img.size)
        xi = F.interpolate(x.float(), size=img.size, mode="bilinear", align_corners=False)
        ref = class_log_probs(pamr(xi, cos[None], 2, (1, 2))[0], (0, 1, 2), 40.0)
    torch.testing.assert_close(seg.predict_logits(img), ref.float(), rtol=1e-5, atol=1e-5)


def test_pamr_channel_chunks_change_nothing():
    # the channels never interact: refining 1, 3 or all 7 of them at a time gives the same values
    g = torch.Generator().manual_seed(0)
    x, m = torch.rand(1, 3, 21, 34, generator=g), torch.randn(1, 7, 21, 34, generator=g)
    full = pamr(x, m, iters=3, dilations=(2, 4), chunk=7)
    for chunk in (1, 3):
        assert torch.equal(pamr(x, m, iters=3, dilations=(2, 4), chunk=chunk), full)
    assert not torch.equal(pamr(x, m, iters=2, dilations=(2, 4)), full)
