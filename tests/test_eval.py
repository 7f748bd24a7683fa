"""ovss eval runner: numbers, result files, resume, bad input, hooks, tables (fake segmenter injected)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fakedata
import fakeseg
from ovss.cli import main
from ovss.data import DataError, get_dataset
from ovss.errors import OvssError
from ovss.eval.metrics import mmseg_metrics
from ovss.eval.runner import EvalConfig, evaluate

TESTS = Path(__file__).parent


def _cfg(root, dataset="voc21", **kw):
    return EvalConfig(method="fake", dataset=dataset, data_root=str(root), **kw)


def _expected_matrix(root, dataset, layout="mmseg", offset=0, crop=None):
    """Independent: the fake's predictions vs the GT, counted with a plain numpy bincount."""
    ds = get_dataset(dataset, root, layout)
    k = ds.num_classes
    mat = np.zeros((k + 1, k + 1), np.int64)
    for s in ds.samples:
        gt = ds.load_gt(s).astype(np.int64)
        if crop:
            gt = fakeseg.center_crop_nearest(gt, crop)
        pred = fakeseg.corrupt(gt, k, ds.ignore_index, s.index)
        if offset:
            h, w = pred.shape
            yy, xx = np.mgrid[:h, :w]
            pred[(yy + xx + s.index) % 11 == 0] = -1
        keep = gt != ds.ignore_index
        g, p = gt[keep], pred[keep]
        g = np.where((g >= 0) & (g < k), g, k)
        p = np.where((p >= 0) & (p < k), p, k)
        mat += np.bincount(g * (k + 1) + p, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    return mat


@pytest.fixture
def voc(tmp_path):
    fakedata.make_dataset(tmp_path / "data", "voc21", n=5, sizes=[(24, 32), (30, 20), (16, 16), (24, 32), (20, 28)])
    return tmp_path / "data"


def test_numbers_and_result_files(voc, tmp_path):
    r = evaluate(_cfg(voc), tmp_path / "out", factory=fakeseg.make, progress=False)
    want = _expected_matrix(voc, "voc21")
    np.testing.assert_array_equal(r.confusion, want)
    assert r.summary == mmseg_metrics(want).summary and r.evaluated == r.num_images == 5
    out = tmp_path / "out"
    data = json.loads((out / "result.json").read_text())
    assert data["summary"]["mIoU"] == r.summary["mIoU"] and data["metric"] == "mmseg"
    assert set(data["all_metrics"]) == {"mmseg", "cliptrase", "cliper"}
    for pkg in ("torch", "open_clip_torch", "timm", "ovss", "numpy"):
        assert pkg in data["versions"]
    assert data["config"]["eval"]["dataset"] == "voc21" and data["config"]["segmenter"]["preset"] == "voc21"
    assert data["config"]["dataset"]["ignore_index"] == 255
    rows = (out / "per_class.csv").read_text().splitlines()
    assert rows[0] == "index,class,IoU,Acc,gt_pixels,pred_pixels" and len(rows) == 22 and rows[1].startswith("0,background,")
    md = (out / "result.md").read_text()
    assert f"| {r.summary['mIoU']:.2f} |" in md and "| 1 | aeroplane |" in md
    np.testing.assert_array_equal(np.load(out / "confusion.npy"), want)


def test_metric_choice_and_16bit_quirk(tmp_path):
    fakedata.make_dataset(tmp_path / "d", "context459", n=3)
    r = evaluate(_cfg(tmp_path / "d", "context459", metric="cliptrase"), tmp_path / "o1", factory=fakeseg.make,
                 progress=False)
    assert r.metric == "cliptrase" and r.summary == r.all_metrics["cliptrase"]
    # official ProxyCLIP/Trident behaviour: ignore 255, so the 65535 "unlabeled" pixels count as predictions
    q = evaluate(_cfg(tmp_path / "d", "context459", ignore_index=255), tmp_path / "o2", factory=fakeseg.make,
                 progress=False)
    assert q.confusion[459].sum() > 0 and r.confusion[459].sum() == 0


def test_hooks_label_offset_and_target_transform(voc, tmp_path):
    r = evaluate(_cfg(voc, overrides={"offset": 1}), tmp_path / "o", factory=fakeseg.make, progress=False)
    np.testing.assert_array_equal(r.confusion, _expected_matrix(voc, "voc21", offset=1))
    assert r.confusion[:21, 21].sum() > 0          # "no class" predictions are misses outside every class
    c = evaluate(_cfg(voc, overrides={"crop": 12}), tmp_path / "c", factory=fakeseg.make, progress=False)
    np.testing.assert_array_equal(c.confusion, _expected_matrix(voc, "voc21", crop=12))
    assert c.confusion.sum() <= 5 * 144


def test_interrupt_then_resume_equals_uninterrupted(voc, tmp_path):
    full = evaluate(_cfg(voc), tmp_path / "full", factory=fakeseg.make, progress=False)
    cfg = _cfg(voc, overrides={"fail_after": 2})
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path / "r", factory=fakeseg.make, progress=False, save_every=1)
    assert (tmp_path / "r/state").is_dir() and not (tmp_path / "r/result.json").exists()
    with pytest.raises(OvssError, match="--resume"):
        evaluate(cfg, tmp_path / "r", factory=fakeseg.make, progress=False)
    crash = EvalConfig(**{**cfg.__dict__, "overrides": {"fail_after": 2}})
    with pytest.raises(KeyboardInterrupt):     # second session dies too: 2 more images
        evaluate(crash, tmp_path / "r", factory=fakeseg.make, progress=False, resume=True)
    seen = []

    def counting(c, d):
        seg = fakeseg.make(c, d)
        orig = seg.predict
        seg.predict = lambda p: (seen.append(p), orig(p))[1]
        return seg

    cfg2 = EvalConfig(**{**cfg.__dict__, "overrides": {"fail_after": 2}})
    res = evaluate(cfg2, tmp_path / "r", factory=counting, progress=False, resume=True)
    assert len(seen) == 1                      # only the fifth image was left
    np.testing.assert_array_equal(res.confusion, full.confusion)
    assert res.summary == full.summary and res.evaluated == 5 and res.resumed
    # a completed run resumes to the same numbers without predicting anything
    again = evaluate(cfg2, tmp_path / "r", factory=counting, progress=False, resume=True)
    assert len(seen) == 1 and again.summary == full.summary


