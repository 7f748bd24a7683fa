"""Regenerate docs/performance.md: every method's speed against its floor, bf16 against fp32, peak memory, and the
evaluation loop's throughput, measured on this machine with full-size random-weight models (the cost of a network
does not depend on its weights; content-dependent steps, e.g. clustering, see the random model's features).

    python scripts/performance.py                    # everything (about an hour on 2 CPU cores)
    python scripts/performance.py --methods sclip,gem --runs 3
    python scripts/performance.py --render           # rewrite the Markdown from docs/performance.json

Each method runs in its own process (its peak RSS is its own): the voc21 preset on a 500x375 synthetic image
(`ovss bench`'s), timed interleaved with its floor (`ovss.floor`); a 2048x1024 Cityscapes-sized frame at the
method's cityscapes preset (voc21 where its repository has none); the two parity images at voc21; then the same
at bf16, compared with fp32 (argmax agreement, largest probability difference).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARITY = Path(os.environ.get("OVSS_PARITY_KIT", ROOT.parent / "shared" / "parity"))
RESULTS = ROOT / "docs" / "performance.json"
DOC = ROOT / "docs" / "performance.md"
SLOW = {"itaclip": 1, "cliper": 1, "cliper_elf": 1}      # methods timed with fewer runs (minutes per image)
# ITACLIP's cityscapes protocol (stride 28 over 2048x1024: 462 windows x 5 views, ~15 min here) is measured for
# memory with stride 112: the same window batches and canvas, so the same peak, a quarter of the windows
BIG_FRAME_OVERRIDES = {"itaclip": {"slide_stride": 112}}


def _models() -> dict:
    return dict(clip_weights="random", vfm_weights="random", sam_weights="random", sd_weights="random")


def _parity_images() -> dict:
    """name -> RGB array of the parity kit's images (absent kit: none)."""
    if not (PARITY / "images.py").is_file():
        return {}
    sys.path.insert(0, str(PARITY))
    import images as parity_images   # the kit's own builders (bicubic-resized crops of horses.jpg)
    return {name: np.asarray(build().convert("RGB")) for name, build in parity_images.BUILDERS.items()}


def _region_masks(folder: Path, images: dict) -> None:
    """CorrCLIP's region masks for `images` (SLIC superpixels: the SAM 2 generator's cost is its own pass)."""
    from skimage.segmentation import slic
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in images.items():
        regions = slic(rgb, n_segments=60, start_label=1).astype(np.int32)
        np.savez(folder / f"{name}.npz", instance_mask=regions)


def _self_times(fn) -> dict:
    """operator -> self CPU seconds of one call of fn (torch.profiler)."""
    import torch
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def excess_ops(method_run, floor_run, top: int = 3) -> list:
    """The operators the method spends most on beyond its floor: [(op, seconds more than in the floor)]."""
    m, f = _self_times(method_run), _self_times(floor_run)
    extra = sorted(((op, t - f.get(op, 0.0)) for op, t in m.items()), key=lambda x: -x[1])
    return [(op.replace("aten::", ""), round(t, 3)) for op, t in extra[:top] if t > 0.005]


