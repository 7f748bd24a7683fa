"""Metrics against hand-computed confusion matrices and independent re-implementations of the official formulas."""
import math

import numpy as np
import pytest
import torch

from ovss.eval.metrics import ConfusionMatrix, cliper_metrics, cliptrase_metrics, compute_metrics, mmseg_metrics

# 7 pixels, K = 3, ignore 255: two ignored (one of them predicted as class 2), one "no class" prediction (5)
GT = np.array([[0, 0, 1, 1, 255, 255, 0]], np.uint8)
PRED = np.array([[0, 1, 1, 1, 2, 0, 5]], np.int64)


def _cm(pairs, k=3, ignore=255):
    cm = ConfusionMatrix(k, ignore)
    for p, g in pairs:
        cm.update(p, g)
    return cm


def test_confusion_matrix_by_hand():
    m = _cm([(PRED, GT)]).numpy()
    want = np.zeros((4, 4), np.int64)
    want[0, 0] = 1
    want[0, 1] = 1
    want[1, 1] = 2
    want[0, 3] = 1          # GT 0 predicted "no class" (5 is outside 0..2)
    np.testing.assert_array_equal(m, want)
    assert m.dtype == np.int64


def test_mmseg_by_hand():
    r = mmseg_metrics(_cm([(PRED, GT)]).numpy())
    # I = [1, 2, 0], P = [1, 3, 0], G = [3, 2, 0] -> IoU = [1/3, 2/3, NaN]
    iou = r.per_class["IoU"]
    assert iou[0] == pytest.approx(100 / 3) and iou[1] == pytest.approx(200 / 3) and math.isnan(iou[2])
    acc = r.per_class["Acc"]
    assert acc[0] == pytest.approx(100 / 3) and acc[1] == pytest.approx(100) and math.isnan(acc[2])
    assert r.summary == {"mIoU": 50.0, "mAcc": 66.67, "aAcc": 60.0, "fwIoU": 46.67}
    assert r.per_class["gt_pixels"] == [3, 2, 0] and r.per_class["pred_pixels"] == [1, 3, 0]


def test_predicted_but_absent_class_counts_zero():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])           # class 2 never in GT but predicted once
    r = mmseg_metrics(_cm([(pred, gt)]).numpy())
    assert r.per_class["IoU"][2] == 0.0
    assert math.isnan(r.per_class["Acc"][2])
    assert r.summary["mIoU"] == pytest.approx(round(100 * (0.5 + 1 + 0) / 3, 2))


def test_negative_prediction_is_a_miss_not_a_class():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, -1, -1]])          # pred - label_offset < 0: "background" on a dataset without one
    r = mmseg_metrics(_cm([(pred, gt)], k=2).numpy())
    assert r.per_class["IoU"][1] == 50.0 and math.isnan(r.per_class["IoU"][0])


def test_ignore_excludes_prediction_too():
    gt = np.full((4, 4), 255, np.uint8)
    gt[0, 0] = 1
    pred = np.zeros((4, 4), np.int64)
    pred[0, 0] = 1
    r = mmseg_metrics(_cm([(pred, gt)], k=2).numpy())
    assert r.per_class["pred_pixels"] == [0, 1] and r.summary["mIoU"] == 100.0


def _mmseg_reference(preds, gts, k, ignore):
    """The spec's per-image histogram formulation (§4.1), summed over the dataset."""
    ti = tp = tg = torch.zeros(k, dtype=torch.float64)
    for p, g in zip(preds, gts):
        p, g = torch.as_tensor(p).double(), torch.as_tensor(g.astype(np.int64)).double()
        keep = g != ignore
        p, g = p[keep], g[keep]
        inter = p[p == g]
        ti = ti + torch.histc(inter, bins=k, min=0, max=k - 1)
        tp = tp + torch.histc(p, bins=k, min=0, max=k - 1)
        tg = tg + torch.histc(g, bins=k, min=0, max=k - 1)
    iou = (ti / (tp + tg - ti)).numpy()
    acc = (ti / tg).numpy()
    return (np.round(np.nanmean(iou) * 100, 2), np.round(np.nanmean(acc) * 100, 2),
            np.round(ti.sum().item() / tg.sum().item() * 100, 2), iou)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmseg_equals_histogram_reference(seed):
    rng = np.random.default_rng(seed)
    k, ignore = 7, 255
    preds, gts = [], []
    for _ in range(5):
        h, w = rng.integers(5, 30, size=2)
        g = rng.integers(0, k - 2, size=(h, w)).astype(np.int64)   # classes k-2, k-1 never in GT
        g[rng.random((h, w)) < 0.1] = ignore
        g[rng.random((h, w)) < 0.05] = 300                          # out of range, not ignored (16-bit quirk)
        p = rng.integers(-1, k + 1, size=(h, w))                   # includes -1 and k (outside)
        preds.append(p)
        gts.append(g)
    cm = ConfusionMatrix(k, ignore)
    for p, g in zip(preds, gts):
        cm.update(torch.from_numpy(p), g)
    r = mmseg_metrics(cm.numpy())
    miou, macc, aacc, iou = _mmseg_reference(preds, gts, k, ignore)
    assert (r.summary["mIoU"], r.summary["mAcc"], r.summary["aAcc"]) == (miou, macc, aacc)
    np.testing.assert_allclose(np.array(r.per_class["IoU"]) / 100, iou, equal_nan=True)


