"""`ovss methods`: the methods, the models each needs, and whether their weights are on this machine."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("methods", help="list methods, the models they need and whether those are cached")
    p.add_argument("--clip", default="ViT-B/16", help="CLIP model whose weights to look for")
    p.set_defaults(func=run)


NEEDS_KEYS = {"clip": lambda a: f"clip:{a.clip}", "vfm": lambda a: "dino_vitb8 (proxyclip) / dino_vitb16 (trident)",
              "sam": lambda a: "sam:vit_b", "sd": lambda a: "sd21_base"}


def _status(key: str) -> str:
    from .. import weights as W
    keys = {"dino_vitb8 (proxyclip) / dino_vitb16 (trident)": ["dino_vitb8", "dino_vitb16"]}.get(key, [key])
    try:
        return "cached" if all(W.local_path(k) for k in keys) else "not cached"
    except Exception:
        return "?"


def run(args) -> int:
    from ..methods import list_methods
    rows = []
    for m in list_methods():
        models = [NEEDS_KEYS[n](args) for n in m.needs]
        rows.append((m.name, ", ".join(models), ", ".join(_status(k) for k in models), m.summary, m.repo))
    head = ("method", "models", "weights", "what it does", "official code")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