def measure_one(method: str, runs: int, out: Path) -> None:
    import torch

    import ovss
    from ovss import floor as F
    from ovss.commands.bench import rss_peak_mb, synthetic_image
    from ovss.images import LoadedImage
    from ovss.methods import get_method

    torch.set_num_threads(os.cpu_count() or 1)
    cls = get_method(method)
    images = {"synthetic_500x375": synthetic_image(500, 375), **_parity_images()}
    big = synthetic_image(2048, 1024)
    extra: dict = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ovss-perf-masks-{os.getpid()}"
    if method == "corrclip":
        _region_masks(tmp, {**images, "frame_2048x1024": big})
        extra["region_masks_dir"] = str(tmp)
    loaded = {n: LoadedImage(rgb=np.ascontiguousarray(a), name=n, path=f"{n}.png") for n, a in images.items()}
    res: dict = {"method": method, "threads": torch.get_num_threads(), "runs": runs}

    def segmenter(preset, dtype, **kw):
        return ovss.Segmenter(method=method, preset=preset, dtype=dtype, device="cpu", **_models(),
                              **extra, **kw)

    t0 = time.perf_counter()
    seg = segmenter("voc21", "fp32")
    res["load_s"] = round(time.perf_counter() - t0, 1)
    syn = loaded["synthetic_500x375"]
    # the recorded run is also the warm-up
    times, floors, passes = F.interleaved(lambda: seg.predict_logits(syn), runs, False, seg.method)
    res["fp32"] = {"synthetic_500x375": float(np.median(times))}
    res["floor_s"] = float(np.median(floors))
    res["floor_ratio"] = res["fp32"]["synthetic_500x375"] / res["floor_s"]
    res["floor_passes"] = F.describe(passes)
    res["peak_mb_500x375"] = rss_peak_mb()
    res["excess_ops"] = excess_ops(lambda: seg.predict_logits(syn), lambda: F.replay(passes))

    bench = "cityscapes" if "cityscapes" in cls.PRESETS else "voc21"
    seg_big = segmenter(bench, "fp32", **BIG_FRAME_OVERRIDES.get(method, {}))
    t0 = time.perf_counter()
    seg_big.predict_logits(LoadedImage(rgb=big, name="frame", path="frame_2048x1024.png"))
    res["frame_2048x1024"] = {"preset": bench, "seconds": time.perf_counter() - t0, "peak_mb": rss_peak_mb(),
                              "overrides": BIG_FRAME_OVERRIDES.get(method, {})}
    del seg_big

    ref = {}
    for name, im in loaded.items():
        t0 = time.perf_counter()
        ref[name] = seg.predict_logits(im)
        if name != "synthetic_500x375":
            res["fp32"][name] = time.perf_counter() - t0
    del seg
    seg16 = segmenter("voc21", "bf16")
    seg16.predict_logits(syn)                                # warm-up
    res["bf16"] = {"synthetic_500x375": float(np.median([F.timed(lambda: seg16.predict_logits(syn), False)
                                                         for _ in range(runs)]))}
    agree = {}
    for name, im in loaded.items():
        t0 = time.perf_counter()
        lo = seg16.predict_logits(im)
        if name != "synthetic_500x375":
            res["bf16"][name] = time.perf_counter() - t0
        p32, p16 = torch.softmax(ref[name].float(), 0), torch.softmax(lo.float(), 0)
        agree[name] = {"argmax_pct": float((p32.argmax(0) == p16.argmax(0)).float().mean() * 100),
                       "max_prob_diff": float((p32 - p16).abs().max())}
    res["bf16_agreement"] = agree
    out.write_text(json.dumps(res, indent=1))


def eval_throughput(n_images: int = 20) -> dict:
    """images/s of `ovss eval` (sclip, voc21 preset, random ViT-B/16) on a synthetic 500x375 VOC set, with and
    without read-ahead and with window batches of 1 and 4 images (same confusion matrix each time)."""
    import tempfile

    from PIL import Image

    from ovss.commands.bench import synthetic_image
    from ovss.eval.runner import EvalConfig, evaluate
    sys.path.insert(0, str(ROOT / "tests"))
    import fakedata
    out: dict = {"method": "sclip", "images": n_images, "size": "500x375", "runs": []}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "voc"
        fakedata.make_dataset(root, "voc21", n=n_images, sizes=[(375, 500)] * n_images, seed=0)
        # photo-like content: smooth blocks, as the bench image (seeded by position: the same set every run)
        for i, jpg in enumerate(sorted((root / "JPEGImages").glob("*.jpg"))):
            Image.fromarray(synthetic_image(500, 375, seed=i)).save(jpg, quality=90)
        ref = None
        for prefetch, batch in ((0, 1), (2, 1), (0, 4), (2, 4)):
            cfg = EvalConfig(method="sclip", dataset="voc21", data_root=str(root), clip_weights="random",
                             device="cpu", prefetch=prefetch, batch_size=batch)
            t0 = time.perf_counter()
            r = evaluate(cfg, Path(d) / f"out-{prefetch}-{batch}", progress=False)
            dt = time.perf_counter() - t0
            same = ref is None or np.array_equal(ref, r.confusion)
            ref = r.confusion if ref is None else ref
            out["runs"].append({"prefetch": prefetch, "batch_size": batch, "images_per_s": n_images / dt,
                                "identical_confusion": bool(same)})
    return out


