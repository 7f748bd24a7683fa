"""`ovss compare`: several methods on one image; one grid picture (each method's overlay with its name and time,
one shared legend) and a JSON of per-method class areas, scores and times."""
from __future__ import annotations

import json
import os
import sys

from ._common import add_model_args, segmenter_kwargs


def register(sub) -> None:
    p = sub.add_parser("compare", help="run several methods on one image, side by side",
                       description="Run several methods on one image and write a grid of their overlays with one "
                                   "shared legend (<stem>_compare.png) and a JSON of class areas and times per "
                                   "method (<stem>_compare.json). Default methods: every method whose weights are "
                                   "on this machine (or given with --clip-weights / --vfm-weights / ...).")
    p.add_argument("image", help="an image file")
    c = p.add_mutually_exclusive_group(required=True)
    c.add_argument("--classes", "-c", default=None, help="class names, e.g. 'horse, grass, sky'")
    c.add_argument("--class-file", default=None, help="file with one class per line")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: those whose weights are here)")
    p.add_argument("--out", "-o", default="ovss_out", help="output folder (default ./ovss_out)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    p.add_argument("--cell-width", type=int, default=360, help="width in pixels of each method's picture")
    add_model_args(p, with_method=False)
    p.set_defaults(func=run, method=None)


def _given_kinds(args) -> list[str]:
    """The model kinds whose weights the command line supplies (a file or "random")."""
    return [k for k, v in (("clip", args.clip_weights), ("vfm", args.vfm_weights), ("sam", args.sam_weights),
                           ("sd", args.sd_weights)) if v]


def run(args) -> int:
    from tqdm.auto import tqdm

    import ovss
    from ..compare import compare, compare_dict, compare_picture, methods_with_weights, parse_methods
    from ..errors import InputError
    from ..images import load_image

    if args.class_file and not os.path.isfile(args.class_file):
        raise InputError(f"--class-file {args.class_file}: no such file")
    classes = args.class_file or args.classes
    image = load_image(args.image)
    methods = parse_methods(args.methods) or methods_with_weights(_given_kinds(args))
    bar = tqdm(total=len(methods), desc="compare", unit="method", disable=None)

    def make(method):
        args.method = method
        return ovss.Segmenter(**segmenter_kwargs(args, classes))

    def on_start(method, i):
        bar.set_postfix_str(method)
        if i:
            bar.update(1)

    runs = compare(image, methods, make, on_start)
    bar.update(1)
    bar.close()
    for r in runs:
        if r.error:
            print(f"ovss compare: {r.method}: {r.error}", file=sys.stderr)
    ok = [r for r in runs if r.result is not None]
    names, grid = compare_picture(image.rgb, runs, [], alpha=args.alpha, cell_width=args.cell_width)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.image))[0] or "image"
    png, js = os.path.join(args.out, f"{stem}_compare.png"), os.path.join(args.out, f"{stem}_compare.json")
    grid.save(png)
    info = compare_dict(os.path.abspath(args.image), names, runs)
    info.update(preset=args.preset)
    tmp = js + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, js)
    for r in runs:
        if r.result is not None:
            top = ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(r.result.areas.items(), key=lambda kv: -kv[1])[:4])
            print(f"{r.method}: {r.seconds:.2f} s  {top}")
    print(f"-> {png}, {js} ({len(ok)} of {len(runs)} methods ran)")
    return 0 if ok else 1
