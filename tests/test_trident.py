"""Trident: affinity, splice, input adjustment, refinement prompts, end-to-end with tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss.inference.sam_refine import mask_prompt, region_prompts, sam_refine
from ovss.inference.splice import sam_affinity, splice
from ovss.methods.trident import Trident, adjust_input, sam_input


def _affinity_loop(attn, v, cos_fac, refine_neg_cos):
    """The spec's formula, one entry at a time."""
    nh, N, _ = attn.shape
    vn = v / np.linalg.norm(v, axis=-1, keepdims=True)
    cos = np.einsum("hud,hvd->huv", vn, vn)
    out = np.zeros((N, N))
    for u in range(N):
        tau = cos_fac * cos[:, u, :].mean()
        if not refine_neg_cos and tau < 0:
            tau = 0.6
        tau = min(tau, 0.9)
        for x in range(N):
            out[u, x] = np.mean([attn[j, u, x] if cos[j, u, x] > tau else 0.0 for j in range(nh)])
        out[u] /= out[u].sum()
    return out


@pytest.mark.parametrize("cos_fac,neg", [(1.2, True), (0.0, True), (3.0, False), (-1.0, False)])
def test_sam_affinity_matches_formula(cos_fac, neg):
    rng = np.random.default_rng(0)
    nh, N = 3, 7
    attn = rng.random((nh, N, N))
    attn /= attn.sum(-1, keepdims=True) * 1.1           # cropped rows: sums below 1
    v = rng.normal(size=(nh, N, 4))
    want = _affinity_loop(attn, v, cos_fac, neg)
    got = sam_affinity(torch.tensor(attn, dtype=torch.float32), torch.tensor(v, dtype=torch.float32), cos_fac, neg)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    chunked = sam_affinity(torch.tensor(attn, dtype=torch.float32), torch.tensor(v, dtype=torch.float32),
                           cos_fac, neg, chunk=2)
    torch.testing.assert_close(chunked, got)
    torch.testing.assert_close(got.sum(-1), torch.ones(N))
    assert bool((got.diagonal() > 0).all())             # cos(u, u) = 1 > τ: the diagonal always survives


def test_splice_of_tiling_windows_reproduces_the_map():
    torch.manual_seed(0)
    full = torch.randn(5, 6, 8)
    # overlapping windows cut from one map, as the sliding-window grid places them (6x8 map, 4x4 windows)
    from ovss.inference.window import window_boxes
    boxes = window_boxes(6, 8, 4, 2)
    maps = torch.stack([full[:, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes.tolist()])
    torch.testing.assert_close(splice(maps, boxes, (6, 8)), full)
    # non-overlapping tiles: exact
    boxes = torch.tensor([[0, 0, 3, 4], [0, 4, 3, 8], [3, 0, 6, 4], [3, 4, 6, 8]])
    maps = torch.stack([full[:, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes.tolist()])
    assert torch.equal(splice(maps, boxes, (6, 8)), full)
    # overlaps are averaged
    two = splice(torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]), torch.tensor([[0, 0, 2, 2], [0, 1, 2, 3]]),
                 (2, 3))
    torch.testing.assert_close(two[0], torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]))


def test_adjust_input_spec_example():
    x = torch.zeros(1, 3, 448, 597)
    assert adjust_input(x, 16, 336).shape[-2:] == (464, 608)
    assert adjust_input(torch.zeros(1, 3, 448, 672), 16, 336).shape[-2:] == (448, 672)   # kept as is
    assert adjust_input(torch.zeros(1, 3, 320, 640), 16, 336).shape[-2:] == (336, 640)   # ovss: at least a crop
    assert sam_input(np.zeros((263, 201, 3), np.uint8), 16).shape == (272, 208, 3)


