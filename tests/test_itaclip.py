"""ITACLIP and its building blocks: layer-pooled self-self attention, the five image views, the label closing, the
auxiliary (LLM) texts, presets, text mixing, the view merge and the label rule."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import ovss
from ovss.backbones.attention import attention_probs, last_block
from ovss.backbones.layer_attention import check_layers, layer_pooled_tokens, pooled_attention
from ovss.errors import InputError
from ovss.inference.augment import (engineered_views, gaussian_blur, gaussian_kernel1d, grayscale,
                                    unflip_mean)
from ovss.inference.morphology import close_labels
from ovss.inference.probs import threshold_labels
from ovss.methods import get_method
from ovss.text import encode_queries, load_templates, parse_classes
from ovss.text.auxiliary import SHIPPED, lookup_auxiliary, read_auxiliary, source_path
from ovss.text.templates import resource_path

TINY = dict(clip="tiny-test", clip_weights="random", device="cpu", intermediate_layers=(0, 1))


# ---------------------------------------------------------------------------------------------- attention
def _qkv():
    """One head, T=2, d=1 (scale 1): QQᵀ = 0 -> rows (1/2, 1/2); KKᵀ = [[ln 3, 0], [0, 0]] -> rows (3/4, 1/4),
    (1/2, 1/2); QKᵀ = 0 -> (1/2, 1/2)."""
    q = torch.zeros(1, 1, 2, 1, dtype=torch.float64)
    k = torch.tensor([math.sqrt(math.log(3.0)), 0.0], dtype=torch.float64).view(1, 1, 2, 1)
    v = torch.tensor([1.0, 5.0], dtype=torch.float64).view(1, 1, 2, 1)
    return q, k, v


def test_pooled_attention_hand_computed():
    q, k, v = _qkv()
    # self-self: (1/2·1 + 1/2·5) + (3/4·1 + 1/4·5) = 3 + 2 = 5 ; row 1: 3 + 3 = 6
    out = pooled_attention([(q, k)], v, [1.0])
    assert torch.allclose(out.flatten(), torch.tensor([5.0, 6.0], dtype=torch.float64))
    # vanilla: uniform rows -> 3, 3
    out = pooled_attention([(q, k)], v, [1.0], self_self=False)
    assert torch.allclose(out.flatten(), torch.tensor([3.0, 3.0], dtype=torch.float64))
    # weighted sum over two pairs: 0.5·(5, 6) + 0.25·(self-self of (k, q) = the same maps swapped) = 0.75·(5, 6)
    out = pooled_attention([(q, k), (k, q)], v, [0.5, 0.25])
    assert torch.allclose(out.flatten(), torch.tensor([3.75, 4.5], dtype=torch.float64))
    with pytest.raises(ValueError):
        pooled_attention([(q, k)], v, [0.5, 0.5])


def test_layer_pooled_tokens_equals_explicit_maps(tiny_clip):
    """Maps of blocks 0 and 1 from their *inputs*, 0.5 / 0.5 with the last block's, applied to its values,
    residual kept, no MLP: the same as materialising A and multiplying."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 32, 48)
    t, _, _ = tiny_clip.embed(x0)
    got = layer_pooled_tokens(tiny_clip, t, (0, 1))

    def maps(i, x):
        q, k, _ = tiny_clip.qkv(i, x)
        return attention_probs(q, q) + attention_probs(k, k)
    x = t
    mids = []
    for i in range(2):
        mids.append(maps(i, x))
        x = tiny_clip.blocks[i](x)
    a = 0.5 * maps(2, x) + 0.5 * (mids[0] + mids[1]) / 2
    assert torch.allclose(a.sum(-1), torch.full_like(a.sum(-1), 2.0), atol=1e-5)   # rows sum to 2
    _, _, v = tiny_clip.qkv(2, x)
    want = x + tiny_clip.attn_out(2, a @ v)
    assert torch.allclose(got, want, atol=1e-5)


