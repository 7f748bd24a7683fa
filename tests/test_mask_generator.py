"""ovss.backbones.mask_generator: kinds, parameters, the SAM 2 id rule on the generator's masks, weights errors,
and (slow) the real sam2 / segment_anything generators with small random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ovss import weights as W
from ovss.backbones import mask_generator as MG
from ovss.errors import InputError, WeightsError

HAS_SAM2 = MG.sam2_available()
needs_sam2 = pytest.mark.skipif(not HAS_SAM2, reason="the sam2 package is not installed")


class FakeAMG:
    """What SAM*AutomaticMaskGenerator.generate returns: dicts with a binary 'segmentation' (and more)."""

    def __init__(self, masks):
        self.masks, self.seen = masks, []

    def generate(self, rgb):
        self.seen.append(rgb.shape)
        return [{"segmentation": m, "area": int(m.sum()), "predicted_iou": 0.5} for m in self.masks]


def test_generator_writes_the_official_map_from_the_masks():
    a = np.zeros((3, 4), bool)
    a[:, :3] = True                       # area 9 -> id 3 (written last)
    b = np.zeros((3, 4), bool)
    b[0, 0] = True                        # area 1 -> id 1, covered by a
    c = np.zeros((3, 4), bool)
    c[:2, 2:] = True                      # area 4 -> id 2
    gen = MG.MaskGenerator(FakeAMG([a, b, c]), "sam2", "hiera_l", torch.device("cpu"), torch.float32, {})
    out = gen(np.zeros((3, 4, 3), np.uint8))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[3, 3, 3, 2], [3, 3, 3, 2], [3, 3, 3, 0]])
    empty = MG.MaskGenerator(FakeAMG([]), "sam", "vit_h", torch.device("cpu"), torch.float32, {})
    assert not empty(np.zeros((2, 5, 3), np.uint8)).any()


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)])
def test_generator_refuses_what_is_not_an_rgb_image(bad):
    gen = MG.MaskGenerator(FakeAMG([]), "sam2", "hiera_l", torch.device("cpu"), torch.float32, {})
    with pytest.raises(InputError, match=r"expected an RGB image \(H, W, 3\) uint8"):
        gen(bad)


def test_kinds_and_their_weights(monkeypatch):
    assert MG.resolve_kind("sam") == "sam" and MG.resolve_kind("SAM2") == "sam2"
    assert MG.weights_key("sam2") == "sam2:hiera_l" and MG.weights_key("sam") == "sam:vit_h"
    assert MG.weights_key("sam", "vit_b") == "sam:vit_b"
    assert W.spec(MG.weights_key("sam2")).filename == "sam2_hiera_large.pt"
    monkeypatch.setattr(MG, "sam2_available", lambda: True)
    assert MG.resolve_kind("auto") == "sam2"
    monkeypatch.setattr(MG, "sam2_available", lambda: False)
    assert MG.resolve_kind("auto") == "sam" and MG.weights_key("auto") == "sam:vit_h"
    with pytest.raises(InputError, match="choose one of auto, sam2, sam"):
        MG.resolve_kind("mask2former")
    with pytest.raises(InputError, match="needs the sam2 package: pip install sam2"):
        MG.load_mask_generator("sam2", "random", device="cpu")
    with pytest.raises(InputError, match="no downloadable weights"):
        MG.weights_key("sam2", "tiny-test")


def test_official_parameters():
    assert MG.SAM2_PARAMS == dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4,
                                  multimask_output=False)
    assert MG.SAM_PARAMS == dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4)


def test_unknown_or_fixed_parameters_are_refused_by_name():
    from segment_anything import SamAutomaticMaskGenerator
    with pytest.raises(InputError, match=r"unknown parameter\(s\) multimask_output \(SAM 1 has no multimask_output"):
        MG._check_params(SamAutomaticMaskGenerator, {"multimask_output": False}, "sam")
    with pytest.raises(InputError, match="points_per_batch"):   # the message lists the real names
        MG._check_params(SamAutomaticMaskGenerator, {"point_per_side": 8}, "sam")
    with pytest.raises(InputError, match="output_mode cannot be changed"):
        MG._check_params(SamAutomaticMaskGenerator, {"output_mode": "coco_rle"}, "sam")
    MG._check_params(SamAutomaticMaskGenerator, dict(MG.SAM_PARAMS), "sam")


@needs_sam2
def test_sam2_typos_are_refused_although_the_library_takes_kwargs():
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    MG._check_params(SAM2AutomaticMaskGenerator, dict(MG.SAM2_PARAMS), "sam2")
    with pytest.raises(InputError, match="unknown parameter"):
        MG._check_params(SAM2AutomaticMaskGenerator, {"points_per_sid": 8}, "sam2")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path / "ovss"))
    MG.clear_cache()
    yield tmp_path
    MG.clear_cache()


@needs_sam2
def test_missing_sam2_weights_offline_name_the_file_and_command(offline):
    with pytest.raises(W.MissingWeightsError) as e:
        MG.load_mask_generator("sam2", None, device="cpu")
    msg = str(e.value)
    assert "sam2_hiera_large.pt" in msg and "`ovss weights download sam2:hiera_l`" in msg
    assert "mask_generator_weights=" in msg and "'random'" in msg


@needs_sam2
def test_tiny_model_only_with_random_weights(offline):
    with pytest.raises(WeightsError, match="only exists with random weights"):
        MG.load_mask_generator("sam2", str(offline), model="tiny-test", device="cpu")
    with pytest.raises(InputError, match="choose one of hiera_l, tiny-test"):
        MG.load_mask_generator("sam2", "random", model="hiera_x", device="cpu")


def test_missing_sam_weights_offline(offline):
    with pytest.raises(W.MissingWeightsError) as e:
        MG.load_mask_generator("sam", None, device="cpu")
    assert "sam_vit_h_4b8939.pth" in str(e.value) and "ovss weights download sam:vit_h" in str(e.value)


@pytest.mark.slow
@needs_sam2
def test_real_sam2_generator_random_tiny_model(offline, smooth_rgb):
    kw = dict(model="tiny-test", device="cpu", points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    gen = MG.load_mask_generator("sam2", "random", **kw)
    assert MG.load_mask_generator("sam2", "random", **kw) is gen          # cached
    out = gen(smooth_rgb)
    assert out.shape == smooth_rgb.shape[:2] and out.dtype == np.int32
    masks = gen.masks(smooth_rgb)
    assert len(masks) >= 1 and out.max() <= len(masks) and out.min() >= 0
    from ovss.inference.region_masks import masks_to_region_map
    np.testing.assert_array_equal(out, masks_to_region_map(masks, smooth_rgb.shape[:2]))
    MG.clear_cache()
    np.testing.assert_array_equal(MG.load_mask_generator("sam2", "random", **kw)(smooth_rgb), out)   # seeded


@pytest.mark.slow
def test_real_sam_generator_random_tiny_model(offline, smooth_rgb):
    gen = MG.load_mask_generator("sam", "random", model="tiny-test", device="cpu", points_per_side=2,
                                 pred_iou_thresh=0.0, stability_score_thresh=0.0)
    out = gen(smooth_rgb)
    assert out.shape == smooth_rgb.shape[:2] and out.dtype == np.int32 and gen.kind == "sam"
    from ovss.inference.region_masks import masks_to_region_map
    np.testing.assert_array_equal(out, masks_to_region_map(gen.masks(smooth_rgb), smooth_rgb.shape[:2]))


@pytest.mark.slow
@needs_sam2
def test_a_file_that_is_not_a_sam2_checkpoint_is_a_weights_error(offline):
    bad = offline / "sam2_hiera_large.pt"
    torch.save({"something": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="not a SAM 2 hiera_l checkpoint") as e:
        MG.load_mask_generator("sam2", str(bad), device="cpu")
    assert str(bad) in str(e.value)
