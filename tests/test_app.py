"""The app without a browser: hyper-parameter table, Backend runs (outputs, reuse of models and text embeddings),
every bad input as a message, the Gradio page and the CLI. The browser test is tests/test_app_browser.py."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ovss import app as A
from ovss.errors import InputError

FROG = os.path.join(A.SAMPLES_DIR, "frog.jpg")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:   # restored after this module: other tests use the disk cache
        mp.setenv("OVSS_TEXT_CACHE", "0")
        yield A.Backend(A.AppConfig(clip="tiny-test", clip_weights="random", device="cpu", max_pixels=2_000_000),
                        workdir=str(tmp_path_factory.mktemp("app")))


# ------------------------------------------------------------------ hyper-parameter table
def test_param_rows_show_the_preset_defaults_and_the_source_comments():
    rows = {r[0]: r for r in A.param_rows("sclip", None)}
    assert not A.HIDDEN_PARAMS & set(rows)              # classes come from the text box
    assert rows["logit_scale"][1:4] == ["40.0", "40.0", "float"]
    assert rows["area_thd"][1:4] == ["None", "None", "float or None"]
    assert rows["pamr_dilations"][1] == "(8, 16)"
    assert rows["window_batch"][4] == "windows per forward pass"
    voc = {r[0]: r for r in A.param_rows("sclip", "voc21")}   # SCLIP's official VOC21 config
    assert voc["logit_scale"][1] == "65.0" and voc["prob_thd"][1] == "0.1" and voc["area_thd"][1] == "0.1"
    assert A.preset_choices("sclip")[0] == A.NO_PRESET and "voc21" in A.preset_choices("sclip")


def test_overrides_from_rows_parse_by_type_and_keep_only_changes():
    rows = A.param_rows("sclip", None)
    assert A.overrides_from_rows("sclip", None, rows) == {}
    edit = {"prob_thd": "0.3", "slide_crop": "448", "whole_double_resize": "true", "pamr_dilations": "4, 8",
            "templates": "'imagenet'", "area_thd": "none", "logit_scale": "40"}
    rows = [[r[0], edit.get(r[0], r[1]), *r[2:]] for r in rows]
    got = A.overrides_from_rows("sclip", None, rows)
    assert got == {"prob_thd": 0.3, "slide_crop": 448, "whole_double_resize": True, "pamr_dilations": (4, 8)}
    assert type(got["slide_crop"]) is int
    # under a preset the defaults are the preset's: its own value is no override, the base default is
    voc = [[r[0], "40.0" if r[0] == "logit_scale" else r[1], *r[2:]] for r in A.param_rows("sclip", "voc21")]
    assert A.overrides_from_rows("sclip", "voc21", voc) == {"logit_scale": 40.0}


@pytest.mark.parametrize("name, value, msg", [
    ("slide_crop", "0.5", "advanced parameter slide_crop: expected an integer, got '0.5'"),
    ("short_side", "big", "advanced parameter short_side: expected an integer or None, got 'big'"),
    ("prob_thd", "", "advanced parameter prob_thd: expected a number, got ''"),
    ("whole_double_resize", "maybe", "expected true or false"),
])
def test_bad_parameter_values_are_named(name, value, msg):
    rows = [[r[0], value if r[0] == name else r[1], *r[2:]] for r in A.param_rows("sclip", None)]
    with pytest.raises(InputError) as e:
        A.overrides_from_rows("sclip", None, rows)
    assert msg in str(e.value)


# ------------------------------------------------------------------ runs
def test_run_outputs_agree_with_the_result(backend):
    out = backend.run(FROG, "frog, water, turtle, snail", "sclip", "tiny-test", A.NO_PRESET, None)
    res = out.result
    assert res.labels.shape == (1024, 1024) and res.classes == ["frog", "water", "turtle", "snail"]
    assert out.overlay.size[1] == 1024 and out.overlay.size[0] > 1024          # legend column on the right
    lm = np.asarray(out.label_map)
    assert lm.shape == (1024, 1024, 3)
    # the table: every class once, present ones first by area; areas in % sum to 100; colours = label map colours
    assert sorted(r[1] for r in out.table) == sorted(res.classes)
    present = [r for r in out.table if r[3] > 0]
    assert [r[3] for r in present] == sorted((r[3] for r in present), reverse=True)
    assert sum(r[3] for r in out.table) == pytest.approx(100, abs=0.05)
    for k, name, colour, area, score in out.table:
        mask = res.labels == k
        assert area == pytest.approx(100 * mask.mean(), abs=0.005)
        if mask.any():
            assert "#%02x%02x%02x" % tuple(lm[mask][0]) == colour
            assert score == pytest.approx(res.scores[name], abs=1e-4) and 0 < score <= 1
    png, js = out.files
    assert os.path.basename(png) == "frog_labels.png" and os.path.basename(js) == "frog.json"
    assert np.array_equal(np.asarray(Image.open(png)), res.labels)
    info = json.load(open(js))
    assert info["classes"] == res.classes and info["method"] == "sclip" and info["image"] == "frog.jpg"
    assert info["areas"] == pytest.approx(res.areas)
    assert out.status.startswith("**Done**: 1024 x 1024 image, 4 classes, sclip on tiny-test")


def test_models_and_text_embeddings_are_reused(backend, monkeypatch):
    from ovss import api
    from ovss.backbones import clip as clip_mod
    from ovss.text import encoder
    api.clear_model_cache()
    encoder.clear_memory_cache()
    loads, encoded = [], []
    real_load, real_encode = clip_mod.load_clip, encoder._encode_new
    monkeypatch.setattr(clip_mod, "load_clip", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(encoder, "_encode_new", lambda c, q, t: encoded.append(list(q)) or real_encode(c, q, t))
    backend._segmenters.clear()

    first = backend.run(FROG, "frog, pond", "sclip", "tiny-test", None, None)
    assert len(loads) == 1 and encoded == [["frog", "pond"]]
    assert "model: 1 loaded" in first.status and "text embeddings: 2 names encoded" in first.status
    second = backend.run(FROG, "frog, pond", "sclip", "tiny-test", None, None)
    assert len(loads) == 1 and len(encoded) == 1
    assert first.info["segmenter"] == "built" and second.info["segmenter"] == "reused"
    assert "model: already loaded; text embeddings: cached" in second.status
    assert np.array_equal(first.result.labels, second.result.labels)
    # another method and preset on the same backbone: no new model, and the known names are not encoded again
    third = backend.run(FROG, "frog, pond, stone", "clip", "tiny-test", "voc21", None)
    assert len(loads) == 1 and encoded[1:] == [["stone"]]
    assert third.info["segmenter"] == "built" and "model: already loaded" in third.status
    assert len(api._MODEL_CACHE) == 1


def test_at_most_cache_size_segmenters_are_kept(backend, tmp_path):
    small = str(tmp_path / "small.png")
    Image.open(FROG).resize((96, 96)).save(small)
    backend._segmenters.clear()
    for i in range(backend.config.cache_size + 2):
        backend.run(small, f"frog, thing{i}", "clip", "tiny-test", None, None)
    assert len(backend._segmenters) == backend.config.cache_size


# ------------------------------------------------------------------ bad input -> a message, never a traceback
def test_bad_inputs_become_messages(backend, tmp_path):
    broken = tmp_path / "holiday.jpg"
    broken.write_bytes(b"not an image at all" * 20)
    huge = tmp_path / "huge.png"
    Image.new("1", (2000, 1500)).save(huge)
    cases = [
        ((None, "cat"), "**Error:** no image: upload one"),
        ((str(broken), "cat, dog"), "**Error:** holiday.jpg: not a readable image; upload a JPEG, PNG"),
        ((str(huge), "cat"), "huge.png: the image is too large (2000 x 1500 = 3.0 megapixels; this app accepts up "
                             "to 2.0). Downscale it, or start the app with --max-pixels 3000000"),
        ((FROG, ""), "**Error:** no classes: type the class names"),
        ((FROG, " \n "), "**Error:** no classes"),
        ((FROG, "cat, dog, Cat"), "class 'Cat' is given twice"),
    ]
    for (img, cls), expected in cases:
        msg, out = A.run_or_message(backend, img, cls, "sclip", "tiny-test", None, None)
        assert out is None and expected in msg, msg
        assert str(tmp_path) not in msg              # no server paths in the page
    msg, out = A.run_or_message(backend, FROG, "cat", "nosuchmethod", "tiny-test", None, None)
    assert "unknown method 'nosuchmethod'" in msg
    msg, out = A.run_or_message(backend, FROG, "cat", "sclip", "tiny-test", "voc99", None)
    assert "has no preset 'voc99'" in msg
    msg, out = A.run_or_message(backend, FROG, "frog", "sclip", "tiny-test", None, None)   # still serving
    assert out is not None and msg.startswith("**Done**")


def test_missing_weights_offline_message_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path / "ovss"))
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    b = A.Backend(A.AppConfig(clip="ViT-B/16", device="cpu"), workdir=str(tmp_path / "w"))
    msg, out = A.run_or_message(b, FROG, "frog, water", "sclip", "ViT-B/16", None, None)
    assert out is None
    assert "[clip:ViT-B/16] are not on this machine" in msg and "`ovss weights download clip:ViT-B/16`" in msg
    # random CLIP, but the proxy model of proxyclip is missing
    b = A.Backend(A.AppConfig(clip="tiny-test", clip_weights="random", device="cpu"), workdir=str(tmp_path / "w2"))
    msg, _ = A.run_or_message(b, FROG, "frog", "proxyclip", "tiny-test", None, None)
    assert "`ovss weights download dino_vitb8`" in msg


def test_unexpected_errors_give_a_generic_message_and_a_logged_traceback(backend, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("internal detail /secret/path")
    monkeypatch.setattr(backend, "segmenter", boom)
    with caplog.at_level(logging.ERROR, logger="ovss.app"):
        msg, out = A.run_or_message(backend, FROG, "frog", "sclip", "tiny-test", None, None)
    assert out is None
    assert msg.startswith("**Error:** something went wrong inside ovss (RuntimeError)")
    assert "secret" not in msg and "Traceback" not in msg
    assert "internal detail" in caplog.text and caplog.records[-1].exc_info is not None


def test_config_clip_choices_and_weights():
    cfg = A.AppConfig(clip="ViT-L/14", clip_weights="/w/ViT-L-14.pt")
    assert cfg.weights_for("ViT-L/14") == "/w/ViT-L-14.pt" and cfg.weights_for("ViT-B/16") is None
    assert "tiny-test" not in cfg.clip_choices()
    rnd = A.AppConfig(clip="tiny-test", clip_weights="random")
    assert rnd.clip_choices()[-1] == "tiny-test" and rnd.weights_for("ViT-H/14") == "random"
    with pytest.raises(InputError, match="--methods: unknown or unavailable nope"):
        A.AppConfig(methods=["sclip", "nope"]).method_names()
    with pytest.raises(InputError, match="--method 'clip' is not offered"):
        A.AppConfig(method="clip", methods=["sclip"]).method_names()


# ------------------------------------------------------------------ the page and the command
def test_page_builds_and_reads_broken_uploads_as_paths(tmp_path):
    gr = pytest.importorskip("gradio")
    demo = A.build_app(A.AppConfig(clip="tiny-test", clip_weights="random", device="cpu"))
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"ovss-image", "ovss-classes", "ovss-method", "ovss-clip", "ovss-preset", "ovss-params", "ovss-run",
            "ovss-status", "ovss-overlay", "ovss-labels", "ovss-table", "ovss-files"} <= ids
    image = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "ovss-image")
    assert type(image) is gr.Image
    broken = tmp_path / "x.png"
    broken.write_bytes(b"junk")
    from gradio.data_classes import ImageData
    assert image.preprocess(ImageData(path=str(broken), orig_name="x.png")) == str(broken)


def test_cli_app_help():
    r = subprocess.run([sys.executable, "-m", "ovss", "app", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for opt in ("--host", "--port", "--share", "--clip-weights", "--max-pixels", "--methods"):
        assert opt in r.stdout


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch):
    from ovss.errors import OvssError
    monkeypatch.setitem(sys.modules, "gradio", None)      # `import gradio` raises ImportError
    with pytest.raises(OvssError, match=r"pip install 'ovss\[app\]'"):
        A.build_app(A.AppConfig(clip="tiny-test", clip_weights="random"))


# ------------------------------------------------------------------ compare tab (backend)
def test_compare_runs_each_method_and_reports_a_failing_one(backend, monkeypatch):
    monkeypatch.setenv("OVSS_OFFLINE", "1")   # proxyclip's DINO weights are missing: a message, the others go on
    out = backend.compare(FROG, "frog, water, turtle", ["clip", "proxyclip", "sclip"], "tiny-test")
    assert [r[0] for r in out.table] == ["clip", "proxyclip", "sclip"]
    assert out.table[1][1] is None and out.table[1][2].startswith("failed: weights for DINO")
    assert out.table[0][1] > 0 and "%" in out.table[0][2]
    assert "2 of 3 methods ran" in out.status and "failed: proxyclip" in out.status
    assert out.grid.size[0] > 2 * 360 and out.files[0].endswith("frog_compare.png")
    info = json.load(open(out.files[1]))
    assert [m["method"] for m in info["methods"]] == ["clip", "proxyclip", "sclip"]
    # the same Segmenters as the Segment tab's (no preset): a later run of clip reuses it
    seg, how = backend.segmenter("clip", "tiny-test", None, {}, backend.parse_classes("frog, water, turtle"))
    assert how["segmenter"] == "reused"


@pytest.mark.parametrize("methods, msg", [([], "no methods chosen"), (["nope"], "not offered here: nope")])
def test_compare_bad_choices_are_messages(backend, methods, msg):
    text, out = A.compare_or_message(backend, FROG, "frog", methods, "tiny-test")
    assert out is None and msg in text and text.startswith("**Error:**")


def test_model_cache_keeps_at_most_its_limit_least_recently_used_first(monkeypatch):
    from ovss import api
    saved = api._MODEL_CACHE.copy()
    try:
        api._MODEL_CACHE.clear()
        monkeypatch.setattr(api, "MODEL_CACHE_LIMIT", 2)
        loads = api.MODEL_LOADS
        a = api._cached(("a",), lambda: object())
        api._cached(("b",), lambda: object())
        assert api._cached(("a",), lambda: pytest.fail("a is cached")) is a    # a is now the most recent
        api._cached(("c",), lambda: object())                                   # evicts b, the least recent
        assert list(api._MODEL_CACHE) == [("a",), ("c",)] and api.MODEL_LOADS == loads + 3
    finally:
        api._MODEL_CACHE.clear()
        api._MODEL_CACHE.update(saved)
