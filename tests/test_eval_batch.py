"""Batched inference (`Method.forward_batch`, `Segmenter.predict_batch`, `ovss eval --batch-size N`): the sliding
windows of several images share the backbone's forward passes, and every number equals the one-image-at-a-time
run's to the bit (with a batch-invariant backbone, see batchclip.py), also with read-ahead, after an interrupted
and resumed run with another batch size, and on two torchrun ranks; bad and empty samples keep their place."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import batchclip
import fakedata
import fakeseg
import ovss
from ovss.data import DataError, get_dataset
from ovss.errors import InputError
from ovss.eval.runner import EvalConfig, default_factory, evaluate
from ovss.images import load_image
from ovss.methods import MODULES, get_method
from ovss.methods.dense import DenseMethod

# the methods whose windows batch across images (DenseMethod's own pipeline, sliding-window presets)
BATCHED = ["clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "scclip", "resclip"]
TINY = dict(clip="tiny-test", clip_weights="random", vfm="tiny_vit8", vfm_weights="random", device="cpu")
EXTRA = {"resclip": dict(rcs_layers=(0, 1)), "itaclip": dict(intermediate_layers=(0, 1))}
# 64 x 64 windows every 32 px, 2 per forward pass one image at a time: 6, 2 (48 x 64: shorter than the crop), 1 and
# 6 windows
WINDOWS = dict(short_side=None, slide_crop=64, slide_stride=32, window_batch=2)
SIZES = [(80, 112), (48, 96), (64, 64), (104, 72)]


@pytest.fixture
def batch_clip(monkeypatch):
    """Segmenters built in the test load the 2-head tiny CLIP (batch-invariant kernels) for clip='tiny-test'."""
    from ovss import api
    monkeypatch.setitem(api._MODEL_CACHE, batchclip.KEY, batchclip.clip())


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [load_image(np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8))
            for h, w in SIZES]


def _same(a, b) -> bool:
    return torch.equal(a.logits, b.logits) and torch.equal(a.labels, b.labels)


def test_the_batched_methods_are_the_dense_ones_with_the_shared_pipeline():
    found = [m for m in MODULES if issubclass(get_method(m), DenseMethod) and get_method(m).shared_pipeline()]
    assert found == BATCHED


@pytest.mark.parametrize("method", BATCHED)
def test_forward_batch_sends_several_images_windows_together_and_equals_forward(method, images, batch_clip):
    m = ovss.Segmenter(method=method, classes=["sky", "grass, lawn", "horse"], **TINY, **WINDOWS,
                       **EXTRA.get(method, {})).method
    assert m.batches_windows()
    calls = []
    window_logits = m.window_logits

    def spy(x):
        calls.append(x.shape[0])
        return window_logits(x)

    m.window_logits = spy
    one = [m(im) for im in images]
    assert calls == [2, 2, 2, 2, 1, 2, 2, 2]
    calls.clear()
    many = m.forward_batch(images)
    # the 13 windows of 64 x 64 (images 0, 2, 3) in passes of up to 2 x 4, then the two of 48 x 64 (image 1)
    assert calls == [8, 5, 2]
    assert len(many) == len(images) and all(_same(a, b) for a, b in zip(one, many))
    assert [tuple(p.labels.shape) for p in many] == SIZES


@pytest.mark.parametrize("method,kw", [("itaclip", {}), ("naclip", dict(slide_crop=0)), ("cliptrase", {})])
def test_methods_without_the_shared_pipeline_go_one_image_at_a_time(method, kw, images, batch_clip):
    m = ovss.Segmenter(method=method, classes=["sky", "grass", "horse"], **TINY,
                       **(dict(WINDOWS, **kw) if method != "cliptrase" else {}), **EXTRA.get(method, {})).method
    assert not getattr(m, "batches_windows", lambda: False)()
    calls = []
    forward = m.forward
    m.forward = lambda im: calls.append(im) or forward(im)
    many = m.forward_batch(images)
    assert calls == images                          # forward once per image, in order
    assert all(_same(a, m(im)) for a, im in zip(many, images))


def test_segmenter_predict_batch_takes_paths_arrays_and_loaded_images(images, tmp_path, batch_clip):
    seg = ovss.Segmenter(method="sclip", classes=["sky", "grass", "horse"], **TINY, **WINDOWS)
    path = tmp_path / "a.png"
    Image.fromarray(images[0].rgb).save(path)
    inputs = [str(path), images[1].rgb, images[2], Image.fromarray(images[3].rgb)]
    got = seg.predict_batch(inputs)
    assert all(torch.equal(g, seg.predict(x)) for g, x in zip(got, inputs))
    assert all(_same(a, b) for a, b in zip(seg.run_batch(inputs), map(seg.run, inputs)))
    assert seg.predict_batch([]) == []


# ---------------------------------------------------------------------------------------------- ovss eval
def _spying(groups: list, stop_after=None):
    """A factory: the real Segmenter whose predict_batch records its group sizes (and raises KeyboardInterrupt once
    more than `stop_after` images were asked for)."""
    def factory(cfg, device):
        seg = default_factory(cfg, device)
        predict_batch = seg.predict_batch

        def p(imgs):
            if stop_after is not None and sum(groups) + len(imgs) > stop_after:
                raise KeyboardInterrupt
            groups.append(len(imgs))
            return predict_batch(imgs)
        seg.predict_batch = p
        return seg
    return factory


@pytest.mark.slow
def test_eval_batch_size_equals_sequential_with_and_without_read_ahead(voc21_set, tmp_path, batch_clip):
    seq = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=0, batch_size=1), tmp_path / "seq", progress=False)
    for prefetch in (0, 3):
        groups: list = []
        bat = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=prefetch, batch_size=4), tmp_path / f"b{prefetch}", progress=False,
                       factory=_spying(groups))
        assert groups == [4] * 5
        np.testing.assert_array_equal(seq.confusion, bat.confusion)
        assert bat.summary == seq.summary and bat.per_class == seq.per_class and bat.evaluated == 20


@pytest.mark.slow
def test_eval_interrupted_with_one_batch_size_resumed_with_another_equals_sequential(voc21_set, tmp_path, batch_clip):
    seq = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=0), tmp_path / "seq", progress=False)
    groups: list = []
    with pytest.raises(KeyboardInterrupt):     # stops when asked for images 5..8
        evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=3, batch_size=4), tmp_path / "res", progress=False,
                 factory=_spying(groups, stop_after=7), save_every=1)
    assert groups == [4]
    groups.clear()
    res = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=2, batch_size=3), tmp_path / "res", progress=False, resume=True,
                   factory=_spying(groups))
    assert res.resumed and groups == [3] * 5        # the 16 images left: 5 groups of 3, the last one alone
    np.testing.assert_array_equal(seq.confusion, res.confusion)
    assert res.summary == seq.summary and res.evaluated == 20


class _BatchFake(fakeseg.FakeSegmenter):
    """fakeseg's segmenter with a predict_batch; its model refuses the image of sample 5 (an InputError, like a
    method's unreadable region-mask file)."""
    groups: list = []

    def predict(self, image):
        if str(image) == str(self.ds.samples[5].image):
            raise InputError("no region masks for this image")
        return super().predict(image)

    def predict_batch(self, images):
        _BatchFake.groups.append(len(images))
        return [self.predict(im) for im in images]


