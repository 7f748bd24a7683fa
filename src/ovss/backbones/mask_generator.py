"""Class-agnostic region masks computed on the fly (CorrCLIP's ``mask_generator='sam2'``, spec
methods/corrclip.md §6): a SAM automatic mask generator on the **original** RGB image, its binary masks
written into one integer map by the official SAM 2 rule (:func:`ovss.inference.region_masks.masks_to_region_map`:
masks by ascending area, ids 1, 2, ..., a larger mask overwriting the smaller ones it covers, 0 = unsegmented).

Kinds:

* ``"sam2"``: SAM 2 (PyPI ``sam2``), ``build_sam2('configs/sam2/sam2_hiera_l.yaml', apply_postprocessing=False)``
  with the SAM 2.0 Hiera-L checkpoint ``sam2_hiera_large.pt`` (registry key ``sam2:hiera_l``) and
  ``SAM2AutomaticMaskGenerator(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4,
  multimask_output=False)``, the rest at the library defaults: exactly the official setting. On CUDA in
  fp16/bf16 the model is cast and run under autocast, as the official ``.half()`` + autocast run.
  (PyPI ``sam2`` 1.1.0 and the copy vendored in CorrCLIP differ only in the video memory attention's RoPE
  sizes, which the image predictor does not use.)
* ``"sam"``: SAM 1 (``segment_anything``) ``SamAutomaticMaskGenerator`` with the same points_per_side /
  pred_iou_thresh / stability_score_thresh. Not what CorrCLIP uses, and the masks differ: SAM 1 weights
  (default ViT-H, ``sam:vit_h``), and the library has no ``multimask_output`` switch (every point yields its
  3 candidate masks before the thresholds and the box NMS, where SAM 2 keeps one per point) and no
  ``mask_threshold`` argument (SAM 1 binarises at 0.0 too). Low precision on CUDA runs under autocast.
* ``"auto"``: ``"sam2"`` when the ``sam2`` package imports, else ``"sam"``.

On the CPU the generators run in fp32 whatever `dtype` says. ``model="tiny-test"`` (with ``weights="random"``)
builds a small random model of the same code for tests.
"""
from __future__ import annotations

import inspect
import os
import threading
from typing import Any, Optional, Union

import numpy as np
import torch

from .. import weights as W
from ..errors import InputError, WeightsError
from ..inference.region_masks import masks_to_region_map

KINDS = ("auto", "sam2", "sam")
# the official CorrCLIP setting (set_mask_generator('sam2')); SAM 1 gets the same values minus multimask_output
SAM2_PARAMS = dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4, multimask_output=False)
SAM_PARAMS = dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4)
# model name -> (hydra config of the sam2 package, weight registry key, extra hydra overrides)
SAM2_MODELS = {
    "hiera_l": ("configs/sam2/sam2_hiera_l.yaml", "sam2:hiera_l", ()),
    # tests: Hiera-T code with 5 blocks and 256-pixel inputs, random weights only
    "tiny-test": ("configs/sam2/sam2_hiera_t.yaml", None,
                  ("++model.image_size=256", "++model.image_encoder.trunk.stages=[1,1,2,1]",
                   "++model.image_encoder.trunk.global_att_blocks=[3]")),
}
SAM2_DEFAULT, SAM_DEFAULT = "hiera_l", "vit_h"
FIXED = ("output_mode",)   # the region map needs binary masks

_CACHE: dict = {}


def clear_cache() -> None:
    """Forget the loaded generators (tests; frees their memory)."""
    _CACHE.clear()


def sam2_available() -> bool:
    """True when the ``sam2`` package (and its hydra/iopath dependencies) imports."""
    try:
        import sam2.automatic_mask_generator  # noqa: F401
        import sam2.build_sam  # noqa: F401
    except Exception:   # ImportError, or hydra failing inside the package import
        return False
    return True


def resolve_kind(kind: str) -> str:
    """``"auto"`` -> ``"sam2"`` if importable else ``"sam"``; other names are checked."""
    k = (kind or "auto").lower()
    if k not in KINDS:
        raise InputError(f"mask generator {kind!r}: choose one of {', '.join(KINDS)}")
    if k == "auto":
        return "sam2" if sam2_available() else "sam"
    return k


def weights_key(kind: str, model: Optional[str] = None) -> str:
    """The weight registry key a generator of `kind` loads (``sam2:hiera_l`` or ``sam:vit_h``)."""
    k = resolve_kind(kind)
    if k == "sam2":
        name = model or SAM2_DEFAULT
        if name not in SAM2_MODELS or SAM2_MODELS[name][1] is None:
            raise InputError(f"SAM 2 model {name!r} has no downloadable weights; known: hiera_l")
        return SAM2_MODELS[name][1]
    return f"sam:{model or SAM_DEFAULT}"


def _check_params(cls, params: dict, kind: str) -> None:
    """Reject AMG parameters the library class does not take (SAM 2's **kwargs would swallow typos)."""
    names = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model", "kwargs")]
    bad = sorted(set(params) - set(names))
    fixed = sorted(set(params) & set(FIXED))
    if bad:
        extra = (" (SAM 1 has no multimask_output: every point gives 3 masks)"
                 if kind == "sam" and "multimask_output" in bad else "")
        raise InputError(f"mask generator {kind!r}: unknown parameter(s) {', '.join(bad)}{extra}; "
                         f"its parameters: {', '.join(n for n in names if n not in FIXED)}")
    if fixed:
        raise InputError(f"mask generator {kind!r}: {', '.join(fixed)} cannot be changed (binary masks are needed)")


