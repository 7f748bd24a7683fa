"""`ovss data check` catches each planted defect; `ovss data prepare` conversions are exact."""
import numpy as np
import pytest
from PIL import Image

import fakedata
from ovss.cli import main
from ovss.data import get_dataset, read_label
from ovss.data.check import check_dataset
from ovss.data.prepare import (CONTEXT59_IDS, COCO_THING_VALUES, context_from_ids, prepare_cityscapes, prepare_coco,
                               prepare_context)


def _kinds(ds, **kw):
    findings, n = check_dataset(ds, **kw)
    return {(f.level, f.kind) for f in findings}, findings, n


def test_clean_dataset_passes(tmp_path, capsys):
    fakedata.make_dataset(tmp_path, "voc21", n=4)
    kinds, findings, n = _kinds(get_dataset("voc21", tmp_path))
    assert n == 4 and kinds == {("warning", "count")}          # 4 images, the official split has 1449
    assert main(["data", "check", "--dataset", "voc21", "--root", str(tmp_path), "--no-progress"]) == 0
    assert "0 error(s), 1 warning(s) - OK" in capsys.readouterr().out


def _plant(tmp_path):
    fakedata.make_dataset(tmp_path, "voc21", n=5)
    ds = get_dataset("voc21", tmp_path)
    s = ds.samples
    s[0].image.unlink()                                                      # missing image
    s[1].ann.unlink()                                                        # missing annotation
    data = s[2].image.read_bytes()
    s[2].image.write_bytes(data[: len(data) // 3])                          # truncated JPEG
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(s[3].ann)        # colour annotation
    lab = np.zeros((20, 32), np.uint8)
    lab[0, 0] = 42
    Image.fromarray(lab).save(s[4].ann)                                     # wrong size + label 42 > 20
    return ds


def test_each_planted_defect_is_reported(tmp_path, capsys):
    ds = _plant(tmp_path)
    findings, n = check_dataset(ds)
    by_file = {}
    for f in findings:
        by_file.setdefault(f.path and f.path.split("/")[-1], []).append(f)
    s = ds.samples
    assert [f.kind for f in by_file[s[0].image.name]] == ["missing"]
    assert [f.kind for f in by_file[s[1].ann.name]] == ["missing"]
    assert by_file[s[2].image.name][0].kind == "corrupt" and "image" in by_file[s[2].image.name][0].message and "runcated" in by_file[s[2].image.name][0].message
    assert by_file[s[3].ann.name][0].kind == "malformed" and "3 channels" in by_file[s[3].ann.name][0].message
    assert [f.kind for f in by_file[s[4].ann.name]] == ["labels"] and ": 42" in by_file[s[4].ann.name][0].message
    rc = main(["data", "check", "--dataset", "voc21", "--root", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "5 error(s)" in out and s[0].image.name in out


def test_size_mismatch_reported(tmp_path):
    fakedata.make_dataset(tmp_path, "ade20k", n=2)
    ds = get_dataset("ade20k", tmp_path)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(ds[1].ann)
    kinds, findings, _ = _kinds(ds)
    assert ("error", "size") in kinds and "is 32x24 but annotation" in findings[-1].message


def test_missing_folders_and_list(tmp_path):
    kinds, findings, _ = _kinds(get_dataset("voc21", tmp_path / "nowhere"))
    assert kinds == {("error", "missing")} and "dataset root not found" in findings[0].message
    fakedata.make_dataset(tmp_path, "context60", n=2)
    (tmp_path / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt").unlink()
    kinds, findings, _ = _kinds(get_dataset("context60", tmp_path))
    assert any("image list not found" in f.message for f in findings)
    fakedata.make_dataset(tmp_path / "c", "coco_object", n=2)
    for p in (tmp_path / "c/annotations/val2017").iterdir():
        p.unlink()
    (tmp_path / "c/annotations/val2017").rmdir()
    _, findings, _ = _kinds(get_dataset("coco_object", tmp_path / "c"))
    assert "annotation folder not found" in findings[0].message and "prepare coco-object" in findings[0].message


def test_cityscapes_label_ids_hint(tmp_path):
    fakedata.make_dataset(tmp_path, "cityscapes", n=1)
    ds = get_dataset("cityscapes", tmp_path)
    Image.fromarray(np.full((24, 32), 26, np.uint8)).save(ds[0].ann)
    _, findings, _ = _kinds(ds)
    assert "ovss data prepare cityscapes" in [f for f in findings if f.kind == "labels"][0].message


def test_orphan_annotation_and_duplicates(tmp_path):
    fakedata.make_dataset(tmp_path, "ade20k", n=2)
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "ADEChallengeData2016/annotations/validation/x.png")
    kinds, _, _ = _kinds(get_dataset("ade20k", tmp_path))
    assert ("warning", "layout") in kinds
    fakedata.make_dataset(tmp_path / "v", "voc21", n=2)
    lst = tmp_path / "v/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    lst.write_text(lst.read_text() * 2)
    kinds, _, _ = _kinds(get_dataset("voc21", tmp_path / "v"))
    assert ("error", "layout") in kinds


# ------------------------------------------------------------------------------------------------ prepare
def test_prepare_coco_object_and_stuff(tmp_path, capsys):
    raw = np.array([[0, 10, 11, 12, 89, 90], [91, 181, 255, 26, 66, 200]], np.uint8)
    (tmp_path / "raw").mkdir()
    Image.fromarray(raw).save(tmp_path / "raw/000000000139.png")
    assert main(["data", "prepare", "coco-object", "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    obj = read_label(tmp_path / "o/000000000139_instanceTrainIds.png")
    # things: 0->1, 10->11, 12->12 (11 is a gap), 89->80; stuff, gaps, 255 -> 0
    np.testing.assert_array_equal(obj, [[1, 11, 0, 12, 80, 0], [0, 0, 0, 25, 61, 0]])
    rep = prepare_coco(tmp_path / "raw", tmp_path / "s", "coco_stuff")
    stuff = read_label(tmp_path / "s/000000000139_labelTrainIds.png")
    np.testing.assert_array_equal(stuff, [[0, 10, 255, 11, 79, 255], [80, 170, 255, 24, 60, 255]])
    assert rep.written == 1 and sorted(rep.unexpected[str(tmp_path / "raw/000000000139.png")]) == [11, 90, 200]
    assert prepare_coco(tmp_path / "raw", tmp_path / "s", "coco_stuff").skipped == 1   # idempotent


def test_coco_thing_table():
    assert len(COCO_THING_VALUES) == 80 and COCO_THING_VALUES[-1] == 89
    assert {11, 25, 28, 29, 44, 65, 67, 68, 70, 82}.isdisjoint(COCO_THING_VALUES)


def test_prepare_cityscapes(tmp_path):
    ids = np.array([[7, 8, 11, 26, 33], [0, 1, 6, 34, 24]], np.uint8)
    src = tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    src.parent.mkdir(parents=True)
    Image.fromarray(ids).save(src)
    assert main(["data", "prepare", "cityscapes", "--root", str(tmp_path), "--no-progress"]) == 0
    out = read_label(tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(out, [[0, 1, 2, 13, 18], [255, 255, 255, 255, 11]])


def test_prepare_context_from_mat_and_png(tmp_path):
    from scipy.io import savemat
    ids = np.array([[0, 2, 9, 458], [3, 459, 18, 115]], np.uint16)
    (tmp_path / "trainval").mkdir()
    savemat(tmp_path / "trainval/2008_000002.mat", {"LabelMap": ids})
    Image.fromarray(ids).save(tmp_path / "trainval/2008_000003.png")
    out = tmp_path / "VOCdevkit/VOC2010"
    rep = prepare_context(out, src=tmp_path / "trainval")
    assert rep.written == 2
    want = [[0, 1, 2, 59], [0, 0, 3, 24]]              # 3 and 459 are not in the table -> background
    for stem in ("2008_000002", "2008_000003"):
        np.testing.assert_array_equal(read_label(out / f"SegmentationClassContext/{stem}.png"), want)
    assert (out / "ImageSets/SegmentationContext/val.txt").read_text() == "2008_000002\n2008_000003\n"
    with pytest.raises(Exception, match="not in the Pascal Context table: \\[3, 459\\]"):
        context_from_ids(ids.astype(np.int64), strict=True)
    # detectron2 pc459 ids (0-based, 65535 unlabeled) give the same maps
    Image.fromarray(np.array([[65535, 1, 8, 457]], np.uint16)).save(tmp_path / "pc.tif")
    (tmp_path / "pc").mkdir()
    (tmp_path / "pc.tif").rename(tmp_path / "pc/2008_000007.tif")
    prepare_context(out, src=tmp_path / "pc", ids="pc459", split="pc")
    np.testing.assert_array_equal(read_label(out / "SegmentationClassContext/2008_000007.png"), [[0, 1, 2, 59]])
    assert list(CONTEXT59_IDS).index(458) == 59


def test_prepare_context_json_without_detail_api(tmp_path, capsys):
    rc = main(["data", "prepare", "context", "--out", str(tmp_path), "--json", str(tmp_path / "trainval_merged.json")])
    assert rc == 2 and "Detail API" in capsys.readouterr().err


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "VOCdevkit/VOC2012/JPEGImages/*.jpg" in out and "_gtFine_labelTrainIds.png" in out
