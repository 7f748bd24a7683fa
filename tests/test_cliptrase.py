"""CLIPtrase (spec methods.md §2.6): self-correlation, qkv-sum, DBSCAN masks, voting, geometry, end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ovss
from ovss.backbones import attention as A
from ovss.errors import InputError
from ovss.images import load_image
from ovss.inference import clustering as C
from ovss.methods.cliptrase import (CLIPtrase, center_crop, crop_label_map, resize_short_side,
                                     short_side_size)


# ------------------------------------------------------------------------------------------ self-correlation
def test_self_correlation_by_hand():
    # one head, three tokens: q = e1, e2, e1+e2; k = 2q (cosine is scale-free); v = -q (cos(-a,-b) = cos(a,b))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(1, 1, 3, 2)
    r = 1 / math.sqrt(2)
    want = torch.tensor([[1, 0, r], [0, 1, r], [r, r, 1.0]])
    torch.testing.assert_close(C.self_correlation(q, 2 * q, -q)[0], want)
    # branches are averaged: v orthogonal pattern changes the mean by a third
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).view(1, 1, 3, 2)       # cos(v_a, v_b) = 1 everywhere
    torch.testing.assert_close(C.self_correlation(q, q, v)[0], (2 * want + 1) / 3)


def test_self_correlation_matches_per_head_cosine_loop():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 7, 5, generator=g) for _ in range(3))
    ref = torch.zeros(7, 7)
    for j in range(4):                                          # the official per-head cosine, summed / heads
        for z in (q, k, v):
            ref += F.cosine_similarity(z[0, j][:, None], z[0, j][None, :], dim=-1) / 3
    ref /= 4
    torch.testing.assert_close(C.self_correlation(q, k, v)[0], ref, rtol=1e-5, atol=1e-6)


def test_denoise_subtracts_cls_row_and_clamps():
    w = torch.tensor([[1.0, 0.2, 0.5], [0.3, 1.0, 0.4], [0.1, 0.6, 0.9]])
    want = torch.tensor([[1.0 - 0.2, 0.0], [0.6 - 0.2, 0.9 - 0.5]])             # max(W[1:,1:] - W[0,1:], 0)
    torch.testing.assert_close(C.denoise(w), want)


def test_qkv_sum_by_hand():
    # q = k = 0 -> two uniform softmaxes (1/T each); v = I -> softmax(s·I) has e^s/(e^s+T-1) on the diagonal.
    # With v = I the output is the weight matrix itself: rows sum to 3.
    T = 4
    s = T ** -0.5
    v = torch.eye(T).view(1, 1, T, T)
    zero = torch.zeros_like(v)
    out = A.qkv_sum(zero, zero, v)[0, 0]
    den = math.exp(s) + T - 1
    want = torch.full((T, T), 2 / T + 1 / den)
    want.fill_diagonal_(2 / T + math.exp(s) / den)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(out.sum(1), torch.full((T,), 3.0))


# ------------------------------------------------------------------------------------------ DBSCAN + masks
def _planted_rows(h=4, w=6, strength=1.0):
    """Patches of the left half correlate with the left half, those of the right half with the right half."""
    cols = torch.arange(h * w) % w
    left = (cols < w // 2).float()
    rows = torch.where(left[:, None].bool(), left[None, :], 1 - left[None, :]) * strength
    return rows, left


def test_dbscan_finds_planted_blocks_and_noise():
    rows, left = _planted_rows()
    rows = torch.cat([rows, torch.full((1, rows.shape[1]), 0.5)])       # an outlier row far from both blocks
    labels = C.dbscan_labels(rows, eps=0.5, min_samples=3)
    assert labels[-1] == -1                                             # noise
    # the first patch (left) opens cluster 0, the right half is cluster 1
    assert (labels[:-1] == np.where(left.numpy() > 0, 0, 1)).all()
    # same labels as scikit-learn's own Euclidean DBSCAN on the raw rows (what the official code calls)
    from sklearn.cluster import DBSCAN
    assert (DBSCAN(eps=0.5, min_samples=3).fit_predict(rows.numpy()) == labels).all()
    # min_samples larger than a block (12 patches): everything is noise
    assert (C.dbscan_labels(rows, eps=0.5, min_samples=13) == -1).all()


def test_pairwise_distances_are_euclidean():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    d = C.pairwise_distances(x)
    np.testing.assert_allclose(d, torch.cdist(x.double(), x.double()).numpy(), atol=1e-9)
    assert (np.diag(d) == 0).all()


def test_cluster_masks_recover_the_planted_halves():
    rows, left = _planted_rows(h=4, w=6)
    labels = torch.from_numpy(C.dbscan_labels(rows, 0.5, 3))
    masks = C.cluster_masks(rows, labels, (4, 6), (32, 48))
    assert masks.shape == (32, 48)
    assert (masks[:, :24] == 0).all() and (masks[:, 24:] == 1).all()
    assert C.cluster_masks(rows, torch.full((24,), -1), (4, 6), (32, 48)) is None


def test_cluster_means_skip_noise():
    rows = torch.tensor([[1.0, 0.0], [3.0, 2.0], [9.0, 9.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, -1, 1])
    torch.testing.assert_close(C.cluster_means(rows, labels, 2), torch.tensor([[2.0, 1.0], [0.0, 4.0]]))


def test_median_filter_maps_is_per_map_scipy():
    from scipy.ndimage import median_filter
    m = torch.rand(3, 11, 13, generator=torch.Generator().manual_seed(2))
    out = C.median_filter_maps(m, 7)
    for i in range(3):
        np.testing.assert_array_equal(out[i].numpy(), median_filter(m[i].numpy(), size=7, mode="reflect"))


# ------------------------------------------------------------------------------------------ voting
def test_vote_by_hand_ties_go_to_the_smallest_label():
    clusters = torch.tensor([[0, 0, 1, 1],
                             [0, 0, 1, 1],
                             [2, 2, 2, 2]])
    pred = torch.tensor([[2, 2, 3, 3],
                         [1, 1, 3, 0],
                         [4, 0, 4, 0]])
    voted, winners, shares = C.vote(pred, clusters, n_labels=5)
    assert winners.tolist() == [1, 3, 0]
    want = torch.tensor([[1, 1, 3, 3],        # cluster 0: two 2s, two 1s -> tie -> 1
                         [1, 1, 3, 3],        # cluster 1: three 3s, one 0 -> 3
                         [0, 0, 0, 0]])       # cluster 2: two 4s, two 0s -> tie -> 0
    assert torch.equal(voted, want)
    torch.testing.assert_close(shares, torch.tensor([[0, .5, .5, 0, 0], [.25, 0, 0, .75, 0], [.5, 0, 0, 0, .5]],
                                                    dtype=torch.float64))
    # the logits built from the shares reproduce the vote, ties included
    table = C.vote_logits(shares, shares.argmax(1))
    assert table.dtype == torch.float32 and torch.equal(table.T[:, clusters].argmax(0), want)
    torch.testing.assert_close(table[1, 3], torch.tensor(math.log(0.75)))


def test_vote_and_argmax_with_a_tie_order():
    # label 0 ranks last (CLIPtrase's background): ties now go to the other label
    order = torch.tensor([1, 2, 3, 4, 0])
    clusters = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 4, 0, 0]])
    voted, winners, _ = C.vote(pred, clusters, 5, order)
    assert winners.tolist() == [4, 0] and voted.tolist() == [[4, 4, 0, 0]]
    x = torch.tensor([[[3.0, 1.0]], [[3.0, 0.0]], [[1.0, 1.0]]])           # (3, 1, 2)
    assert C.channel_argmax(x).tolist() == [[0, 0]]
    assert C.channel_argmax(x, torch.tensor([1, 2, 0])).tolist() == [[1, 2]]
    lifted = C.lift_winner(x, torch.tensor([[1, 2]]))
    assert lifted.argmax(0).tolist() == [[1, 2]] and lifted[0, 0, 0] == 3.0 and lifted[1, 0, 0] > 3.0


def test_tie_order_puts_background_last():
    from ovss.methods.cliptrase import tie_order
    assert tie_order(["background", "cat", "dog"]).tolist() == [1, 2, 0]
    assert tie_order(["cat", "dog", "background"]) is None
    assert tie_order(["cat", "dog"]) is None


def test_vote_logits_survive_float32_rounding_of_huge_clusters():
    counts = torch.tensor([[2.0 ** 25, 2.0 ** 25 + 1, 0.0]], dtype=torch.float64)   # label 1 wins by one pixel
    shares = counts / counts.sum()
    assert shares.log().float()[0, 0] == shares.log().float()[0, 1]                  # float32 would tie -> 0
    table = C.vote_logits(shares, shares.argmax(1))
    assert shares.argmax(1).item() == 1 and table.argmax(1).item() == 1
    assert torch.isfinite(table).all() and table[0, 2] == pytest.approx(math.log(1e-8))


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("wh", [(300, 224), (224, 225), (227, 224), (500, 333), (224, 224)])
def test_resize_and_crop_match_torchvision(wh):
    tv = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    ours = center_crop(resize_short_side(img, 224), 224)
    ref = tv.CenterCrop(224)(tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC)(img))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    gt = Image.fromarray(rng.integers(0, 21, (wh[1], wh[0]), dtype=np.uint8))
    ref_gt = tv.CenterCrop(224)(tv.Resize(224, interpolation=tv.InterpolationMode.NEAREST)(gt))
    np.testing.assert_array_equal(crop_label_map(np.asarray(gt), 224), np.asarray(ref_gt))


def test_whole_image_size_rule_and_long_side_cap():
    assert short_side_size(56, 40, 64) == (89, 64)                      # int(64 * 56 / 40) = 89
    assert short_side_size(40, 56, 64) == (64, 89)
    assert short_side_size(4000, 500, 336, long_cap=1344) == (1344, 168)  # int(1344 * 500 / 4000)
    assert short_side_size(10000, 100, 336, long_cap=1344, min_side=16) == (1344, 16)
    assert short_side_size(400, 300, 336, long_cap=1344) == (448, 336)    # under the cap: unchanged rule


def test_center_crop_offsets_round_half_even():
    img = Image.fromarray(np.tile(np.arange(229, dtype=np.uint8), (224, 1)))
    # (225-224)/2 = 0.5 -> 0 ; (227-224)/2 = 1.5 -> 2 ; (229-224)/2 = 2.5 -> 2
    for width, left in ((225, 0), (227, 2), (229, 2)):
        out = np.asarray(center_crop(img.crop((0, 0, width, 224)), 224))
        assert out[0, 0] == left and out.shape == (224, 224)


def _tiny(preset="voc21", **kw):
    return ovss.Segmenter(method="cliptrase", classes=kw.pop("classes", ["cat", "dog, puppy", "grass"]),
                          clip="tiny-test", clip_weights="random", device="cpu", preset=preset,
                          templates="none", **kw)


def test_crop_and_target_transform_round_trip(tiny_clip):
    """A pixel's column index written into the image and into the GT lands on the same output pixel."""
    seg = _tiny(image_size=64)
    H, W = 64, 100                                   # already short side 64: the resize is the identity
    cols = np.tile(np.arange(W, dtype=np.uint8), (H, 1))
    rgb = np.stack([cols] * 3, -1)
    x, size = seg.method.preprocess(load_image(rgb))
    assert size == (64, 64) and x.shape == (1, 3, 64, 64)
    gt = seg.target_transform(cols.astype(np.int64) + 1000)      # 16-bit-like values survive
    assert gt.dtype == np.int64 and gt.shape == (64, 64)
    left = int(round((W - 64) / 2))
    std, mean = ovss.backbones.clip.CLIP_STD[0], ovss.backbones.clip.CLIP_MEAN[0]
    img_cols = torch.round((x[0, 0] * std + mean) * 255).to(torch.int64).numpy()
    np.testing.assert_array_equal(img_cols, gt - 1000)
    np.testing.assert_array_equal(gt[0], np.arange(left, left + 64) + 1000)
    # without a preset nothing is cropped and the ground truth is left alone
    assert seg.method.params.center_crop and _tiny(None).target_transform(cols) is cols


