"""Dataset readers: paths of each real layout, label decoding, class names, errors that name the file."""
import shutil

import numpy as np
import pytest
from PIL import Image

import fakedata
from ovss.data import (BENCHMARKS, DataError, class_file, class_names, class_synonyms, get_dataset, read_label,
                       reduce_zero_label)
from ovss.errors import InputError

ALL = ["voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k", "context459",
       "ade847"]


def _rzl(raw):
    """reduce_zero_label written out by the spec: 0 -> 255, v != 255 -> v - 1."""
    out = raw.astype(np.int64) - 1
    out[raw == 0] = 255
    out[raw == 255] = 255
    return out


MMSEG_EXPECT = {"voc21": lambda r: r, "voc20": _rzl, "context60": lambda r: r, "context59": _rzl,
                "coco_object": lambda r: r, "coco_stuff": lambda r: r, "cityscapes": lambda r: r, "ade20k": _rzl,
                "context459": lambda r: r, "ade847": lambda r: r}


def _d2_voc21(r):
    return np.where(r == 255, 0, r.astype(np.int64) + 1)


def _d2_coco80(r):
    r = r.astype(np.int64)
    return np.where(r < 80, r + 1, np.where((r == 80) | (r == 255), 0, 255))


CLIPTRASE_EXPECT = {"voc20": lambda r: r, "voc21": _d2_voc21, "context59": lambda r: r, "context60": _d2_voc21,
                    "coco_stuff": lambda r: r, "coco_object": _d2_coco80, "ade20k": lambda r: r,
                    "context459": lambda r: r, "ade847": lambda r: r}


@pytest.mark.parametrize("key", ALL)
def test_mmseg_layout_paths_and_decoding(tmp_path, key):
    raws = fakedata.make_dataset(tmp_path, key, "mmseg", n=3)
    ds = get_dataset(key, tmp_path)
    spec = fakedata.MMSEG[key]
    assert [s.stem for s in ds.samples] == (sorted(raws) if spec.split is None else list(raws))
    assert len(ds) == 3 and ds.num_classes == BENCHMARKS[key].num_classes == len(ds.class_names)
    for s in ds.samples:
        assert s.image == tmp_path / spec.image.format(s=s.stem)
        assert s.ann == tmp_path / spec.ann.format(s=s.stem)
        gt = ds.load_gt(s)
        assert gt.dtype == (np.uint16 if key in ("context459", "ade847") else np.uint8)
        np.testing.assert_array_equal(gt, MMSEG_EXPECT[key](raws[s.stem]))
        ds.validate(s, gt)
    assert ds.ignore_index == (65535 if key in ("context459", "ade847") else 255)


@pytest.mark.parametrize("key", sorted(fakedata.CLIPTRASE))
def test_cliptrase_layout_decodes_to_canonical_labels(tmp_path, key):
    raws = fakedata.make_dataset(tmp_path, key, "cliptrase", n=3)
    ds = get_dataset(key, tmp_path, layout="cliptrase")
    spec = fakedata.CLIPTRASE[key]
    for s in ds.samples:
        assert s.image == tmp_path / spec.image.format(s=s.stem)
        np.testing.assert_array_equal(ds.load_gt(s), CLIPTRASE_EXPECT[key](raws[s.stem]))


def test_cliptrase_all_void_map_stays_ignored(tmp_path):
    fakedata.make_dataset(tmp_path, "voc21", "cliptrase", n=1)
    ds = get_dataset("voc21", tmp_path, layout="cliptrase")
    Image.fromarray(np.full((24, 32), 255, np.uint8)).save(ds[0].ann)
    assert (ds.load_gt(ds[0]) == 255).all()      # CLIPtrase skips such images instead of counting background


