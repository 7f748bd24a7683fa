"""ResCLIP: the RCS and SFR building blocks on hand-computed cases, the limits where ResCLIP is NACLIP, presets,
errors and end-to-end runs on the tiny random CLIP."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ovss
from ovss.backbones.attention import attention_probs
from ovss.backbones.attention_maps import blocks_with_maps, residual_mix
from ovss.errors import InputError
from ovss.inference.feedback import blur_rows, feedback_matrix, mix_feedback, patch_categories, path_decay
from ovss.methods import get_method

CLASSES = ["sky", "grass, lawn", "horse"]
TINY = dict(clip="tiny-test", clip_weights="random", device="cpu", templates="none")
# the tiny CLIP has 3 blocks: RCS over blocks 0-1, SFR threshold low enough that its random first pass votes
SMALL = dict(rcs_layers=(0, 1), temp_thd=0.34, attn_rcs_weights=(2.0, 0.3), attn_sfr_weights=(2.2, 0.7),
             delete_same_entity=True, short_side=None, slide_crop=0)


# ---------------------------------------------------------------------------------------------- SFR: categories
def test_patch_categories_hand_example():
    # 1 window, 3 queries, 4x5 pixels, 2x2 patches: grid 2x2, the last column is dropped
    top = torch.tensor([[0, 1, 2, 2, 1],
                        [1, 1, 2, 0, 1],
                        [2, 2, 0, 0, 2],
                        [2, 1, 0, 1, 2]])
    probs = torch.full((1, 3, 4, 5), 0.1)
    probs.scatter_(1, top[None, None], 0.8)
    probs[0, :, 3, 1] = torch.tensor([0.2, 0.3, 0.25])   # max 0.3 < thd: votes 0 (not its argmax 1)
    cat = patch_categories(probs, thd=0.5, patch=2)
    # blocks: [0,1,1,1] -> 1 ; [2,2,2,0] -> 2 ; [2,2,2,0(low)] -> 2 ; [0,0,0,1] -> 0
    assert torch.equal(cat, torch.tensor([[[1, 2], [2, 0]]]))
    # a 2-2 tie takes the smaller category (torch.mode on CPU); query 0 and "uncertain" share category 0
    probs = torch.full((1, 3, 2, 2), 0.1)
    probs.scatter_(1, torch.tensor([[[[2, 1], [1, 2]]]]), 0.8)
    assert patch_categories(probs, thd=0.5, patch=2).item() == 1
    assert patch_categories(probs, thd=0.9, patch=2).item() == 0


# ---------------------------------------------------------------------------------------------- SFR: path decay
def test_path_decay_hand_example_1x3_half_to_even():
    # grid 1x3, m* = 2, t = (0, 1/2, 1); categories (1, 0, 0)
    d = path_decay(torch.tensor([[[1, 0, 0]]]))[0]
    e = math.exp
    want = torch.tensor([
        # 0->1: samples col 0, round(0.5) = 0 (half to even): cat 1 = cat 1, valid (S is 0 there anyway)
        # 0->2: samples 0, 1: col 1 has cat 0 -> exp(-2/2)
        [1.0, 1.0, e(-1.0)],
        # 1->0: round(0.5) = 0 has cat 1 -> exp(-1/2); 1->2: round(1.5) = 2, cat 0, valid
        [e(-0.5), 1.0, 1.0],
        # 2->0: samples 2, 1, 0: col 0 has cat 1 -> exp(-1); 2->1: round(1.5) = 2, valid
        [e(-1.0), 1.0, 1.0]])
    torch.testing.assert_close(d, want)


def test_path_decay_hand_example_1x4_only_the_first_part_of_the_path():
    # grid 1x4, m* = 3, t = (0, 1/3, 2/3, 1); categories (1, 1, 0, 1)
    d = path_decay(torch.tensor([[[1, 1, 0, 1]]]))[0]
    e = math.exp
    # 0->2 (m = 2): samples 0, round(2/3) = 1, round(4/3) = 1 -> all cat 1: valid although v itself is cat 0
    assert d[0, 2] == 1.0
    # 0->3 (m = 3): samples 0, 1, 2, 3, col 2 is cat 0 -> exp(-1); 3->0 likewise
    assert d[0, 3] == pytest.approx(e(-1.0)) and d[3, 0] == pytest.approx(e(-1.0))
    # 3->1 (m = 2): round(3·2/3 + 1/3) = round(2.33) = 2 -> cat 0 -> exp(-2/3); 1->3: round(1.67) = 2 likewise
    assert d[3, 1] == pytest.approx(e(-2 / 3)) and d[1, 3] == pytest.approx(e(-2 / 3))
    # 2->0 (m = 2): round(4/3) = 1 is cat 1 != cat 0 -> exp(-2/3)
    assert d[2, 0] == pytest.approx(e(-2 / 3))
    assert d[0, 1] == d[1, 0] == 1.0 and torch.equal(d.diagonal(), torch.ones(4))


def _naive_decay(cat: torch.Tensor) -> torch.Tensor:
    """The spec's step 8.2 literally, pair by pair (fp32 linspace, round half to even)."""
    h, w = cat.shape
    N = h * w
    coords = [(u // w, u % w) for u in range(N)]
    m = [[max(abs(a[0] - b[0]), abs(a[1] - b[1])) for b in coords] for a in coords]
    ms = max(max(r) for r in m)
    t = torch.linspace(0, 1, ms + 1)
    out = torch.ones(N, N)
    for u, a in enumerate(coords):
        for v, b in enumerate(coords):
            pr = (a[0] * (1 - t) + b[0] * t).round().long()
            pc = (a[1] * (1 - t) + b[1] * t).round().long()
            ok = all(cat[pr[k], pc[k]] == cat[a] for k in range(m[u][v] + 1))
            if not ok:
                out[u, v] = math.exp(-m[u][v] / ms)
    return out


@pytest.mark.parametrize("h,w", [(3, 5), (5, 4), (4, 4)])
def test_path_decay_matches_the_pairwise_definition_batched(h, w):
    g = torch.Generator().manual_seed(h * 10 + w)
    cat = torch.randint(0, 3, (3, h, w), generator=g)
    cat[1] = 0
    cat[1, 1:, 1:3] = 2                             # a block: some paths stay inside, others leave it
    got = path_decay(cat)
    for b in range(3):                              # every window on its own
        torch.testing.assert_close(got[b], _naive_decay(cat[b]))
    assert torch.equal(path_decay(torch.zeros(2, h, w, dtype=torch.long)), torch.ones(2, h * w, h * w))


def test_path_decay_single_patch():
    assert torch.equal(path_decay(torch.tensor([[[3]]])), torch.ones(1, 1, 1))


# ---------------------------------------------------------------------------------------------- SFR: matrix
def test_blur_rows_kernel_and_zero_padding():
    g = math.exp(-1 / 50)                           # σ = 5: N = 3 -> kernel 3 (x = -1, 0, 1)
    out = blur_rows(torch.eye(3)[None], 5.0)[0]
    z = 1 + 2 * g
    want = torch.tensor([[1, g, 0], [g, 1, g], [0, g, 1]]) / z
    torch.testing.assert_close(out, want)
    # N = 4 -> min(4, 31) = 4 made odd: 5 taps x = -2..2, the first row loses the mass of taps -2, -1
    out = blur_rows(torch.tensor([[[1.0, 0, 0, 0]]] * 4).view(1, 4, 4), 1.0)[0, 0]
    taps = torch.exp(-torch.tensor([4.0, 1, 0, 1, 4]) / 2)
    torch.testing.assert_close(out, torch.cat([taps[2:], torch.zeros(1)]) / taps.sum())
    # σ = 5 and N = 40: 31 taps
    row = torch.zeros(1, 40, 40)
    row[0, 0, 20] = 1.0
    out = blur_rows(row, 5.0)[0, 0]
    x = torch.arange(31.0) - 15
    k = torch.exp(-x ** 2 / 50)
    torch.testing.assert_close(out[5:36], k / k.sum())
    assert out[:5].abs().max() == 0 and out[36:].abs().max() == 0


def test_feedback_matrix_hand_example():
    # grid 1x2, categories (0, 1): S = I (decay only touches S = 0 entries); σ = 1: kernel (g, 1, g)
    g = math.exp(-0.5)
    fb = feedback_matrix(torch.tensor([[[0, 1]]]), 1.0, decay=True)[0]
    want = torch.zeros(3, 3)
    want[1, 1:] = torch.tensor([1, g]) / (1 + g)
    want[2, 1:] = torch.tensor([g, 1]) / (1 + g)
    torch.testing.assert_close(fb, want)
    # one category everywhere: the blurred all-ones matrix (rows of 1x3: zero padding drops one tap at the ends)
    fb = feedback_matrix(torch.zeros(1, 1, 3, dtype=torch.long), 1.0)[0, 1:, 1:]
    edge, mid = 1 + g, 1 + 2 * g
    s = torch.tensor([[edge, mid, edge]] * 3)
    torch.testing.assert_close(fb, s / s.sum(1, keepdim=True))
    # decay on: same category but the straight path crosses another one -> smaller weight than without decay
    cat = torch.tensor([[[1, 0, 1]]])
    on, off = feedback_matrix(cat, 1.0, decay=True)[0], feedback_matrix(cat, 1.0, decay=False)[0]
    assert on[1, 3] < off[1, 3]
    torch.testing.assert_close(on.sum(-1)[1:], torch.ones(3))
    assert on[0].abs().max() == 0 and on[:, 0].abs().max() == 0


def test_mix_feedback_rounds_through_float16():
    logits = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])        # (1 window, 1 head, 2, 2)
    fb = torch.tensor([[[0.0, 0.1], [0.3, 0.2]]])              # max 0.3: B̂ = (0, 1/3, 1, 2/3)
    got = mix_feedback(logits, fb, tau=2.2, lam=0.7)
    bh = np.array([[0.0, 1 / 3], [1.0, 2 / 3]], dtype=np.float32).astype(np.float16)
    lam_b = (bh.astype(np.float32) * np.float32(0.7)).astype(np.float16).astype(np.float32)
    want = np.float32(2.2) * (np.float32(0.3) * logits[0, 0].numpy() + lam_b)
    np.testing.assert_allclose(got[0, 0].numpy(), want, rtol=0, atol=1e-6)
    exact = 2.2 * (0.3 * logits[0, 0] + 0.7 * fb[0] / 0.3)
    assert (got[0, 0] - exact).abs().max() > 1e-5          # the fp16 rounding is visible
    # λ = 0, τ = 1 is the identity; windows are normalised by their own maximum
    assert torch.equal(mix_feedback(logits, fb, 1.0, 0.0), logits)
    two = mix_feedback(logits.expand(2, 1, 2, 2), torch.stack([fb[0], 4 * fb[0]]), 2.2, 0.7)
    assert torch.equal(two[0], two[1])


