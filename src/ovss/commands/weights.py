"""`ovss weights`: what weights ovss knows, which are on this machine, and one command to fetch them.

  ovss weights list                       every model: status, size, expected file, source
  ovss weights download MODEL [MODEL..]   fetch into the standard cache (resumable; progress bars)
  ovss weights download --method trident  the models a method loads by default
  ovss weights download --all
  ovss weights path MODEL                 print the cached file (exit 1 with the fix when missing)
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("weights", help="list, download and locate model weights",
                       description="Model weights: list what ovss knows and what is cached, download into the "
                                   "standard cache (URL downloads: $OVSS_CACHE or ~/.cache/ovss/weights; hub "
                                   "downloads: the Hugging Face cache, $HF_HOME), print local paths.")
    ws = p.add_subparsers(dest="weights_command", metavar="ACTION")

    ls = ws.add_parser("list", help="every model ovss knows, its source, file, local status and size")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--method", "-m", action="append", default=[],
                    help="only the models this method loads with its default settings (repeatable)")
    ls.set_defaults(func=run_list)

    dl = ws.add_parser("download", help="download weights into the cache (resumable)",
                       description="Download weights into the standard cache. Interrupted URL downloads resume "
                                   "from their .part file; hub downloads resume through the Hugging Face cache.")
    dl.add_argument("models", nargs="*", metavar="MODEL", help="model keys as `ovss weights list` shows them")
    dl.add_argument("--method", "-m", action="append", default=[],
                    help="every model this method loads with its default settings (repeatable)")
    dl.add_argument("--clip", default=None, help="the CLIP model meant by --method (default: the method's own, "
                                                 "MetaCLIP-B/16 for corrclip, else ViT-B/16)")
    dl.add_argument("--sam", default="vit_b", help="the SAM model meant by --method trident (default vit_b)")
    from ..weights import SPECS
    total_gb = sum(s.size_mb for s in SPECS.values()) / 1000
    dl.add_argument("--all", action="store_true", help=f"every model ovss knows (about {total_gb:.0f} GB)")
    dl.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    dl.set_defaults(func=run_download)

    pa = ws.add_parser("path", help="print the local path of a cached model")
    pa.add_argument("model", metavar="MODEL")
    pa.set_defaults(func=run_path)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def _rows():
    from .. import weights as W
    rows = []
    for st in W.list_status():
        s = st.spec
        if st.state == "cached":
            size = _mb(st.size)
        elif st.state == "partial":
            size = f"{_mb(st.partial)} of ~{s.size_mb:,} MB"
        else:
            size = f"~{s.size_mb:,} MB"
        rows.append({"model": s.key, "status": st.state, "size": size, "size_bytes": st.size,
                     "expected_mb": s.size_mb, "file": s.filename, "source": W.source(s), "path": st.path,
                     "description": s.description, "argument": s.arg})
    return rows


def _method_keys(methods: list[str], clip=None, sam: str = "vit_b") -> list[str]:
    """The registry keys the methods load with their default settings (unknown method: an InputError)."""
    from .. import weights as W
    keys: list[str] = []
    for m in methods:
        keys += W.keys_for_method(m, clip=clip, sam=sam)
    return list(dict.fromkeys(keys))


def run_list(args) -> int:
    rows = _rows()
    if args.method:
        wanted = _method_keys(args.method)
        rows = sorted((r for r in rows if r["model"] in wanted), key=lambda r: wanted.index(r["model"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = [("MODEL", "model"), ("STATUS", "status"), ("SIZE", "size"), ("FILE", "file"), ("SOURCE", "source")]
    width = {h: max(len(h), *(len(str(r[k])) for r in rows)) for h, k in cols}
    print("  ".join(h.ljust(width[h]) for h, _ in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[k]).ljust(width[h]) for h, k in cols).rstrip())
    n = sum(r["status"] == "cached" for r in rows)
    print(f"\n{n} of {len(rows)} cached. `ovss weights download MODEL` fetches one, `ovss weights path MODEL` "
          f"prints where it is.")
    return 0


def run_download(args) -> int:
    from .. import weights as W
    from ..errors import InputError, OvssError

    keys = list(args.models) + _method_keys(args.method, clip=args.clip, sam=args.sam)
    if args.all:
        keys += list(W.SPECS)
    if not keys:
        raise InputError("name what to download: MODEL (see `ovss weights list`), --method M or --all")
    keys = list(dict.fromkeys(W.spec(k).key for k in keys))   # unknown keys fail here, before any download
    failed = []
    for k in keys:
        try:
            before = W.local_path(k)
            path = W.download(k, progress=not args.quiet)
        except OvssError as e:
            print(f"ovss weights: {e}", file=sys.stderr)
            failed.append(k)
            continue
        note = "already cached" if before else "downloaded"
        print(f"{k}: {note}, {_mb(W.disk_size(path))}: {path}")
    if failed:
        print(f"ovss weights: {len(failed)} of {len(keys)} downloads failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_path(args) -> int:
    from .. import weights as W
    s = W.spec(args.model)
    path = W.local_path(s.key)
    if not path:
        print(f"ovss weights: {s.description} [{s.key}] is not on this machine; expected at "
              f"{W.download_target(s)}\n  fix: run `ovss weights download {s.key}`", file=sys.stderr)
        return 1
    print(path)
    return 0