# ------------------------------------------------------------------------------------------ presets / classes
def test_presets_build_the_official_class_lists():
    def classes(bench):
        return CLIPtrase.default_classes(CLIPtrase.resolve_params(bench, {}))
    # background = class 0 (ovss's benchmark order; the dataset readers map CLIPtrase's last index to 0)
    voc21 = classes("voc21")
    assert len(voc21) == 21 and voc21.names[0] == "background" and voc21.names[1] == "aeroplane"
    assert len(voc21.queries) == 33 + 20 and voc21.queries[:2] == ("background", "sky")
    assert voc21.queries[33] == "aeroplane" and voc21.query_to_class[33] == 1
    assert "beachhill" in voc21.queries and voc21.queries.count("bed") == 2
    assert set(voc21.query_to_class[:33]) == {0}
    from ovss.data.classnames import class_names
    for bench in ("voc21", "context60", "coco_object", "context59", "ade20k"):
        assert len(classes(bench)) == len(class_names(bench))              # the dataset's class count
    assert classes("voc21").names[1:4] == class_names("voc21")[1:4] == ("aeroplane", "bicycle", "bird")
    coco = classes("coco_object")
    assert len(coco) == 81 and len(coco.queries) == 107 + 80 and coco.names[0] == "background"
    assert len(classes("context60")) == 60 and classes("context60").queries[0] == "background"
    voc20 = classes("voc20")
    assert len(voc20) == 20 and not voc20.has_synonyms
    ade847 = classes("ade847")                                   # names with commas are not split
    assert len(ade847) == 847 and "building, edifice" in ade847.queries
    assert len(classes("ade20k")) == 150 and len(classes("context459")) == 459
    assert len(classes("coco_stuff")) == 171 and len(classes("context59")) == 59
    p = CLIPtrase.resolve_params("voc20", {})
    assert p.cls_weighting and (p.image_size, p.eps, p.min_samples) == (224, 0.7, 3)
    assert not CLIPtrase.resolve_params("voc21", {}).cls_weighting
    p = CLIPtrase.resolve_params("voc21", dict(image_size=336, eps=1.1, min_samples=7))
    assert (p.image_size, p.eps, p.min_samples, p.center_crop) == (336, 1.1, 7, True)
    with pytest.raises(InputError, match="cityscapes"):
        CLIPtrase.resolve_params("cityscapes", {})
    with pytest.raises(InputError, match="no parameter 'epsilon'"):
        CLIPtrase.resolve_params("voc21", {"epsilon": 1})


