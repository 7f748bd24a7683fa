"""`ovss app`: a local Gradio demo on the `Segmenter` API.

Upload an image (or pick a bundled sample), type the classes, choose method / CLIP model / preset, optionally edit
the method's hyper-parameters, run; see the overlay with its legend, the label map, a table of the classes with
area and score, and download the label PNG and the JSON.

The parts that do not draw the page live here as plain Python so that they are tested without a browser:
:class:`AppConfig` (what `ovss app` was started with), the hyper-parameter table (:func:`param_rows`,
:func:`overrides_from_rows`) and :class:`Backend` (one cached Segmenter per method / model / preset / parameters /
classes, with the backbones shared through ``ovss.api``'s model cache, so a model is loaded once per process).
:func:`build_app` draws the page; every error reaches it as a message, never as a traceback.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import typing
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .errors import InputError, OvssError

log = logging.getLogger("ovss.app")

SAMPLES_DIR = os.path.join(os.path.dirname(__file__), "resources", "samples")
SAMPLES = [  # (file, classes): the demo classes the Trident repository uses for these images
    ("horses_1024.jpg", "sky, hill, tree, horse, grass, cloud"),
    ("frog.jpg", "frog, water, turtle, snail"),
    ("bear_case.jpg", "river, grass, bear, ground, wolverines"),
]
CLIP_MODELS = ("ViT-B/16", "MetaCLIP-B/16", "ViT-L/14", "ViT-H/14")
METHOD_CLIP = "method default"   # each method's own CLIP (MetaCLIP-B/16 for corrclip, else ViT-B/16)
NO_PRESET = "none"   # the method's settings for your own images (no benchmark protocol)
HIDDEN_PARAMS = frozenset({"class_format", "classes_file", "background_file"})   # classes come from the text box
PARAM_HEADERS = ["parameter", "value", "default", "type", "what it does"]
TABLE_HEADERS = ["label", "class", "colour", "area %", "score"]
COMPARE_HEADERS = ["method", "seconds", "main classes (area %) or the error"]
KEEP_RUNS = 16   # output folders kept on disk (older ones are deleted)


# ---------------------------------------------------------------------------------------------- configuration
@dataclass
class AppConfig:
    """What `ovss app` was started with. `clip_weights` is used for every CLIP model when it is None (download /
    cache) or "random", and only for `clip` when it is a file."""
    method: str = "sclip"
    clip: str = METHOD_CLIP
    clip_weights: Optional[str] = None
    vfm_weights: Optional[str] = None
    sam: str = "vit_b"
    sam_weights: Optional[str] = None
    sd_weights: Optional[str] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    max_pixels: int = 20_000_000
    methods: Optional[list[str]] = None      # offered in the page (default: every method of this build)
    cache_size: int = 4                      # Segmenters kept (the backbones are shared between them anyway)

    def method_names(self) -> list[str]:
        from .methods import list_methods
        names = [m.name for m in list_methods()]
        if self.methods:
            unknown = [m for m in self.methods if m not in names]
            if unknown:
                raise InputError(f"--methods: unknown or unavailable {', '.join(unknown)}; available: "
                                 f"{', '.join(names)}")
            names = list(self.methods)
        if self.method not in names:
            raise InputError(f"--method {self.method!r} is not offered; choose one of {', '.join(names)}")
        return names

    def clip_choices(self) -> list[str]:
        out = [METHOD_CLIP, *CLIP_MODELS]
        if self.clip_weights == "random":
            out.append("tiny-test")
        if self.clip not in out:
            out.insert(0, self.clip)
        return out

    def weights_for(self, clip: str) -> Optional[str]:
        if self.clip_weights in (None, "random") or clip == self.clip:
            return self.clip_weights
        return None


# ---------------------------------------------------------------------------------------------- parameters
def _unwrap(hint) -> tuple[Any, bool]:
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _type_name(hint) -> str:
    base, optional = _unwrap(hint)
    name = getattr(base, "__name__", str(base))
    return f"{name} or None" if optional else name


def param_docs(params_cls) -> dict[str, str]:
    """name -> the comment after the field in the Params source (`x: int = 3   # what x does`)."""
    docs: dict[str, str] = {}
    for klass in reversed(params_cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]*=[^#\n]*#\s*(.+?)\s*$", src, re.M):
            docs[m.group(1)] = m.group(2)
    return docs


def format_value(v: Any) -> str:
    return "None" if v is None else (v if isinstance(v, str) else repr(v))


def preset_key(preset: Optional[str]) -> Optional[str]:
    return None if preset in (None, "", NO_PRESET) else preset


def preset_choices(method: str) -> list[str]:
    from .methods import get_method
    return [NO_PRESET] + list(get_method(method).PRESETS)


def param_rows(method: str, preset: Optional[str]) -> list[list[str]]:
    """One row per hyper-parameter of `method` under `preset`: name, value (= default), default, type, help."""
    from .methods import get_method
    cls = get_method(method)
    params = cls.resolve_params(preset_key(preset), {})
    hints = typing.get_type_hints(cls.Params)
    docs = param_docs(cls.Params)
    rows = []
    for f in dataclasses.fields(params):
        if f.name in HIDDEN_PARAMS:
            continue
        v = format_value(getattr(params, f.name))
        rows.append([f.name, v, v, _type_name(hints.get(f.name, str)), docs.get(f.name, "")])
    return rows


def parse_value(name: str, text: Any, hint) -> Any:
    """A table cell -> a value of the field's type; InputError naming the parameter when it does not fit."""
    base, optional = _unwrap(hint)
    if not isinstance(text, str):
        text = format_value(text)
    s = text.strip()
    if optional and s.lower() in ("none", "null", ""):
        return None

    def bad(kind: str):
        return InputError(f"advanced parameter {name}: expected {kind}{' or None' if optional else ''}, got {text!r}")

    if base is bool:
        low = s.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise bad("true or false")
    if base is int:
        try:
            f = float(s)
        except ValueError:
            raise bad("an integer") from None
        if not f.is_integer():
            raise bad("an integer")
        return int(f)
    if base is float:
        try:
            return float(s)
        except ValueError:
            raise bad("a number") from None
    if base is str:
        return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s
    try:
        v = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        raise bad(f"a Python literal ({_type_name(hint)})") from None
    if base in (tuple, list):
        if isinstance(v, (str, int, float)):
            v = (v,)
        return base(v)
    return v


