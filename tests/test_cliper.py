"""CLIPer / CLIPer-ELF (ovss.methods.cliper): the numerical pieces on hand-made inputs, the pipeline on tiny
random models (CLIP "tiny-test", SD "random-tiny"), presets and class handling."""
from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.backbones.attention import attention_probs
from ovss.errors import InputError
from ovss.methods import cliper as C

CLASSES = ["horse", "grass", "sky"]


def _image(h=40, w=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def elf():
    return ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                          device="cpu", size=64, slide_crop=0)


@pytest.fixture(scope="module")
def full():
    return ovss.Segmenter(method="cliper", classes=CLASSES, clip="tiny-test", clip_weights="random",
                          sd_weights="random-tiny", device="cpu", size=64, slide_crop=0, seed=3,
                          score_threshold=0.0, bkg_thre=0.3)


# ------------------------------------------------------------------------------------------ hand-made numbers
def test_sinkhorn_step_and_post_by_hand():
    S = torch.tensor([[2.0, 1.0, 1.0], [1.0, 3.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    R = C.sinkhorn_step_(S.clone())
    # columns /= (4, 4, 2), then rows /= (1.25, 1.0, 0.75)
    want_R = torch.tensor([[0.4, 0.2, 0.4], [0.25, 0.75, 0.0], [1 / 3, 0.0, 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(R, want_R)
    # symmetrise, minus column means (0.330556, 0.325, 0.344444), clamp, rows to sum 1
    want_P = torch.tensor([[25 / 33, 0.0, 8 / 33], [0.0, 1.0, 0.0], [13 / 129, 0.0, 116 / 129]], dtype=torch.float64)
    torch.testing.assert_close(C.fuse_post(R), want_P)


def test_sinkhorn_is_in_place_and_accumulates():
    S = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    once = C.sinkhorn_step_(S.clone())
    kept = S.clone()
    C.sinkhorn_step_(kept)
    C.sinkhorn_step_(kept)                           # the second call starts from the first one's result
    twice = C.sinkhorn_step_(once.clone())
    torch.testing.assert_close(kept, twice)
    assert not torch.allclose(once, twice)


def test_sd_attention_normalisation_by_hand():
    M = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    # / column max (0.6, 0.4, 0.8) -> [[1, .5, .25], [.5, 1, .375], [1/6, .25, 1]]; < 0.45 -> 0; rows to 1
    out = C.normalize_sd_attention_(M.clone(), 0.45)
    want = torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)


def test_chain_right_to_left_equals_left_to_right_product():
    """Two layers of 3 heads arrive in UNet order (layer 1 first); the applier must give M1·M2·…·M6·X."""
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(3, 16, 16, generator=g, dtype=torch.float64).softmax(-1) for _ in range(2)]
    X = torch.rand(16, 4, generator=g, dtype=torch.float64)
    thr = 0.3
    Ms = [C.normalize_sd_attention_(m[j].clone(), thr) for m in maps for j in range(3)]
    left_to_right = reduce(torch.matmul, Ms, torch.eye(16, dtype=torch.float64)) @ X
    chain = C.ChainApplier(X, 2, thr)
    chain(1, maps[1].clone())
    assert not chain.done
    chain(0, maps[0].clone())
    assert chain.done
    torch.testing.assert_close(chain.Y, left_to_right)
    # arrival in list order is buffered and gives the same product
    chain2 = C.ChainApplier(X, 2, thr)
    chain2(0, maps[0].clone())
    chain2(1, maps[1].clone())
    torch.testing.assert_close(chain2.Y, left_to_right)
    # a reversed chain is a different matrix (the order matters)
    assert not torch.allclose(reduce(torch.matmul, Ms[::-1]) @ X, left_to_right)


def test_cam_to_label_by_hand():
    maps = torch.tensor([[[0.2, 0.8, 0.5]], [[0.6, 0.1, 0.5]]])
    s = torch.tensor([0.9, 0.9])
    lab = lambda *a: C.cam_to_label(maps, *a)[0].tolist()  # noqa: E731
    assert lab(s, 0.5, 0.55, False) == [2, 1, 0]       # below bkg_thre everywhere -> background
    assert lab(s, 0.5, 0.55, True) == [2, 1, 2]        # min-max: A [0, 1, .5], B [1, 0, .8]
    assert lab(s, 0.95, 0.55, False) == [0, 0, 0]      # no class passes the score threshold
    assert lab(s, 0.5, 0.0, False) == [2, 1, 1]        # [(1-max)², A, B]; the tie at pixel 2 -> first class
    assert lab(torch.tensor([0.9, 0.1]), 0.5, 0.0, False) == [0, 1, 1]   # B invalid


def test_resize_rounds_each_side_to_the_patch():
    x = C.cliper_resize(_image(263, 201), 336, 16)    # the parity image horses_odd -> 432 x 336
    assert x.shape == (1, 3, 432, 336)
    x = C.cliper_resize(_image(224, 336), 336, 16)    # horses -> 336 x 512 (504 rounds up)
    assert x.shape == (1, 3, 336, 512)
    x = C.cliper_resize(_image(100, 150), 336, 14)
    assert x.shape[-2] % 14 == 0 and x.shape[-1] % 14 == 0 and x.shape[-2] == 336


# ------------------------------------------------------------------------------------------ ELF on tiny CLIP
def test_elf_forward_matches_step_by_step(elf):
    """B_fin = post(S after L Sinkhorn steps), S = sum of per-head attention of blocks 0..L-2; Z_k from the
    reduced last block on LN1_last(E_k)."""
    m = elf.method
    clip = m.clip
    x = C.cliper_resize(_image(), 64, 16)
    with torch.inference_mode():
        Z, B_fin, h, w = C.elf_forward(clip, x)
        t, _, _ = clip.embed(x, pe="B")
        L = len(clip.blocks)
        S, E = 0, []
        for i in range(L - 1):
            u = clip.blocks[i].ln_1(t)
            E.append(u)
            q, k, v = clip.qkv(i, u, normed=True)
            A = attention_probs(q, k)
            S = S + A
            t = clip.run_blocks(t, i, i + 1)
        E.append(t)
        S = S.clone()
        for _ in range(L):
            C.sinkhorn_step_(S)
        Bl = C.fuse_post(S)
        torch.testing.assert_close(B_fin, Bl.mean(1), rtol=1e-5, atol=1e-6)
        _, _, vl = clip.qkv(L - 1, E[0])
        S0 = sum(attention_probs(*clip.qkv(i, E[i], normed=True)[:2]) for i in range(L - 1))
        B0 = C.fuse_post(C.sinkhorn_step_(S0.clone()))
        Z0 = clip.head(clip.attn_out(L - 1, B0 @ vl))
        torch.testing.assert_close(Z[0], Z0, rtol=1e-4, atol=1e-5)
    assert Z.shape[:3] == (L, 1, 1 + h * w)


def test_pos_embedding_is_fp16_rounded(elf):
    pe = elf.method.clip.pos_embed(4, 3, mode="B")
    torch.testing.assert_close(pe, pe.half().float(), rtol=0, atol=0)


@pytest.mark.parametrize("layer", [-1, -2])
def test_select_layer_thresholds_and_propagates_that_layer(elf, layer):
    m = elf.method
    old = m.params.select_layer
    m.params.select_layer = layer
    try:
        x = C.cliper_resize(_image(), 64, 16)
        with torch.inference_mode():
            seg = m.coarse(x)
            logits, A, h, w = m._elf_logits(x)
            phi = C.fg_probs(logits[:, 0].flatten(-2), m.fg_index)            # (L, C, N)
            sel = phi[layer].clone()
            sel[sel < sel.amax(-1, keepdim=True) * m.params.attention_thr] = 0
            phi[layer] = sel
            want = (sel @ A[0] + phi.mean(0)).view(-1, h, w)
    finally:
        m.params.select_layer = old
    torch.testing.assert_close(seg, want)
    assert seg.shape == (3, h, w)


def test_select_layer_changes_the_map(elf):
    x = C.cliper_resize(_image(), 64, 16)
    m = elf.method
    with torch.inference_mode():
        a = m.coarse(x)
        m.params.select_layer = -2
        b = m.coarse(x)
        m.params.select_layer = -1
    assert (a - b).abs().max() > 1e-6


def test_single_window_slide_is_row_normalised_self_propagation(elf):
    """One window covering the image: logits · rownorm(A / (1 + 1e-5))."""
    m = elf.method
    x = C.cliper_resize(_image(48, 48), 48, 16)
    m.params.slide_crop = 48
    try:
        with torch.inference_mode():
            slide = m._slide(x, 3, 3)
            logits, A, h, w = m._elf_logits(x)
    finally:
        m.params.slide_crop = 0
    An = A[0] / (1 + 1e-5)
    An = An / An.sum(-1, keepdim=True)
    want = (logits[:, 0].flatten(-2) @ An).view_as(slide)
    torch.testing.assert_close(slide, want, rtol=1e-5, atol=1e-5)


def test_sliding_windows_batched_equal_one_by_one():
    seg = ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                         device="cpu", size=64, slide_crop=48, slide_stride=16, window_batch=1)
    img = _image(40, 90)
    a = seg.predict_logits(img)
    seg.method.params.window_batch = 8
    b = seg.predict_logits(img)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ outputs
def test_elf_output_contract(elf):
    img = _image()
    pred = elf.run(img)
    assert pred.logits.shape == (4, 40, 56) and pred.labels.shape == (40, 56)
    assert elf.classes == ["background", "horse", "grass", "sky"]
    maps, scores = pred.logits[1:], pred.extras["scores"]
    torch.testing.assert_close(maps.amax(dim=(1, 2)), scores / (1 + 1e-5), rtol=1e-4, atol=1e-6)
    p = elf.params
    want = C.cam_to_label(maps, scores, p.score_threshold, p.bkg_thre, p.is_normalize)
    assert torch.equal(pred.labels, want)
    valid = (scores > p.score_threshold).float()[:, None, None]
    torch.testing.assert_close(pred.logits[0], (1 - (valid * maps).amax(0)) ** 2)


def test_full_cliper_end_to_end_and_seed(full):
    img = _image(33, 47, seed=2)
    a = full.predict_logits(img)
    b = full.predict_logits(img)
    assert a.shape == (4, 33, 47) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)                 # seeded on every call
    lab = full.predict(img)
    assert lab.dtype == torch.int64 and int(lab.min()) >= 0 and int(lab.max()) <= 3
    full.method.params.seed = 4
    try:
        c = full.predict_logits(img)
    finally:
        full.method.params.seed = 3
    assert (a - c).abs().max() > 1e-6
    # FGC changes the ELF maps
    elf_maps = ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                              device="cpu", size=64, slide_crop=0).predict_logits(img)
    assert (a[1:] - elf_maps[1:]).abs().max() > 1e-4


def test_refine_is_the_chain_of_the_recorded_maps(full):
    m = full.method
    seg = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    img01 = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = m.refine(img01, seg)
        maps = m.sd.self_attention(img01, seed=m.params.seed)
    Ms = [C.normalize_sd_attention_(mm[j].clone(), m.params.attention_thr) for mm in maps for j in range(5)]
    X = F.interpolate(seg[None], size=(64, 64), mode="bilinear", align_corners=False)[0].flatten(-2).T
    Y = X
    for M in reversed(Ms):            # M1·(M2·(…(M10·X))): the product order is tested on small matrices above
        Y = M @ Y
    want = Y.T.reshape(3, 64, 64)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-6)


