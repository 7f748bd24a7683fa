"""``ovss eval``: run a method over a benchmark with its official protocol and score it.

The runner uses the public API only: ``ovss.Segmenter(method=M, classes=None, preset=<dataset key>, ...)`` and
``seg.predict(image)``, or ``seg.predict_batch(images)`` for groups of ``batch_size`` images where the segmenter
has it. Two optional hooks of the Segmenter are honoured: ``label_offset`` (the method's label ``l`` means
dataset class ``l - offset``; a negative result is a "no class" prediction that counts as a miss) and
``target_transform(gt)`` (the ground truth as the protocol evaluates it, e.g. CLIPtrase's centre crop). A different
segmenter can be injected with ``factory`` (tests, custom models).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..data.datasets import SegDataset, get_dataset
from ..data.io import DataError
from ..errors import InputError, OvssError
from . import distributed as D
from .metrics import METRICS, ConfusionMatrix, compute_metrics
from .report import EvalResult, software_versions, write_result
from .state import Progress, StateDir

MODEL_FIELDS = ("clip", "clip_weights", "vfm", "vfm_weights", "sam", "sam_weights", "sd_weights")


@dataclass
class EvalConfig:
    """Everything that defines one evaluation (method x benchmark)."""
    method: str
    dataset: str
    data_root: str
    preset: Optional[str] = None          # None: the dataset key (the method's official protocol for it)
    layout: str = "mmseg"
    metric: str = "mmseg"
    ignore_index: Optional[int] = None    # None: the benchmark's own (255; 65535 for context459/ade847)
    limit: Optional[int] = None
    clip: Optional[str] = None
    clip_weights: Optional[str] = None
    vfm: Optional[str] = None
    vfm_weights: Optional[str] = None
    sam: Optional[str] = None
    sam_weights: Optional[str] = None
    sd_weights: Optional[str] = None
    device: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    skip_bad: bool = False
    prefetch: int = 2                     # background threads reading the next images + ground truths (0 = none)
    batch_size: int = 1                   # consecutive images per model call (Segmenter.predict_batch)

    @property
    def effective_preset(self) -> str:
        return self.preset or self.dataset

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def segmenter_kwargs(cfg: EvalConfig, device: Optional[str]) -> dict:
    kw: dict = {"method": cfg.method, "classes": None, "preset": cfg.effective_preset, "device": device}
    for name in MODEL_FIELDS:
        v = getattr(cfg, name)
        if v is not None:
            kw[name] = v
    kw.update(cfg.overrides)
    return kw


def default_factory(cfg: EvalConfig, device: Optional[str]):
    """The real thing: ``ovss.Segmenter`` with the preset of the benchmark."""
    import ovss
    return ovss.Segmenter(**segmenter_kwargs(cfg, device))


def load_factory(spec: str) -> Callable:
    """``module:function`` -> the function (``--factory`` for custom or test segmenters)."""
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise InputError(f"--factory {spec!r}: expected MODULE:FUNCTION")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise InputError(f"--factory {spec!r}: {e}") from None


def fingerprint(cfg: EvalConfig, ds: SegDataset, stems: list[str]) -> dict:
    """What determines the confusion matrix; a resumed run must match it exactly."""
    d = {k: getattr(cfg, k) for k in ("method", "dataset", "layout", *MODEL_FIELDS)}
    d.update(preset=cfg.effective_preset, ignore_index=ds.ignore_index, num_images=len(stems),
             overrides={k: cfg.overrides[k] for k in sorted(cfg.overrides)},
             images_sha1=hashlib.sha1("\n".join(stems).encode()).hexdigest())
    return d


def _record_params(seg) -> Any:
    """The segmenter's exact configuration (``Segmenter.config()``, else its ``params`` dataclass), JSON-safe."""
    conf = getattr(seg, "config", None)
    if callable(conf):
        try:
            return json.loads(json.dumps(conf(), default=repr))
        except Exception:  # a custom segmenter's config() is best effort
            pass
    for obj in (seg, getattr(seg, "method", None)):
        p = getattr(obj, "params", None) if obj is not None else None
        if p is not None and dataclasses.is_dataclass(p):
            return json.loads(json.dumps(dataclasses.asdict(p), default=repr))
    return None


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (torchrun stopping its workers, a batch scheduler) -> KeyboardInterrupt, so state gets saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _to_labels(pred) -> torch.Tensor:
    if isinstance(pred, torch.Tensor):
        t = pred.detach()
    else:
        t = torch.as_tensor(np.asarray(pred))
    if t.is_floating_point():
        raise OvssError(f"predict() returned floating-point values ({t.dtype}); expected integer labels")
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    return t.to(torch.int64)