def render(data: dict) -> str:
    ms = data["methods"]
    lines = [
        "# Performance",
        "",
        "Regenerate with `python scripts/performance.py` (raw figures: `docs/performance.json`). "
        f"Measured {data['date']} on {data['machine']}, {ms[0]['threads'] if ms else '?'} threads, fp32 unless "
        "stated, full-size architectures with random weights (the cost of a network does not depend on its "
        "weights). Times are medians of the runs given.",
        "",
        "## Speed against the floor (voc21 preset, 500x375)",
        "",
        "The *floor* is the bare cost of the unmodified network passes the method makes, timed in the same process "
        "and interleaved with its runs (`ovss bench --floor`, `ovss/floor.py`): the whole CLIP image tower with "
        "PyTorch's fused attention over the same window batches, timm's DINO forward, SAM's encoder, the SD UNet up "
        "to the layer the method stops at. *ratio* = method / floor: what the method's own work adds.",
        "",
        "The last column lists the operators the method spends most on beyond its floor (profiler self time of "
        "one method run minus that of one floor replay), then what they are.",
        "",
        "| method | fp32 s | floor s | ratio | passes | largest costs above the floor |",
        "|---|---|---|---|---|---|",
    ]
    for m in ms:
        ops = ", ".join(f"{op} +{t:.2f}s" for op, t in m.get("excess_ops", []))
        note = NOTES.get(m["method"], "")
        lines.append(f"| {m['method']} | {m['fp32']['synthetic_500x375']:.2f} | {m['floor_s']:.2f} | "
                     f"{m['floor_ratio']:.2f}x | {m['floor_passes']} | {ops}{': ' + note if note else ''} |")
    lines += ["", "## bf16 against fp32 (voc21 preset)", "",
              "`dtype=\"bf16\"` (`--dtype bf16`) on this CPU (AMX / AVX-512 BF16). Speed-up = fp32 time / bf16 time; "
              "agreement = share of pixels with the same argmax, and the largest difference of a class probability, "
              "over the synthetic image and the two parity images. The CPU default stays fp32.", "",
              "| method | fp32 s | bf16 s | speed-up | parity images fp32 / bf16 s | argmax agreement | max prob diff |",
              "|---|---|---|---|---|---|---|"]
    for m in ms:
        a = m["bf16_agreement"]
        par = [k for k in m["fp32"] if k != "synthetic_500x375"]
        pt = ", ".join(f"{m['fp32'][k]:.2f} / {m['bf16'][k]:.2f}" for k in par)
        lines.append(f"| {m['method']} | {m['fp32']['synthetic_500x375']:.2f} | {m['bf16']['synthetic_500x375']:.2f} | "
                     f"{m['fp32']['synthetic_500x375'] / m['bf16']['synthetic_500x375']:.2f}x | {pt} | "
                     f"{min(v['argmax_pct'] for v in a.values()):.2f} % | "
                     f"{max(v['max_prob_diff'] for v in a.values()):.3f} |")
    lines += ["", "## Peak memory (fp32, process peak RSS, models included)", "",
              "| method | 500x375 (voc21) | 2048x1024 frame | preset of the frame | frame s |", "|---|---|---|---|---|"]
    for m in ms:
        f = m["frame_2048x1024"]
        note = f" ({', '.join(f'{k}={v}' for k, v in f['overrides'].items())}, see below)" if f["overrides"] else ""
        lines.append(f"| {m['method']} | {m['peak_mb_500x375'] / 1024:.2f} GB | {f['peak_mb'] / 1024:.2f} GB | "
                     f"{f['preset']}{note} | {f['seconds']:.1f} |")
    if any(m["frame_2048x1024"]["overrides"] for m in ms):
        lines += ["", "ITACLIP's cityscapes stride of 28 means 462 windows x 5 views on a 2048x1024 frame (about 15 "
                  "minutes here); its memory is measured with stride 112, which sends the same window batches into "
                  "the same canvas, so the peak is the same."]
    ev = data.get("eval")
    if ev:
        lines += ["", f"## Evaluation throughput ({ev['method']}, {ev['images']} synthetic {ev['size']} VOC images)", "",
                  "`ovss eval --prefetch N` decodes the next images in background threads; `--batch-size N` sends the "
                  "windows of N images through the backbone together (it pays on GPUs; on a CPU the window batch "
                  "already fills the cores). Every run gives the same confusion matrix (also tested: "
                  "`tests/test_eval_batch.py`, `tests/test_eval_prefetch.py`).", "",
                  "| --prefetch | --batch-size | images/s | same confusion matrix |", "|---|---|---|---|"]
        for r in ev["runs"]:
            lines.append(f"| {r['prefetch']} | {r['batch_size']} | {r['images_per_s']:.3f} | "
                         f"{'yes' if r['identical_confusion'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# what the operators above the floor are, by method (read off the profiles and the method's code)
_SPLICE = "the official splicing: every window's query logits bilinearly up-sampled to the crop and averaged"
NOTES: dict = {
    "clip": _SPLICE,
    "maskclip": _SPLICE + " (the floor also runs a last block MaskCLIP does not)",
    "sclip": _SPLICE + "; two attentions in the last block",
    "clearclip": "below the floor: its last block has no residual or MLP",
    "naclip": "PAMR: 10 iterations over 16 neighbours of the 56 query maps at full size, channel-blocked to stay in "
              "cache (2.4x faster than before, 3.25x -> 2.10x)",
    "cliptrase": "DBSCAN (scikit-learn) and the patch clustering",
    "proxyclip": "at the floor: the proxy attention replaces CLIP's last block",
    "trident": "the SAM-guided merging of the sub-image features (where / add / bmm over the 6 sub-images)",
    "cliper_elf": "early-layer fusion: the attention of every layer applied to the final values (addmm / bmm)",
    "cliper": "the recorded UNet attention maps (explicit softmax, as the official processor) and their chaining",
    "scclip": _SPLICE + "; LOF outliers (cdist)",
    "resclip": "PAMR (as naclip) and RCS / SFR attention maps",
    "itaclip": "the intermediate-layer attention of 5 views per window (SDPA), the splicing of 225 windows at stride "
               "28, PAMR (measured before PAMR's 2.4x speed-up: ~1.1 s of 54 s)",
    "gem": "the self-self attention stream through the last blocks (q-q, k-k, v-v: 3 more attentions per block)",
    "clip_surgery": "the v-v attention path of the surgery blocks",
    "cass": "DINO's explicit attention (bmm / softmax: its bits decide the tied head matching, so no SDPA), "
            "eigvalsh of 24 graphs, the randomized SVD",
    "corrclip": "at the floor (region masks from a folder: the SAM 2 generator is its own pass when generated)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per method (slow methods: 1)")
    ap.add_argument("--render", action="store_true", help="only rewrite docs/performance.md from the JSON")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation-throughput table")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure_one(args.one, args.runs, Path(args.out))
        return 0
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"methods": []}
    if not args.render:
        from ovss.methods import MODULES
        names = args.methods.split(",") if args.methods else list(MODULES)
        done = {m["method"]: m for m in data["methods"]}
        for name in names:
            out = Path(os.environ.get("TMPDIR", "/tmp")) / f"ovss-perf-{name}.json"
            runs = SLOW.get(name, args.runs)
            print(f"== {name} ({runs} runs)", flush=True)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, "--one", name, "--runs", str(runs), "--out", str(out)])
            if r.returncode != 0:
                print(f"   {name} failed (exit {r.returncode})", flush=True)
                continue
            done[name] = json.loads(out.read_text())
            print(f"   {time.perf_counter() - t0:.0f} s: ratio {done[name]['floor_ratio']:.2f}x", flush=True)
            data["methods"] = [done[n] for n in MODULES if n in done]
            RESULTS.write_text(json.dumps(data, indent=1))
        if not args.no_eval:
            data["eval"] = eval_throughput()
        import platform
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                   platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
        data.update(date=time.strftime("%Y-%m-%d"), machine=f"{cpu}, {os.cpu_count()} cores")
        RESULTS.write_text(json.dumps(data, indent=1))
    DOC.write_text(render(data))
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
