"""`ovss bench`: images/s, latency percentiles and peak memory of a method (a benchmark, not a test)."""
from __future__ import annotations

import json
import time

from ._common import add_model_args, segmenter_kwargs


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory of a method")
    add_model_args(p)
    p.add_argument("--size", default="500x375", help="image size WxH (default 500x375, a typical VOC image)")
    p.add_argument("--image", default=None, help="benchmark on this image instead of a synthetic one")
    p.add_argument("--classes", default=None, help="class names (default: the preset's, else the 21 VOC classes)")
    p.add_argument("--n", type=int, default=5, help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--floor", action="store_true",
                   help="also time the unmodified backbone passes the method makes (interleaved with its runs) and "
                        "print method time / floor")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def rss_peak_mb() -> float:
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def synthetic_image(w: int, h: int, seed: int = 0):
    """A smooth synthetic (h, w, 3) uint8 image: 8x8 blocks of random colour (noise is an unusual input for
    attention but costs the same)."""
    import numpy as np
    base = np.random.default_rng(seed).integers(0, 255, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]


def run(args) -> int:
    import numpy as np
    import torch

    import ovss

    from .. import floor as F
    from ..errors import InputError
    from ..text.templates import resource_path

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {args.size!r}: expected WxH, e.g. 500x375") from None
    classes = args.classes
    if classes is None and not args.preset:
        classes = resource_path("classnames", "voc21.txt")
    kw = segmenter_kwargs(args, classes)
    if classes is not None and classes.endswith(".txt") and args.preset is None:
        kw["class_format"] = "proxyclip"
    t0 = time.perf_counter()
    seg = ovss.Segmenter(**kw)
    t_load = time.perf_counter() - t0
    # decoded once: the runs time the method, not the decoder
    image = ovss.images.load_image(args.image if args.image else synthetic_image(w, h))
    cuda = seg.device.type == "cuda"
    run_once = lambda: seg.predict_logits(image)  # noqa: E731
    for _ in range(args.warmup):
        run_once()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # with --floor: one recorded run (untimed), then the unmodified passes replayed after each timed run
    times, floors, passes = F.interleaved(run_once, args.n, cuda, seg.method if args.floor else None)
    t = np.array(times)
    res = {
        "method": args.method, "preset": args.preset, "clip": seg.clip_name,
        "device": str(seg.device),
        "dtype": str(seg.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "image": args.image or f"synthetic {w}x{h}", "classes": len(seg.classes), "queries": len(seg.class_list.queries),
        "load_s": round(t_load, 2), "images_per_s": round(float(len(t) / t.sum()), 3),
        "latency_s": {"mean": round(float(t.mean()), 3), "p50": round(float(np.percentile(t, 50)), 3),
                      "p90": round(float(np.percentile(t, 90)), 3), "max": round(float(t.max()), 3)},
        "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else rss_peak_mb(), 1),
        "peak_mem_kind": "cuda max allocated" if cuda else "process peak RSS",
    }
    if passes is not None:
        fl = float(np.median(floors))
        res.update(floor_s=round(fl, 5), floor_ratio=round(float(np.median(t)) / fl, 3) if fl > 0 else None,
                   floor_passes=F.describe(passes))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        l = res["latency_s"]
        print(f"{res['method']} [{res['preset'] or 'default'}] {res['clip']} on {res['device']} ({res['dtype']}, "
              f"{res['threads']} threads), {res['image']}, {res['classes']} classes / {res['queries']} queries")
        print(f"  {res['images_per_s']} images/s   latency mean {l['mean']}s  p50 {l['p50']}s  p90 {l['p90']}s  "
              f"max {l['max']}s   peak memory {res['peak_mem_mb']} MB ({res['peak_mem_kind']})   load {res['load_s']}s")
        if passes is not None:
            print(f"  floor {res['floor_s']}s (median of {len(floors)}, unmodified passes: {res['floor_passes']})   "
                  f"method / floor = {res['floor_ratio']}x")
    return 0