def _model_input(image):
    """What the segmenter is given: a LoadedImage decoded ahead by a prefetch worker, or the path as a string."""
    return str(image) if isinstance(image, Path) else image


def _predict(seg, image) -> torch.Tensor:
    """Labels for one image (a path, or a LoadedImage decoded ahead by a prefetch worker)."""
    try:
        return _to_labels(seg.predict(_model_input(image)))
    except DataError:
        raise
    except (InputError, OSError) as e:
        path = getattr(image, "path", image)   # the method's own input error (e.g. a bad region-mask file) names its file
        raise DataError(f"cannot segment image {path}: {e}", path, "corrupt") from None


def _group_predictor(seg, images: list) -> Callable[[int], torch.Tensor]:
    """Labels of `images[j]` on demand (None entries: no model call). The images of the group go through one
    `seg.predict_batch` call when the segmenter has one and there are several; otherwise, or when that call
    raises an input error, each image is predicted by itself when asked for (`_predict`), so an error names its
    image and surfaces at its place in the order."""
    todo = [j for j, im in enumerate(images) if im is not None]
    batch = getattr(seg, "predict_batch", None)
    preds: dict = {}
    if callable(batch) and len(todo) > 1:
        try:
            out = list(batch([_model_input(images[j]) for j in todo]))
        except (InputError, OSError):       # which image? each one alone tells
            out = None
        if out is not None:
            if len(out) != len(todo):
                raise OvssError(f"predict_batch() returned {len(out)} predictions for {len(todo)} images")
            preds = dict(zip(todo, out))
    return lambda j: _to_labels(preds.pop(j)) if j in preds else _predict(seg, images[j])


def _read_sample(ds: SegDataset, s, decode: bool):
    """(ground truth, image) of one sample, as a prefetch worker reads it while the model runs: the image is decoded
    (`decode`: the segmenter is an ovss.Segmenter, which takes decoded images) or left as its path; None when the
    ground truth has no labelled pixel (the model is skipped). Errors surface when the main loop takes the result."""
    gt = ds.load_gt(s)
    ds.validate(s, gt)
    if not np.any(gt != ds.ignore_index):
        return gt, None
    if not decode:
        return gt, s.image
    from ..images import load_image
    try:
        return gt, load_image(str(s.image))
    except (InputError, OSError) as e:
        raise DataError(f"cannot read image {s.image}: {e}", s.image, "corrupt") from None


def _ahead(fn: Callable, items: list, workers: int, depth: Optional[int] = None):
    """Yield (item, Future of fn(item)) in order; with `workers` > 0 threads compute up to `depth` (default
    2 x workers) items ahead (decoding releases the GIL), otherwise each is computed when it is taken. Pending work
    is cancelled when the consumer stops (an interrupt)."""
    depth = max(1, depth or 2 * workers)
    if workers <= 0:
        for it in items:
            f: Future = Future()
            try:
                f.set_result(fn(it))
            except Exception as e:  # noqa: BLE001 - re-raised by the consumer, in order
                f.set_exception(e)
            yield it, f
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ovss-prefetch")
    try:
        queue: deque = deque()
        it = iter(items)
        for x in it:
            queue.append((x, pool.submit(fn, x)))
            if len(queue) >= depth:
                break
        while queue:
            x, f = queue.popleft()
            nxt = next(it, None) if len(queue) < depth else None
            if nxt is not None:
                queue.append((nxt, pool.submit(fn, nxt)))
            yield x, f
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _groups(pairs, n: int):
    """Consecutive groups of up to n items of an iterator, as lists."""
    group: list = []
    for p in pairs:
        group.append(p)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _settle(f: Future):
    """A read's result, or the exception it raised (re-raised at the sample's turn)."""
    try:
        return f.result()
    except Exception as e:  # noqa: BLE001
        return e


class _Broadcast(Exception):
    pass