def test_crash_keeps_progress(voc, tmp_path):
    cfg = _cfg(voc, overrides={"crash_after": 3})
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(cfg, tmp_path / "r", factory=fakeseg.make, progress=False, save_interval=1e9)
    res = evaluate(_cfg(voc, overrides={"crash_after": 3}), tmp_path / "r", factory=lambda c, d: fakeseg.make(
        EvalConfig(**{**c.__dict__, "overrides": {}}), d), progress=False, resume=True)
    np.testing.assert_array_equal(res.confusion, _expected_matrix(voc, "voc21"))


def test_resume_refuses_a_different_configuration(voc, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate(_cfg(voc, overrides={"fail_after": 1}), tmp_path / "r", factory=fakeseg.make, progress=False)
    with pytest.raises(OvssError, match="differs in: images_sha1, num_images"):
        evaluate(_cfg(voc, limit=3, overrides={"fail_after": 1}), tmp_path / "r", factory=fakeseg.make,
                 progress=False, resume=True)
    r = evaluate(_cfg(voc, limit=3), tmp_path / "r", factory=fakeseg.make, progress=False, overwrite=True)
    assert r.num_images == 3 and not r.resumed


@pytest.mark.slow
def test_sigkill_then_resume_cli(voc, tmp_path):
    """A run killed with SIGKILL (no chance to clean up) resumes to the uninterrupted numbers."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    base = [sys.executable, "-m", "ovss", "eval", "--method", "fake", "--dataset", "voc21", "--data-root", str(voc),
            "--factory", "fakeseg:make", "--no-progress", "--save-interval", "0"]
    out = tmp_path / "killed"
    p = subprocess.Popen(base + ["--out", str(out), "--set", "delay=0.4"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "state").glob("part-*.npz")):
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "result.json").exists()
    done = subprocess.run(base + ["--out", str(out), "--set", "delay=0.4", "--resume"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["resumed"] and res["evaluated"] == 5
    want = mmseg_metrics(_expected_matrix(voc, "voc21")).summary
    assert res["summary"] == want


def test_bad_samples_named_and_skippable(voc, tmp_path):
    ds = get_dataset("voc21", voc)
    data = ds[1].image.read_bytes()
    ds[1].image.write_bytes(data[:40])                                         # corrupt image
    from PIL import Image
    Image.fromarray(np.full((24, 32), 77, np.uint8)).save(ds[3].ann)          # label values out of range
    with pytest.raises(DataError, match=f"{ds[1].image.name}.*--skip-bad"):
        evaluate(_cfg(voc), tmp_path / "a", factory=fakeseg.make, progress=False)
    r = evaluate(_cfg(voc, skip_bad=True), tmp_path / "b", factory=fakeseg.make, progress=False)
    assert [b["index"] for b in r.bad] == [1, 3] and r.evaluated == 3
    assert r.bad[0]["kind"] == "corrupt" and r.bad[1]["kind"] == "labels" and ": 77" in r.bad[1]["error"]
    assert "2 bad sample(s) skipped" in (tmp_path / "b/result.md").read_text()
    ds[0].ann.unlink()
    ds[2].image.unlink()
    r = evaluate(_cfg(voc, skip_bad=True), tmp_path / "c", factory=fakeseg.make, progress=False)
    assert [(b["index"], b["kind"]) for b in r.bad] == [(0, "missing"), (1, "corrupt"), (2, "missing"), (3, "labels")]


def test_size_mismatch_and_wrong_prediction_shape(voc, tmp_path):
    from PIL import Image
    ds = get_dataset("voc21", voc)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ds[0].ann)
    with pytest.raises(DataError, match="size mismatch: image .*2007_000033.jpg is 32x24"):
        evaluate(_cfg(voc), tmp_path / "a", factory=fakeseg.make, progress=False)

    def wrong(c, d):
        seg = fakeseg.make(c, d)
        seg.predict = lambda p: np.zeros((3, 3), np.int64)
        return seg
    with pytest.raises(OvssError, match="prediction for .* is \\(3, 3\\)"):
        evaluate(_cfg(voc, skip_bad=True), tmp_path / "b", factory=wrong, progress=False)


def test_class_count_mismatch(voc, tmp_path):
    def other(c, d):
        seg = fakeseg.make(c, d)
        seg.classes = seg.classes[:20]
        return seg
    with pytest.raises(OvssError, match="predicts 20 classes but voc21 has 21"):
        evaluate(_cfg(voc), tmp_path / "a", factory=other, progress=False)


def test_cli_single_and_table(voc, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    fakedata.make_dataset(tmp_path / "ctx", "context60", n=3)
    rc = main(["eval", "--method", "fake", "--dataset", "voc21", "--data-root", str(voc), "--factory", "fakeseg:make",
               "--out", str(tmp_path / "one"), "--no-progress", "--limit", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and "fake on voc21: mIoU" in out and "(2/2 images" in out
    rc = main(["eval", "--methods", "fakeA,fakeB", "--datasets", "context60,voc21", "--data-root", str(voc),
               "--data-root", f"context60={tmp_path / 'ctx'}", "--factory", "fakeseg:make", "--out",
               str(tmp_path / "tab"), "--no-progress"])
    assert rc == 0
    table = (tmp_path / "tab/table.md").read_text()
    assert table.splitlines()[2] == "| method | VOC21 | Context60 | avg |"       # survey column order
    r1 = json.loads((tmp_path / "tab/fakeA/voc21/result.json").read_text())
    assert f"| fakeA | {r1['summary']['mIoU']:.2f} |" in table
    assert (tmp_path / "tab/table.csv").read_text().startswith("method,voc21,context60\n")
    # resume of a finished table recomputes nothing and gives the same table
    rc = main(["eval", "--methods", "fakeA,fakeB", "--datasets", "context60,voc21", "--data-root", str(voc),
               "--data-root", f"context60={tmp_path / 'ctx'}", "--factory", "fakeseg:make", "--out",
               str(tmp_path / "tab"), "--no-progress", "--resume"])
    assert rc == 0 and (tmp_path / "tab/table.md").read_text() == table


def test_cli_errors(voc, tmp_path, capsys):
    assert main(["eval", "--method", "fake", "--data-root", str(voc)]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["eval", "--method", "fake", "--dataset", "voc21", "--data-root", str(tmp_path / "none"),
                 "--factory", "fakeseg:make", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "image list not found" in capsys.readouterr().err
