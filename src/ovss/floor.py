"""The speed floor of a method: the bare cost of the unmodified network passes it cannot avoid.

`record_passes(models, fn)` runs `fn()` (one method run) with forward pre-hooks on the entry of every backbone
and keeps each pass's actual inputs: the CLIP image tower (its patch convolution: one pass per window batch or
view), the DINO / DINOv2 / MAE tower (timm), SAM's image encoder, Stable Diffusion (the VAE encoder, and the UNet
up to the last attention layer the method's pass reached) and an automatic mask generator (CorrCLIP's SAM 2).
`replay(passes)` then runs the *unmodified* passes on the same inputs: the whole CLIP tower (every block with
PyTorch's fused attention, `ln_post` and the projection of every token), timm's forward, SAM's encoder with fused
attention, diffusers' own attention processors, the library's `generate()`. Its time is the floor:
``method time / floor`` is what the method's own work (attention variants, clustering, eigen-decompositions,
splicing, post-processing) adds on top. Text embeddings are cached per Segmenter and are in neither.

A method that ran a pass twice would see it twice in its floor: the floor counts the passes a method makes,
so each method's pass count is printed with it (``describe``).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class Pass:
    """One backbone pass: which model, its inputs, and (UNet) the module after which the method's pass stopped."""
    model: str                      # "clip" | "vfm" | "sam" | "vae" | "unet" | "mask_generator"
    run: Callable[[], Any] = field(repr=False)
    shape: tuple = ()
    stop: Optional[str] = None

    def label(self) -> str:
        dims = "x".join(str(s) for s in self.shape)
        return f"{self.model} {dims}" + (f" (to {self.stop})" if self.stop else "")


class _Stop(Exception):
    pass


def _clip_pass(clip, x: torch.Tensor) -> Callable[[], Any]:
    """The unmodified CLIP image tower on x (the input of its patch convolution): every token to the joint space."""
    def run():
        t, _, _ = clip.embed(x)
        return clip.head(clip.run_blocks(t))
    return run


def _vfm_pass(vfm, x: torch.Tensor) -> Callable[[], Any]:
    return lambda: vfm.tokens(x)


def _sam_pass(encoder, x: torch.Tensor) -> Callable[[], Any]:
    from .backbones.sam import encode
    return lambda: encode(encoder, x)


def _unet_pass(unet, args: tuple, kwargs: dict, p: Pass) -> Callable[[], Any]:
    """The UNet with its own (stock) attention processors, stopped after module `p.stop` (read when run: it is
    known once the method's pass is over) like the method's pass; None = the whole UNet."""
    def run():
        handle = None
        if p.stop is not None:
            def halt(module, inputs, output):
                raise _Stop
            handle = dict(unet.named_modules())[p.stop].register_forward_hook(halt)
        try:
            return unet(*args, **kwargs)
        except _Stop:
            return None
        finally:
            if handle is not None:
                handle.remove()
    return run


def _models_of(method) -> dict:
    """name -> loaded backbone of a method (its `models`, plus CorrCLIP's on-the-fly mask generator)."""
    models = getattr(method, "models", None)
    out = {}
    for name in ("clip", "vfm", "sam", "sd"):
        m = getattr(models, name, None) if models is not None else getattr(method, name, None)
        if m is not None:
            out[name] = m
    gen = getattr(method, "_generator", None)
    if gen is not None:
        out["mask_generator"] = gen
    return out


@contextmanager
def _hooks(models: dict, passes: list):
    handles = []
    restore = []

    def pre(kind: str, make):
        def hook(module, args):
            x = args[0].detach().clone()
            passes.append(Pass(kind, make(x), tuple(x.shape)))
        return hook

    try:
        if "clip" in models:
            clip = models["clip"]
            handles.append(clip.visual.conv1.register_forward_pre_hook(pre("clip", lambda x: _clip_pass(clip, x))))
        if "vfm" in models:
            vfm = models["vfm"]
            handles.append(vfm.vit.patch_embed.proj.register_forward_pre_hook(
                pre("vfm", lambda x: _vfm_pass(vfm, x))))
        if "sam" in models:
            enc = models["sam"].model.image_encoder   # patch_embed: ovss's encoders call it, not enc.forward
            handles.append(enc.patch_embed.register_forward_pre_hook(pre("sam", lambda x: _sam_pass(enc, x))))
        if "sd" in models:
            sd = models["sd"]
            handles.append(sd.vae.encoder.register_forward_pre_hook(
                pre("vae", lambda x: (lambda: sd.vae.encode(x)))))
            unet = sd.unet

            def unet_hook(module, args, kwargs):
                a = tuple(v.detach().clone() if torch.is_tensor(v) else v for v in args)
                kw = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
                p = Pass("unet", lambda: None, tuple(a[0].shape))
                p.run = _unet_pass(unet, a, kw, p)
                passes.append(p)
            handles.append(unet.register_forward_pre_hook(unet_hook, with_kwargs=True))
            from diffusers.models.attention_processor import Attention
            names = [n for n, m in unet.named_modules() if isinstance(m, Attention)]
            for name in names:
                def reached(module, args, _name=name):   # the last one reached is where the method's pass stopped
                    unet_passes = [p for p in passes if p.model == "unet"]
                    if unet_passes:
                        unet_passes[-1].stop = None if _name == names[-1] else _name
                handles.append(dict(unet.named_modules())[name].register_forward_pre_hook(reached))
        if "mask_generator" in models:
            gen = models["mask_generator"]
            amg = gen.amg
            original = amg.generate

            def generate(rgb, *a, **k):
                img = rgb.copy()
                passes.append(Pass("mask_generator", lambda: original(img, *a, **k), tuple(img.shape)))
                return original(rgb, *a, **k)
            amg.generate = generate
            restore.append(lambda: delattr(amg, "generate"))
        yield
    finally:
        for h in handles:
            h.remove()
        for r in restore:
            r()


def record_passes(method, fn: Callable[[], Any]) -> tuple[Any, list[Pass]]:
    """Run `fn()` (a run of `method`) recording the backbone passes it makes; returns (fn's result, passes)."""
    passes: list[Pass] = []
    with _hooks(_models_of(method), passes):
        out = fn()
    return out, passes


@torch.inference_mode()
def replay(passes: list[Pass]) -> None:
    """Run the unmodified passes (see the module docstring)."""
    for p in passes:
        p.run()


def describe(passes: list[Pass]) -> str:
    """'clip 8x3x224x224 x3, vfm 1x3x448x448' (repeated passes counted)."""
    counts: dict[str, int] = {}
    for p in passes:
        counts[p.label()] = counts.get(p.label(), 0) + 1
    return ", ".join(f"{k}" + (f" x{n}" if n > 1 else "") for k, n in counts.items())


def interleaved(run: Callable[[], Any], n: int, cuda: bool, method=None) -> tuple[list, list, Optional[list]]:
    """Time `run` n times. With `method` (the one `run` calls), first record its passes in one untimed run and warm
    them once, then time their replay after each run, so both see the same machine state: (times, floors, passes);
    without it, floors and passes are empty / None."""
    passes = None
    if method is not None:
        _, passes = record_passes(method, run)
        replay(passes)
    times, floors = [], []
    for _ in range(n):
        times.append(timed(run, cuda))
        if passes is not None:
            floors.append(timed(lambda: replay(passes), cuda))
    return times, floors, passes


def timed(fn: Callable[[], Any], cuda: bool) -> float:
    """Seconds of one call (synchronising a GPU)."""
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0