def _fast_hist_reference(gts, preds, n, eps, extra=0):
    """CLIPtrase / CLIPer formulas: rows GT in 0..n-1, predictions assumed inside 0..n-1 (+ extra slots)."""
    size = n + extra
    hist = np.zeros((size, size))
    for g, p in zip(gts, preds):
        g, p = g.ravel().astype(int), p.ravel().astype(int)
        mask = (g >= 0) & (g < size)
        hist += np.bincount(size * g[mask] + p[mask], minlength=size ** 2).reshape(size, size)
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist) + eps)
    valid = hist.sum(1) > 0
    acc_cls = np.nanmean(np.diag(hist) / (hist.sum(1) + eps))
    freq = hist.sum(1) / hist.sum()
    return {"mIoU": round(np.nanmean(iu[valid]) * 100, 2), "mAcc": round(acc_cls * 100, 2),
            "aAcc": round(np.diag(hist).sum() / hist.sum() * 100, 2),
            "fwIoU": round((freq[freq > 0] * iu[freq > 0]).sum() * 100, 2)}


def test_cliptrase_by_hand():
    r = cliptrase_metrics(_cm([(PRED, GT)]).numpy())
    assert r.summary["mIoU"] == round(1.5 / 3.01 * 100, 2) == 49.83
    assert r.summary["mAcc"] == round((1 / 3.01 + 2 / 2.01 + 0) / 3 * 100, 2) == 44.24
    assert r.summary["aAcc"] == 60.0 and r.summary["fwIoU"] == round(1.4 / 3.01 * 100, 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_cliptrase_equals_reference(seed):
    rng = np.random.default_rng(seed)
    n = 6
    gts = [rng.integers(-1, n + 3, size=(9, 11)) for _ in range(4)]      # -1 / >= n: dropped rows
    for g in gts:
        g[g == 3] = 0                                                     # class 3 absent from every GT
    preds = [rng.integers(0, n, size=(9, 11)) for _ in range(4)]
    cm = ConfusionMatrix(n, ignore_index=None)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    assert cliptrase_metrics(cm.numpy()).summary == _fast_hist_reference(gts, preds, n, 0.01)


def test_cliper_background_slot_with_offset():
    """CLIPer on a dataset without background: labels 0 (bg) / 1+c; its hist has an empty background row."""
    rng = np.random.default_rng(3)
    n = 5
    gts = [rng.integers(0, n, size=(8, 8)) for _ in range(3)]
    preds_cliper = [rng.integers(0, n + 1, size=(8, 8)) for _ in range(3)]   # 0 = background, 1+c = class c
    ref = _fast_hist_reference([g + 1 for g in gts], preds_cliper, n, 1e-5, extra=1)
    cm = ConfusionMatrix(n, ignore_index=None)
    for p, g in zip(preds_cliper, gts):
        cm.update(p - 1, g)                                                  # runner: pred - label_offset
    got = cliper_metrics(cm.numpy(), label_offset=1).summary
    assert {k: got[k] for k in ("mIoU", "mAcc", "aAcc")} == {k: ref[k] for k in ("mIoU", "mAcc", "aAcc")}


def test_accumulation_is_order_independent_and_additive():
    rng = np.random.default_rng(5)
    items = [(rng.integers(0, 4, (6, 7)), rng.integers(0, 4, (6, 7))) for _ in range(6)]
    a = _cm(items, k=4).numpy()
    b = _cm(items[::-1], k=4).numpy()
    c = _cm(items[:3], k=4)
    c.add(_cm(items[3:], k=4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c.numpy())
    assert a.sum() == 6 * 42


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        _cm([(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.uint8))])


def test_uint16_ground_truth_and_all_nan():
    cm = ConfusionMatrix(459, ignore_index=65535)
    g = np.array([[458, 65535]], np.uint16)
    cm.update(np.array([[458, 3]]), g)
    r = mmseg_metrics(cm.numpy())
    assert r.summary["mIoU"] == 100.0 and r.per_class["pred_pixels"][3] == 0
    empty = mmseg_metrics(ConfusionMatrix(3).numpy())
    assert all(math.isnan(v) for v in empty.summary.values())
    with pytest.raises(ValueError):
        compute_metrics(cm.numpy(), "nope")
