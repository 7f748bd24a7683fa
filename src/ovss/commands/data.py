"""``ovss data``: list the benchmark layouts, check a dataset folder, convert raw downloads."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..errors import InputError


def register(sub) -> None:
    p = sub.add_parser("data", help="benchmark datasets: list layouts, check folders, prepare conversions",
                       description="Benchmark datasets: `ovss data list`, `ovss data check`, `ovss data prepare`.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")

    ls = dsub.add_parser("list", help="benchmarks, layouts and where each expects its files")
    ls.add_argument("--layout", default="mmseg", choices=["mmseg", "cliptrase", "cliper"])
    ls.set_defaults(func=_list)

    ck = dsub.add_parser("check", help="say exactly what is missing or malformed in a dataset folder")
    ck.add_argument("--dataset", required=True, help="benchmark key: voc21 voc20 context60 context59 coco_object "
                                                     "coco_stuff cityscapes ade20k context459 ade847")
    ck.add_argument("--root", required=True, help="dataset root (e.g. the folder holding VOCdevkit/)")
    ck.add_argument("--layout", default="mmseg", choices=["mmseg", "cliptrase", "cliper"])
    ck.add_argument("--limit", type=int, default=None, help="check only the first N images")
    ck.add_argument("--quick", action="store_true", help="do not decode images (headers only)")
    ck.add_argument("--max-lines", type=int, default=50, help="print at most this many findings (all are counted)")
    ck.add_argument("--no-progress", action="store_true")
    ck.set_defaults(func=_check)

    pr = dsub.add_parser("prepare", help="convert raw downloads into the evaluated layout",
                         description="Conversions (spec/protocols.md §1.2-1.3).")
    psub = pr.add_subparsers(dest="prepare_what", metavar="WHAT")
    for name, target in (("coco-object", "coco_object"), ("coco-stuff", "coco_stuff")):
        c = psub.add_parser(name, help=f"COCO-Stuff-164k raw maps -> {target} train ids")
        c.add_argument("--src", required=True, help="raw maps, e.g. stuffthingmaps_trainval2017/val2017")
        c.add_argument("--out", required=True, help="output folder, e.g. coco_stuff164k/annotations/val2017")
        c.set_defaults(func=_prepare_coco, target=target)
    c = psub.add_parser("cityscapes", help="gtFine *_labelIds.png -> *_labelTrainIds.png (19 classes)")
    c.add_argument("--root", required=True, help="Cityscapes root holding gtFine/")
    c.add_argument("--splits", default="val", help="comma-separated splits (default: val)")
    c.set_defaults(func=_prepare_cityscapes)
    c = psub.add_parser("context", help="Pascal Context 459-label masks -> 60-class SegmentationClassContext",
                        description="Writes <out>/SegmentationClassContext/<stem>.png and "
                                    "<out>/ImageSets/SegmentationContext/<split>.txt. Input: --json "
                                    "trainval_merged.json (needs the Detail API) or --src with per-image 459-label "
                                    "masks (.mat LabelMap from PASCAL-Context trainval.tar.gz, or .png/.tif).")
    c.add_argument("--out", required=True, help="VOCdevkit/VOC2010")
    c.add_argument("--src", default=None, help="folder of 459-label masks (.mat/.png/.tif)")
    c.add_argument("--json", default=None, help="trainval_merged.json (Detail API)")
    c.add_argument("--split", default="val", help="name of the image list to write (default: val)")
    c.add_argument("--stems", default=None, help="text file of the image stems to convert (default: every mask)")
    c.add_argument("--ids", default="detail", choices=["detail", "pc459"],
                   help="detail: 0 unlabeled, 1..459 (Detail API, .mat); pc459: detectron2 0..458, 65535 unlabeled")
    c.add_argument("--strict", action="store_true", help="refuse ids outside the 60-class table (mmseg asserts)")
    c.set_defaults(func=_prepare_context)
    for c in psub.choices.values():
        c.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
        c.add_argument("--no-progress", action="store_true")
        if c.prog.split()[-1] != "context":
            c.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    pr.set_defaults(func=lambda a: (pr.print_help(), 2)[1])


def _list(args) -> int:
    from ..data.datasets import BENCHMARKS, LAYOUTS
    cls = LAYOUTS[args.layout]
    print(f"layout {args.layout}: paths relative to --root")
    for key, lay in cls.LAYOUTS.items():
        b = BENCHMARKS[key]
        base = f"{lay.base}/" if lay.base else ""
        lst = lay.split or (f"(shipped) {lay.split_resource}" if lay.split_resource else "folder scan")
        print(f"  {key:12s} {b.num_classes:4d} classes  images {base}{lay.images}/*{lay.img_suffix}  "
              f"labels {base}{lay.labels}/*{lay.ann_suffix}  list {lst}"
              f"{'  reduce_zero_label' if lay.reduce_zero_label else ''}  ignore {b.ignore_index}")
    return 0


def _check(args) -> int:
    from ..data.check import check_dataset
    from ..data.datasets import get_dataset
    ds = get_dataset(args.dataset, args.root, args.layout)
    findings, n = check_dataset(ds, limit=args.limit, decode_images=not args.quick, progress=not args.no_progress)
    d = ds.describe()
    print(f"{ds.key} ({ds.LAYOUT_NAME} layout) at {d['base']}: images {d['images']}, labels {d['labels']}"
          + (f", list {d['split']}" if d["split"] else ""))
    for f in findings[: args.max_lines]:
        print(f)
    if len(findings) > args.max_lines:
        rest = Counter(f"{f.level}/{f.kind}" for f in findings[args.max_lines:])
        print(f"... and {len(findings) - args.max_lines} more: " + ", ".join(f"{v} {k}" for k, v in sorted(rest.items())))
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    print(f"checked {n} image(s): {errors} error(s), {warnings} warning(s)" + ("" if errors else " - OK"))
    return 1 if errors else 0


def _prepare_coco(args) -> int:
    from ..data.prepare import prepare_coco
    rep = prepare_coco(args.src, args.out, args.target, workers=args.workers, overwrite=args.overwrite,
                       progress=not args.no_progress)
    print("\n".join(rep.lines()))
    return 0


def _prepare_cityscapes(args) -> int:
    from ..data.prepare import prepare_cityscapes
    rep = prepare_cityscapes(args.root, [s for s in args.splits.split(",") if s], workers=args.workers,
                             overwrite=args.overwrite, progress=not args.no_progress)
    print("\n".join(rep.lines()))
    return 0


def _prepare_context(args) -> int:
    from ..data.prepare import prepare_context
    stems = None
    if args.stems:
        p = Path(args.stems)
        if not p.is_file():
            raise InputError(f"--stems: file not found: {p}")
        stems = [s.strip() for s in p.read_text().splitlines() if s.strip()]
    rep = prepare_context(args.out, src=args.src, json_path=args.json, split=args.split, stems=stems, ids=args.ids,
                          strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress)
    print("\n".join(rep.lines()))
    return 0
