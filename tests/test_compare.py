"""`ovss compare` and its pieces: the grid (colours by class name, failed cells, one legend), the runner (a failing
method does not stop the others), which methods have their weights, and the command end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ovss import compare as C
from ovss.cli import main
from ovss.errors import InputError
from ovss.viz import compare_grid, palette

TINY = ["--clip", "tiny-test", "--clip-weights", "random", "--set", "slide_crop=0"]


class _Result:
    def __init__(self, labels, classes):
        self.labels, self.classes = labels, classes
        self.areas = {classes[k]: float((labels == k).mean()) for k in np.unique(labels)}
        self.scores = {c: 0.5 for c in self.areas}


class _Seg:
    def __init__(self, labels, classes):
        self._r = _Result(labels, classes)

    def segment(self, image):
        return self._r


def test_grid_colours_follow_the_class_name_and_failed_cells_are_grey():
    img = np.full((20, 30, 3), 128, np.uint8)
    a = np.zeros((20, 30), np.int64)
    a[:, 15:] = 1                                   # method A: left "sky", right "grass"
    b = np.ones((20, 30), np.int64)                 # method B adds a background class 0: "sky" is label 1 there
    cells = [("A", a, ["sky", "grass"], "0.10 s"), ("B", b, ["background", "sky", "grass"], "0.20 s"),
             ("C", None, [], "weights missing")]
    g = np.asarray(compare_grid(img, cells, ["sky", "grass"], alpha=1.0, cell_width=30, max_cols=3))
    sky, grass = palette(4)[1:3]                     # colours 1, 2: by name, in the order of `classes`
    pad, title_h = 8, 25
    y = pad + title_h + 10
    assert (g[y, pad + 2] == sky).all() and (g[y, pad + 25] == grass).all()
    x_b = pad + 30 + pad
    assert (g[y, x_b + 2] == sky).all() and (g[y, x_b + 25] == sky).all()   # B's label 1 = sky: same colour
    x_c = pad + 2 * (30 + pad)
    assert (g[y + 8, x_c + 1] == 235).all()                                   # failed cell: grey
    # one legend on the right: swatches of the present classes (sky, grass), not of "background"
    grid_w = 3 * (30 + pad) + pad
    col = g[pad + 7, grid_w + pad + 7]
    assert (col == sky).all()
    assert (g[pad + 15 + pad + 7, grid_w + pad + 7] == grass).all()
    assert g.shape[0] >= pad + title_h + 20


def test_compare_goes_on_after_a_failure_and_reports_it():
    lab = np.zeros((4, 4), np.int64)

    def make(m):
        if m == "bad":
            raise InputError("no weights for bad")
        return _Seg(lab, ["cat"])

    started = []
    runs = C.compare(object(), ["a", "bad", "b"], make, lambda m, i: started.append((m, i)))
    assert started == [("a", 0), ("bad", 1), ("b", 2)]
    assert [r.method for r in runs] == ["a", "bad", "b"]
    assert runs[1].result is None and runs[1].error == "no weights for bad"
    d = C.compare_dict("x.jpg", ["cat"], runs)
    assert d["methods"][0]["areas"] == {"cat": 1.0} and d["methods"][1]["error"] == "no weights for bad"
    with pytest.raises(InputError, match="no methods to compare"):
        C.compare(object(), [], make)


def test_parse_methods():
    assert C.parse_methods(" sclip, clip ,sclip") == ["sclip", "clip"]
    assert C.parse_methods("") is None and C.parse_methods(None) is None
    with pytest.raises(InputError, match="unknown method.*nope"):
        C.parse_methods("sclip,nope")


def test_methods_with_weights(monkeypatch):
    from ovss import weights as W
    assert C.model_kind("clip:ViT-B/16") == "clip" and C.model_kind("sam:vit_b") == "sam"
    assert C.model_kind("sd21_base") == "sd" and C.model_kind("dino_vitb8") == "vfm"
    monkeypatch.setattr(W, "status", lambda k: type("S", (), {"state": "missing"})())
    only_clip = C.methods_with_weights(["clip"])
    assert {"clip", "sclip", "naclip", "cliptrase", "cliper_elf"} <= set(only_clip)
    assert not {"proxyclip", "trident", "cliper"} & set(only_clip)
    assert C.methods_with_weights([]) == []
    cached = {"clip:ViT-B/16", "dino_vitb8"}
    monkeypatch.setattr(W, "status", lambda k: type("S", (), {"state": "cached" if k in cached else "missing"})())
    got = set(C.methods_with_weights([]))
    assert {"sclip", "proxyclip"} <= got and "trident" not in got and "cliper" not in got


def test_compare_command_end_to_end(tmp_path, capsys, monkeypatch, smooth_rgb):
    from PIL import Image
    monkeypatch.setenv("OVSS_OFFLINE", "1")        # proxyclip's DINO weights: missing, fail at once
    path = tmp_path / "pic.png"
    Image.fromarray(smooth_rgb).save(path)
    rc = main(["compare", str(path), "--classes", "sky, grass, horse", "--methods", "clip,proxyclip,sclip",
               "-o", str(tmp_path / "o"), "--cell-width", "64", *TINY])
    assert rc == 0
    cap = capsys.readouterr()
    assert "proxyclip:" in cap.err and "ovss weights download" in cap.err and "Traceback" not in cap.err
    info = json.loads((tmp_path / "o" / "pic_compare.json").read_text())
    assert [m["method"] for m in info["methods"]] == ["clip", "proxyclip", "sclip"]
    assert "error" in info["methods"][1] and info["classes"] == ["sky", "grass", "horse"]
    assert info["methods"][0]["clip"] == "tiny-test"
    for m in (info["methods"][0], info["methods"][2]):
        assert abs(sum(m["areas"].values()) - 1) < 1e-9 and m["seconds"] > 0
    grid = Image.open(tmp_path / "o" / "pic_compare.png")
    assert grid.size[0] > 3 * 64 and "2 of 3 methods ran" in cap.out


def test_compare_command_all_failing_exits_1(tmp_path, capsys, monkeypatch, smooth_rgb):
    from PIL import Image
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    path = tmp_path / "pic.png"
    Image.fromarray(smooth_rgb).save(path)
    assert main(["compare", str(path), "--classes", "a, b", "--methods", "proxyclip", "-o", str(tmp_path / "o"),
                 *TINY]) == 1
    assert "0 of 1 methods ran" in capsys.readouterr().out