def overrides_from_rows(method: str, preset: Optional[str], rows: Optional[list]) -> dict:
    """The parameters whose value differs from the preset's default (what the Segmenter gets as overrides)."""
    from .methods import get_method
    if not rows:
        return {}
    cls = get_method(method)
    defaults = cls.resolve_params(preset_key(preset), {})
    hints = typing.get_type_hints(cls.Params)
    out = {}
    for row in rows:
        if not row or not str(row[0]).strip():
            continue
        name = str(row[0]).strip()
        if name not in hints:
            raise InputError(f"method {method!r} has no parameter {name!r}")
        if name in HIDDEN_PARAMS:
            continue
        value = parse_value(name, "" if row[1] is None else row[1], hints[name])
        if value != getattr(defaults, name) or type(value) is not type(getattr(defaults, name)):
            if value is None and getattr(defaults, name) is None:
                continue
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------- running
@dataclass
class RunOutput:
    overlay: Any                      # PIL image: colours over the image, with the legend
    label_map: Any                    # PIL image: the label colours alone
    table: list[list]                 # TABLE_HEADERS rows, present classes first (by area)
    files: list[str]                  # [label PNG, JSON]
    status: str                       # markdown
    result: Any = field(repr=False, default=None)
    info: dict = field(default_factory=dict)


@dataclass
class CompareOutput:
    grid: Any                         # PIL image: one overlay per method, names and times, one legend
    table: list[list]                 # COMPARE_HEADERS rows, in the order of the methods
    files: list[str]                  # [grid PNG, JSON]
    status: str                       # markdown
    runs: list = field(default_factory=list, repr=False)


def _noop_progress(*_a, **_k):
    return None


