"""ovss.inference.region_masks: CorrCLIP's mask files and the official SAM 2 id rule (hand-computed cases)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ovss.errors import InputError
from ovss.inference import region_masks as R


def _m(*rows: str) -> np.ndarray:
    """'.#' strings -> a boolean mask."""
    return np.array([[c == "#" for c in r] for r in rows])


def test_mask_path_uses_the_stem_of_the_file_name():
    assert R.mask_path("/m", "/data/VOC/JPEGImages/2007_000033.jpg") == os.path.join("/m", "2007_000033.npz")
    assert R.mask_path("m", "a.b.png") == os.path.join("m", "a.b.npz")
    assert R.mask_path("m", "frankfurt/frankfurt_000000_000294_leftImg8bit.png") == \
        os.path.join("m", "frankfurt_000000_000294_leftImg8bit.npz")


def test_sam2_rule_ascending_area_larger_overwrites_smaller():
    big = _m("###.", "###.", "###.")       # area 9
    small = _m("#...", "....", "....")     # area 1, inside big
    mid = _m("..##", "..##", "....")       # area 4, overlaps big in column 2
    out = R.masks_to_region_map([big, small, mid], (3, 4))
    # order by area: small (id 1), mid (id 2), big (id 3); big is written last and covers small and part of mid
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[3, 3, 3, 2],
                                        [3, 3, 3, 2],
                                        [3, 3, 3, 0]])


def test_sam2_rule_ties_keep_the_generator_order_and_empty_is_all_unsegmented():
    a = _m("##..")
    b = _m(".##.")   # same area as a: stable, so a gets id 1 and b (written later) id 2 wins the overlap
    np.testing.assert_array_equal(R.masks_to_region_map([a, b], (1, 4)), [[1, 2, 2, 0]])
    np.testing.assert_array_equal(R.masks_to_region_map([b, a], (1, 4)), [[2, 2, 1, 0]])
    out = R.masks_to_region_map([], (2, 3))
    assert out.dtype == np.int32 and out.shape == (2, 3) and not out.any()


def test_sam2_rule_equals_the_official_loop():
    rng = np.random.default_rng(3)
    masks = rng.random((12, 9, 11)) < rng.random((12, 1, 1))
    ref = np.zeros((9, 11), int)
    for i, m in enumerate(sorted(masks, key=lambda m: m.sum()), start=1):   # official: sorted by area, ids 1..
        ref[m] = i
    np.testing.assert_array_equal(R.masks_to_region_map(list(masks), (9, 11)), ref)


def test_write_then_read_round_trip(tmp_path):
    m = np.array([[0, 5, 5], [7, 7, -1]], dtype=np.int64)
    p = str(tmp_path / "new" / "img.npz")
    R.write_region_masks(p, m)
    out = R.read_region_masks(p, (2, 3))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, m)
    with np.load(p) as f:
        assert f.files == ["instance_mask"]
    assert os.listdir(tmp_path / "new") == ["img.npz"]   # no temporary file left


def test_read_accepts_boolean_maps(tmp_path):
    p = str(tmp_path / "b.npz")
    np.savez(p, instance_mask=np.array([[True, False]]))
    np.testing.assert_array_equal(R.read_region_masks(p, (1, 2)), [[1, 0]])


@pytest.mark.parametrize("content, needle", [
    (None, "region-mask file not found"),
    (b"not a zip", "not a readable .npz file"),
    ({"masks": np.zeros((2, 3), np.int32)}, "no 'instance_mask' array in the file (it has: masks)"),
    ({"instance_mask": np.zeros((2, 3, 1), np.int32)}, "has shape (2, 3, 1), expected (H, W) = (2, 3)"),
    ({"instance_mask": np.zeros((2, 3), np.float32)}, "has dtype float32, expected integers"),
    ({"instance_mask": np.zeros((3, 2), np.int32)}, "is 2x3 pixels but the image is 3x2"),
])
def test_every_bad_file_is_an_input_error_naming_it(tmp_path, content, needle):
    p = str(tmp_path / "x.npz")
    if isinstance(content, bytes):
        with open(p, "wb") as f:
            f.write(content)
    elif isinstance(content, dict):
        np.savez(p, **content)
    with pytest.raises(InputError) as e:
        R.read_region_masks(p, (2, 3))
    assert p in str(e.value) and needle in str(e.value)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = str(tmp_path / "a.npz")
    R.write_region_masks(p, np.ones((2, 2), np.int32))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(KeyboardInterrupt):
        R.write_region_masks(p, np.zeros((2, 2), np.int32))
    assert os.listdir(tmp_path) == ["a.npz"]
    np.testing.assert_array_equal(R.read_region_masks(p, (2, 2)), np.ones((2, 2)))
