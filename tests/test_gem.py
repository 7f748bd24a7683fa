"""GEM: self-self attention on hand-built tokens, the two-stream blocks, PE-D, the square warp, presets and runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.backbones.attention import last_block
from ovss.backbones.self_self import adaptive_temperature, dual_stream, gem_attention, self_self, vv_attention
from ovss.errors import InputError
from ovss.inference.resize import pil_warp_to_tensor
from ovss.inference.surgery import minmax
from ovss.methods import get_method
from ovss.methods.warped import BENCHMARKS
from ovss.text import load_templates

CLASSES = ["sky", "grass", "horse"]
TINY = dict(clip="tiny-test", clip_weights="random", device="cpu")


def _heads(rows):
    """rows (T, d) -> (1, 1, T, d)"""
    return torch.tensor(rows, dtype=torch.float64)[None, None]


# ------------------------------------------------------------------------------------------------ self-self
def test_self_self_hand_example():
    # z rows e1, e2 (unit, orthogonal): ẑẑᵀ = I; τ = ln 3 -> softmax rows [3/4, 1/4]
    z, v = _heads([[2.0, 0.0], [0.0, 5.0]]), _heads([[1.0, 0.0], [0.0, 1.0]])
    tau = math.log(3.0)
    # no iteration: A = [[3/4, 1/4], [1/4, 3/4]] (lengths of z do not matter), O = A·v = A
    want0 = torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64)
    torch.testing.assert_close(self_self(z, v, tau, iters=0)[0, 0], want0)
    # one iteration: z <- A·ẑ = [[3/4, 1/4], [1/4, 3/4]]; normalised rows (3, 1)/√10, (1, 3)/√10 have cosine 0.6,
    # so the final A = softmax(ln3 · [[1, .6], [.6, 1]]) = [[3, 3^.6], [3^.6, 3]] / (3 + 3^.6)
    a, b = 3.0 / (3.0 + 3.0 ** 0.6), 3.0 ** 0.6 / (3.0 + 3.0 ** 0.6)
    want1 = torch.tensor([[a, b], [b, a]], dtype=torch.float64)
    torch.testing.assert_close(self_self(z, v, tau, iters=1)[0, 0], want1)
    # the final assignment uses v as given (not normalised): scaling v scales the output
    torch.testing.assert_close(self_self(z, 3 * v, tau, iters=1)[0, 0], 3 * want1)


def test_gem_attention_is_the_mean_of_three_branches_and_batches_temperatures():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4, dtype=torch.float64)
    # q = k = v: all three branches are the v-v one
    torch.testing.assert_close(gem_attention(v, v, v, 0.7, 1), self_self(v, v, 0.7, 1))
    # one temperature per batch item = each item run alone with its own temperature
    temp = torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = gem_attention(q, k, v, temp, 2)
    for i in range(2):
        one = (self_self(v[i:i + 1], v[i:i + 1], float(temp[i]), 2) + self_self(k[i:i + 1], v[i:i + 1], float(temp[i]), 2)
               + self_self(q[i:i + 1], v[i:i + 1], float(temp[i]), 2)) / 3
        torch.testing.assert_close(out[i:i + 1], one)


def test_adaptive_temperature_hand_example():
    u = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],      # norms 5, 1 -> mean 3
                      [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]])     # norms 2, 2 -> mean 2
    # head dim 4: s = 1/2
    torch.testing.assert_close(adaptive_temperature(u, 4), torch.tensor([1.5, 1.0]))


def test_vv_attention_is_softmax_of_scaled_vvt():
    v = _heads([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]])
    vv = v[0, 0]
    want = torch.softmax(vv @ vv.T / math.sqrt(2.0), dim=-1) @ vv
    torch.testing.assert_close(vv_attention(None, None, v)[0, 0], want)


# ------------------------------------------------------------------------------------------------ two streams
def test_dual_stream_one_block_is_the_residual_block_without_mlp(tiny_clip):
    torch.manual_seed(0)
    x = torch.randn(2, 5, tiny_clip.info.width)
    L = len(tiny_clip.blocks)
    vanilla = lambda q, k, v, u: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    g, cls = dual_stream(tiny_clip, x, L - 1, vanilla, last_original="cls")
    torch.testing.assert_close(g, last_block(tiny_clip, x, "vanilla", residual=True, mlp=False))
    # the original stream is the unmodified block (only its CLS row is computed)
    torch.testing.assert_close(cls, tiny_clip.run_blocks(x, L - 1)[:, :1])
    assert dual_stream(tiny_clip, x, L - 1, vanilla)[1] is None


def test_dual_stream_new_attention_reads_ln1_of_the_original_stream(tiny_clip):
    torch.manual_seed(1)
    x = torch.randn(1, 5, tiny_clip.info.width)
    L = len(tiny_clip.blocks)
    g, cls = dual_stream(tiny_clip, x, L - 2, vv_attention, last_original="cls")
    # by hand: block L-2 gives the v-v update from LN1(x) and the standard block output x1; block L-1 adds
    # the v-v update from LN1(x1) to the new stream (never LN1 of the new stream, no MLP on it)
    i, j = L - 2, L - 1
    d1 = tiny_clip.attn_out(i, vv_attention(*tiny_clip.qkv(i, x)))
    x1 = tiny_clip.run_blocks(x, i, j)
    d2 = tiny_clip.attn_out(j, vv_attention(*tiny_clip.qkv(j, x1)))
    torch.testing.assert_close(g, x + d1 + d2)
    torch.testing.assert_close(cls, tiny_clip.run_blocks(x, i)[:, :1])


# ------------------------------------------------------------------------------------------------ PE-D, warp, minmax
def _pil_cubic_matrix(src: int, dst: int) -> np.ndarray:
    """PyTorch antialiased bicubic (= PIL's filter, a = -0.5) as a (dst, src) matrix, written from the spec."""
    def cubic(x):
        x, a = abs(x), -0.5
        if x < 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0
    scale = src / dst
    support = 2 * max(scale, 1.0)
    m = np.zeros((dst, src))
    for i in range(dst):
        c = (i + 0.5) * scale
        lo, hi = max(int(math.floor(c - support + 0.5)), 0), min(int(math.floor(c + support + 0.5)), src)
        for j in range(lo, hi):
            m[i, j] = cubic((j + 0.5 - c) / max(scale, 1.0))
        m[i] /= m[i].sum()
    return m


def test_pe_d_is_the_antialiased_bicubic_and_skips_at_g_squared_tokens(tiny_clip):
    G = tiny_clip.info.grid
    pe = tiny_clip.visual.positional_embedding.double()
    grid = pe[1:].reshape(G, G, -1)
    for h, w in ((16, 20), (9, 12)):                     # up- and down-sampling
        Mh, Mw = (torch.from_numpy(_pil_cubic_matrix(G, n)) for n in (h, w))
        want = torch.einsum("ia,jb,abc->ijc", Mh, Mw, grid).reshape(h * w, -1)
        out = tiny_clip.pos_embed(h, w, "D")
        assert out.shape == (1 + h * w, pe.shape[1])
        torch.testing.assert_close(out[0].double(), pe[0])
        torch.testing.assert_close(out[1:].double(), want, atol=1e-5, rtol=1e-5)
    # same token count as the pretraining grid, other shape: used as is (the official check is on the count)
    torch.testing.assert_close(tiny_clip.pos_embed(G // 2, G * 2, "D"), tiny_clip.visual.positional_embedding)


def test_pil_warp_of_a_constant_image_is_the_normalised_constant():
    from ovss.backbones.clip import CLIP_MEAN, CLIP_STD
    rgb = np.zeros((30, 70, 3), np.uint8)
    rgb[...] = (51, 102, 204)
    x = pil_warp_to_tensor(rgb, 48)
    assert x.shape == (1, 3, 48, 48)
    for c, val in enumerate((0.2, 0.4, 0.8)):
        torch.testing.assert_close(x[0, c], torch.full((48, 48), (val - CLIP_MEAN[c]) / CLIP_STD[c]))


def test_minmax_hand_example():
    x = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = minmax(x, (-2, -1))
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(out[1], torch.zeros(2, 2))       # a constant map: 0, not NaN
    torch.testing.assert_close(minmax(torch.tensor([[2.0, 6.0, 4.0]]), 1), torch.tensor([[0.0, 1.0, 0.5]]))


# ------------------------------------------------------------------------------------------------ method
def test_presets_are_the_official_defaults_on_every_benchmark():
    cls = get_method("gem")
    assert set(cls.PRESETS) == set(BENCHMARKS)
    sizes = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
             "cityscapes": 19, "ade20k": 150}
    for bench, p in cls.PRESETS.items():
        params = cls.resolve_params(bench, {})
        assert (params.image_size, params.templates, params.gem_depth, params.ss_attn_iter, params.ss_attn_temp,
                params.prob_thd, params.class_format) == (448, "photo", 7, 1, None, 0.0, "lines")
        classes = cls.default_classes(params)
        assert len(classes) == sizes[bench] and not classes.has_synonyms
        assert params.background_first == (bench in ("voc21", "context60", "coco_object"))
    voc21 = cls.default_classes(cls.resolve_params("voc21", {}))
    assert voc21.names[:3] == ("background", "aeroplane", "bicycle") and voc21.queries[0] == "background"
    assert cls.resolve_params("voc21", {}).classes_file.endswith("official/clearclip/cls_voc21.txt")
    assert cls.default_classes(cls.resolve_params("coco_object", {})).queries[0] == "background"
    assert load_templates("photo") == ("a photo of a {}.",)
    d = cls.resolve_params(None, {})
    assert (d.image_size, d.templates, d.gem_depth, d.prob_thd) == (448, "photo", 7, 0.0)


def test_tiny_run_probabilities_lie_in_the_softmax_of_minmax_bounds(smooth_rgb, tiny_clip):
    seg = ovss.Segmenter(method="gem", classes=CLASSES, gem_depth=3, image_size=64, **TINY)
    logits = seg.predict_logits(smooth_rgb)
    assert logits.shape == (3, *smooth_rgb.shape[:2]) and torch.isfinite(logits).all()
    p = logits.exp()
    torch.testing.assert_close(p.sum(0), torch.ones(smooth_rgb.shape[:2]))
    # softmax of maps in [0, 1] with K = 3: every probability in [1/(1 + 2e), e/(e + 2)]
    e = math.e
    assert p.min() >= 1 / (1 + 2 * e) - 1e-6 and p.max() <= e / (e + 2) + 1e-6
    assert torch.equal(seg.predict(smooth_rgb), logits.argmax(0))
    # each depth / iteration / temperature changes the output
    for kw in (dict(gem_depth=2), dict(ss_attn_iter=2), dict(ss_attn_temp=0.125)):
        other = ovss.Segmenter(method="gem", classes=CLASSES, image_size=64, **{"gem_depth": 3, **kw}, **TINY)
        assert (other.predict_logits(smooth_rgb) - logits).abs().max() > 1e-4


def test_background_threshold_and_synonyms(smooth_rgb, tiny_clip):
    kw = dict(method="gem", gem_depth=3, image_size=64, **TINY)
    seg = ovss.Segmenter(classes=CLASSES, **kw)
    logits = seg.predict_logits(smooth_rgb)
    best = logits.exp().amax(0)
    thd = float(best.median())
    labels = ovss.Segmenter(classes=CLASSES, prob_thd=thd, **kw).predict(smooth_rgb)
    want = torch.where(best < thd, 0, logits.argmax(0))
    assert torch.equal(labels, want) and 0 < (labels == 0).float().mean() < 1
    # a class with two queries: max over its queries of the softmax over all three queries (taken at the network
    # input size: on an image of that size the final resize is the identity)
    square = np.ascontiguousarray(np.kron(smooth_rgb[:16, :16], np.ones((4, 4, 1), np.uint8)))
    syn = ovss.Segmenter(classes=["sky", "grass, horse"], class_format="ovss", **kw)
    got, ref = syn.predict_logits(square).exp(), seg.predict_logits(square).exp()
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1:].amax(0))


def test_half_precision_runs_and_stays_close(smooth_rgb):
    kw = dict(method="gem", classes=CLASSES, gem_depth=3, image_size=64, **TINY)
    a = ovss.Segmenter(dtype="fp16", **kw).predict_logits(smooth_rgb)
    b = ovss.Segmenter(**kw).predict_logits(smooth_rgb)
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and (a.exp() - b.exp()).abs().max() < 0.02


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="gem_depth=9: 8 modified blocks requested, but this CLIP has 3 blocks"):
        ovss.Segmenter(method="gem", classes=CLASSES, gem_depth=9, **TINY)
    with pytest.raises(InputError, match="image_size=8: give an integer of at least 16"):
        ovss.Segmenter(method="gem", classes=CLASSES, image_size=8, **TINY)
    with pytest.raises(InputError, match="has no parameter 'depth'"):
        ovss.Segmenter(method="gem", classes=CLASSES, depth=3, **TINY)