class Backend:
    """Builds (and keeps) Segmenters for the page and runs them; raises OvssError with a message for users."""

    def __init__(self, config: AppConfig, workdir: Optional[str] = None):
        self.config = config
        self.workdir = workdir or tempfile.mkdtemp(prefix="ovss-app-")
        self._segmenters: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._runs = 0

    # ------------------------------------------------------------------ inputs
    def check_image(self, path: Optional[str]):
        """The uploaded file -> LoadedImage, refusing what is missing, unreadable or too large, with a message."""
        from PIL import Image, UnidentifiedImageError

        from .images import load_image
        if not path:
            raise InputError("no image: upload one (or pick a sample below the image box)")
        name = os.path.basename(str(path))
        if not os.path.isfile(path):
            raise InputError(f"{name}: the uploaded file is gone; upload it again")
        Image.MAX_IMAGE_PIXELS = None   # our own limit, with a clearer message
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise InputError(f"{name}: not a readable image; upload a JPEG, PNG, WebP, BMP or TIFF file") from None
        limit = self.config.max_pixels
        if w * h > limit:
            raise InputError(f"{name}: the image is too large ({w} x {h} = {w * h / 1e6:.1f} megapixels; this app "
                             f"accepts up to {limit / 1e6:.1f}). Downscale it, or start the app with "
                             f"--max-pixels {w * h}")
        try:
            img = load_image(path, max_pixels=limit)
        except InputError as e:
            raise InputError(str(e).replace(str(path), name)) from None
        img.name = name
        return img

    @staticmethod
    def parse_classes(text: Optional[str]):
        from .text import parse_classes
        if not text or not text.strip():
            raise InputError("no classes: type the class names, e.g. 'horse, grass, sky' (one class per line or "
                             "';'-separated to give synonyms: 'horse; grass, lawn; sky')")
        return parse_classes(text.strip())

    # ------------------------------------------------------------------ segmenters
    def segmenter(self, method: str, clip: str, preset: Optional[str], overrides: dict, classes):
        """(Segmenter, how it was obtained): reused when everything matches; otherwise built on the shared
        backbones (loaded only when new) and the cached text embeddings (encoded only for new class names)."""
        from . import api
        from .text import encoder
        cfg = self.config
        key = (method, clip, cfg.weights_for(clip), preset, tuple(sorted((k, repr(v)) for k, v in overrides.items())),
               classes.names, classes.queries, classes.query_to_class)
        with self._lock:
            if key in self._segmenters:
                self._segmenters.move_to_end(key)
                return self._segmenters[key], {"segmenter": "reused", "models": "already loaded",
                                               "text": "cached"}
            n_models = api.MODEL_LOADS
            n_text = sum(len(t) for t in encoder._MEMORY.values())
            t0 = time.perf_counter()
            seg = api.Segmenter(method=method, classes=classes, clip=None if clip == METHOD_CLIP else clip,
                                clip_weights=cfg.weights_for(clip),
                                vfm_weights=cfg.vfm_weights, sam=cfg.sam, sam_weights=cfg.sam_weights,
                                sd_weights=cfg.sd_weights, device=cfg.device, dtype=cfg.dtype, preset=preset,
                                **overrides)
            dt = time.perf_counter() - t0
            new_models = api.MODEL_LOADS - n_models
            new_text = sum(len(t) for t in encoder._MEMORY.values()) - n_text
            self._segmenters[key] = seg
            while len(self._segmenters) > max(1, cfg.cache_size):
                self._segmenters.popitem(last=False)
            return seg, {"segmenter": "built", "build_s": dt,
                         "models": f"{new_models} loaded" if new_models else "already loaded",
                         "text": f"{new_text} names encoded" if new_text else "cached"}

    # ------------------------------------------------------------------ one run
    def run(self, image_path: Optional[str], classes_text: Optional[str], method: str, clip: str,
            preset: Optional[str], rows: Optional[list], progress: Callable = _noop_progress) -> RunOutput:
        t0 = time.perf_counter()
        progress(0.02, desc="reading the image")
        img = self.check_image(image_path)
        classes = self.parse_classes(classes_text)
        preset = preset_key(preset)
        overrides = overrides_from_rows(method, preset, rows)
        progress(0.1, desc="loading the model (first run of this method / model only)")
        seg, how = self.segmenter(method, clip, preset, overrides, classes)
        progress(0.4, desc=f"segmenting with {method}")
        t1 = time.perf_counter()
        res = seg.segment(img)
        t_seg = time.perf_counter() - t1
        progress(0.9, desc="drawing")
        out = self._render(res, seg, img, method, clip, preset, overrides)
        h, w = res.labels.shape
        parts = [f"**Done**: {w} x {h} image, {len(res.classes)} classes, {method} on {clip}"
                 f"{f', preset {preset}' if preset else ''}"
                 f"{', ' + ', '.join(f'{k}={format_value(v)}' for k, v in overrides.items()) if overrides else ''}.",
                 f"Segmentation {t_seg:.2f} s, total {time.perf_counter() - t0:.2f} s; "
                 f"model: {how['models']}; text embeddings: {how['text']}."]
        out.status = " ".join(parts)
        out.info = {**how, "segment_s": t_seg, "overrides": overrides}
        return out

    def compare(self, image_path: Optional[str], classes_text: Optional[str], methods: Optional[list], clip: str,
                progress: Callable = _noop_progress) -> "CompareOutput":
        """Several methods on one image, each with its settings for a user's own images (no preset): a grid of
        their overlays with one legend, a table (method, time, main classes or the error) and the JSON."""
        from .compare import compare, compare_dict, compare_picture
        t0 = time.perf_counter()
        img = self.check_image(image_path)
        classes = self.parse_classes(classes_text)
        methods = [m for m in (methods or []) if m]
        if not methods:
            raise InputError("no methods chosen: tick at least one method to compare")
        offered = self.config.method_names()
        unknown = [m for m in methods if m not in offered]
        if unknown:
            raise InputError(f"method(s) not offered here: {', '.join(unknown)}")

        def on_start(m, i):
            progress((i + 0.1) / len(methods), desc=f"{m} ({i + 1} of {len(methods)})")

        runs = compare(img, methods, lambda m: self.segmenter(m, clip, None, {}, classes)[0], on_start)
        ok = [r for r in runs if r.result is not None]
        names, grid = compare_picture(img.rgb, runs, classes.names, max_cols=2)   # two columns: readable in the page
        table = []
        for r in runs:
            if r.result is None:
                table.append([r.method, None, "failed: " + r.error])
                continue
            top = sorted(r.result.areas.items(), key=lambda kv: -kv[1])[:4]
            table.append([r.method, round(r.seconds, 3), ", ".join(f"{c} {a * 100:.1f}%" for c, a in top)])
        folder = self._new_run_dir()
        stem = os.path.splitext(img.name)[0] or "image"
        js = os.path.join(folder, f"{stem}_compare.json")
        with open(js, "w") as f:
            json.dump({**compare_dict(img.name, names, runs), "clip": clip}, f, indent=2)
        png = os.path.join(folder, f"{stem}_compare.png")
        grid.save(png)
        status = (f"**Done**: {len(ok)} of {len(runs)} methods ran on {clip} in {time.perf_counter() - t0:.2f} s"
                  + ("" if len(ok) == len(runs) else
                     f"; failed: {', '.join(r.method for r in runs if r.result is None)} (see the table)") + ".")
        return CompareOutput(grid=grid, table=table, files=[png, js], status=status, runs=runs)

    def _render(self, res, seg, img, method, clip, preset, overrides) -> RunOutput:
        from PIL import Image

        from .viz import palette
        classes = res.classes
        colors = palette(len(classes) + 1)[1:]       # the overlay's colours (viz.overlay skips black)
        overlay = res.overlay()
        label_map = Image.fromarray(colors[res.labels])
        present = sorted(res.areas, key=lambda c: -res.areas[c])
        index = {c: i for i, c in enumerate(classes)}
        table = []
        for c in present + [c for c in classes if c not in res.areas]:
            k = index[c]
            table.append([k, c, "#%02x%02x%02x" % tuple(int(x) for x in colors[k]),
                          round(100 * res.areas.get(c, 0.0), 2),
                          round(res.scores[c], 4) if c in res.scores else None])
        folder = self._new_run_dir()
        stem = os.path.splitext(img.name)[0] or "image"
        png = os.path.join(folder, f"{stem}_labels.png")
        res.label_image().save(png)
        info = {"image": img.name, **res.to_dict(), "method": method, "clip": seg.clip_name, "preset": preset,
                "overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
                "config": seg.config()}
        js = os.path.join(folder, f"{stem}.json")
        with open(js, "w") as f:
            json.dump(info, f, indent=2, default=str)
        return RunOutput(overlay=overlay, label_map=label_map, table=table, files=[png, js], status="", result=res)

    def _new_run_dir(self) -> str:
        with self._lock:
            self._runs += 1
            n = self._runs
        folder = os.path.join(self.workdir, f"run-{n:05d}")
        os.makedirs(folder, exist_ok=True)
        old = os.path.join(self.workdir, f"run-{n - KEEP_RUNS:05d}")
        if n > KEEP_RUNS and os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        return folder