def test_split_halves_concatenates_left_and_right():
    seg = ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                         device="cpu", size=32, slide_crop=0, split_halves=True)
    img = _image(24, 48)
    out = seg.predict_logits(img)
    m = seg.method
    x = C.cliper_resize(img, 32, 16)
    with torch.inference_mode():
        left, _ = m._one(img[:, :24], x[..., :32])
        right, _ = m._one(img[:, 24:], x[..., 32:])
    torch.testing.assert_close(out[1:], torch.cat([left, right], dim=2))


# ------------------------------------------------------------------------------------------ presets, classes
def test_presets_depend_on_the_clip_model():
    b = C.config_values("ViT-B/16", "voc21")
    l14 = C.config_values("ViT-L/14", "voc21")
    assert (b["slide_crop"], b["select_layer"], b["logit_scale"], b["score_threshold"]) == (336, -1, 100, 0.7)
    assert (l14["slide_crop"], l14["select_layer"], l14["logit_scale"], l14["bkg_thre"]) == (0, -2, 50, 0.4)
    assert C.config_values("ViT-B/16", "cityscapes")["size"] == 560
    assert C.config_values("ViT-L/14", "cityscapes")["size"] == 448
    assert C.config_values("ViT-B/16", "coco_object")["templates"] == "imagenet"
    assert set(C.CLIPerELF.PRESETS) == set(C.CLASS_FILES)
    with pytest.raises(InputError, match="no official config"):
        C.config_values("ViT-B/16", "ade847")


