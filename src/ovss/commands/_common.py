"""Arguments shared by the commands that build a Segmenter."""
from __future__ import annotations

import argparse
import ast


def add_model_args(p: argparse.ArgumentParser, method_default: str = "sclip", with_method: bool = True) -> None:
    g = p.add_argument_group("method and models")
    if with_method:
        g.add_argument("--method", "-m", default=method_default,
                       help=f"method name (default {method_default}; see `ovss methods`)")
    g.add_argument("--clip", default=None, help="CLIP model: ViT-B/16, ViT-L/14, ViT-H/14, MetaCLIP-B/16 (default: the "
                                                "method's own, MetaCLIP-B/16 for corrclip, else ViT-B/16)")
    g.add_argument("--clip-weights", default=None, help="local CLIP weights file, or 'random' (default: download/cache)")
    g.add_argument("--vfm", default=None, help="proxy model for proxyclip/trident (e.g. dino_vitb8, dino_vitb16, dinov2_vitb14, sam_vitb, mae_vitb16)")
    g.add_argument("--vfm-weights", default=None, help="local VFM weights file, or 'random'")
    g.add_argument("--sam", default="vit_b", help="SAM model for trident: vit_b or vit_h")
    g.add_argument("--sam-weights", default=None, help="local SAM checkpoint, or 'random'")
    g.add_argument("--sd-weights", default=None, help="Stable Diffusion 2.1-base diffusers folder or hub id, or 'random'")
    g.add_argument("--preset", default=None, help="benchmark protocol (voc21, voc20, context60, context59, coco_object, "
                                                  "coco_stuff, cityscapes, ade20k, ...); default: settings for your own images")
    g.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    g.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU, fp16 on GPU)")
    g.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter, e.g. --set prob_thd=0.3 --set slide_crop=448 (repeatable)")


def parse_overrides(items: list[str]) -> dict:
    """["prob_thd=0.3", "sam_refinement=false"] -> {"prob_thd": 0.3, "sam_refinement": False}."""
    from ..errors import InputError
    out = {}
    for it in items:
        if "=" not in it:
            raise InputError(f"--set {it!r}: expected NAME=VALUE")
        k, v = it.split("=", 1)
        low = v.strip().lower()
        if low in ("true", "false", "none"):
            out[k.strip()] = {"true": True, "false": False, "none": None}[low]
            continue
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def segmenter_kwargs(args, classes=None) -> dict:
    return dict(method=args.method, classes=classes, clip=args.clip, clip_weights=args.clip_weights, vfm=args.vfm,
                vfm_weights=args.vfm_weights, sam=args.sam, sam_weights=args.sam_weights, sd_weights=args.sd_weights,
                preset=args.preset, device=args.device, dtype=args.dtype, **parse_overrides(args.overrides))