def error_message(exc: BaseException) -> str:
    """What the page says about an exception: the message of an OvssError, a generic line for anything else
    (whose traceback goes to the server log)."""
    if isinstance(exc, OvssError):
        text = str(exc).strip()
        return "**Error:** " + text.replace("\n", "  \n")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return ("**Error:** out of memory for this image and method; try a smaller image, a smaller CLIP model or "
                "a smaller `slide_crop`/`window_batch` in the advanced panel.")
    return (f"**Error:** something went wrong inside ovss ({type(exc).__name__}). The details are in the server "
            f"log; the app is still running — change the input and try again.")


def _or_message(fn: Callable, *args, progress: Callable = _noop_progress):
    """(status markdown, output or None): `fn(*args)` with every exception turned into a message for the page (an
    OvssError's own text; anything else a generic line, its traceback in the server log)."""
    try:
        out = fn(*args, progress=progress)
    except Exception as e:  # noqa: BLE001 - the page shows a message, the log the traceback
        if isinstance(e, OvssError):
            log.info("ovss app: %s", e)
        else:
            log.exception("ovss app: %s failed", getattr(fn, "__name__", "run"))
        return error_message(e), None
    return out.status, out


def run_or_message(backend: Backend, *args, progress: Callable = _noop_progress) -> tuple[str, Optional[RunOutput]]:
    """:meth:`Backend.run` -> (status markdown, RunOutput or None)."""
    return _or_message(backend.run, *args, progress=progress)