def test_cliper_layout_uses_shipped_lists(tmp_path):
    ds = get_dataset("context60", tmp_path, layout="cliper")
    assert len(ds) == 5104 and "2010_001606" not in {s.stem for s in ds.samples}
    ds = get_dataset("coco_object", tmp_path, layout="cliper")
    s = ds[0]
    assert s.image == tmp_path / "coco2014/val2014" / f"{s.stem}.jpg"
    assert s.ann == tmp_path / "coco2014/coco_seg_anno" / f"{s.stem[-12:]}.png"
    city = get_dataset("cityscapes", tmp_path, layout="cliper")[0]
    assert city.image.name.endswith("_leftImg8bit.png") and "CityScapes/leftImg8bit/val/" in city.image.as_posix()
    with pytest.raises(InputError, match="no cliper layout"):
        get_dataset("context459", tmp_path, layout="cliper")


def test_root_may_be_the_dataset_folder_or_a_shared_data_root(tmp_path):
    fakedata.make_dataset(tmp_path, "voc21", n=2)
    deep = get_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2012")
    assert deep.samples[0].image == tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg"
    fakedata.make_dataset(tmp_path / "coco_stuff164k", "coco_stuff", n=2)
    shared = get_dataset("coco_stuff", tmp_path)
    assert shared.image_dir == tmp_path / "coco_stuff164k/images/val2017" and len(shared) == 2


def test_reduce_zero_label_exact():
    raw = np.array([0, 1, 2, 150, 254, 255], np.uint8)
    np.testing.assert_array_equal(reduce_zero_label(raw), [255, 0, 1, 149, 253, 255])


def test_palette_png_read_as_indices(tmp_path):
    lab = np.array([[0, 15, 255], [20, 1, 0]], np.uint8)
    fakedata.save_labels(tmp_path / "a.png", lab, palette=True)
    assert Image.open(tmp_path / "a.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "a.png"), lab)


def test_read_label_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.png"):
        read_label(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot decode annotation .*bad.png"):
        read_label(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png has 3 channels"):
        read_label(tmp_path / "rgb.png")
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="wide.png has values in \\[0, 300\\]"):
        read_label(tmp_path / "wide.png")


def test_validate_out_of_range_and_size(tmp_path):
    fakedata.make_dataset(tmp_path, "cityscapes", n=2)
    ds = get_dataset("cityscapes", tmp_path)
    s = ds[0]
    gt = ds.load_gt(s)
    gt[0, 0] = 26                                           # a labelId (car) left unconverted
    with pytest.raises(DataError, match=r"outside 0..18.*: 26.*labelIds"):
        ds.validate(s, gt)
    with pytest.raises(DataError, match="size mismatch"):
        ds.validate(s, gt[:, :-1] * 0)


def test_missing_split_file_is_a_clear_error(tmp_path):
    fakedata.make_dataset(tmp_path, "voc21", n=2)
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match="image list not found.*val.txt"):
        get_dataset("voc21", tmp_path).samples


def test_ade847_falls_back_to_folder_scan(tmp_path):
    fakedata.make_dataset(tmp_path, "ade847", n=3)
    (tmp_path / "ADE20K_2021_17_01/validation.txt").unlink()
    assert len(get_dataset("ade847", tmp_path)) == 3


def test_shipped_class_names():
    for key, b in BENCHMARKS.items():
        assert class_file(key).is_file()
        assert len(class_names(key)) == b.num_classes
    assert class_names("voc21")[0] == "background" and len(class_synonyms("voc21")[0]) == 26
    assert class_names("coco_object")[0] == "background" and len(class_synonyms("coco_object")[0]) == 17
    assert class_names("context60")[:2] == ("background", "aeroplane")
    assert class_names("ade847")[1] == "building, edifice"          # commas stay inside a name
    assert class_names("cityscapes")[-1] == "bicycle"


def test_unknown_dataset_and_layout(tmp_path):
    with pytest.raises(InputError, match="unknown dataset 'voc22'"):
        get_dataset("voc22", tmp_path)
    with pytest.raises(InputError, match="unknown layout"):
        get_dataset("voc21", tmp_path, layout="nope")
    assert get_dataset("COCO-Object", tmp_path).key == "coco_object"
