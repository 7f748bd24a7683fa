"""``ovss masks``: CorrCLIP's region-mask files (``<out>/<image stem>.npz``, array ``instance_mask``; spec
methods/corrclip.md §2, §6) made once for a dataset or a set of images, and checked.

  ovss masks generate --dataset voc21 --data-root data/ --out masks/voc [--generator auto|sam2|sam] [--limit N]
  ovss masks generate IMAGES... --out masks/mine
  ovss masks check --masks masks/voc --dataset voc21 --data-root data/     (or: --masks DIR IMAGES...)

Generation is resumable: every file is written atomically (temporary file + rename) and a file already present
and valid is skipped, so the same command continues an interrupted run (Ctrl-C exits 130, progress saved).
``<out>/masks_info.json`` records the generator and its settings; a folder made with other settings is refused
(use another --out, or --overwrite to regenerate everything).

``--skip-bad`` (generate): an unreadable image is listed at the end instead of stopping the run. ``ovss eval
--skip-bad`` treats an image whose mask file is missing, unreadable or wrongly sized the same way: skipped and
listed (without it the evaluation stops at that image, naming the file). ``ovss masks check`` lists all such
files up front.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError

INFO_FILE = "masks_info.json"


def register(sub) -> None:
    p = sub.add_parser("masks", help="region masks for corrclip: generate them once, check a folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ms = p.add_subparsers(dest="masks_command", metavar="ACTION")

    g = ms.add_parser("generate", help="write <stem>.npz region masks for a dataset or images (resumable)",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_args(g)
    g.add_argument("--out", "-o", required=True, help="output folder of <image stem>.npz files")
    g.add_argument("--generator", default="auto", choices=["auto", "sam2", "sam"],
                   help="auto: SAM 2 when the sam2 package is installed (the official generator), else SAM 1")
    g.add_argument("--model", default=None, help="generator model: hiera_l (SAM 2, default) or vit_b/vit_l/vit_h "
                                                 "(SAM 1, default vit_h)")
    g.add_argument("--weights", "--mask-generator-weights", dest="weights", default=None,
                   help="local checkpoint (e.g. sam2_hiera_large.pt), or 'random' (default: download/cache)")
    g.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="automatic-mask-generator parameter, e.g. --set points_per_side=32 (repeatable; official: "
                        "points_per_side=8 pred_iou_thresh=0.4 stability_score_thresh=0.4 multimask_output=False)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    g.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU; the CPU runs fp32)")
    g.add_argument("--skip-bad", action="store_true", help="list unreadable images at the end instead of stopping")
    g.add_argument("--overwrite", action="store_true", help="regenerate every file (also with other settings)")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=run_generate)

    c = ms.add_parser("check", help="list missing, unreadable or wrongly sized mask files",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--masks", required=True, help="folder of <image stem>.npz files")
    _add_source_args(c)
    c.add_argument("--max-lines", type=int, default=50, help="print at most this many problems (all are counted)")
    c.set_defaults(func=run_check)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files, folders or glob patterns (instead of --dataset)")
    p.add_argument("--dataset", default=None, help="benchmark key: voc21 voc20 context60 context59 coco_object "
                                                   "coco_stuff cityscapes ade20k ...")
    p.add_argument("--data-root", default=None, help="dataset root (as for ovss eval)")
    p.add_argument("--layout", default="mmseg", choices=["mmseg", "cliptrase", "cliper"])
    p.add_argument("--limit", type=int, default=None, help="only the first N images")


@dataclass
class Item:
    image: str          # the image file
    mask: str           # its mask file <folder>/<stem>.npz


def collect_images(args) -> tuple[list[str], list[str]]:
    """(image paths in order, inputs that matched nothing) from --dataset/--data-root or IMAGES."""
    if args.dataset and args.images:
        raise InputError("give either --dataset (with --data-root) or image files, not both")
    if args.dataset:
        if not args.data_root:
            raise InputError(f"--dataset {args.dataset}: also give --data-root DIR")
        from ..data.datasets import get_dataset
        paths, missing = [str(s.image) for s in get_dataset(args.dataset, args.data_root, args.layout).samples], []
    elif args.images:
        from .segment import expand_inputs
        paths, missing = expand_inputs(args.images)
    else:
        raise InputError("name the images: --dataset D --data-root DIR, or image files/folders")
    if args.limit is not None:
        paths = paths[: max(0, args.limit)]
    return paths, missing


def items_for(paths: list[str], folder: str) -> list[Item]:
    """Pair every image with its mask file; two images with one stem would share a file: refused by name."""
    from ..inference.region_masks import mask_path
    seen: dict[str, str] = {}
    out = []
    for p in paths:
        m = mask_path(folder, p)
        if m in seen:
            raise InputError(f"{seen[m]} and {p} have the same file stem, so both would use {m}; "
                             f"give them different names or generate them into different folders")
        seen[m] = p
        out.append(Item(p, m))
    return out


def image_hw(path: str) -> tuple[int, int]:
    """(H, W) of an image as ovss loads it (EXIF rotation applied), from the header only."""
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise InputError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)   # EXIF orientation with a transpose
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return (w, h) if rotated else (h, w)


def mask_problem(item: Item) -> Optional[str]:
    """None when `item.mask` is a valid region map for `item.image`, else the message naming the file."""
    from ..inference.region_masks import read_region_masks
    try:
        read_region_masks(item.mask, image_hw(item.image))
    except InputError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------- generate
def _settings(args, params: dict) -> dict:
    from ..backbones.mask_generator import SAM2_DEFAULT, SAM_DEFAULT, resolve_kind
    kind = resolve_kind(args.generator)
    w = args.weights
    return {"generator": kind, "model": args.model or (SAM2_DEFAULT if kind == "sam2" else SAM_DEFAULT),
            "weights": w if w in (None, "random") else os.path.abspath(w), "params": params,
            "format": "instance_mask int32 at the image size; ids by ascending mask area, 0 = unsegmented"}


def _check_info(out: str, settings: dict, overwrite: bool) -> None:
    """Refuse to mix masks of different generators/settings in one folder; record the settings."""
    path = os.path.join(out, INFO_FILE)
    if os.path.isfile(path) and not overwrite:
        try:
            with open(path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        keys = ("generator", "model", "weights", "params")
        if old is not None and {k: old.get(k) for k in keys} != {k: settings[k] for k in keys}:
            raise InputError(f"{out} holds masks made with other settings ({path}: "
                             f"{json.dumps({k: old.get(k) for k in keys})}); use the same settings, another "
                             f"--out, or --overwrite to regenerate every file")
    os.makedirs(out, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(tmp, path)


def run_generate(args) -> int:
    from tqdm.auto import tqdm

    from ..backbones.mask_generator import load_mask_generator
    from ..images import load_image
    from ..inference.region_masks import write_region_masks
    from ._common import parse_overrides

    params = parse_overrides(args.overrides)
    paths, missing = collect_images(args)
    missing += [p for p in paths if not os.path.isfile(p)]
    paths = [p for p in paths if os.path.isfile(p)]
    if missing and not args.skip_bad:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"no such file or no image in it: {shown} (--skip-bad goes on without)")
    items = items_for(paths, args.out)
    if not items:
        raise InputError("no input images")
    todo = items if args.overwrite else [it for it in items if mask_problem(it) is not None]
    settings = _settings(args, params)
    _check_info(args.out, settings, args.overwrite)
    done_before = len(items) - len(todo)
    print(f"ovss masks: {len(items)} image(s), {done_before} already done, {len(todo)} to generate "
          f"({settings['generator']} {settings['model']}) -> {args.out}", file=sys.stderr)
    bad = list(missing)
    written = 0
    if todo:
        gen = load_mask_generator(args.generator, args.weights, device=args.device, dtype=args.dtype,
                                  model=args.model, **params)
        try:
            for it in tqdm(todo, desc="masks", unit="img", disable=args.no_progress or len(todo) < 2):
                try:
                    img = load_image(it.image)
                except InputError as e:
                    if not args.skip_bad:
                        raise InputError(f"{e} (--skip-bad goes on without it; {written} mask(s) written, run "
                                         f"the same command again to continue)") from None
                    bad.append(it.image)
                    continue
                write_region_masks(it.mask, gen(img.rgb))
                written += 1
        except KeyboardInterrupt:
            print(f"ovss masks: interrupted; progress saved: {done_before + written} of {len(items)} masks in "
                  f"{args.out}. Run the same command again to continue.", file=sys.stderr)
            return 130
    print(f"ovss masks: {written} written, {done_before} already there, {len(bad)} skipped -> {args.out}")
    if bad:
        print(f"ovss masks: {len(bad)} unreadable or missing input(s) skipped:", file=sys.stderr)
        for b in bad:
            print(f"  {b}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- check
def run_check(args) -> int:
    if not os.path.isdir(args.masks):
        raise InputError(f"--masks {args.masks}: no such folder")
    paths, missing = collect_images(args)
    items = items_for(paths, args.masks)
    problems = [f"no such file or no image in it: {m}" for m in missing]
    for it in items:
        msg = mask_problem(it)
        if msg:
            problems.append(msg)
    for line in problems[: args.max_lines]:
        print(line)
    if len(problems) > args.max_lines:
        print(f"... and {len(problems) - args.max_lines} more")
    print(f"checked {len(items)} image(s) against {args.masks}: {len(problems)} problem(s)"
          + ("" if problems else " - OK"))
    return 1 if problems else 0