def compare_or_message(backend: Backend, *args, progress: Callable = _noop_progress):
    """:meth:`Backend.compare` -> (status markdown, CompareOutput or None)."""
    return _or_message(backend.compare, *args, progress=progress)


def method_summary(method: str) -> str:
    from .methods import get_method
    cls = get_method(method)
    needs = ", ".join(cls.needs)
    link = f"[{cls.repo}](https://github.com/{cls.repo})" if cls.repo else ""
    return f"**{method}**: {cls.summary}. _{cls.paper}_ {link} — loads: {needs}."


# ---------------------------------------------------------------------------------------------- the page
CSS = """
#ovss-status p, #ovss-c-status p { margin: 0.2em 0; }
#ovss-status.error, #ovss-c-status.error { border-left: 4px solid #b00020; padding-left: 0.6em; }
#ovss-status.error, #ovss-status.error *, #ovss-c-status.error, #ovss-c-status.error * { color: #b00020 !important; }
#ovss-status.ok, #ovss-c-status.ok { border-left: 4px solid #2e7d32; padding-left: 0.6em; }
"""


def _kw(fn, **kw) -> dict:
    """Keep the keyword arguments `fn` accepts (Gradio's signatures move between major versions)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kw
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kw
    return {k: v for k, v in kw.items() if k in params}


def _theme(gr):
    """The default look without web fonts: a local app should not fetch fonts from the internet."""
    fonts = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Consolas", "monospace"]
    try:
        return gr.themes.Default(font=fonts, font_mono=mono)
    except Exception:  # noqa: BLE001 - a cosmetic; never stop the app for it
        return None


def _image_input(gr, **kw):
    """A gr.Image that hands the uploaded file over undecoded even when Pillow cannot open it, so that ovss reports
    an unreadable upload in the page instead of Gradio failing the request. (An instance attribute, not a
    subclass: Gradio writes a .pyi stub next to the module of every component subclass.)"""
    image = gr.Image(**kw)
    plain = image.preprocess

    def preprocess(payload):
        try:
            return plain(payload)
        except Exception:  # noqa: BLE001 - Backend.check_image explains the problem
            return getattr(payload, "path", None)

    image.preprocess = preprocess
    return image


def build_app(config: AppConfig, backend: Optional[Backend] = None):
    """The gr.Blocks page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise OvssError("the app needs Gradio: pip install 'ovss[app]'") from None
    backend = backend or Backend(config)
    methods = config.method_names()

    blocks_kw = _kw(gr.Blocks.__init__, title="ovss: open-vocabulary segmentation", analytics_enabled=False)
    if "css" not in inspect.signature(gr.Blocks.launch).parameters:   # Gradio < 6: look set on Blocks
        blocks_kw.update(_kw(gr.Blocks.__init__, css=CSS, theme=_theme(gr)))
    with gr.Blocks(**blocks_kw) as demo:
        gr.Markdown("## ovss — training-free open-vocabulary semantic segmentation\n"
                    "Upload an image (or pick a sample), type the classes, choose a method and run. Classes: "
                    "`horse, grass, sky` are three classes; with `;` or one class per line, commas give synonyms "
                    "(`horse; grass, lawn; sky`).")
        with gr.Tabs(elem_id="ovss-tabs"):
            with gr.Tab("Segment", elem_id="ovss-tab-segment"):
                with gr.Row():
                    with gr.Column(scale=1):
                        image = _image_input(gr, **_kw(gr.Image.__init__, label="Image", type="filepath", image_mode=None,
                                                       sources=["upload", "clipboard"], elem_id="ovss-image", height=320))
                        classes = gr.Textbox(label="Classes", lines=3, elem_id="ovss-classes",
                                             placeholder="horse, grass, sky   (or one class per line: horse / grass, lawn / sky)")
                        with gr.Row():
                            method = gr.Dropdown(methods, value=config.method, label="Method", elem_id="ovss-method")
                            clip = gr.Dropdown(config.clip_choices(), value=config.clip, label="CLIP model",
                                               elem_id="ovss-clip")
                            preset = gr.Dropdown(preset_choices(config.method), value=NO_PRESET, label="Preset",
                                                 elem_id="ovss-preset")
                        about = gr.Markdown(method_summary(config.method), elem_id="ovss-about")
                        with gr.Accordion("Advanced: hyper-parameters of the method", open=False, elem_id="ovss-advanced"):
                            gr.Markdown("Edit the **value** column; a value that differs from the default of the preset "
                                        "is passed to the method (like `ovss segment --set name=value`).")
                            params = gr.Dataframe(**_kw(gr.Dataframe.__init__, value=param_rows(config.method, None),
                                                        headers=PARAM_HEADERS, datatype=["str"] * 5, type="array",
                                                        interactive=True, static_columns=[0, 2, 3, 4],
                                                        column_widths=["24%", "14%", "14%", "12%", "36%"], wrap=True,
                                                        elem_id="ovss-params", label="Hyper-parameters"))
                            reset = gr.Button("Reset to the preset's defaults", size="sm")
                        run = gr.Button("Segment", variant="primary", elem_id="ovss-run")
                        gr.Examples(examples=[[os.path.join(SAMPLES_DIR, f), c] for f, c in SAMPLES],
                                    inputs=[image, classes], label="Samples (click one)", **_kw(gr.Examples.__init__,
                                                                                               cache_examples=False))
                    with gr.Column(scale=1):
                        status = gr.Markdown("Ready.", elem_id="ovss-status")
                        overlay = gr.Image(label="Overlay with legend", type="pil", interactive=False,
                                           elem_id="ovss-overlay", format="png", height=420)
                        labels = gr.Image(label="Label map", type="pil", interactive=False, elem_id="ovss-labels",
                                          format="png", height=300)
                        table = gr.Dataframe(**_kw(gr.Dataframe.__init__, headers=TABLE_HEADERS,
                                                   datatype=["number", "str", "str", "number", "number"], type="array",
                                                   interactive=False, label="Classes: area and mean score",
                                                   elem_id="ovss-table"))
                        files = gr.File(label="Downloads: label PNG (pixel value = class index) and JSON",
                                        file_count="multiple", interactive=False, elem_id="ovss-files")
            with gr.Tab("Compare", elem_id="ovss-tab-compare"):
                gr.Markdown("Run several methods on one image, each with its settings for your own images (no "
                            "preset), and see them side by side with one legend. Methods load on first use.")
                with gr.Row():
                    with gr.Column(scale=1):
                        c_image = _image_input(gr, **_kw(gr.Image.__init__, label="Image", type="filepath",
                                                         image_mode=None, sources=["upload", "clipboard"],
                                                         elem_id="ovss-c-image", height=280))
                        c_classes = gr.Textbox(label="Classes", lines=2, elem_id="ovss-c-classes",
                                               placeholder="horse, grass, sky")
                        c_methods = gr.CheckboxGroup(methods, value=methods[: min(3, len(methods))],
                                                     label="Methods", elem_id="ovss-c-methods")
                        c_clip = gr.Dropdown(config.clip_choices(), value=config.clip, label="CLIP model",
                                             elem_id="ovss-c-clip")
                        c_run = gr.Button("Compare", variant="primary", elem_id="ovss-c-run")
                        gr.Examples(examples=[[os.path.join(SAMPLES_DIR, f), c] for f, c in SAMPLES],
                                    inputs=[c_image, c_classes], label="Samples (click one)",
                                    **_kw(gr.Examples.__init__, cache_examples=False))
                    with gr.Column(scale=2):
                        c_status = gr.Markdown("Choose the methods and press Compare.", elem_id="ovss-c-status")
                        c_grid = gr.Image(label="Side by side", type="pil", interactive=False,
                                          elem_id="ovss-c-grid", format="png")
                        c_table = gr.Dataframe(**_kw(gr.Dataframe.__init__, headers=COMPARE_HEADERS,
                                                     datatype=["str", "number", "str"], type="array",
                                                     interactive=False, label="Per method", elem_id="ovss-c-table"))
                        c_files = gr.File(label="Downloads: the grid PNG and the JSON (areas, scores, times)",
                                          file_count="multiple", interactive=False, elem_id="ovss-c-files")

        def on_method(m):
            return (gr.update(choices=preset_choices(m), value=NO_PRESET), param_rows(m, None), method_summary(m))

        def on_preset(m, p):
            try:
                return param_rows(m, p)
            except OvssError as e:   # a preset of the previous method during the switch
                log.debug("preset %s for %s: %s", p, m, e)
                return param_rows(m, None)

        method.change(on_method, [method], [preset, params, about])
        preset.change(on_preset, [method, preset], [params])
        reset.click(on_preset, [method, preset], [params])

        def on_run(img, cls_text, m, c, p, rows, progress=gr.Progress(track_tqdm=True)):
            msg, out = run_or_message(backend, img, cls_text, m, c, p, rows, progress=progress)
            if out is None:
                return gr.update(value=msg, elem_classes=["error"]), None, None, None, None
            return gr.update(value=msg, elem_classes=["ok"]), out.overlay, out.label_map, out.table, out.files

        run.click(on_run, [image, classes, method, clip, preset, params], [status, overlay, labels, table, files],
                  **_kw(run.click, concurrency_limit=1, show_progress="full"))
        classes.submit(on_run, [image, classes, method, clip, preset, params],
                       [status, overlay, labels, table, files], **_kw(classes.submit, concurrency_limit=1))

        def on_compare(img, cls_text, ms, c, progress=gr.Progress(track_tqdm=True)):
            msg, out = compare_or_message(backend, img, cls_text, ms, c, progress=progress)
            if out is None:
                return gr.update(value=msg, elem_classes=["error"]), None, None, None
            return gr.update(value=msg, elem_classes=["ok"]), out.grid, out.table, out.files

        c_run.click(on_compare, [c_image, c_classes, c_methods, c_clip], [c_status, c_grid, c_table, c_files],
                    **_kw(c_run.click, concurrency_limit=1, show_progress="full"))
    demo._ovss_backend = backend
    return demo


def launch(config: AppConfig, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False, max_file_size: Optional[str] = "200mb"):
    """Build and serve the page (blocks unless `prevent_thread_lock`); returns the Blocks."""
    demo = build_app(config)
    import gradio as gr
    demo.queue(**_kw(demo.queue, default_concurrency_limit=1))
    kw = _kw(demo.launch, server_name=host, server_port=port, share=share, show_error=False,
             prevent_thread_lock=prevent_thread_lock, quiet=quiet, allowed_paths=[SAMPLES_DIR],
             ssr_mode=False, max_file_size=max_file_size, css=CSS, theme=_theme(gr))
    demo.launch(**kw)
    return demo