class MaskGenerator:
    """A loaded automatic mask generator: ``gen(rgb (H, W, 3) uint8) -> (H, W) int32`` region map."""

    def __init__(self, amg: Any, kind: str, model: str, device: torch.device, dtype: torch.dtype, params: dict):
        self.amg, self.kind, self.model, self.device, self.dtype, self.params = amg, kind, model, device, dtype, params
        self._lock = threading.Lock()   # the library's predictor keeps the current image: one image at a time

    def masks(self, rgb: np.ndarray) -> list[np.ndarray]:
        """The generator's binary masks (each (H, W) bool), in the library's order."""
        rgb = _check_rgb(rgb)
        if not rgb.flags.writeable:   # the library wraps it in a tensor (torch warns about read-only arrays)
            rgb = rgb.copy()
        low = self.device.type == "cuda" and self.dtype != torch.float32
        with self._lock, torch.inference_mode(), torch.autocast("cuda", dtype=self.dtype, enabled=low):
            anns = self.amg.generate(rgb)
        return [np.asarray(a["segmentation"], dtype=bool) for a in anns]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = _check_rgb(rgb)
        return masks_to_region_map(self.masks(rgb), rgb.shape[:2])

    def __repr__(self) -> str:
        return f"MaskGenerator({self.kind}, {self.model}, {self.device}, {str(self.dtype).replace('torch.', '')})"


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        raise InputError(f"mask generator: expected an RGB image (H, W, 3) uint8, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _build_sam2(model: str, weights, seed: int) -> torch.nn.Module:
    from sam2.build_sam import build_sam2
    cfg, key, overrides = SAM2_MODELS[model]
    if key is None:
        if weights not in (None, W.RANDOM):
            raise WeightsError(f"SAM 2 model {model!r} only exists with random weights (weights='random')")
        path = W.RANDOM
    else:
        path = W.resolve(key, weights)
    with torch.random.fork_rng():   # the library initialises from the global RNG: seed it, keep the user's intact
        torch.manual_seed(seed)
        try:
            net = build_sam2(cfg, None if path == W.RANDOM else path, device="cpu", apply_postprocessing=False,
                             hydra_overrides_extra=list(overrides))
        except (RuntimeError, KeyError, OSError, EOFError, ValueError) as e:
            msg = (str(e).splitlines() or [""])[0][:300]
            raise WeightsError(f"{path}: not a SAM 2 {model} checkpoint ({type(e).__name__}: {msg}); "
                               f"expected {W.spec(key).filename if key else 'random weights'} "
                               f"(kind='sam' takes SAM 1 checkpoints)") from None
    return net


def load_mask_generator(kind: str = "auto", weights: Optional[Union[str, os.PathLike]] = None,
                        device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None,
                        model: Optional[str] = None, seed: int = 0, **amg_params) -> MaskGenerator:
    """A cached :class:`MaskGenerator`. `weights`: None = the registry's cached download (missing offline ->
    ``MissingWeightsError`` naming the file and the ``ovss weights download`` command), a checkpoint path, or
    ``"random"``. `model`: ``hiera_l`` (SAM 2, default) / ``vit_b|vit_l|vit_h`` (SAM 1, default vit_h) /
    ``tiny-test``. `amg_params` override the official ones (e.g. ``points_per_side=32``)."""
    from ..device import pick_device, pick_dtype
    k = resolve_kind(kind)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if dev.type == "cpu":
        dt = torch.float32
    if k == "sam2":
        if not sam2_available():
            raise InputError("mask generator 'sam2' needs the sam2 package: pip install sam2 (or "
                             "pip install 'ovss[sam2]'); or use mask generator 'sam' (segment_anything)")
        name = model or SAM2_DEFAULT
        if name not in SAM2_MODELS:
            raise InputError(f"SAM 2 model {name!r}: choose one of {', '.join(SAM2_MODELS)}")
        params = {**SAM2_PARAMS, **amg_params}
    else:
        name = model or SAM_DEFAULT
        params = {**SAM_PARAMS, **amg_params}
    wid = weights if weights in (None, W.RANDOM) else os.path.abspath(os.fspath(weights))
    key = (k, name, wid, str(dev), dt, seed, tuple(sorted(params.items())))
    if key in _CACHE:
        return _CACHE[key]
    if k == "sam2":
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        _check_params(SAM2AutomaticMaskGenerator, params, k)
        net = _build_sam2(name, weights, seed).to(dev).eval()
        if dt != torch.float32:
            net = net.to(dt)
        amg = SAM2AutomaticMaskGenerator(net, **params)
        s = net.image_size   # the predictor hard-codes the 1024-pixel feature sizes; follow the model's size
        amg.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    else:
        try:
            from segment_anything import SamAutomaticMaskGenerator
        except ImportError:
            raise InputError("mask generator 'sam' needs segment_anything: pip install segment-anything "
                             "(or pip install sam2 for the official SAM 2 generator)") from None
        from .sam import load_sam
        _check_params(SamAutomaticMaskGenerator, params, k)
        with torch.random.fork_rng():
            sam = load_sam(name, weights, device=dev, dtype=torch.float32, seed=seed)
        amg = SamAutomaticMaskGenerator(sam.model, **params)
    gen = MaskGenerator(amg, k, name, dev, dt, params)
    _CACHE[key] = gen
    return gen
