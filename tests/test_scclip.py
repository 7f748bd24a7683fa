"""SC-CLIP: its LOF variant, neighbour fill, affinity aggregation and mixed attention on hand-computed cases;
depth settings, presets, errors; end-to-end on the tiny random CLIP."""
from __future__ import annotations

import math

import pytest
import torch

import ovss
from ovss.errors import InputError
from ovss.inference.affinity import aggregate, cosine_affinity, map_kk_attention
from ovss.inference.outliers import lof_outliers, lof_scores, neighbour_mean_fill
from ovss.methods import get_method
from ovss.methods.scclip import SCCLIPParams, depth_settings


def _points(*xs):
    """1-D points as tokens (1, N, 1)."""
    return torch.tensor(xs, dtype=torch.float32).view(1, -1, 1)


def test_lof_hand_example():
    # points 0, 1, 3, 10, k = 2, squared distances:
    #   0: 1 (to 1), 9 (to 3)      -> kd = 9     1: 1 (to 0), 4 (to 3)   -> kd = 4
    #   3: 4 (to 1), 9 (to 0)      -> kd = 9    10: 49 (to 3), 81 (to 1) -> kd = 81
    # SC-CLIP's LOF_i = mean over neighbours j of kd_i / kd_j
    s = lof_scores(_points(0, 1, 3, 10), n_neighbors=2)[0]
    want = torch.tensor([(9 / 4 + 9 / 9) / 2, (4 / 9 + 4 / 9) / 2, (9 / 4 + 9 / 9) / 2, (81 / 9 + 81 / 4) / 2])
    torch.testing.assert_close(s, want)
    # the textbook LOF (scikit-learn's) of the point 10 is 2.9333: Euclidean distances (7 to 3, 9 to 1, kd = 9),
    # reach(10, j) = max(d, kd_j) = (7, 9) -> lrd = 1/8; lrd(3) = 2/(2+3), lrd(1) = 2/(3+3) -> (0.4 + 1/3)/2 · 8
    from sklearn.neighbors import LocalOutlierFactor
    sk = -LocalOutlierFactor(n_neighbors=2).fit(_points(0, 1, 3, 10)[0].numpy()).negative_outlier_factor_
    assert sk[3] == pytest.approx((0.4 + 1 / 3) / 2 * 8) and float(s[3]) == pytest.approx(14.625)


def test_lof_outliers_quantile_rule():
    # scores (0.444, 1.625, 1.625, 14.625); quantile 0.75 at position 2.25: 1.625 + 0.25·13 = 4.875 -> only 10
    m = lof_outliers(_points(0, 1, 3, 10), n_neighbors=2, contamination=0.25)
    assert m.tolist() == [[False, False, False, True]]
    # strictly greater: with contamination 0.5 the threshold is the median 1.625, ties at it are not outliers
    m = lof_outliers(_points(0, 1, 3, 10), n_neighbors=2, contamination=0.5)
    assert m.tolist() == [[False, False, False, True]]


def test_lof_196_tokens_gives_ten_largest_and_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 196, 16, generator=g)
    m = lof_outliers(x)                                    # k = 30, contamination 0.05
    s = lof_scores(x)
    assert m.sum(1).tolist() == [10, 10, 10]
    top = s.topk(10, dim=1).indices
    assert torch.equal(m, torch.zeros_like(m).scatter(1, top, True))
    assert torch.equal(m[1:2], lof_outliers(x[1:2]))       # windows are independent


def test_lof_caps_k_for_few_tokens():
    s = lof_scores(_points(0, 1, 3), n_neighbors=30)       # k -> 2
    torch.testing.assert_close(s, lof_scores(_points(0, 1, 3), n_neighbors=2))
    assert lof_outliers(_points(5.0)).tolist() == [[False]]


def test_neighbour_mean_fill_hand_example():
    f = torch.arange(1.0, 10.0).view(1, 1, 3, 3)           # 1 2 3 / 4 5 6 / 7 8 9
    out = torch.zeros(1, 3, 3, dtype=torch.bool)
    out[0, 1, 1] = out[0, 0, 0] = True
    g = neighbour_mean_fill(torch.cat([f, 10 * f], 1), out)
    want = f.clone()
    want[0, 0, 1, 1] = (2 + 3 + 4 + 6 + 7 + 8 + 9) / 7     # the outlier corner is not a source
    want[0, 0, 0, 0] = (2 + 4) / 2                          # inside the grid, not outliers
    torch.testing.assert_close(g[:, :1], want)
    torch.testing.assert_close(g[:, 1:], 10 * want)         # channels alike
    # an outlier with no valid neighbour keeps its value; no outlier: identity
    both = torch.ones(1, 1, 2, dtype=torch.bool)
    torch.testing.assert_close(neighbour_mean_fill(f[..., :1, :2], both), f[..., :1, :2])
    torch.testing.assert_close(neighbour_mean_fill(f, torch.zeros(1, 3, 3, dtype=torch.bool)), f)