def test_background_first_preset_equals_background_last_file_up_to_the_permutation(tmp_path, tiny_clip, smooth_rgb):
    """The preset's list (background = class 0) gives the official result of the file order [classes; background]
    (check.py's), ties included, relabelled."""
    import ovss.methods.cliptrase as T
    p = CLIPtrase.resolve_params("voc21", {})
    fg = T._read_lines(p.classes_file)
    bg = T._read_lines(p.background_file)
    f = tmp_path / "voc21_bg_last.txt"
    f.write_text("\n".join(fg + [", ".join(bg)]))
    kw = dict(image_size=64, eps=0.5, min_samples=2)
    first = _tiny("voc21", classes=None, **kw)
    last = _tiny("voc21", classes=str(f), **kw)
    assert first.classes[0] == "background" and last.classes[-1] == "background"
    assert first.method.tie_order.tolist() == list(range(1, 21)) + [0] and last.method.tie_order is None
    to_first = torch.tensor([i + 1 for i in range(20)] + [0])              # last-order label -> first-order label
    for rgb in (smooth_rgb, np.kron(smooth_rgb, np.ones((2, 2, 1), dtype=np.uint8))):
        a, b = first.run(rgb), last.run(rgb)
        assert torch.equal(a.labels, to_first[b.labels])
        assert torch.equal(a.extras["pre_vote"], to_first[b.extras["pre_vote"]])
        assert torch.equal(a.logits.argmax(0), a.labels)