def evaluate(cfg: EvalConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
             factory: Optional[Callable] = None, progress: bool = True, save_interval: float = 10.0,
             save_every: Optional[int] = None, dist_info: Optional[D.DistInfo] = None,
             device: Optional[str] = None) -> Optional[EvalResult]:
    """Evaluate one method on one benchmark; returns the result on rank 0 (None elsewhere).

    State is saved into ``out_dir/state`` every ``save_interval`` seconds (or ``save_every`` images) and on
    exit, so ``resume=True`` continues an interrupted run to exactly the uninterrupted numbers."""
    info = dist_info or D.DistInfo()
    device = device if device is not None else cfg.device
    factory = factory or default_factory
    if cfg.metric not in METRICS:
        raise InputError(f"unknown metric {cfg.metric!r}; choose from {', '.join(METRICS)}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise InputError(f"batch size {cfg.batch_size!r}: give a whole number of images >= 1 (1 = one at a time)")
    t0 = time.time()
    out = Path(out_dir)
    ds = get_dataset(cfg.dataset, cfg.data_root, cfg.layout, cfg.ignore_index)
    samples = ds.samples if cfg.limit is None else ds.samples[: max(0, cfg.limit)]
    if not samples:
        raise InputError(f"{cfg.dataset}: no images found (list {ds.split_file or ds.image_dir})")
    k = ds.num_classes
    state = StateDir(out, fingerprint(cfg, ds, [s.stem for s in samples]))

    # rank 0 decides where we start; the others learn it by broadcast (no shared file system needed)
    msg = None
    base = Progress.empty_like(k + 1)
    if info.is_main:
        try:
            if state.exists() and overwrite:
                state.clear()
            elif state.exists() and not resume:
                raise OvssError(f"{out} already holds an evaluation (state/): pass --resume to continue it or "
                                "--overwrite to start over")
            elif (out / "result.json").is_file() and not resume and not overwrite:
                raise OvssError(f"{out} already holds results: pass --resume to reuse/continue or --overwrite")
            base = state.consolidate(k + 1) if resume else Progress.empty_like(k + 1)
        except OvssError as e:
            msg = str(e)
    msg, done, base_offset = D.broadcast_object((msg, sorted(base.done), base.label_offset) if info.is_main
                                                else None, info)
    if msg:
        raise OvssError(msg)
    done = set(done)
    remaining = [i for i in range(len(samples)) if i not in done]
    mine = remaining[info.rank::info.world_size]

    seg = factory(cfg, device) if mine else None
    offset = int(getattr(seg, "label_offset", 0) or 0) if seg is not None else 0
    target_transform = getattr(seg, "target_transform", None) if seg is not None else None
    if seg is not None and getattr(seg, "classes", None) is not None:
        n_pred = len(seg.classes) - offset
        if n_pred != k:
            raise OvssError(f"method {cfg.method!r} with preset {cfg.effective_preset!r} predicts {n_pred} classes but "
                            f"{cfg.dataset} has {k}; use the preset of this benchmark (--preset {cfg.dataset})")
    acc_device = getattr(seg, "device", None) if seg is not None else None
    acc_device = acc_device if acc_device is not None and torch.device(acc_device).type == "cuda" else "cpu"
    cm = ConfusionMatrix(k, ds.ignore_index, acc_device)
    sess = Progress.empty_like(k + 1)
    sess.label_offset = offset
    part_id = f"{uuid.uuid4().hex[:12]}-r{info.rank}"
    last_save, since_save = time.time(), 0

    def save():
        nonlocal last_save, since_save
        if sess.done:
            sess.mat = cm.numpy()
            state.save_part(part_id, sess)
        last_save, since_save = time.time(), 0

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), unit="img", desc=f"{cfg.method}/{cfg.dataset}" +
                   (f" [rank 0/{info.world_size}]" if info.active else ""), dynamic_ncols=True, smoothing=0.05)
    try:
        from ..api import Segmenter
        decode = isinstance(seg, Segmenter)
        # the reader keeps the next group (and more) in flight while the model runs on this one
        reader = _ahead(lambda i: _read_sample(ds, samples[i], decode), mine, cfg.prefetch,
                        depth=max(2 * cfg.prefetch, cfg.batch_size))
        with _sigterm_as_interrupt(), closing(reader):
            n = 0
            for group in _groups(reader, cfg.batch_size):
                reads = [_settle(ahead) for _, ahead in group]      # (gt, image) or the read's error, in order
                labels_of = _group_predictor(seg, [None if isinstance(r, Exception) else r[1] for r in reads])
                for j, (idx, _) in enumerate(group):
                    s = samples[idx]
                    try:
                        if isinstance(reads[j], Exception):
                            raise reads[j]
                        gt, image = reads[j]
                        if image is None:
                            sess.empty += 1           # contributes nothing to any metric: skip the model
                        else:
                            pred = labels_of(j)
                            if target_transform is not None:
                                gt = np.asarray(target_transform(gt))
                            if offset:
                                pred = pred - offset
                            if tuple(pred.shape) != tuple(gt.shape):
                                raise OvssError(f"{cfg.method}: prediction for {s.image} is {tuple(pred.shape)} but "
                                                f"the ground truth {s.ann} is {tuple(gt.shape)} (after the protocol's "
                                                "transform)")
                            cm.update(pred, gt)
                    except DataError as e:
                        if not cfg.skip_bad:
                            raise DataError(f"{e} (use --skip-bad to skip bad samples and list them at the end)",
                                            e.path, e.kind) from None
                        sess.bad.append({"index": idx, "stem": s.stem, "file": e.path, "kind": e.kind,
                                         "error": str(e)})
                    sess.done.add(idx)
                    since_save += 1
                    if (save_every and since_save >= save_every) or (not save_every and
                                                                      time.time() - last_save >= save_interval):
                        save()
                    if bar is not None:
                        bar.update(1)
                        if n % 10 == 0 or n == len(mine) - 1:
                            bar.set_postfix_str(f"mIoU {compute_metrics(base.mat + cm.numpy()).summary['mIoU']:.2f} "
                                                "(so far)", refresh=False)
                    n += 1
    except BaseException:
        save()
        if bar is not None:
            bar.close()
        if sess.done or base.done:
            print(f"ovss eval: progress saved in {state.dir}; continue with --resume"
                  + (f" (rank {info.rank})" if info.active else ""), flush=True)
        raise
    save()
    if bar is not None:
        bar.close()

    # reduce across ranks (int64 sums), then rank 0 writes
    total = D.sum_int64(cm.mat, info).cpu().numpy()
    gathered = D.gather_objects({"done": sorted(sess.done), "bad": sess.bad, "empty": sess.empty, "part": part_id,
                                 "offset": offset if seg is not None else None}, info)
    if not info.is_main:
        return None
    offsets = {g["offset"] for g in gathered if g["offset"] is not None} | ({base_offset} if base.done else set())
    if len(offsets) > 1:
        raise OvssError(f"inconsistent label offsets between ranks/sessions: {sorted(offsets)}")
    offset = offsets.pop() if offsets else 0
    final = Progress(base.mat + total, set(base.done), list(base.bad), base.empty, list(base.absorbed), offset)
    for g in gathered:
        final.done |= set(g["done"])
        final.bad += g["bad"]
        final.empty += g["empty"]
        final.absorbed.append(g["part"])
    final.bad.sort(key=lambda b: b["index"])
    state.save_base(final, complete=len(final.done) == len(samples))
    for p in state.parts():
        if p.stem[len("part-"):] in final.absorbed:
            p.unlink(missing_ok=True)

    params = _record_params(seg) if seg is not None else None
    if params is None and (out / "result.json").is_file():
        try:
            params = json.loads((out / "result.json").read_text())["config"]["method_params"]
        except (ValueError, KeyError, TypeError):
            params = None
    primary = compute_metrics(final.mat, cfg.metric, offset)
    all_m = {name: compute_metrics(final.mat, name, offset).summary for name in METRICS}
    result = EvalResult(
        method=cfg.method, dataset=cfg.dataset, preset=cfg.effective_preset, metric=cfg.metric,
        summary=primary.summary, per_class=primary.per_class, class_names=list(ds.class_names), all_metrics=all_m,
        num_images=len(samples), evaluated=len(final.done) - len(final.bad) - final.empty, empty=final.empty,
        bad=final.bad,
        config={"eval": cfg.to_dict(), "dataset": ds.describe(), "segmenter": segmenter_kwargs(cfg, device),
                "method_params": params, "label_offset": offset,
                "target_transform": target_transform is not None},
        versions=software_versions(), elapsed_s=round(time.time() - t0, 3), world_size=info.world_size,
        resumed=bool(base.done), confusion=final.mat)
    write_result(result, out)
    return result