def test_preset_fills_params_and_overrides_win():
    seg = ovss.Segmenter(method="cliper_elf", clip="tiny-test", clip_weights="random", device="cpu",
                         preset="cityscapes", bkg_thre=0.2)
    p = seg.params
    assert (p.size, p.attention_thr, p.bkg_thre, p.split_halves, p.templates) == (560, 0.35, 0.2, True, "imagenet")
    assert seg.classes[0] == "background" and seg.classes[1] == "road" and len(seg.classes) == 20
    assert seg.label_offset == 1          # Cityscapes GT has no background: label l is class l-1
    voc = ovss.Segmenter(method="cliper_elf", clip="tiny-test", clip_weights="random", device="cpu", preset="voc21")
    assert voc.label_offset == 0 and len(voc.classes) == 21


def test_cliper_class_file_layout(tmp_path):
    f = tmp_path / "cls.txt"
    f.write_text("sky, grass  tree\nperson with clothes, people, human\nhorse")
    seg = ovss.Segmenter(method="cliper_elf", classes=str(f), class_format="cliper", clip="tiny-test",
                         clip_weights="random", device="cpu", size=32)
    m = seg.method
    assert seg.classes == ["background", "person with clothes, people, human", "horse"]
    assert m.class_list.queries[:3] == ("sky", "grass", "tree")
    # texts: 2 foreground prompts, 3 background words, 1 mean row
    assert m.text.shape[0] == 6 and m.fg_index == [[0], [1]]
    torch.testing.assert_close(m.text[-1], m.text[:2].mean(0))


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="multiple of the patch"):
        ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                       device="cpu", slide_crop=100)
    with pytest.raises(InputError, match="select_layer"):
        ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                       device="cpu", select_layer=-7)
    with pytest.raises(InputError, match="sliding_crop"):
        ovss.Segmenter(method="cliper_elf", classes=CLASSES, clip="tiny-test", clip_weights="random",
                       device="cpu", sliding_crop=100)


@pytest.mark.slow
def test_full_size_random_cliper():
    seg = ovss.Segmenter(method="cliper", classes=CLASSES, clip="ViT-B/16", clip_weights="random",
                         sd_weights="random", device="cpu", preset="voc21", seed=0)
    out = seg.predict_logits(_image(120, 90))
    assert out.shape == (4, 120, 90) and torch.isfinite(out).all()