def test_voc21_file_with_background_line_parses_like_the_official_order(tmp_path, tiny_clip):
    f = tmp_path / "c.txt"
    f.write_text("cat\ndog\nbackground, sky, wall")
    seg = _tiny("voc21", classes=str(f))
    assert seg.classes == ["cat", "dog", "background"]
    assert seg.method.classes.query_to_class == (0, 1, 2, 2, 2)


# ------------------------------------------------------------------------------------------ network + end to end
def test_encode_matches_an_explicit_reference(tiny_clip):
    seg = _tiny(image_size=64)
    clip = tiny_clip
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z, wsc, h, w = seg.method.encode(x)
        L = len(clip.blocks)
        t, *_ = clip.embed(x)
        t = clip.run_blocks(t, 0, L - 2)
        q, k, v = clip.qkv(L - 2, t)
        ref_w = sum(F.cosine_similarity(zz[0, j][:, None], zz[0, j][None, :], dim=-1)
                    for zz in (q, k, v) for j in range(q.shape[1])) / (3 * q.shape[1])
        t = clip.blocks[L - 2](t)                                  # the unmodified open_clip block
        q, k, v = clip.qkv(L - 1, t)
        s = q.shape[-1] ** -0.5
        att = sum(((a * s) @ a.transpose(-1, -2)).softmax(-1) for a in (q, k, v))
        y = t + clip.attn_out(L - 1, att @ v)
        blk = clip.blocks[L - 1]
        y = y + blk.mlp(blk.ln_2(y))
        ref_z = clip.head(y[0])
        ref_z = ref_z / ref_z.norm(dim=-1, keepdim=True)
    assert (h, w) == (4, 5) and z.shape == (21, clip.info.embed_dim) and wsc.shape == (21, 21)
    torch.testing.assert_close(wsc, ref_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, ref_z, rtol=1e-4, atol=1e-5)