def test_bad_and_empty_samples_keep_their_place_in_batches(tmp_path):
    root = tmp_path / "d"
    fakedata.make_dataset(root, "voc21", n=10, sizes=[(16, 20), (20, 16)] * 5)
    samples = get_dataset("voc21", root).samples
    fakedata.save_labels(samples[2].ann, np.full((16, 20), 255, np.uint8), palette=True)   # nothing labelled
    samples[7].ann.write_bytes(b"not a png")                                               # unreadable
    cfg = EvalConfig(method="fake", dataset="voc21", data_root=str(root), skip_bad=True)
    ref = evaluate(cfg, tmp_path / "ref", factory=_BatchFake, progress=False)
    assert [b["index"] for b in ref.bad] == [5, 7] and ref.empty == 1 and ref.evaluated == 7

    _BatchFake.groups = []
    cfg.batch_size = 4
    bat = evaluate(cfg, tmp_path / "bat", factory=_BatchFake, progress=False)
    # [0 1 (2 empty) 3] -> 3 images; [4 5 6 (7 unreadable)] -> refused for 5: each image again alone; [8 9]
    assert _BatchFake.groups == [3, 3, 2]
    np.testing.assert_array_equal(ref.confusion, bat.confusion)
    assert bat.bad == ref.bad and bat.empty == 1 and bat.summary == ref.summary

    # without --skip-bad the run stops at sample 5, naming its image, after saving samples 0-4 ...
    cfg.skip_bad = False
    with pytest.raises(DataError, match=f"cannot segment image .*{samples[5].image.name}.*--skip-bad"):
        evaluate(cfg, tmp_path / "stop", factory=_BatchFake, progress=False)
    parts = list((tmp_path / "stop/state").glob("part-*.npz"))
    assert len(parts) == 1 and json.loads(str(np.load(parts[0])["meta"]))["done"] == [0, 1, 2, 3, 4]

    # a segmenter with predict() only (a custom --factory) is asked one image at a time
    cfg.skip_bad = True
    plain = [evaluate(EvalConfig(method="fake", dataset="voc21", data_root=str(root), skip_bad=True, batch_size=b),
                      tmp_path / f"plain{b}", factory=fakeseg.make, progress=False) for b in (1, 4)]
    np.testing.assert_array_equal(plain[0].confusion, plain[1].confusion)
    assert plain[1].bad == plain[0].bad and [b["index"] for b in plain[0].bad] == [7]


@pytest.mark.slow
def test_two_gloo_ranks_with_batches_equal_the_sequential_single_process(voc21_set, tmp_path):
    from test_eval_distributed import _eval
    common = ["--method", "clip", "--dataset", "voc21", "--data-root", str(voc21_set), "--limit", "9", "--clip",
              "tiny-test", "--clip-weights", "random", "--device", "cpu"]
    _eval(common + ["--out", str(tmp_path / "seq"), "--batch-size", "1", "--prefetch", "0"],
          factory="batchclip:make")
    p = _eval(common + ["--out", str(tmp_path / "dist"), "--batch-size", "4"], nproc=2, factory="batchclip:make")
    assert "2 ranks" in p.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "seq/confusion.npy"), np.load(tmp_path / "dist/confusion.npy"))
    s, d = (json.loads((tmp_path / f"{k}/result.json").read_text()) for k in ("seq", "dist"))
    assert d["summary"] == s["summary"] and d["per_class"] == s["per_class"] and d["evaluated"] == s["evaluated"] == 9
    assert d["config"]["eval"]["batch_size"] == 4 and d["world_size"] == 2


def test_cli_batch_size_must_be_positive(tmp_path, capsys):
    from ovss.cli import main
    root = tmp_path / "d"
    fakedata.make_dataset(root, "voc21", n=2, size=(16, 16))
    args = ["eval", "--method", "fake", "--dataset", "voc21", "--data-root", str(root), "--factory", "fakeseg:make",
            "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args + ["--batch-size", "0"]) == 2
    assert "batch size 0: give a whole number of images >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(args + ["--batch-size", "2"]) == 0
