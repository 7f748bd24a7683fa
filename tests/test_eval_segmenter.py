"""End to end with the real ovss.Segmenter (tiny random CLIP): the runner's numbers equal a hand-made loop."""
import numpy as np
import pytest

import fakedata
from ovss.data import get_dataset
from ovss.eval.metrics import ConfusionMatrix, mmseg_metrics
from ovss.eval.runner import EvalConfig, evaluate


@pytest.mark.slow
def test_clip_tiny_random_end_to_end(tmp_path):
    import ovss
    fakedata.make_dataset(tmp_path / "d", "voc21", n=2, sizes=[(24, 32), (30, 20)])
    cfg = EvalConfig(method="clip", dataset="voc21", data_root=str(tmp_path / "d"), clip="tiny-test",
                     clip_weights="random", device="cpu")
    r = evaluate(cfg, tmp_path / "out", progress=False)
    seg = ovss.Segmenter(method="clip", classes=None, preset="voc21", clip="tiny-test", clip_weights="random",
                         device="cpu")
    ds = get_dataset("voc21", tmp_path / "d")
    cm = ConfusionMatrix(21, 255)
    for s in ds.samples:
        cm.update(seg.predict(str(s.image)), ds.load_gt(s))
    np.testing.assert_array_equal(r.confusion, cm.numpy())
    assert r.summary == mmseg_metrics(cm.numpy()).summary
    assert r.config["method_params"]["params"]["prob_thd"] == 0.1          # the voc21 preset was applied
    assert len(r.config["method_params"]["classes"]) == 21
