"""CorrCLIP: region-map operations by hand (ranks, merging, scope, per-region mode), mask class tokens,
presets = the spec table, and end-to-end runs on the tiny random models (limits, batching, errors)."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.backbones.mask_tokens import block_with_mask_tokens, region_token_mask
from ovss.errors import InputError
from ovss.inference.region_masks import write_region_masks
from ovss.inference.regions import dense_ranks, merge_regions, region_means, region_mode, scope_mask
from ovss.methods.corrclip import MASK_FOLDERS, PRESETS, CorrCLIP, nearest, spatial_layers


# ---------------------------------------------------------------------------------------------- ranks / means
def test_dense_ranks_per_row():
    v = torch.tensor([[5, 3, 5, 9], [7, 7, 7, 7], [-1, 10000, 2, -1]])
    r, n = dense_ranks(v)
    assert r.tolist() == [[1, 0, 1, 2], [0, 0, 0, 0], [0, 2, 1, 0]]
    assert n.tolist() == [3, 1, 3]


def test_region_means():
    f = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]]])
    m = region_means(f, torch.tensor([[1, 1, 0]]), 3)
    torch.testing.assert_close(m, torch.tensor([[[0.0, 4.0], [2.0, 1.0], [0.0, 0.0]]]))


# ---------------------------------------------------------------------------------------------- merging
def _unit(*v):
    return F.normalize(torch.tensor(v, dtype=torch.float32), dim=0)


def test_merge_regions_hand_example():
    # patches: 0 (unsegmented), regions 4, 6, 8 (two patches each for 6); region means:
    # 4 -> e1, 6 -> (0.95, 0.31..) (cos with e1 0.95: D = 0.05 <= 0.2), 8 -> e2 (D = 1 with e1, 0.69 with 6)
    e1, e2, a = _unit(1, 0), _unit(0, 1), _unit(0.95, (1 - 0.95 ** 2) ** 0.5)
    feats = torch.stack([e2, e1, a, a, e2])[None]
    m = torch.tensor([[0, 4, 6, 6, 8]])
    out = merge_regions(m, feats, eps=0.2)
    assert out.tolist() == [[0, 10000, 10000, 10000, 10001]]
    # with eps below 0.05 nothing merges: components in the order of the smallest region value
    assert merge_regions(m, feats, eps=0.01).tolist() == [[0, 10000, 10001, 10001, 10002]]


def test_merge_regions_chain_is_transitive_and_min_is_kept():
    # no zero in this window: its minimum (2) plays "unsegmented" and keeps its value;
    # 3 ~ 5 (cos 0.9) and 5 ~ 7 (cos 0.9) but 3 !~ 7 (cos 0.62): one component (DBSCAN, min_samples = 1)
    c = 0.9
    s = (1 - c * c) ** 0.5
    a, b = _unit(1, 0, 0), _unit(c, s, 0)
    d = _unit(np.cos(2 * np.arccos(c)), np.sin(2 * np.arccos(c)), 0)     # at angle 2·acos(c) from a
    feats = torch.stack([_unit(0, 0, 1), a, b, d])[None]
    assert abs(float(a @ d) - 0.62) < 0.01 and abs(float(b @ d) - c) < 1e-5
    out = merge_regions(torch.tensor([[2, 3, 5, 7]]), feats, eps=0.2)
    assert out.tolist() == [[2, 10000, 10000, 10000]]


def test_merge_regions_two_values_unchanged_and_batch_independent():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(3, 6, 4), dim=-1)
    maps = torch.tensor([[0, 0, 5, 5, 5, 0],          # 2 values: unchanged
                         [1, 2, 3, 4, 5, 6],
                         [0, 9, 9, 3, 3, 10000]])
    both = merge_regions(maps, feats)
    assert both[0].tolist() == [0, 0, 5, 5, 5, 0]
    for i in range(3):
        assert both[i].tolist() == merge_regions(maps[i:i + 1], feats[i:i + 1])[0].tolist()


def test_merge_regions_equals_sklearn_dbscan():
    from sklearn.cluster import DBSCAN
    g = torch.Generator().manual_seed(3)
    B, L = 4, 60
    feats = F.normalize(torch.randn(B, L, 3, generator=g) + torch.tensor([2.0, 0, 0]), dim=-1)
    maps = torch.randint(0, 12, (B, L), generator=g)
    out = merge_regions(maps, feats, eps=0.2)
    for b in range(B):   # the official loop, per window
        vals = torch.unique(maps[b])
        fr = F.normalize(torch.stack([feats[b][maps[b] == v].mean(0) for v in vals]), dim=1)[1:]
        s = fr @ fr.T
        lab = DBSCAN(eps=0.2, min_samples=1, metric="precomputed").fit_predict((s.max() - s).numpy())
        want = maps[b].clone()
        for i, c in enumerate(lab, start=1):
            want[maps[b] == vals[i]] = int(c) + 10000
        assert out[b].tolist() == want.tolist()
    assert len(torch.unique(out)) < len(torch.unique(maps))      # something merged


# ---------------------------------------------------------------------------------------------- scope
def test_scope_mask_hand_example():
    sim = torch.tensor([[1.0, 0.9, 0.1, 0.6],
                        [0.9, 1.0, 0.2, 0.3],
                        [0.1, 0.2, 1.0, 0.0],
                        [0.6, 0.3, 0.0, 1.0]])[None]
    # mean = (4 + 2*(0.9+0.1+0.6+0.2+0.3+0.0)) / 16 = 8.2/16 = 0.5125
    m = torch.tensor([[0, 1, 1, 2]])            # patch 0 unsegmented; {1, 2} one region; {3} another
    want = torch.tensor([[1, 1, 0, 1],          # unsegmented row: sim > mean
                         [1, 1, 1, 0],          # (1,0): unsegmented side, 0.9 > mean; (1,2) same region
                         [0, 1, 1, 0],          # (2,0): 0.1 < mean
                         [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(scope_mask(m, sim)[0], want)


# ---------------------------------------------------------------------------------------------- label correction
def test_region_mode_hand_example():
    labels = torch.tensor([[1, 1, 2, 3], [2, 0, 0, 1]])
    regions = torch.tensor([[0, 5, 5, 9], [5, 7, 7, 9]])
    # 0 = minimum: keeps its label; region 5 {1, 2, 2} -> 2; 7 {0, 0} -> 0; 9 {3, 1} tie -> smallest 1
    assert region_mode(labels, regions, 4).tolist() == [[1, 2, 2, 1], [2, 0, 0, 1]]
    # the minimum is whatever value is smallest (e.g. EoMT's -1), even a "real" region id
    assert region_mode(labels, regions - 1, 4).tolist() == [[1, 2, 2, 1], [2, 0, 0, 1]]
    assert region_mode(labels, torch.full_like(regions, 3), 4).tolist() == labels.tolist()


# ---------------------------------------------------------------------------------------------- mask tokens
def test_region_token_mask_hand_example():
    m = region_token_mask(torch.tensor([[0, 1, 1, 0]]), 3)
    assert m[0].int().tolist() == [[1, 1, 0, 0, 1], [1, 0, 1, 1, 0], [1, 0, 0, 0, 0]]


def test_block_with_mask_tokens_keeps_vanilla_path_and_whole_image_token_is_cls(tiny_clip):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 48, generator=g)
    t, h, w = tiny_clip.embed(x)
    hw = h * w
    ranks = torch.zeros(2, hw, dtype=torch.long)
    ranks[:, hw // 2:] = 1                       # token 1: the second half of the patches
    n = 3                                        # token 2: no patches (a padding row)
    mask = region_token_mask(ranks, n)
    mask[:, 0] = True                            # token 0: every patch (the whole image), like CLS
    mct = t[:, :1].expand(2, n, t.shape[-1])
    ref = t
    for i in range(len(tiny_clip.blocks)):
        t, mct = block_with_mask_tokens(tiny_clip, i, t, mct, mask)
        ref = tiny_clip.blocks[i](ref)
        torch.testing.assert_close(t, ref, atol=1e-5, rtol=1e-5)       # the image path is vanilla CLIP
        torch.testing.assert_close(mct[:, 0], t[:, 0], atol=1e-5, rtol=1e-5)  # whole-image token = CLS
    assert (mct[:, 1] - t[:, 0]).abs().max() > 1e-3
    _, only = block_with_mask_tokens(tiny_clip, 0, t, mct, mask, image_tokens=False)
    torch.testing.assert_close(only, block_with_mask_tokens(tiny_clip, 0, t, mct, mask)[1])


# ---------------------------------------------------------------------------------------------- constants / presets
def test_spatial_layers():
    assert list(spatial_layers(12)) == [5, 6, 7, 8, 9]
    assert list(spatial_layers(24)) == list(range(10, 22))
    assert list(spatial_layers(32)) == list(range(2, 30))
    assert list(spatial_layers(16)) == list(range(2, 14))
    assert list(spatial_layers(3)) == [0]


def test_nearest_is_torch_nearest():
    m = torch.arange(42 * 42).view(1, 42, 42)
    assert torch.equal(nearest(m, (21, 21))[0], m[0, ::2, ::2])


def test_presets_equal_the_spec_table():
    table = {  # bench: (short side, crop, stride, prob_thd, class lines, background words)
        "voc21": (336, 336, 112, 0.2, 21, 26), "voc20": (336, 336, 112, 0.0, 20, 1),
        "context60": (336, 336, 112, 0.15, 60, 1), "context59": (336, 336, 112, 0.0, 59, 1),
        "coco_object": (336, 336, 112, 0.25, 81, 16), "coco_stuff": (336, 336, 112, 0.0, 171, 1),
        "cityscapes": (448, 224, 112, 0.0, 19, 1), "ade20k": (448, 336, 112, 0.0, 150, 1)}
    assert set(PRESETS) == set(table) == set(MASK_FOLDERS)
    for bench, (s, crop, stride, thd, lines, bg) in table.items():
        p = CorrCLIP.resolve_params(bench, {})
        assert (p.short_side, p.long_side_cap, p.slide_crop, p.slide_stride, p.prob_thd, p.logit_scale,
                p.pad_multiple) == (s, 2048, crop, stride, thd, 40.0, 56), bench
        assert (p.alpha, p.beta, p.tau, p.merge_eps, p.vfm, p.templates) == (1.0, 0.5, 4.0, 0.2, "dino_vitb8",
                                                                                "imagenet")
        assert p.classes_file.endswith(f"official/corrclip/{p.classes_file.rsplit('/', 1)[1]}")
        text = open(p.classes_file).read()
        assert not text.endswith("\n") and len(text.split("\n")) == lines
        assert len(text.split("\n")[0].split("; ")) == bg
        assert "person" not in text.replace("; ", "\n").split("\n")
        assert p.background_first == (bench in ("voc21", "context60", "coco_object"))
    assert "people" in open(CorrCLIP.resolve_params("voc21", {}).classes_file).read().split("\n")
    d = CorrCLIP.resolve_params(None, {})
    assert (d.short_side, d.slide_crop, d.slide_stride, d.pad_multiple, d.region_masks_dir) == (336, 336, 112, 56, None)


# ---------------------------------------------------------------------------------------------- end to end (tiny)
TINY = dict(method="corrclip", clip="tiny-test", clip_weights="random", vfm="tiny_vit8", vfm_weights="random",
            device="cpu", classes=["sky", "tree", "road", "car"], short_side=112, slide_crop=112,
            slide_stride=56)


@pytest.fixture
def image_and_masks(tmp_path, smooth_rgb):
    from PIL import Image
    path = tmp_path / "img.png"
    Image.fromarray(smooth_rgb).save(path)
    regions = np.zeros(smooth_rgb.shape[:2], dtype=np.int32)
    regions[:20, :28] = 3
    regions[20:, 10:40] = 7
    regions[5:15, 40:] = 12
    write_region_masks(str(tmp_path / "masks" / "img.npz"), regions)
    return str(path), str(tmp_path / "masks"), regions


def test_end_to_end_labels_constant_per_region(image_and_masks, tiny_clip):
    path, folder, regions = image_and_masks
    seg = ovss.Segmenter(region_masks_dir=folder, **TINY)
    logits = seg.predict_logits(path)
    labels = torch.as_tensor(np.asarray(seg.predict(path)))
    assert logits.shape == (4,) + regions.shape and torch.isfinite(logits).all()
    for v in (3, 7, 12):
        assert len(torch.unique(labels[torch.from_numpy(regions == v)])) == 1
    arg = logits.argmax(0)
    un = torch.from_numpy(regions == 0)
    assert torch.equal(labels[un], arg[un])                    # unsegmented pixels keep the argmax
    assert torch.equal(labels, region_mode(arg, torch.from_numpy(regions), 4))


def test_window_batching_and_region_padding_do_not_change_results(image_and_masks, tiny_clip):
    path, folder, _ = image_and_masks
    a = ovss.Segmenter(region_masks_dir=folder, window_batch=8, **TINY).predict_logits(path)
    b = ovss.Segmenter(region_masks_dir=folder, window_batch=1, **TINY).predict_logits(path)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # slide_crop = 0: the whole image as one window (padded to 56: 112 x 157 -> 112 x 168)
    whole = ovss.Segmenter(region_masks_dir=folder, **dict(TINY, slide_crop=0)).predict_logits(path)
    assert whole.shape == a.shape and torch.isfinite(whole).all() and (whole - a).abs().max() > 1e-4


def test_main_branch_alone_is_proxy_style_block(image_and_masks, tiny_clip):
    """α = β = 0: the features are ln_post·proj of A·V (A = the reconstructed correlation) on vanilla CLIP
    blocks, i.e. ProxyCLIP's reduced last block with CorrCLIP's attention; β > 0 changes them."""
    from ovss.inference.splice import proxy_last_block
    path, folder, _ = image_and_masks
    seg = ovss.Segmenter(region_masks_dir=folder, alpha=0.0, beta=0.0, **TINY)
    meth = seg.method
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 112, 112, generator=g)
    m = torch.randint(0, 5, (2, 112, 112), generator=g)
    with torch.inference_mode():
        f, I, J = meth.patch_features_regions(x, m)
        attn, _, _, _ = meth.correlation(x, m)
        want = tiny_clip.head(proxy_last_block(tiny_clip, x, attn, (I, J)))
        torch.testing.assert_close(f, want, atol=1e-5, rtol=1e-5)
        meth.params.beta = 0.5
        assert (meth.patch_features_regions(x, m)[0] - want).abs().max() > 1e-3


def test_correlation_rows_are_distributions_restricted_to_scope(tiny_clip):
    seg = ovss.Segmenter(region_masks_dir=None, **TINY)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 112, 112, generator=g)
    m = torch.zeros(1, 112, 112, dtype=torch.long)
    m[:, :56] = 1
    m[:, 56:, :56] = 2
    with torch.inference_mode():
        attn, merged, I, J = seg.method.correlation(x, m)
    torch.testing.assert_close(attn.sum(-1), torch.ones(1, I * J))
    assert (I, J) == (14, 14) and merged.shape == (1, 14, 14)
    r = merged.flatten()
    seg_pairs = (r[:, None] != r[None, :]) & (r[:, None] != r.min()) & (r[None, :] != r.min())
    assert (attn[0][seg_pairs] == 0).all()        # different (merged) regions never mix


def test_array_input_with_masks_dir_is_an_input_error(image_and_masks, smooth_rgb, tiny_clip):
    _, folder, _ = image_and_masks
    seg = ovss.Segmenter(region_masks_dir=folder, **TINY)
    with pytest.raises(InputError, match="file name"):
        seg.predict_logits(smooth_rgb)
    with pytest.raises(InputError, match="other.npz"):
        from PIL import Image
        p = folder + "/../other.png"
        Image.fromarray(smooth_rgb).save(p)
        seg.predict_logits(p)


def test_generated_masks_path(monkeypatch, smooth_rgb, tiny_clip):
    calls = {}

    def load_mask_generator(kind="auto", weights=None, device=None, dtype=None, model=None, **amg):
        calls["args"] = (kind, weights, model)

        def gen(rgb):
            calls["shape"] = rgb.shape
            out = np.zeros(rgb.shape[:2], dtype=np.int32)
            out[:, : rgb.shape[1] // 2] = 1
            return out
        return gen

    fake = types.ModuleType("ovss.backbones.mask_generator")
    fake.load_mask_generator = load_mask_generator
    monkeypatch.setitem(sys.modules, "ovss.backbones.mask_generator", fake)
    seg = ovss.Segmenter(mask_generator="sam2", mask_generator_weights="w.pt", **TINY)
    labels = np.asarray(seg.predict(smooth_rgb))
    assert calls["args"] == ("sam2", "w.pt", None) and calls["shape"] == smooth_rgb.shape
    assert len(np.unique(labels[:, :28])) == 1

    def bad(kind="auto", weights=None, device=None, dtype=None, model=None, **amg):
        return lambda rgb: np.zeros((3, 3), dtype=np.int32)
    fake.load_mask_generator = bad
    seg = ovss.Segmenter(mask_generator="auto", **TINY)
    with pytest.raises(InputError, match="mask generator returned"):
        seg.predict(smooth_rgb)


def test_bad_parameters(tiny_clip):
    with pytest.raises(InputError, match="pad_multiple"):
        ovss.Segmenter(pad_multiple=0, **TINY)
    with pytest.raises(InputError, match="slide_stride"):
        ovss.Segmenter(region_masks_dir=None, **dict(TINY, slide_stride=200)).method.cosine_logits_regions(
            torch.zeros(1, 3, 112, 150), torch.zeros(112, 150, dtype=torch.long), (112, 150))


def test_slide_inference_carries_a_padded_aux_map():
    from ovss.inference.window import slide_inference
    img = torch.zeros(1, 1, 4, 6)
    aux = torch.arange(24).view(1, 4, 6)
    seen = []

    def fwd(x, a):
        seen.append(a.clone())
        assert a.shape[-2:] == x.shape[-2:] == (8, 8)
        return a.float()

    out = slide_inference(img, 4, 2, fwd, pad_multiple=8, batch_size=1, aux=aux, aux_pad=10000)
    assert torch.equal(out, aux.float())                 # windows cropped back and averaged: the map itself
    assert len(seen) == 2 and torch.equal(seen[0][0, 0, 2:6, 2:6], aux[0, :, :4])
    assert (seen[1][0, :, :2] == 10000).all() and (seen[1][0, :, :, 6:] == 10000).all()


def test_real_tiny_mask_generator_end_to_end(smooth_rgb, tiny_clip):
    """The on-the-fly path with ovss's own generator (tiny random SAM 2 / SAM: the interface, not the masks)."""
    seg = ovss.Segmenter(mask_generator="auto", mask_generator_weights="random", mask_generator_model="tiny-test",
                         **TINY)
    logits = seg.predict_logits(smooth_rgb)
    regions = seg.method.region_map(ovss.images.load_image(smooth_rgb))
    assert regions.shape == smooth_rgb.shape[:2] and regions.dtype == np.int32
    want = region_mode(logits.argmax(0), torch.from_numpy(regions), 4)
    assert np.array_equal(np.asarray(seg.predict(smooth_rgb)), want.numpy())
