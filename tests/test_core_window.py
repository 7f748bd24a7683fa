"""Sliding windows (spec §1.6) and the mmseg resize rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.images import load_image
from ovss.inference.resize import MMSEG_MEAN, MMSEG_STD, mmseg_normalize, mmseg_resize, mmseg_scale
from ovss.inference.window import (accumulate_windows, centre_pad, gather_windows, slide_inference,
                                   slide_inference_many, window_boxes)


# ---------------------------------------------------------------------------------------------- boxes
def test_window_boxes_spec_example():
    # 448 x 336 (W x H), c = 224, t = 112 -> rows [0,224),[112,336); columns [0,224),[112,336),[224,448)
    b = window_boxes(336, 448, 224, 112)
    assert b.dtype == torch.long
    assert b.tolist() == [[0, 0, 224, 224], [0, 112, 224, 336], [0, 224, 224, 448],
                          [112, 0, 336, 224], [112, 112, 336, 336], [112, 224, 336, 448]]


def test_window_boxes_last_window_pulled_back_and_small_images():
    # H = 300: rows start 0, 112, then the last is pulled back to 300 - 224 = 76
    b = window_boxes(300, 224, 224, 112)
    assert b.tolist() == [[0, 0, 224, 224], [76, 0, 300, 224]]
    # an image smaller than the crop: one window, the whole image
    assert window_boxes(100, 150, 224, 112).tolist() == [[0, 0, 100, 150]]
    # one side smaller: windows as high as the image
    assert window_boxes(100, 400, 224, 112).tolist() == [[0, 0, 100, 224], [0, 112, 100, 336], [0, 176, 100, 400]]


def test_window_boxes_match_the_spec_loop():
    for H, W, c, t in [(375, 500, 224, 112), (448, 597, 448, 224), (336, 336, 336, 112), (17, 1000, 16, 5)]:
        n_rows = max(H - c + t - 1, 0) // t + 1
        n_cols = max(W - c + t - 1, 0) // t + 1
        ref = []
        for i in range(n_rows):
            for j in range(n_cols):
                y1, x1 = i * t, j * t
                y2, x2 = min(y1 + c, H), min(x1 + c, W)
                y1, x1 = max(y2 - c, 0), max(x2 - c, 0)
                ref.append([y1, x1, y2, x2])
        assert window_boxes(H, W, c, t).tolist() == ref


# ---------------------------------------------------------------------------------------------- accumulation
def test_accumulate_windows_averages_overlaps():
    boxes = window_boxes(3, 4, 2, 2)
    assert boxes.tolist() == [[0, 0, 2, 2], [0, 2, 2, 4], [1, 0, 3, 2], [1, 2, 3, 4]]
    vals = torch.tensor([1.0, 2.0, 4.0, 8.0]).view(4, 1, 1, 1).expand(4, 2, 2, 2).clone()
    vals[:, 1] *= -1
    out = accumulate_windows(vals, boxes, 3, 4)
    expect = torch.tensor([[1, 1, 2, 2],
                           [2.5, 2.5, 5, 5],
                           [4, 4, 8, 8]])
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[0], expect, rtol=0, atol=0)
    torch.testing.assert_close(out[1], -expect, rtol=0, atol=0)


def test_accumulate_refuses_uncovered_pixels():
    boxes = torch.tensor([[0, 0, 2, 2]])
    with pytest.raises(RuntimeError, match="cover"):
        accumulate_windows(torch.zeros(1, 1, 2, 2), boxes, 3, 3)


def test_gather_windows_reads_the_boxes():
    img = torch.arange(2 * 5 * 6, dtype=torch.float32).view(2, 5, 6)
    boxes = window_boxes(5, 6, 4, 2)
    w = gather_windows(img, boxes)
    assert w.shape == (len(boxes), 2, 4, 4)
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        assert torch.equal(w[i], img[:, y1:y2, x1:x2])


# ---------------------------------------------------------------------------------------------- padding
def test_centre_pad():
    assert centre_pad(20, 30, 16) == (1, 1, 6, 6)      # (left, right, top, bottom)
    assert centre_pad(32, 17, 16) == (7, 8, 0, 0)      # odd pad: the extra pixel goes after
    assert centre_pad(224, 224, 56) == (0, 0, 0, 0)
    assert centre_pad(225, 100, 56) == (6, 6, 27, 28)


def test_slide_inference_with_padding_crops_back_exactly():
    img = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(0))
    seen = []

    def fwd(win):
        seen.append(win.clone())
        return win * 2.0

    out = slide_inference(img, 24, 13, fwd, pad_multiple=16, batch_size=3)
    torch.testing.assert_close(out, img[0] * 2.0, rtol=0, atol=1e-6)
    boxes = window_boxes(37, 50, 24, 13)
    assert sum(len(s) for s in seen) == len(boxes) and max(len(s) for s in seen) <= 3
    w = torch.cat(seen)
    assert w.shape[-2:] == (32, 32)                    # 24 -> 32, padded 4 before and 4 after
    assert torch.all(w[:, :, :4] == 0) and torch.all(w[:, :, -4:] == 0)
    assert torch.all(w[:, :, :, :4] == 0) and torch.all(w[:, :, :, -4:] == 0)
    y1, x1, y2, x2 = boxes[1].tolist()
    assert torch.equal(w[1, :, 4:28, 4:28], img[0, :, y1:y2, x1:x2])


def test_slide_inference_matches_an_explicit_window_loop():
    img = torch.randn(1, 2, 45, 70, generator=torch.Generator().manual_seed(1))

    def fwd(win):   # position-dependent, so averaging mistakes show
        ramp = torch.linspace(0, 1, win.shape[-1])
        return torch.stack([win[:, 0] * ramp, win[:, 1] ** 2, win.sum(1)], dim=1)

    out = slide_inference(img, 30, 20, fwd, batch_size=2)
    H, W = 45, 70
    acc = torch.zeros(3, H, W)
    cnt = torch.zeros(H, W)
    for y1, x1, y2, x2 in window_boxes(H, W, 30, 20).tolist():
        acc[:, y1:y2, x1:x2] += fwd(img[:, :, y1:y2, x1:x2])[0]
        cnt[y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, acc / cnt, rtol=1e-6, atol=1e-6)


def test_slide_inference_many_shares_forward_calls_and_equals_one_image_at_a_time():
    g = torch.Generator().manual_seed(2)
    # 30 x 20 is narrower than the crop: its windows (24 x 20) form their own group
    imgs = [torch.randn(1, 2, h, w, generator=g) for h, w in [(45, 70), (30, 20), (24, 24), (50, 41)]]
    aux = [torch.randn(1, *im.shape[-2:], generator=g) for im in imgs]
    calls = []

    def fwd(win, a):   # position-dependent and per window, so a window sent to the wrong image shows
        calls.append(tuple(win.shape))
        ramp = torch.linspace(0, 1, win.shape[-1])
        return torch.stack([win[:, 0] * ramp, win[:, 1] ** 2, win.sum(1) + a[:, 0]], dim=1)

    single = [slide_inference(im, 24, 16, fwd, pad_multiple=8, batch_size=2, aux=a, aux_pad=-1)
              for im, a in zip(imgs, aux)]
    n_single, calls[:] = len(calls), []
    many = slide_inference_many(imgs, 24, 16, fwd, pad_multiple=8, batch_size=5, aux=aux, aux_pad=-1)
    assert all(torch.equal(a, b) for a, b in zip(single, many))
    assert [len(window_boxes(*im.shape[-2:], 24, 16)) for im in imgs] == [12, 2, 1, 9]
    assert n_single == 6 + 1 + 1 + 5
    # 22 windows of 24 x 24 (images 0, 2, 3) in calls of <= 5, then the 2 windows of 24 x 20 (padded to 24 x 24)
    assert calls == [(5, 2, 24, 24)] * 4 + [(2, 2, 24, 24), (2, 2, 24, 24)]


# ---------------------------------------------------------------------------------------------- methods
def _seg(method, **kw):
    return ovss.Segmenter(method=method, classes=["cat", "dog, puppy", "grass"], clip="tiny-test",
                          clip_weights="random", device="cpu", templates="none", **kw)


def test_one_window_covering_the_image_equals_whole_image_naclip(smooth_rgb):
    img = load_image(smooth_rgb)
    whole = _seg("naclip", slide_crop=0, pamr_steps=0)
    one = _seg("naclip", slide_crop=2048, slide_stride=112, pamr_steps=0)
    x = whole.method.preprocess(img)
    assert len(window_boxes(x.shape[2], x.shape[3], 2048, 112)) == 1
    torch.testing.assert_close(one.predict_logits(img), whole.predict_logits(img), rtol=1e-5, atol=1e-5)


def test_one_window_equals_whole_image_at_network_size(smooth_rgb):
    img = load_image(smooth_rgb[:32, :48])        # multiple of the patch size, kept as is (short_side=None)
    for method in ("sclip", "clearclip", "clip"):
        whole = _seg(method, short_side=None, slide_crop=0)
        one = _seg(method, short_side=None, slide_crop=64, slide_stride=32, pad_multiple=0)
        torch.testing.assert_close(one.predict_logits(img), whole.predict_logits(img), rtol=1e-5, atol=1e-5)


def test_method_sliding_equals_explicit_spec_loop(smooth_rgb):
    seg = _seg("sclip", short_side=None, slide_crop=32, slide_stride=16, window_batch=4)
    img = load_image(smooth_rgb)
    x = seg.method.preprocess(img)
    H, W = x.shape[-2:]
    acc = torch.zeros(len(seg.class_list.queries), H, W)
    cnt = torch.zeros(H, W)
    with torch.no_grad():
        for y1, x1, y2, x2 in window_boxes(H, W, 32, 16).tolist():
            acc[:, y1:y2, x1:x2] += seg.method.window_logits(x[:, :, y1:y2, x1:x2])[0]
            cnt[y1:y2, x1:x2] += 1
        got = seg.method.cosine_logits(x, img.size)
    torch.testing.assert_close(got, acc / cnt, rtol=1e-5, atol=1e-5)
    # the window batch size does not change the numbers
    seg1 = _seg("sclip", short_side=None, slide_crop=32, slide_stride=16, window_batch=1)
    with torch.no_grad():
        torch.testing.assert_close(seg1.method.cosine_logits(x, img.size), got, rtol=1e-5, atol=1e-5)


def test_whole_image_single_vs_double_resize(smooth_rgb):
    """NACLIP: grid -> network size -> original size; SCLIP/ProxyCLIP: grid -> original size (one resize)."""
    img = load_image(smooth_rgb)
    seg = _seg("naclip", slide_crop=0, pamr_steps=0, short_side=64)
    x = seg.method.preprocess(img)
    assert x.shape[-2:] == (64, 90)
    with torch.no_grad():
        grid = seg.method.cosine_grid(x).float()
        double = F.interpolate(F.interpolate(grid, size=(64, 90), mode="bilinear", align_corners=False),
                               size=img.size, mode="bilinear", align_corners=False)[0]
        single = F.interpolate(grid, size=img.size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(seg.method.cosine_logits(x, img.size), double, rtol=1e-6, atol=1e-6)
        seg.method.params.whole_double_resize = False
        torch.testing.assert_close(seg.method.cosine_logits(x, img.size), single, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(single, double, atol=1e-4)


# ---------------------------------------------------------------------------------------------- resize
def test_mmseg_scale_spec_examples():
    assert mmseg_scale(375, 500, 336) == (336, 448)      # VOC 500x375 at S=336 -> 448x336 (W x H)
    assert mmseg_scale(375, 500, 448) == (448, 597)      # 500 * 448/375 = 597.33 -> 597
    assert mmseg_scale(500, 375, 448) == (597, 448)
    assert mmseg_scale(336, 448, 336) == (336, 448)


def test_mmseg_scale_long_side_cap():
    # 100 x 1000 at S=448: 1000 * 4.48 > 2048, so the factor is 2048/1000 -> (204.8 + .5) -> 205
    assert mmseg_scale(100, 1000, 448) == (205, 2048)
    assert mmseg_scale(1000, 100, 448) == (2048, 205)
    assert mmseg_scale(100, 1000, 448, long_cap=1000) == (100, 1000)
    # 1024 x 2048 (Cityscapes) at S=560 is not capped: (560, 1120)
    assert mmseg_scale(1024, 2048, 560) == (560, 1120)


def test_mmseg_resize_and_normalize():
    rgb = np.full((375, 500, 3), 128, dtype=np.uint8)
    out = mmseg_resize(rgb, 336)
    assert out.shape == (336, 448, 3) and out.dtype == np.uint8 and (out == 128).all()
    assert mmseg_resize(rgb, None) is rgb
    small = np.array([[[0, 255, 10]]], dtype=np.uint8)
    x = mmseg_normalize(small)
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    expect = [(v - m) / s for v, m, s in zip((0, 255, 10), MMSEG_MEAN, MMSEG_STD)]
    torch.testing.assert_close(x.flatten(), torch.tensor(expect), rtol=1e-6, atol=1e-6)


def test_pe_a_resampling_uses_scale_factors(tiny_clip):
    G = tiny_clip.info.grid
    pe = tiny_clip.visual.positional_embedding.detach()
    # skipped when the token count matches, even for a non-square grid (the official CLIP-side behaviour)
    assert torch.equal(tiny_clip.pos_embed(G, G), pe)
    assert torch.equal(tiny_clip.pos_embed(7, 28), pe)
    out = tiny_clip.pos_embed(10, 13)
    grid = pe[1:].reshape(1, G, G, -1).permute(0, 3, 1, 2)
    by_scale = F.interpolate(grid, scale_factor=(10.1 / G, 13.1 / G), mode="bicubic", align_corners=False)
    by_size = F.interpolate(grid, size=(10, 13), mode="bicubic", align_corners=False)
    assert out.shape == (1 + 130, pe.shape[1])
    assert torch.equal(out[0], pe[0])
    torch.testing.assert_close(out[1:], by_scale.permute(0, 2, 3, 1).reshape(130, -1), rtol=0, atol=0)
    assert not torch.allclose(out[1:], by_size.permute(0, 2, 3, 1).reshape(130, -1), atol=1e-4)
    b = tiny_clip.pos_embed(10, 13, mode="B")
    ref_b = F.interpolate(grid, size=(10, 13), mode="bilinear", align_corners=False)
    torch.testing.assert_close(b[1:], ref_b.permute(0, 2, 3, 1).reshape(130, -1).half().float(), rtol=0, atol=0)


def test_bad_window_settings_are_input_errors(smooth_rgb):
    from ovss.errors import InputError
    with pytest.raises(InputError, match="must be positive"):
        window_boxes(100, 100, 224, 0)
    with pytest.raises(InputError, match="larger than slide_crop"):
        slide_inference(torch.zeros(1, 3, 1000, 50), 224, 300, lambda w: w)
    seg = _seg("sclip", slide_crop=32, slide_stride=64, short_side=None)
    with pytest.raises(InputError, match="slide_stride=64"):
        seg.predict(smooth_rgb)