def test_layer_pooled_tokens_limits(tiny_clip):
    """last_weight=1: the last block alone = SCLIP's CSA with the residual and without the MLP."""
    t, _, _ = tiny_clip.embed(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    got = layer_pooled_tokens(tiny_clip, t, (0,), last_weight=1.0)
    want = last_block(tiny_clip, tiny_clip.run_blocks(t, 0, 2), "csa", residual=True, mlp=False)
    assert torch.allclose(got, want, atol=1e-6)
    # vanilla maps with last_weight=1: the unmodified attention + residual of the last block
    got = layer_pooled_tokens(tiny_clip, t, (0,), last_weight=1.0, self_self=False)
    want = last_block(tiny_clip, tiny_clip.run_blocks(t, 0, 2), "vanilla", residual=True, mlp=False)
    assert torch.allclose(got, want, atol=1e-6)


def test_check_layers():
    assert check_layers((9, 6, 7), 12) == (6, 7, 9)
    for bad in [(), (11,), (-1,), (6, 6)]:
        with pytest.raises(InputError, match="intermediate_layers"):
            check_layers(bad, 12)


# ---------------------------------------------------------------------------------------------- views
def test_grayscale_weights():
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    g = grayscale(x)
    assert g.shape == x.shape
    assert torch.allclose(g.flatten(), torch.full((3,), 0.2989 + 2 * 0.587 + 3 * 0.114))


def test_gaussian_kernel_hand_computed():
    b = 1.0 / (1.0 + 2.0 * math.exp(-0.5))
    a = math.exp(-0.5) * b
    assert torch.allclose(gaussian_kernel1d(3, 1.0, torch.float64), torch.tensor([a, b, a], dtype=torch.float64))
    k = gaussian_kernel1d(11, 5.0, torch.float64)
    z = sum(math.exp(-x * x / 50.0) for x in range(-5, 6))
    assert math.isclose(float(k[5]), 1.0 / z, rel_tol=1e-12) and math.isclose(float(k[0]), math.exp(-0.5) / z,
                                                                                rel_tol=1e-12)


def test_gaussian_blur_reflect_padding():
    b = 1.0 / (1.0 + 2.0 * math.exp(-0.5))
    a = math.exp(-0.5) * b
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    y = gaussian_blur(x, 3, 1.0)[0, 0]
    # corner (0,0): the padded row/column -1 mirrors row/column 1, so pixel (1,1) is seen twice per axis: (2a)²
    assert math.isclose(float(y[0, 0]), 4 * a * a, rel_tol=1e-12)
    assert math.isclose(float(y[1, 1]), b * b, rel_tol=1e-12)
    assert math.isclose(float(y[0, 1]), 2 * a * b, rel_tol=1e-12)
    assert math.isclose(float(y[3, 3]), 0.0, abs_tol=0.0)
    const = torch.full((2, 3, 12, 13), 0.7, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(const), const)          # weights sum to 1, reflect keeps a constant
    with pytest.raises(ValueError):
        gaussian_blur(const, 4)


def test_engineered_views_order_and_unflip():
    x = torch.arange(2 * 3 * 12 * 14, dtype=torch.float32).view(2, 3, 12, 14)
    v = engineered_views(x)
    assert v.shape == (10, 3, 12, 14)
    assert torch.equal(v[:2], x) and torch.equal(v[2:4], grayscale(x))
    assert torch.allclose(v[4:6], gaussian_blur(x, 11, 5.0))
    assert torch.equal(v[6:8], x.flip(-2)) and torch.equal(v[8:], x.flip(-1))
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # maps of the flipped views: flipping back gives m twice -> m ; a map 0 on the v-flip view -> m/2
    assert torch.equal(unflip_mean(m.flip(-2), m.flip(-1)), m)
    assert torch.equal(unflip_mean(torch.zeros(2, 2), m.flip(-1)), m / 2)


# ---------------------------------------------------------------------------------------------- closing
def test_close_labels_hand_computed():
    lab = torch.ones(5, 5, dtype=torch.int64)
    lab[2, 2] = 0
    assert torch.equal(close_labels(lab), torch.ones(5, 5, dtype=torch.int64))   # the hole is filled
    lab = torch.full((5, 5), 4, dtype=torch.int64)
    lab[2, 2] = 0
    lab[2, 1] = 2        # 0 and 2 inside a field of 4: both become 4 (the indices, not the argmax, are filtered)
    assert torch.equal(close_labels(lab), torch.full((5, 5), 4, dtype=torch.int64))
    step = torch.zeros(4, 6, dtype=torch.int64)
    step[:, 3:] = 3
    assert torch.equal(close_labels(step), step)                            # a straight edge is kept
    corner = torch.zeros(4, 4, dtype=torch.int64)
    corner[0, 0] = 7
    assert torch.equal(close_labels(corner), corner)                        # in-image pixels only at the border
    assert torch.equal(close_labels(corner, 1), corner)


def test_close_labels_matches_scipy_edge_replication():
    from scipy.ndimage import grey_closing
    lab = np.random.default_rng(0).integers(0, 5, size=(17, 23))
    got = close_labels(torch.from_numpy(lab)).numpy()
    assert np.array_equal(got, grey_closing(lab, size=(3, 3), mode="nearest"))


# ---------------------------------------------------------------------------------------------- aux texts
def test_shipped_auxiliary_texts_pair_with_the_class_files():
    """The name part of line i is the first query string of foreground class i (official line pairing)."""
    lengths = {"voc21": 20, "context60": 59, "coco_object": 80, "coco_stuff": 171, "cityscapes": 19}
    for key, n in lengths.items():
        aux = read_auxiliary(source_path(key))
        cl = parse_classes(resource_path("classnames", "official", "itaclip", f"cls_{key}.txt"), "sclip")
        bg = 1 if key in ("voc21", "context60", "coco_object") else 0
        assert len(aux) == n == len(cl) - bg
        firsts = [cl.queries[cl.query_to_class.index(c)] for c in range(bg, len(cl))]
        assert [name for name, _ in aux] == [f.strip() for f in firsts]   # context60 ends in "wood "
    assert read_auxiliary(source_path("voc21"))[0] == ("aeroplane", "a powered, fixed-wing aircraft that is used for flight.")
    assert read_auxiliary(source_path("cityscapes"))[0] == ("road", "highway")
    assert set(SHIPPED) == set(lengths)


def test_lookup_auxiliary_and_fallback(tmp_path):
    texts, missing = lookup_auxiliary(["Bicycle", "zorblax", "road"], "cityscapes")
    assert texts == ["bike", "zorblax", "highway"] and missing == [1]
    texts, missing = lookup_auxiliary(["person", "road"], "all")            # definitions sets come first
    assert missing == [] and texts == ["a human being, either male or female.",                      # voc21
                                       "a path or way made for travel by vehicles, bicycles, or pedestrians."]  # context60
    f = tmp_path / "mine.txt"
    f.write_text("horse >=a large animal\n\nsky >=the air up there\n", encoding="utf-8")
    assert read_auxiliary(str(f)) == (("horse", "a large animal"), ("sky", "the air up there"))
    f.write_text("horse: a large animal\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1"):
        read_auxiliary(str(f))
    with pytest.raises(InputError, match="aux_texts"):
        source_path("no/such/file.txt")


# ---------------------------------------------------------------------------------------------- method
def test_presets_equal_the_spec_table():
    M = get_method("itaclip")
    table = {  # short, logit_scale, prob_thd, area_thd, β, λ_img, aux
        "voc21": (336, 60.0, 0.1, 0.1, 0.05, 0.7, "voc21"),
        "context60": (336, 55.0, 0.1, None, 0.15, 0.75, "context60"),
        "coco_object": (336, 50.0, 0.1, None, 0.1, 0.75, "coco_object"),
        "coco_stuff": (448, 40.0, 0.0, None, 0.2, 0.75, "coco_stuff"),
        "cityscapes": (560, 40.0, 0.0, None, 0.05, 0.7, "cityscapes"),
    }
    assert set(M.PRESETS) == set(table)
    queries = {"voc21": 80, "context60": 75, "coco_object": 119, "coco_stuff": 183, "cityscapes": 26}
    for key, row in table.items():
        p = M.resolve_params(key, {})
        assert (p.short_side, p.logit_scale, p.prob_thd, p.area_thd, p.def_coefficient, p.img_eng_coefficient,
                p.aux_texts) == row
        assert (p.slide_crop, p.slide_stride, p.pamr_steps, p.pamr_dilations, p.img_engineering, p.attn_self,
                p.intermediate_layers, p.label_closing, p.class_format) == \
            (224, 28, 10, (8, 16), True, True, (6, 7, 9), 3, "sclip")
        assert p.background_first == (key in ("voc21", "context60", "coco_object"))
        assert len(parse_classes(p.classes_file, p.class_format).queries) == queries[key]
    d = M.resolve_params(None, {})
    assert (d.slide_stride, d.img_engineering, d.aux_texts, d.pamr_steps, d.area_thd) == (112, True, "all", 10, None)
    o = M.Params()   # the official constructor defaults
    assert (o.logit_scale, o.slide_stride, o.pamr_steps, o.img_engineering, o.aux_texts, o.def_coefficient,
            o.img_eng_coefficient, o.prob_thd, o.area_thd) == (40.0, 112, 0, False, None, 0.2, 0.75, 0.0, None)


def test_text_rows_mixed_with_auxiliary_texts(tiny_clip):
    """t' = (1-β)·t + β·d for foreground queries (all synonyms share their class's text), background rows
    untouched, no re-normalisation."""
    seg = ovss.Segmenter(method="itaclip", preset="voc21", templates="none", def_coefficient=0.25, **TINY)
    cl = seg.class_list
    tpl = load_templates("none")
    t = encode_queries(tiny_clip, cl.queries, tpl)
    aux = dict(read_auxiliary(source_path("voc21")))
    got = seg.method.text
    q2c = torch.tensor(cl.query_to_class)
    assert torch.equal(got[q2c == 0], t[q2c == 0])
    i = cl.queries.index("feline")                                      # class "cat, feline"
    d = encode_queries(tiny_clip, [aux["cat"]], tpl)[0]
    assert torch.allclose(got[i], 0.75 * t[i] + 0.25 * d, atol=1e-6)
    assert float(got[i].norm()) < 1.0 - 1e-4
    # aux_texts=None: the plain classifier
    plain = ovss.Segmenter(method="itaclip", preset="voc21", templates="none", aux_texts=None, **TINY)
    assert torch.equal(plain.method.text, t)
    only_bg = ovss.Segmenter(method="itaclip", classes=["sky, wall"], preset="voc21", templates="none", **TINY)
    assert torch.equal(only_bg.method.text, encode_queries(tiny_clip, ["sky", "wall"], tpl))   # nothing to mix


def test_unknown_class_names_fall_back_to_the_name(smooth_rgb):
    with pytest.warns(UserWarning, match="zorblax"):
        seg = ovss.Segmenter(method="itaclip", classes=["horse", "zorblax"], preset=None, templates="none",
                             slide_crop=32, slide_stride=32, short_side=None, **TINY)
    pred = seg.method(seg_image(smooth_rgb))
    assert pred.extras == {"aux_texts": "all", "aux_fallback_to_name": ["zorblax"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ovss.Segmenter(method="itaclip", classes=["horse", "grass"], preset=None, templates="none", **TINY)


def seg_image(rgb):
    from ovss.images import load_image
    return load_image(rgb)


def _segmenter(**kw):
    base = dict(classes=["sky", "grass", "horse, pony"], preset=None, templates="none", slide_crop=32,
                slide_stride=16, short_side=None, pamr_steps=0, aux_texts=None)
    return ovss.Segmenter(method="itaclip", **(base | kw), **TINY)


def test_view_merge_against_views_encoded_one_by_one():
    """λ=1: cosine of the mean of the three normalised view features; λ=0: mean of the two flip branches,
    flipped back after up-sampling; one batch gives the same as each view alone."""
    m = _segmenter(img_eng_coefficient=1.0, img_engineering=True).method
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    T = m.text
    views = engineered_views(x).view(5, 2, 3, 32, 48)
    feats = [m.tokens(views[i])[0][:, 1:] for i in range(5)]

    def up(f):
        s = (f @ T.T).transpose(1, 2).reshape(2, -1, 2, 3)
        return torch.nn.functional.interpolate(s, size=(32, 48), mode="bilinear", align_corners=False)
    main = up((feats[0] + feats[1] + feats[2]) / 3)
    flips = (up(feats[3]).flip(-2) + up(feats[4]).flip(-1)) / 2
    assert torch.allclose(m.engineered_logits(x, (32, 48)), main, atol=1e-5)
    m.params.img_eng_coefficient = 0.0
    assert torch.allclose(m.engineered_logits(x, (32, 48)), flips, atol=1e-5)
    m.params.img_eng_coefficient = 0.7
    assert torch.allclose(m.engineered_logits(x, (32, 48)), 0.7 * main + 0.3 * flips, atol=1e-5)
    m.params.img_engineering = False
    assert torch.allclose(m.engineered_logits(x, (32, 48)), up(feats[0]), atol=1e-5)


def test_labels_are_thresholded_then_closed(smooth_rgb):
    seg = _segmenter(img_engineering=True, prob_thd=0.34, pamr_steps=2)
    pred = seg.method(seg_image(smooth_rgb))
    assert pred.logits.shape == (3, 40, 56)
    want = close_labels(threshold_labels(pred.logits, 0.34))
    assert torch.equal(pred.labels, want)
    off = _segmenter(img_engineering=True, prob_thd=0.34, pamr_steps=2, label_closing=0)
    assert torch.equal(off.method(seg_image(smooth_rgb)).labels, threshold_labels(pred.logits, 0.34))


def test_bad_parameters_are_input_errors():
    with pytest.raises(InputError, match="intermediate_layers"):
        ovss.Segmenter(method="itaclip", classes=["a", "b"], preset=None,
                       **(TINY | {"intermediate_layers": (2,)}))
    with pytest.raises(InputError, match="aux_texts"):
        ovss.Segmenter(method="itaclip", classes=["a", "b"], preset=None, aux_texts="nope.txt", **TINY)


def test_whole_image_mode_goes_straight_to_the_original_size(smooth_rgb):
    """slide_crop=0: the five-view logits of the whole input, up-sampled once to the image size."""
    from ovss.inference.probs import class_log_probs
    seg = _segmenter(img_engineering=True, slide_crop=0)
    img = seg_image(smooth_rgb)
    m = seg.method
    x = m.preprocess(img)
    cos = m.engineered_logits(x, (40, 56))[0]
    want = class_log_probs(cos, m.classes.query_to_class, m.params.logit_scale)
    assert torch.allclose(m(img).logits, want, atol=1e-6)