def test_cosine_affinity_and_aggregate():
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [1.0, 1.0]]])
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(cosine_affinity(x)[0], torch.tensor([[1, 1, c], [1, 1, c], [c, c, 1]]))
    a = cosine_affinity(x, beta=0.8)                        # 0.707 < 0.8 -> 0
    torch.testing.assert_close(a[0], torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    y = torch.tensor([[[2.0], [4.0], [6.0]]])
    torch.testing.assert_close(aggregate(y, a)[0], torch.tensor([[6 / (2 + 1e-6)], [6 / (2 + 1e-6)], [6 / (1 + 1e-6)]]))
    # threshold is strict: an entry equal to beta is kept
    assert float(cosine_affinity(x, beta=1.0)[0, 0, 1]) == pytest.approx(1.0)


def test_map_kk_attention_hand_example():
    v = torch.tensor([1.0, 2.0, 6.0]).view(1, 1, 3, 1)
    k = torch.zeros(1, 1, 3, 4)                             # k-k softmax uniform: every row reads mean(v) = 3
    eye = torch.eye(3)[None]
    out = map_kk_attention(k, k, v, eye)
    torch.testing.assert_close(out.flatten(), torch.tensor([(1 + 3) / 2, (2 + 3) / 2, (6 + 3) / 2]))
    # per-head probs broadcast: two heads, same map
    v2 = torch.cat([v, -v], 1)
    torch.testing.assert_close(map_kk_attention(k.expand(1, 2, 3, 4), k.expand(1, 2, 3, 4), v2, eye)[:, 1], -out[:, 0])


def test_depth_settings():
    p = SCCLIPParams()
    assert depth_settings(p, 12) == (8, 3, 3, 10, 0.3)
    assert depth_settings(p, 24) == (16, 6, 8, 19, 0.1)
    assert depth_settings(SCCLIPParams(pre_adjust_idx=7, res_cls=0.0), 12) == (7, 3, 3, 10, 0.0)
    pre, post, start, end, _ = depth_settings(p, 3)
    assert 0 <= pre <= 1 and 0 <= post <= 1 and 0 <= start < end <= 2
    with pytest.raises(InputError, match="pre_adjust_idx=11.*0..10"):
        depth_settings(SCCLIPParams(pre_adjust_idx=11), 12)
    with pytest.raises(InputError, match="multi_start_idx=5, multi_end_idx=5"):
        depth_settings(SCCLIPParams(multi_start_idx=5, multi_end_idx=5), 12)


SPEC_TABLE = {   # benchmark: (short side, logit_scale, prob_thd, area_thd) — spec methods/scclip.md §4
    "voc21": (336, 50, 0.15, 0.1), "voc20": (336, 40, 0.0, None), "context60": (336, 40, 0.15, None),
    "context59": (336, 40, 0.0, None), "coco_object": (336, 55, 0.35, None), "coco_stuff": (336, 40, 0.0, None),
    "cityscapes": (560, 40, 0.0, None), "ade20k": (336, 40, 0.0, None)}


def test_presets_equal_the_spec_table():
    cls = get_method("scclip")
    assert set(cls.PRESETS) == set(SPEC_TABLE)
    for bench, (short, scale, thd, area) in SPEC_TABLE.items():
        p = cls.resolve_params(bench, {})
        assert (p.short_side, p.long_side_cap, p.slide_crop, p.slide_stride, p.logit_scale, p.prob_thd,
                p.area_thd, p.pamr_steps) == (short, 2048, 224, 112, scale, thd, area, 0), bench
        assert p.class_format == "sclip" and p.classes_file.endswith(f"sclip_naclip/cls_{bench.replace('cityscapes', 'city_scapes')}.txt")
    d = cls.resolve_params(None, {})
    assert (d.short_side, d.slide_crop, d.slide_stride, d.logit_scale, d.prob_thd, d.area_thd) == \
        (336, 224, 112, 40.0, 0.0, None)
    voc = cls.default_classes(cls.resolve_params("voc21", {}))
    assert len(voc.names) == 21 and len(voc.queries) == 56


CLASSES = ["sky", "grass, lawn", "horse"]


def test_tiny_clip_end_to_end(smooth_rgb, tiny_clip):
    seg = ovss.Segmenter(method="scclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu")
    assert seg.method.clip is tiny_clip
    pred = seg.run(smooth_rgb)
    H, W = smooth_rgb.shape[:2]
    assert pred.logits.shape == (3, H, W) and torch.isfinite(pred.logits).all()
    assert torch.equal(pred.labels, pred.logits.argmax(0))
    # area filter on: class 0 never dropped, a class is either kept or -inf everywhere
    seg2 = ovss.Segmenter(method="scclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                          area_thd=0.99)
    lg = seg2.run(smooth_rgb).logits
    assert torch.isfinite(lg[0]).all() and all(torch.isfinite(c).all() or torch.isneginf(c).all() for c in lg)
    assert torch.isneginf(lg[1:]).all(dim=(1, 2)).any()


def test_windows_batch_like_one_at_a_time(tiny_clip):
    seg = ovss.Segmenter(method="scclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu")
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        f, h, w = seg.method.patch_features(x)
        one = torch.cat([seg.method.patch_features(x[i:i + 1])[0] for i in range(2)])
    assert (h, w) == (10, 10) and f.shape == (2, 100, tiny_clip.info.embed_dim)
    torch.testing.assert_close(f, one, atol=1e-5, rtol=1e-5)
    # the CLS weight res_cls matters
    seg0 = ovss.Segmenter(method="scclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                          res_cls=0.0)
    with torch.inference_mode():
        assert (seg0.method.patch_features(x)[0] - f).abs().max() > 1e-3


def test_bad_indices_are_input_errors(tiny_clip):
    with pytest.raises(InputError, match="pre_adjust_idx=8"):
        ovss.Segmenter(method="scclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                       pre_adjust_idx=8)