def test_region_prompts_hand_example():
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True            # region A (4 px)
    m[2, 2] = True                # touches A diagonally: same 8-connected region (5 px)
    m[4:6, 5:8] = True            # region B (6 px)
    m[0, 7] = True                # region C (1 px): dropped by minimal_area
    p = torch.zeros(6, 8)
    p[0, 1] = p[1, 0] = 0.9       # tie inside A: the first in row-major order wins -> (x=1, y=0)
    p[5, 6] = 0.7
    p[0, 7] = 1.0                 # the largest value is in the dropped region
    r = region_prompts(m, p, minimal_area=2)
    assert r.points.tolist() == [[1, 0], [6, 5]]
    assert r.boxes.tolist() == [[0, 0, 2, 2], [5, 4, 7, 5]]
    assert r.areas.tolist() == [5, 6]
    assert region_prompts(m, p, minimal_area=7).points.shape == (0, 2)
    # a region of zero probability: the argmax over the whole masked map is pixel 0
    z = region_prompts(m, torch.zeros(6, 8), minimal_area=6)
    assert z.points.tolist() == [[0, 0]]


def test_mask_prompt_frame_and_threshold():
    from segment_anything.utils.transforms import ResizeLongestSide
    prob = torch.full((50, 100), 0.3)
    prob[:, :50] = 0.1
    m = mask_prompt(prob, (100, 200), coarse_thresh=0.2, coeff=0.005, transform=ResizeLongestSide(1024))
    assert m.shape == (1, 256, 256)                      # 3-D on purpose (official quirk)
    assert float(m[0, 128:].abs().max()) == 0.0          # 200x100 -> 256x128, zero padded below
    assert float(m.max()) == pytest.approx(0.005 * 0.3)
    assert float(m[0, :128, :100].max()) == 0.0          # below the threshold: 0


@pytest.fixture(scope="module")
def tiny_sam():
    from ovss.backbones.sam import load_sam
    return load_sam("tiny-test", "random")


def test_sam_refine_keep_none_and_keep_all(tiny_sam):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    st = tiny_sam.set_image(img, with_attention=False)
    torch.manual_seed(0)
    blobs = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 6), (64, 96), mode="bilinear")[0]
    probs = torch.softmax(blobs * 3, 0)                   # a few large regions per class
    pred = probs.argmax(0)
    labels, scores = sam_refine(tiny_sam, st, pred, probs, 0.0, 4, 0.005, iou_thresh=float("inf"))
    assert torch.equal(labels, pred) and float(scores.abs().max()) == 0.0
    labels, scores = sam_refine(tiny_sam, st, pred, probs, 0.0, 4, 0.005, iou_thresh=-float("inf"))
    covered = scores.sum(0) > 0
    assert bool(covered.any())
    assert torch.equal(labels[covered], scores.argmax(0)[covered])
    assert torch.equal(labels[~covered], pred[~covered])
    assert bool((scores <= probs + 1e-6).all())           # sigmoid x probability


def _smooth_image(h, w, seed):
    """A random image made of a few colour blobs (noise would give hundreds of tiny regions)."""
    rng = np.random.default_rng(seed)
    small = torch.tensor(rng.random((1, 3, 3, 4)), dtype=torch.float32)
    big = torch.nn.functional.interpolate(small, (h, w), mode="bilinear")[0].permute(1, 2, 0)
    return (big.numpy() * 255).astype(np.uint8)


def _segmenter(**kw):
    import ovss
    args = dict(method="trident", classes=["sky; cloud", "horse", "grass"], class_format="proxyclip",
                clip="tiny-test", clip_weights="random", vfm="tiny_vit8", vfm_weights="random", sam="tiny-test",
                sam_weights="random", device="cpu", short_side=200, slide_crop=112, slide_stride=56)
    args.update(kw)
    return ovss.Segmenter(**args)


@pytest.mark.parametrize("halves", [False, True])
def test_end_to_end_tiny(halves):
    img = _smooth_image(90, 130, 0)
    coarse = _segmenter(sam_refinement=False, sam_halves=halves)
    res = coarse.method(__import__("ovss.images", fromlist=["x"]).load_image(img))
    assert res.logits.shape == (3, 90, 130) and torch.isfinite(res.logits).all()
    refined = _segmenter(sam_refinement=True, sam_halves=halves, coarse_thresh=0.0, minimal_area=40,
                         sam_iou_thresh=-1.0)
    r2 = refined.method(__import__("ovss.images", fromlist=["x"]).load_image(img))
    assert torch.equal(r2.logits.argmax(0), r2.labels)    # logits encode the refined label map
    assert not torch.equal(r2.labels, res.labels) or bool((r2.extras["refined_scores"] > 0).any())


