"""`ovss segment`: label images by class names; writes a label PNG, an overlay with a legend and a JSON each."""
from __future__ import annotations

import glob
import json
import os
import sys

from ._common import add_model_args, segmenter_kwargs

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment images by class names",
                       description="Segment images by arbitrary class names. Classes: --classes 'horse, grass, sky' "
                                   "(commas separate classes; with ';' or newlines, those separate classes and commas "
                                   "separate synonyms: 'horse; grass, lawn; sky'), or --class-file F (one class per "
                                   "line, comma-separated synonyms).")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    c = p.add_mutually_exclusive_group()
    c.add_argument("--classes", "-c", default=None, help="class names, e.g. 'horse, grass, sky'")
    c.add_argument("--class-file", default=None, help="file with one class per line")
    p.add_argument("--out", "-o", default="ovss_out", help="output folder (default ./ovss_out)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    add_model_args(p)
    p.set_defaults(func=run)


def expand_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """Files, folders (their images, sorted) and globs -> (image paths, inputs that matched nothing)."""
    paths, missing = [], []
    for it in items:
        if os.path.isdir(it):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(it) for f in fs if f.lower().endswith(IMAGE_EXT))
        elif any(ch in it for ch in "*?["):
            found = sorted(glob.glob(it, recursive=True))
        else:
            found = [it]
        if not found:
            missing.append(it)
        paths += found
    return list(dict.fromkeys(paths)), missing


def _stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    base, i = stem, 1
    while stem in used:
        i += 1
        stem = f"{base}_{i}"
    used.add(stem)
    return stem


def run(args) -> int:
    import ovss
    from tqdm.auto import tqdm

    from ..errors import InputError, OvssError

    classes = args.class_file or args.classes
    if classes is None and not args.preset:
        raise InputError("give the classes: --classes 'horse, grass, sky' or --class-file FILE")
    if args.class_file and not os.path.isfile(args.class_file):
        raise InputError(f"--class-file {args.class_file}: no such file")
    paths, missing = expand_inputs(args.images)
    for m in missing:
        print(f"ovss segment: {m}: no such file or no image in it", file=sys.stderr)
    if not paths:
        raise InputError("no input images")
    seg = ovss.Segmenter(**segmenter_kwargs(args, classes))
    os.makedirs(args.out, exist_ok=True)
    failed, used = list(missing), set()
    for path in tqdm(paths, desc="segment", unit="img", disable=len(paths) < 2):
        try:
            res = seg.segment(path)
        except OvssError as e:
            print(f"ovss segment: {e}", file=sys.stderr)
            failed.append(path)
            continue
        stem = _stem(path, used)
        res.label_image().save(os.path.join(args.out, f"{stem}_labels.png"))
        res.overlay(alpha=args.alpha).save(os.path.join(args.out, f"{stem}_overlay.png"))
        info = {"image": os.path.abspath(path), **res.to_dict(), "method": args.method, "clip": seg.clip_name,
                "preset": args.preset}
        tmp = os.path.join(args.out, f".{stem}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, os.path.join(args.out, f"{stem}.json"))
        top = ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(res.areas.items(), key=lambda kv: -kv[1])[:5])
        tqdm.write(f"{path}: {top}  -> {os.path.join(args.out, stem)}_{{labels,overlay}}.png")
    if failed:
        print(f"ovss segment: {len(failed)} of {len(paths) + len(missing)} inputs failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
