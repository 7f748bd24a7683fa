"""``ovss eval``: score methods on benchmarks with their official protocols; resumable and distributed.

Single run:      ovss eval --method sclip --dataset voc21 --data-root data/ [--limit N] [--out DIR]
Table:           ovss eval --methods clip,sclip --datasets voc21,context60 --data-root data/
Resume:          the same command + --resume (after Ctrl-C, a crash or a kill)
Distributed:     torchrun --nproc_per_node=K -m ovss eval ...  (NCCL on GPUs, gloo on CPU; images sharded by
                 rank, confusion matrices summed; multi-node: torchrun --nnodes=N --node_rank=R
                 --rdzv_endpoint=HOST:PORT ..., with --out on a shared file system for --resume)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from ..errors import InputError


def _parse_value(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _split(s):
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate methods on benchmarks (mIoU tables), resumable, distributed",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--method", help="method name (see `ovss methods`)")
    p.add_argument("--methods", help="comma-separated methods (methods x datasets table)")
    p.add_argument("--dataset", help="benchmark key: voc21 voc20 context60 context59 coco_object coco_stuff "
                                     "cityscapes ade20k context459 ade847")
    p.add_argument("--datasets", help="comma-separated benchmark keys")
    p.add_argument("--data-root", action="append", required=True, metavar="[KEY=]DIR",
                   help="dataset root; repeat KEY=DIR to give one per benchmark (a plain DIR is the default)")
    p.add_argument("--preset", help="protocol preset (default: the benchmark key)")
    p.add_argument("--layout", default="mmseg", choices=["mmseg", "cliptrase", "cliper"], help="on-disk layout")
    p.add_argument("--metric", default="mmseg", choices=["mmseg", "cliptrase", "cliper"],
                   help="metric definition reported first (all three are stored in result.json)")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="ignored GT value (default 255; 65535 for context459/ade847 - 255 reproduces ProxyCLIP/Trident)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--out", default=None, help="output folder (default ovss-eval/<method>/<dataset>, or ovss-eval for "
                                               "a table)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out")
    p.add_argument("--skip-bad", action="store_true", help="skip missing/corrupt/malformed samples, list them at the end")
    p.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="background threads reading the next images while the model runs (default 2; 0 = off)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="images per model call: the sliding windows of N images share the backbone's batches "
                        "(for GPUs; default 1)")
    p.add_argument("--device", default=None)
    for name in ("clip", "clip-weights", "vfm", "vfm-weights", "sam", "sam-weights", "sd-weights"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a protocol/method parameter (repeatable), e.g. --set prob_thd=0.1")
    p.add_argument("--save-interval", type=float, default=10.0, help="seconds between state saves (default 10)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-backend", default=None, help="torch.distributed backend (default nccl on GPUs, else gloo)")
    p.add_argument("--factory", default=None, help=__import__("argparse").SUPPRESS)  # MODULE:FUNC (tests/custom)
    p.set_defaults(func=run)


def _roots(values: list[str]) -> tuple[str | None, dict]:
    default, per = None, {}
    for v in values:
        k, sep, path = v.partition("=")
        if sep and k and "/" not in k and "\\" not in k:
            per[k.lower().replace("-", "_")] = path
        else:
            default = v
    return default, per


def run(args) -> int:
    from ..eval import distributed as D
    from ..eval.report import write_table
    from ..eval.runner import EvalConfig, evaluate, load_factory

    methods = _split(args.methods) or ([args.method] if args.method else [])
    datasets = [d.lower().replace("-", "_") for d in (_split(args.datasets) or ([args.dataset] if args.dataset else []))]
    if not methods or not datasets:
        raise InputError("give --method/--methods and --dataset/--datasets")
    default_root, roots = _roots(args.data_root)
    for d in datasets:
        if d not in roots and default_root is None:
            raise InputError(f"no --data-root for {d} (give DIR or {d}=DIR)")
    overrides = {}
    for item in args.set:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InputError(f"--set {item!r}: expected NAME=VALUE")
        overrides[k.strip()] = _parse_value(v.strip())
    table = len(methods) * len(datasets) > 1
    out_root = Path(args.out or "ovss-eval")
    factory = load_factory(args.factory) if args.factory else None

    info, device = D.init(args.device, args.dist_backend)
    results = []
    try:
        for m in methods:
            for d in datasets:
                cfg = EvalConfig(method=m, dataset=d, data_root=roots.get(d, default_root), preset=args.preset,
                                 layout=args.layout, metric=args.metric, ignore_index=args.ignore_index,
                                 limit=args.limit, clip=args.clip, clip_weights=args.clip_weights, vfm=args.vfm,
                                 vfm_weights=args.vfm_weights, sam=args.sam, sam_weights=args.sam_weights,
                                 sd_weights=args.sd_weights, device=args.device, overrides=dict(overrides),
                                 skip_bad=args.skip_bad, prefetch=max(0, args.prefetch),
                                 batch_size=args.batch_size)
                out = out_root / m / d if (table or not args.out) else out_root
                r = evaluate(cfg, out, resume=args.resume, overwrite=args.overwrite, factory=factory,
                             progress=not args.no_progress, save_interval=args.save_interval, dist_info=info,
                             device=device)
                if r is None:
                    continue
                results.append(r)
                s = r.summary
                print(f"{m} on {d}: mIoU {s['mIoU']:.2f}  mAcc {s['mAcc']:.2f}  aAcc {s['aAcc']:.2f}  "
                      f"fwIoU {s['fwIoU']:.2f}  ({r.evaluated}/{r.num_images} images, metric {r.metric}"
                      f"{', ' + str(info.world_size) + ' ranks' if info.active else ''}) -> {out}/result.md", flush=True)
                if r.bad:
                    print(f"  {len(r.bad)} bad sample(s) skipped:", file=sys.stderr)
                    for b in r.bad:
                        print(f"    {b['error']}", file=sys.stderr)
        if results and table:
            paths = write_table(results, out_root)
            print(Path(paths["md"]).read_text().split("\nmAcc")[0])
            print(f"table -> {paths['md']}")
        # every rank done before any tears down its process group: a rank that still writes results while its
        # peer closes the connection can abort in gloo's teardown ("terminate called without an active exception")
        D.barrier(info)
    finally:
        D.finish(info)
    return 0