def test_refined_logits_keep_background_threshold():
    img = _smooth_image(80, 80, 1)
    seg = _segmenter(sam_refinement=True, prob_thd=0.99, sam_iou_thresh=2.0)   # nothing refined, all background
    r = seg.method(__import__("ovss.images", fromlist=["x"]).load_image(img))
    assert int(r.labels.max()) == 0 and torch.equal(r.logits.argmax(0), r.labels)


def test_presets():
    p = Trident.resolve_params("cityscapes", {})
    assert (p.short_side, p.slide_stride, p.cos_fac, p.refine_neg_cos, p.sam_halves, p.coarse_thresh) == \
        (688, 224, 3.0, False, True, 0.10)
    p = Trident.resolve_params("voc20", {})
    assert (p.short_side, p.slide_stride, p.cos_fac, p.prob_thd) == (336, 112, 0.0, 0.0)
    p = Trident.resolve_params("voc21", {"sam_refinement": False})
    assert (p.prob_thd, p.coarse_thresh, p.sam_iou_thresh, p.minimal_area, p.sam_refinement) == (0.2, 0.2, 0.8, 225, False)
    assert p.synonym_rule == "first" and p.slide_crop == 336
    assert Trident.resolve_params("ade20k", {}).refine_neg_cos is False


@pytest.mark.slow
def test_full_size_random():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    seg = _segmenter(clip="ViT-B/16", vfm="dino_vitb16", sam="vit_b", preset="voc21", classes=None,
                     short_side=448, slide_crop=336, slide_stride=224)
    logits = seg.predict_logits(img)
    assert logits.shape == (21, 150, 200) and not torch.isnan(logits).any()


TINY = ["--clip", "tiny-test", "--clip-weights", "random", "--vfm", "tiny_vit8", "--vfm-weights", "random",
        "--sam", "tiny-test", "--sam-weights", "random"]


def test_cli_segment_and_eval(tmp_path):
    import json

    import fakedata
    from PIL import Image

    from ovss.cli import main
    img = tmp_path / "img.png"
    Image.fromarray(_smooth_image(60, 80, 4)).save(img)
    small = ["--set", "short_side=112", "--set", "slide_crop=112", "--set", "slide_stride=56"]
    rc = main(["segment", str(img), "--method", "trident", "-c", "horse, grass, sky", "-o", str(tmp_path / "seg"),
               *TINY, *small])
    assert rc == 0 and any(p.suffix == ".png" for p in (tmp_path / "seg").iterdir())
    fakedata.make_dataset(tmp_path / "data", "voc21", n=2, sizes=[(24, 32), (30, 20)])
    rc = main(["eval", "--method", "trident", "--dataset", "voc21", "--data-root", str(tmp_path / "data"),
               "--out", str(tmp_path / "ev"), "--no-progress", *TINY,
               "--set", "short_side=112", "--set", "slide_crop=112", "--set", "slide_stride=56"])
    assert rc == 0
    files = list((tmp_path / "ev").rglob("*.json"))
    assert files and any("miou" in json.dumps(json.load(open(f))).lower() for f in files)


def test_default_preset_reads_ovss_class_files():
    p = Trident.resolve_params(None, {})
    assert p.class_format == "ovss" and p.sam_refinement and p.synonym_rule == "max"
    assert (p.short_side, p.slide_crop, p.slide_stride) == (448, 336, 224)


def test_synonym_rules():
    from types import SimpleNamespace

    from ovss.text import parse_classes
    cos = torch.randn(5, 2, 3)
    m = SimpleNamespace(params=SimpleNamespace(logit_scale=40.0, synonym_rule="first"))
    P = torch.softmax(cos * 40, 0)
    m.classes = parse_classes(["sky, cloud, wall", "horse", "grass"], "ovss")      # only class 0 has synonyms
    got = Trident.probabilities(m, cos)
    torch.testing.assert_close(got, torch.stack([P[:3].amax(0), P[3], P[4]]))
    m.classes = parse_classes(["sky", "horse, pony", "grass, lawn"], "ovss")   # the official rule misreads this
    got = Trident.probabilities(m, cos)
    torch.testing.assert_close(got, torch.stack([P[0], P[1:3].amax(0), P[3:].amax(0)]))
