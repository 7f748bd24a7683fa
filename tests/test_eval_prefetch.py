"""Evaluation that reads ahead: background threads decode the next images and ground truths while the model runs
(`EvalConfig.prefetch`, `ovss eval --prefetch N`). The results must be bit-identical to the sequential run, also
when the run is interrupted and resumed, and a bad sample must surface at its own place in the order."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import fakedata
import fakeseg
from ovss.data import DataError
from ovss.eval.runner import EvalConfig, _ahead, evaluate


def test_ahead_keeps_the_order_defers_errors_and_reads_ahead():
    def fn(i):
        if i == 3:
            raise ValueError("bad 3")
        time.sleep(0.01 * (5 - i % 5))   # later items finish first: the order must still hold
        return i * 10

    for workers in (0, 1, 3):
        got = []
        for i, f in _ahead(fn, list(range(8)), workers):
            try:
                got.append(f.result())
            except ValueError as e:
                got.append(str(e))
        assert got == [0, 10, 20, "bad 3", 40, 50, 60, 70]

    # read-ahead: item 0 can only finish once item 1 is being read at the same time
    second = threading.Event()

    def needs_overlap(i):
        if i == 1:
            second.set()
            return "one"
        return "zero" if second.wait(timeout=10) else "no read-ahead"

    assert [f.result() for _, f in _ahead(needs_overlap, [0, 1], 2)] == ["zero", "one"]


def test_ahead_stops_its_workers_when_the_consumer_stops():
    calls = []
    gen = _ahead(lambda i: calls.append(i) or i, list(range(100)), 2)
    for i, f in gen:
        if i == 1:
            break
    gen.close()
    assert len(calls) <= 2 + 4 + 1               # no more than the read-ahead window was started
    assert not [t for t in threading.enumerate() if t.name.startswith("ovss-prefetch")]


@pytest.mark.slow
def test_prefetch_equals_sequential_with_the_real_segmenter_and_after_resume(voc21_set, tmp_path):
    seq = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=0), tmp_path / "seq", progress=False)
    pre = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=3), tmp_path / "pre", progress=False)
    np.testing.assert_array_equal(seq.confusion, pre.confusion)
    assert seq.summary == pre.summary and pre.evaluated == 20

    # interrupted after 7 images (the model raises KeyboardInterrupt), then resumed, with read-ahead on
    from ovss.eval import runner as R

    def interrupting(cfg, device):
        seg = R.default_factory(cfg, device)
        n = {"calls": 0}
        predict = seg.predict

        def p(image):
            n["calls"] += 1
            if n["calls"] > 7:
                raise KeyboardInterrupt
            return predict(image)
        seg.predict = p
        return seg

    with pytest.raises(KeyboardInterrupt):
        evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=3), tmp_path / "res", progress=False, factory=interrupting, save_every=1)
    res = evaluate(fakedata.tiny_eval_config(voc21_set, prefetch=3), tmp_path / "res", progress=False, resume=True)
    assert res.resumed
    np.testing.assert_array_equal(seq.confusion, res.confusion)


def test_a_corrupt_image_fails_at_its_place_with_prefetch(tmp_path):
    root = tmp_path / "d"
    fakedata.make_dataset(root, "voc21", n=6, size=(16, 16))
    from ovss.data import get_dataset
    bad = get_dataset("voc21", root).samples[4]
    bad.image.write_bytes(b"not an image")
    cfg = EvalConfig(method="fake", dataset="voc21", data_root=str(root), prefetch=2)
    with pytest.raises(DataError, match=f"{bad.image.name}.*--skip-bad"):
        evaluate(cfg, tmp_path / "o", factory=fakeseg.make, progress=False)
    cfg.skip_bad = True
    r = evaluate(cfg, tmp_path / "o2", factory=fakeseg.make, progress=False)
    assert [b["stem"] for b in r.bad] == [bad.stem] and r.evaluated == 5
