"""The Segmenter contract for the CLIP-only methods (clip, maskclip, sclip, clearclip, naclip): shapes, dtypes,
presets, determinism, errors; on the tiny random CLIP and (slow) on a full-size random ViT-B/16."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ovss
from ovss.backbones.clip import load_clip
from ovss.errors import InputError
from ovss.images import load_image
from ovss.methods import get_method, list_methods

CLIP_ONLY = ("clip", "maskclip", "sclip", "clearclip", "naclip")
CLASSES = ["sky", "grass, lawn", "horse"]


def _check_prediction(seg, rgb):
    """One forward pass (Segmenter.run = what predict_logits / predict return) and the contract checks."""
    H, W = rgb.shape[:2]
    pred = seg.run(rgb)
    logits, labels = pred.logits, pred.labels
    assert isinstance(logits, torch.Tensor) and logits.dtype == torch.float32
    assert logits.shape == (len(seg.classes), H, W)
    assert not torch.isnan(logits).any()
    if getattr(seg.params, "area_thd", None) is None:
        assert torch.isfinite(logits).all()
    else:   # SCLIP's area filter gives dropped classes -inf (spec/api.md); background and kept classes stay finite
        assert torch.isfinite(logits[0]).all()
        assert all(torch.isfinite(c).all() or torch.isneginf(c).all() for c in logits)
    assert labels.dtype == torch.int64 and labels.shape == (H, W)
    assert int(labels.min()) >= 0 and int(labels.max()) < len(seg.classes)
    return logits, labels


@pytest.mark.parametrize("preset", [None, "voc21"])
@pytest.mark.parametrize("method", CLIP_ONLY)
def test_tiny_clip_methods_run(method, preset, smooth_rgb, tiny_clip):
    seg = ovss.Segmenter(method=method, classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                         preset=preset)
    assert seg.method.clip is tiny_clip
    assert seg.classes == ["sky", "grass", "horse"]
    logits, labels = _check_prediction(seg, smooth_rgb)
    # without background threshold / area filter, labels = argmax of the logits
    if seg.params.prob_thd == 0 and getattr(seg.params, "area_thd", None) is None:
        assert torch.equal(labels, logits.argmax(0))


def test_presets_set_the_official_values():
    s = get_method("sclip").resolve_params("voc21", {})
    assert (s.short_side, s.slide_crop, s.slide_stride, s.logit_scale, s.prob_thd, s.area_thd) == \
        (336, 224, 112, 65.0, 0.1, 0.1)
    n = get_method("naclip").resolve_params("voc21", {})
    assert (n.slide_crop, n.whole_double_resize, n.pamr_steps, n.gaussian_std) == (0, True, 10, 5.0)
    c = get_method("clearclip").resolve_params("voc21", {})
    assert (c.short_side, c.slide_crop, c.slide_stride, c.logit_scale, c.prob_thd, c.pad_multiple, c.attention) == \
        (448, 448, 224, 50.0, 0.5, 16, "qq")
    m = get_method("maskclip").resolve_params("voc21", {})
    assert m.residual is True and not hasattr(m, "area_thd")
    d = get_method("sclip").resolve_params(None, {"prob_thd": 0.3})
    assert (d.logit_scale, d.prob_thd, d.area_thd, d.pamr_steps) == (40.0, 0.3, None, 0)


def test_preset_brings_its_official_class_file(smooth_rgb):
    seg = ovss.Segmenter(method="sclip", clip="tiny-test", clip_weights="random", device="cpu", preset="voc21",
                         templates="none")
    assert len(seg.classes) == 21 and seg.classes[1] == "aeroplane"
    assert len(seg.class_list.queries) > 21        # background and person synonyms
    logits, labels = _check_prediction(seg, smooth_rgb[:24, :32])
    assert logits.shape[0] == 21


def test_segment_result(smooth_rgb):
    seg = ovss.Segmenter(method="clearclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                         templates="none")
    res = seg.segment(smooth_rgb)
    assert res.labels.dtype == np.int64 and res.labels.shape == smooth_rgb.shape[:2]
    assert res.classes == ["sky", "grass", "horse"]
    assert sum(res.areas.values()) == pytest.approx(1.0)
    present = {res.classes[k] for k in np.unique(res.labels)}
    assert set(res.areas) == set(res.scores) == present
    for name, share in res.areas.items():
        assert share == pytest.approx(float((res.labels == res.classes.index(name)).mean()))
        assert 0.0 < res.scores[name] <= 1.0
    d = res.to_dict()
    assert (d["height"], d["width"]) == smooth_rgb.shape[:2]
    ov = res.overlay()
    assert ov.size[1] >= smooth_rgb.shape[0] and ov.size[0] > smooth_rgb.shape[1]   # legend column
    assert res.overlay(legend=False).size == (smooth_rgb.shape[1], smooth_rgb.shape[0])
    li = res.label_image()
    assert li.mode == "P" and np.array_equal(np.asarray(li), res.labels.astype(np.uint8))


def test_inputs_path_pil_array_agree(tmp_path, smooth_rgb):
    from PIL import Image
    p = tmp_path / "im.png"
    Image.fromarray(smooth_rgb).save(p)
    seg = ovss.Segmenter(method="sclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                         templates="none", short_side=None, slide_crop=32, slide_stride=16)
    a = seg.predict_logits(smooth_rgb)
    assert torch.equal(seg.run(smooth_rgb).logits, a)
    assert torch.equal(seg.predict(smooth_rgb), seg.run(smooth_rgb).labels)
    assert torch.equal(seg.predict_logits(str(p)), a)
    assert torch.equal(seg.predict_logits(Image.open(p)), a)
    assert torch.equal(seg.predict_logits(load_image(smooth_rgb)), a)


# ---------------------------------------------------------------------------------------------- determinism
def test_two_segmenters_give_identical_logits(smooth_rgb):
    from ovss import api
    kw = dict(method="naclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
              templates="none", pamr_steps=1)
    a = ovss.Segmenter(**kw).predict_logits(smooth_rgb)
    saved = dict(api._MODEL_CACHE)
    try:
        api.clear_model_cache()                  # force a fresh model build
        b = ovss.Segmenter(**kw).predict_logits(smooth_rgb)
    finally:
        api._MODEL_CACHE.clear()
        api._MODEL_CACHE.update(saved)
    assert torch.equal(a, b)


def test_random_weights_are_identical_across_loads(tiny_clip):
    torch.manual_seed(123)                       # the global RNG must not matter
    a = load_clip("tiny-test", "random")
    torch.manual_seed(456)
    b = load_clip("tiny-test", "random")
    sa, sb, st = a.state_dict(), b.state_dict(), tiny_clip.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) and torch.equal(sa[k], st[k]) for k in sa)
    c = load_clip("tiny-test", "random", seed=1)
    assert not torch.equal(c.state_dict()["model.visual.proj"], sa["model.visual.proj"])
    assert a.weights_id == "random:0" and c.weights_id == "random:1"


# ---------------------------------------------------------------------------------------------- errors
def test_errors_are_input_errors_with_clear_messages():
    kw = dict(clip="tiny-test", clip_weights="random", device="cpu")
    with pytest.raises(InputError, match="unknown method 'nope'"):
        ovss.Segmenter(method="nope", classes=CLASSES, **kw)
    with pytest.raises(InputError, match="no preset 'voc99'"):
        ovss.Segmenter(method="sclip", classes=CLASSES, preset="voc99", **kw)
    with pytest.raises(InputError, match="no parameter 'gaussian_std'"):
        ovss.Segmenter(method="sclip", classes=CLASSES, gaussian_std=3.0, **kw)
    with pytest.raises(InputError, match="no classes given"):
        ovss.Segmenter(method="sclip", **kw)
    with pytest.raises(InputError, match="empty"):
        ovss.Segmenter(method="sclip", classes=[], **kw)
    with pytest.raises(InputError, match="twice"):
        ovss.Segmenter(method="sclip", classes=["cat", "cat"], **kw)
    with pytest.raises(InputError, match="unknown CLIP model"):
        ovss.Segmenter(method="sclip", classes=CLASSES, clip="ViT-X/99", clip_weights="random", device="cpu")
    with pytest.raises(InputError, match="random weights"):
        ovss.Segmenter(method="sclip", classes=CLASSES, clip="tiny-test", clip_weights="/some/file.pt", device="cpu")
    with pytest.raises(InputError, match="dtype"):
        ovss.Segmenter(method="sclip", classes=CLASSES, dtype="fp8", **{k: v for k, v in kw.items()})


def test_unreadable_image_in_predict_names_it(tmp_path):
    seg = ovss.Segmenter(method="sclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                         templates="none")
    with pytest.raises(InputError, match="missing.png"):
        seg.predict(tmp_path / "missing.png")


def test_list_methods_includes_the_clip_only_methods():
    infos = {m.name: m for m in list_methods()}
    for name in CLIP_ONLY:
        assert name in infos and infos[name].needs == ("clip",) and infos[name].summary


# ---------------------------------------------------------------------------------------------- full size
@pytest.fixture(scope="module")
def small_rgb():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    return np.kron(base, np.ones((12, 12, 1), dtype=np.uint8))      # 48 x 60


@pytest.mark.slow
@pytest.mark.parametrize("preset", [None, "voc21"])
@pytest.mark.parametrize("method", CLIP_ONLY)
def test_vitb16_methods_run(vitb16, method, preset, small_rgb):
    seg = ovss.Segmenter(method=method, classes=CLASSES, clip="ViT-B/16", clip_weights="random", device="cpu",
                         preset=preset)
    assert seg.method.clip is vitb16
    assert vitb16.info.width == 768 and vitb16.info.layers == 12 and vitb16.info.embed_dim == 512
    _check_prediction(seg, small_rgb)


@pytest.mark.slow
def test_vitb16_random_weights_identical_across_loads(vitb16):
    b = load_clip("ViT-B/16", "random")
    sa, sb = vitb16.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", CLIP_ONLY)
def test_half_precision_path_runs_and_stays_close(method, smooth_rgb):
    """The GPU dtype path (fp16 weights, LayerNorms in fp32) exercised on the CPU: same shapes, float32 logits close to
    the fp32 run."""
    kw = dict(method=method, classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu", templates="none",
              short_side=None, slide_crop=32, slide_stride=16)
    half = ovss.Segmenter(dtype="fp16", **kw)
    assert half.method.clip.dtype == torch.float16 and half.method.text.dtype == torch.float16
    a = half.predict_logits(smooth_rgb)
    b = ovss.Segmenter(**kw).predict_logits(smooth_rgb)
    assert a.dtype == torch.float32 and a.shape == b.shape and torch.isfinite(a).all()
    assert (a - b).abs().max().item() < 0.1


def test_override_of_the_wrong_type_is_an_input_error():
    cls = get_method("sclip")
    with pytest.raises(InputError, match="slide_crop='abc': expected a value of type int"):
        cls.resolve_params(None, {"slide_crop": "abc"})
    with pytest.raises(InputError, match="area_thd='x'"):
        cls.resolve_params(None, {"area_thd": "x"})
    with pytest.raises(InputError, match="pamr_dilations"):
        cls.resolve_params(None, {"pamr_dilations": "8"})
    p = cls.resolve_params("voc21", {"templates": "none", "area_thd": None, "slide_crop": 448})
    assert (p.templates, p.area_thd, p.slide_crop, p.logit_scale) == ("none", None, 448, 65.0)


def test_too_thin_image_is_an_input_error():
    seg = ovss.Segmenter(method="sclip", classes=CLASSES, clip="tiny-test", clip_weights="random", device="cpu",
                         templates="none")
    # 2 x 500: the 2048 cap on the long side leaves 8 x 2048 at the network input, less than one 16-pixel patch
    with pytest.raises(InputError, match="too thin"):
        seg.predict(np.zeros((2, 500, 3), dtype=np.uint8))
    assert seg.predict(np.zeros((1, 1, 3), dtype=np.uint8)).shape == (1, 1)