def _check_vote_invariants(pred):
    labels, ex = pred.labels, pred.extras
    assert torch.equal(pred.logits.argmax(0), labels)
    if "clusters" in ex:
        cl, pre = ex["clusters"], ex["pre_vote"]
        for c in cl.unique():
            m = cl == c
            vals, counts = pre[m].unique(return_counts=True)
            assert (labels[m] == vals[counts.argmax()]).all()       # mode, smallest on ties


def test_end_to_end_preset_outputs_the_crop(tiny_clip, smooth_rgb):
    rgb = np.kron(smooth_rgb, np.ones((2, 2, 1), dtype=np.uint8))          # 80 x 112
    seg = _tiny("voc21", image_size=64, eps=0.5, min_samples=2)
    pred = seg.run(rgb)
    assert pred.logits.shape == (3, 64, 64) and pred.labels.shape == (64, 64)
    assert pred.labels.dtype == torch.int64 and torch.isfinite(pred.logits).all()
    _check_vote_invariants(pred)
    assert torch.equal(seg.predict(rgb), pred.labels)
    assert torch.equal(seg.predict_logits(rgb), pred.logits)


def test_end_to_end_whole_image_returns_the_original_size(tiny_clip, smooth_rgb):
    seg = _tiny(None, image_size=64, eps=0.5, min_samples=2)
    assert not seg.method.params.center_crop and seg.method.params.scale_eps
    assert seg.method.params.long_side_cap == 1344 and seg.method.params.image_size == 64
    pred = seg.run(smooth_rgb)                                              # 40 x 56 -> 64 x 89, grid 4 x 5
    assert pred.logits.shape == (3, 40, 56) and pred.labels.shape == (40, 56)
    _check_vote_invariants(pred)
    assert seg.method.dbscan_eps(20) == pytest.approx(0.5 * math.sqrt(20 / 16))


def test_end_to_end_voc20_weighting_and_no_cluster_fallback(tiny_clip, smooth_rgb):
    seg = _tiny("voc20", image_size=64, min_samples=10_000)                # DBSCAN: everything is noise
    pred = seg.run(smooth_rgb)
    assert pred.extras["n_clusters"] == 0 and "clusters" not in pred.extras
    assert torch.equal(pred.labels, pred.extras["pre_vote"])
    m = seg.method
    with torch.no_grad():
        x, size = m.preprocess(load_image(smooth_rgb))
        z, _, h, w = m.encode(x)
        q = m.scale * (z[1:] @ m.text.T)
        q = F.interpolate(q.T.reshape(1, -1, h, w), size=size, mode="bilinear", align_corners=False)[0]
        q = q * (m.scale * (z[0] @ m.text.T))[:, None, None]             # per-query CLS logit
        want = torch.stack([q[0], q[1:3].amax(0), q[3]])                 # "dog, puppy" -> max
    torch.testing.assert_close(pred.logits, want)
    assert m.scale == pytest.approx(100.0, rel=1e-5)                     # exp(logit_scale) of the loaded CLIP


def test_channel_argmax_first_index_on_ties():
    x = torch.tensor([[[1.0, 2.0, 5.0]], [[1.0, 3.0, 5.0]], [[0.0, 3.0, 5.0]]])
    assert torch.equal(C.channel_argmax(x), torch.tensor([[0, 1, 0]]))


def test_single_thread_restores_the_thread_count():
    n = torch.get_num_threads()
    with C.single_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


