"""SAM wrapper: set_image parity with SamPredictor, the captured last-block attention, prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss.backbones import sam as S
from ovss.backbones.vfm import random_state_dict


@pytest.fixture(scope="module")
def tiny():
    from segment_anything.build_sam import _build_sam
    torch.manual_seed(0)
    model = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                       encoder_global_attn_indexes=[1])
    model.load_state_dict(random_state_dict(model, seed=7, depth=2))
    return S.SAM(model.eval(), "tiny")


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_set_image_equals_sampredictor(tiny):
    from segment_anything import SamPredictor
    img = _image(263, 201)
    st = tiny.set_image(img)
    p = SamPredictor(tiny.model)
    p.set_image(img)
    assert st.input_size == p.input_size == (1024, 783)      # int(201 * 1024 / 263 + 0.5) = 783
    assert st.original_size == p.original_size == (263, 201)
    torch.testing.assert_close(st.features, p.features, atol=1e-5, rtol=1e-5)


def test_last_block_attention_is_softmax_with_relpos_cropped(tiny):
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
    img = _image(100, 160, seed=1)
    st = tiny.set_image(img)
    vh, vw = st.valid_grid
    assert (vh, vw) == (640 // 16, 64) and st.input_size == (640, 1024)
    enc = tiny.model.image_encoder
    x, _ = tiny.prepare(img)
    t = enc.patch_embed(x) + enc.pos_embed
    t = enc.blocks[0](t)
    blk = enc.blocks[1]
    u = blk.norm1(t)
    a = blk.attn
    qkv = a.qkv(u).reshape(1, 64 * 64, 3, 2, -1).permute(2, 0, 3, 1, 4).reshape(3, 2, 64 * 64, -1)
    q, k, v = qkv.unbind(0)
    logits = add_decomposed_rel_pos((q * a.scale) @ k.transpose(-1, -2), q, a.rel_pos_h, a.rel_pos_w,
                                    (64, 64), (64, 64))
    full = logits.softmax(-1).view(2, 64, 64, 64, 64)
    want = full[:, :vh, :vw, :vh, :vw].reshape(2, vh * vw, vh * vw)
    torch.testing.assert_close(st.attn, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(st.v, v.view(2, 64, 64, -1)[:, :vh, :vw])
    # cropping does not renormalise: rows lose the mass of the padded keys
    assert float(st.attn.sum(-1).max()) < 1.0


def test_predict_matches_predictor_and_keeps_3d_mask_quirk(tiny):
    from segment_anything import SamPredictor
    img = _image(120, 90, seed=2)
    st = tiny.set_image(img, with_attention=False)
    p = SamPredictor(tiny.model)
    p.set_image(img)
    pts = torch.tensor([[[100.0, 200.0]], [[500.0, 300.0]]])
    lab = torch.ones(2, 1)
    boxes = torch.tensor([[50.0, 100.0, 300.0, 600.0], [400.0, 200.0, 700.0, 900.0]])
    mask3 = torch.rand(1, 256, 256) * 0.005
    low, iou = tiny.predict_torch(st, pts, lab, boxes, mask3)
    _, iou_ref, low_ref = p.predict_torch(pts, lab, boxes, mask3, multimask_output=False)
    torch.testing.assert_close(low, low_ref)
    torch.testing.assert_close(iou, iou_ref)
    low4, _ = tiny.predict_torch(st, pts, lab, boxes, mask3[None])
    assert (low4 - low).abs().max() > 1e-4        # the 3-D input is normalised differently (official quirk)
    up = tiny.postprocess_masks(low, st)
    assert up.shape == (2, 1, 120, 90)


def test_sam_proxy_grid(tiny):
    proxy = S.SamProxy(tiny)
    f = proxy.features(torch.randn(2, 3, 112, 112))
    assert f.shape == (2, 256, 64, 64) and proxy.grid(112, 112) == (64, 64)


def test_unknown_name():
    from ovss.errors import WeightsError
    with pytest.raises(WeightsError, match="unknown SAM"):
        S.load_sam("vit_x", "random")


@pytest.mark.slow
def test_full_size_random_vit_b():
    s = S.load_sam("vit_b", "random")
    st = s.set_image(_image(224, 336))
    assert st.attn.shape == (12, 42 * 64, 42 * 64) and st.v.shape == (12, 42, 64, 64)
    assert torch.isfinite(st.features).all()


def test_fused_attention_blocks_equal_library(tiny):
    enc = tiny.model.image_encoder
    torch.manual_seed(3)
    x = torch.randn(1, 64, 64, 32)
    for blk in enc.blocks:                       # block 0 windowed (14, padded), block 1 global
        torch.testing.assert_close(S.fused_block(blk, x), blk(x), atol=2e-5, rtol=1e-5)
    img = torch.randn(1, 3, 1024, 1024)
    torch.testing.assert_close(S.encode(enc, img), enc(img), atol=5e-5, rtol=1e-5)


def test_attention_only_pass(tiny):
    img = _image(100, 160, seed=1)
    full = tiny.set_image(img)
    light = tiny.set_image(img, with_features=False)
    assert light.features is None
    torch.testing.assert_close(light.attn, full.attn)
    torch.testing.assert_close(light.v, full.v)