# ---------------------------------------------------------------------------------------------- RCS
def test_residual_mix_hand_example():
    a = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    out = residual_mix(a, b, 2.0, 0.3)
    torch.testing.assert_close(out, torch.tensor([[0.7, 1.3], [1.7, 0.3]]))
    torch.testing.assert_close(out.sum(-1), torch.full((2,), 2.0))     # rows sum to τ
    assert residual_mix(a, None, 2.0, 0.3) is a


def test_blocks_with_maps_are_the_blocks_attention(tiny_clip):
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    t, h, w = tiny_clip.embed(x)
    out, maps = blocks_with_maps(tiny_clip, t, 0, 2, [1, 0])
    torch.testing.assert_close(out, tiny_clip.run_blocks(t, 0, 2), atol=1e-5, rtol=1e-5)
    assert maps.shape == (2, 2, tiny_clip.info.heads, 1 + h * w, 1 + h * w)
    t1 = tiny_clip.blocks[0](t)
    q, k, _ = tiny_clip.qkv(1, t1)
    torch.testing.assert_close(maps[1], attention_probs(q, k), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    with pytest.raises(ValueError):
        blocks_with_maps(tiny_clip, t, 0, 2, [2])


# ---------------------------------------------------------------------------------------------- the method
def _seg(**kw):
    return ovss.Segmenter(method=kw.pop("method", "resclip"), classes=CLASSES, **TINY, **kw)


def test_without_rcs_and_sfr_resclip_is_naclip(smooth_rgb, tiny_clip):
    na = _seg(method="naclip", pamr_steps=0, short_side=None, slide_crop=32, slide_stride=16)
    a = na.predict_logits(smooth_rgb)
    off = _seg(**(SMALL | dict(slide_crop=32, slide_stride=16, use_rcs=False, use_sfr=False)))
    torch.testing.assert_close(off.predict_logits(smooth_rgb), a, atol=1e-5, rtol=1e-5)
    # τ = 1, λ = 0 in both mixes: the same limit with RCS and SFR computed
    lim = _seg(**(SMALL | dict(slide_crop=32, slide_stride=16, attn_rcs_weights=(1.0, 0.0),
                               attn_sfr_weights=(1.0, 0.0))))
    torch.testing.assert_close(lim.predict_logits(smooth_rgb), a, atol=1e-5, rtol=1e-5)
    on = _seg(**(SMALL | dict(slide_crop=32, slide_stride=16))).predict_logits(smooth_rgb)
    assert (on - a).abs().max() > 1e-3


def test_rcs_and_sfr_each_change_the_output(smooth_rgb, tiny_clip):
    base = _seg(**SMALL).predict_logits(smooth_rgb)
    no_rcs = _seg(**(SMALL | dict(use_rcs=False))).predict_logits(smooth_rgb)
    no_sfr = _seg(**(SMALL | dict(use_sfr=False))).predict_logits(smooth_rgb)
    other_layers = _seg(**(SMALL | dict(rcs_layers=(1,)))).predict_logits(smooth_rgb)
    for x in (no_rcs, no_sfr, other_layers):
        assert (x - base).abs().max() > 1e-4


def test_sfr_categories_use_the_threshold(smooth_rgb, tiny_clip, monkeypatch):
    from ovss.methods import resclip
    seen = []
    real = resclip.patch_categories
    monkeypatch.setattr(resclip, "patch_categories", lambda p, thd, patch: seen.append(real(p, thd, patch)) or seen[-1])
    _seg(**(SMALL | dict(temp_thd=1.01))).predict_logits(smooth_rgb)   # nobody votes: one category
    _seg(**(SMALL | dict(temp_thd=0.0))).predict_logits(smooth_rgb)
    assert seen[0].shape == (1, 2, 3) and int(seen[0].max()) == 0
    assert len(seen[1].unique()) > 1          # the random first pass still separates some patches


def test_batched_windows_equal_one_window_at_a_time(smooth_rgb, tiny_clip):
    kw = SMALL | dict(slide_crop=32, slide_stride=16)
    a = _seg(**kw, window_batch=8).predict_logits(smooth_rgb)
    b = _seg(**kw, window_batch=1).predict_logits(smooth_rgb)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_contract_and_renormalised_probabilities(smooth_rgb, tiny_clip):
    seg = _seg(**(SMALL | dict(prob_thd=0.4)))
    pred = seg.run(smooth_rgb)
    assert pred.logits.shape == (3, 40, 56) and pred.logits.dtype == torch.float32
    assert torch.isfinite(pred.logits).all()
    p = pred.logits.exp()
    best = p.max(0)
    want = torch.where(best.values < 0.4, 0, best.indices)
    assert torch.equal(pred.labels, want)


def test_bfloat16_runs(smooth_rgb, tiny_clip):
    seg = ovss.Segmenter(method="resclip", classes=CLASSES, **TINY, dtype=torch.bfloat16, **SMALL)
    p = seg.predict_logits(smooth_rgb)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_presets_equal_the_spec_table():
    table = {  # bench: short, crop, prob_thd, temp_thd, rcs, sfr
        "voc21": (336, 0, 0.1, 0.50, (2.0, 0.3), (2.2, 0.7)),
        "voc20": (336, 0, 0.0, 0.10, (2.0, 0.6), (2.1, 0.6)),
        "context60": (336, 224, 0.1, 0.30, (2.0, 0.3), (1.8, 0.7)),
        "context59": (336, 224, 0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),
        "coco_object": (336, 224, 0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
        "coco_stuff": (336, 224, 0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),
        "cityscapes": (560, 224, 0.0, 0.10, (2.0, 0.2), (2.1, 0.6)),
        "ade20k": (336, 224, 0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),
    }
    cls = get_method("resclip")
    assert set(cls.PRESETS) == set(table)
    for bench, (short, crop, pthd, tthd, rcs, sfr) in table.items():
        p = cls.resolve_params(bench, {})
        assert (p.short_side, p.long_side_cap, p.slide_crop, p.slide_stride, p.logit_scale) == (short, 2048, crop, 112, 40.0)
        assert (p.prob_thd, p.temp_thd, tuple(p.attn_rcs_weights), tuple(p.attn_sfr_weights)) == (pthd, tthd, rcs, sfr)
        assert p.delete_same_entity and p.use_rcs and p.use_sfr and p.rcs_layers == (5, 6, 7, 8)
        assert (p.gaussian_std, p.pamr_steps, p.whole_double_resize, p.class_format) == (5.0, 0, True, "sclip")
        assert p.classes_file.endswith(f"sclip_naclip/cls_{'city_scapes' if bench == 'cityscapes' else bench}.txt")
    d = cls.resolve_params(None, {})
    assert (d.slide_crop, d.temp_thd, d.attn_rcs_weights, d.attn_sfr_weights, d.delete_same_entity) == \
        (224, 0.25, (2.0, 0.3), (2.1, 0.7), True)


def test_errors():
    with pytest.raises(InputError, match="temp_thd"):
        _seg(**(SMALL | dict(temp_thd=None)))
    with pytest.raises(InputError, match="attn_rcs_weights"):
        _seg(**(SMALL | dict(attn_rcs_weights=None)))
    with pytest.raises(InputError, match="pair"):
        _seg(**(SMALL | dict(attn_sfr_weights=(2.0,))))
    with pytest.raises(InputError, match=r"rcs_layers \(5, 6, 7, 8\).*3 blocks"):
        _seg(preset="voc21")                     # the official layers do not exist in the 3-block test CLIP
    _seg(**(SMALL | dict(use_sfr=False, temp_thd=None, attn_sfr_weights=None)))   # not needed without SFR


@pytest.mark.slow
def test_vitb16_sliding_windows_run(vitb16):
    rgb = (np.random.default_rng(1).random((200, 260, 3)) * 255).astype(np.uint8)
    seg = ovss.Segmenter(method="resclip", classes=CLASSES, clip="ViT-B/16", clip_weights="random", device="cpu",
                         templates="none", preset="ade20k")
    pred = seg.run(rgb)
    assert pred.logits.shape == (3, 200, 260) and torch.isfinite(pred.logits).all()