def test_whole_image_panorama_is_capped_and_returned_at_full_size(tiny_clip):
    rgb = np.random.default_rng(5).integers(0, 256, (40, 400, 3), dtype=np.uint8)
    seg = _tiny(None, image_size=64, long_side_cap=256, eps=0.5, min_samples=2)
    x, size = seg.method.preprocess(load_image(rgb))
    assert x.shape == (1, 3, 25, 256) and size == (40, 400)          # int(256 * 40 / 400) = 25
    pred = seg.run(rgb)
    assert pred.logits.shape == (3, 40, 400) and pred.labels.shape == (40, 400)
    _check_vote_invariants(pred)


@pytest.mark.slow
def test_eval_runner_on_the_cliptrase_layout_equals_a_hand_loop(tmp_path, tiny_clip):
    """ovss eval (cliptrase layout + metric, voc21 preset) = predict on each image vs the centre-cropped GT."""
    import fakedata
    from ovss.data import get_dataset
    from ovss.eval.metrics import ConfusionMatrix, cliptrase_metrics
    from ovss.eval.runner import EvalConfig, evaluate
    fakedata.make_dataset(tmp_path / "d", "voc21", layout="cliptrase", n=2, sizes=[(70, 90), (96, 64)])
    over = dict(image_size=64, templates="none")
    cfg = EvalConfig(method="cliptrase", dataset="voc21", data_root=str(tmp_path / "d"), layout="cliptrase",
                     metric="cliptrase", clip="tiny-test", clip_weights="random", device="cpu", overrides=over)
    r = evaluate(cfg, tmp_path / "out", progress=False)
    seg = ovss.Segmenter(method="cliptrase", classes=None, preset="voc21", clip="tiny-test", clip_weights="random",
                         device="cpu", **over)
    assert len(seg.classes) == 21 and seg.classes[0] == "background"           # the dataset readers' order
    ds = get_dataset("voc21", tmp_path / "d", layout="cliptrase")
    cm = ConfusionMatrix(21, 255)
    for s in ds.samples:
        gt = seg.target_transform(ds.load_gt(s))
        pred = seg.predict(str(s.image))
        assert pred.shape == gt.shape == (64, 64)
        cm.update(pred, gt)
    np.testing.assert_array_equal(r.confusion, cm.numpy())
    assert r.summary == cliptrase_metrics(cm.numpy()).summary


def test_method_vote_ties_prefer_foreground_over_background_first_class(tiny_clip, monkeypatch):
    """Official order [classes; background]: a cluster split evenly between background and a class takes the class,
    also when background is class 0 (the preset's order); a pre-vote exact tie goes to the class too."""
    import ovss.methods.cliptrase as T
    seg = _tiny("voc21", classes=["background, sky", "cat", "dog"], image_size=64)
    m = seg.method
    logits = torch.zeros(3, 2, 4)
    logits[0, :, :2] = 1.0                     # left half: background
    logits[2, :, 2:] = 1.0                     # right half: dog
    logits[1, 0, 0] = 1.0                      # (0, 0): exact tie background / cat -> cat (ranks before background)
    monkeypatch.setattr(m, "class_logits", lambda z, h, w, size: logits.clone())
    monkeypatch.setattr(T, "dbscan_labels", lambda rows, eps, n: np.zeros(rows.shape[0], dtype=np.int64))
    monkeypatch.setattr(T, "cluster_masks", lambda *a, **k: torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    pred = m.postprocess(torch.zeros(5, 4), torch.zeros(5, 5), 2, 2, (2, 4))
    # row 0: cat, background, dog, dog -> dog wins (2 votes); row 1: background x2, dog x2 -> tie -> dog
    assert pred.extras["pre_vote"].tolist() == [[1, 0, 2, 2], [0, 0, 2, 2]]
    assert pred.labels.tolist() == [[2, 2, 2, 2], [2, 2, 2, 2]]
    assert torch.equal(pred.logits.argmax(0), pred.labels)
    # no cluster: the pre-vote labels, and the logits' argmax follows them through the tie
    monkeypatch.setattr(T, "cluster_masks", lambda *a, **k: None)
    pred = m.postprocess(torch.zeros(5, 4), torch.zeros(5, 5), 2, 2, (2, 4))
    assert pred.labels.tolist() == [[1, 0, 2, 2], [0, 0, 2, 2]] and torch.equal(pred.logits.argmax(0), pred.labels)
