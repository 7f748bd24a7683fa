"""`ovss methods`: the methods, the weights each loads and whether they are on this machine, and what each
reported on the eight standard benchmarks (so a user knows what to expect before downloading anything)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("methods", help="list methods, the weights they load (cached or not) and their reported mIoU")
    p.add_argument("--clip", default=None, help="CLIP model whose weights to look for (default: each method's own)")
    p.add_argument("--markdown", action="store_true", help="print the README's method table (Markdown)")
    p.set_defaults(func=run)


def _weights(method: str, clip) -> tuple[list[str], str]:
    """(weight keys the method loads, 'cached' | 'missing: k1, k2')."""
    from .. import weights as W
    keys = W.keys_for_method(method, clip=clip)     # clip None: the method's own default
    missing = [k for k in keys if W.status(k).state != "cached"]
    return keys, ("cached" if not missing else "missing: " + ", ".join(missing))


def _table(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows)


def run(args) -> int:
    from ..methods import list_methods
    from ..methods.reported import BENCHMARKS, SOURCE, format_miou, reported
    methods = list_methods()
    if args.markdown:
        print(markdown_table(methods))
        return 0
    rows = []
    for m in methods:
        keys, state = _weights(m.name, args.clip)
        rows.append((m.name, ", ".join(keys), state, m.summary))
    print(_table(("method", "weights", "on this machine", "what it does"), rows))
    print()
    rows = []
    for m in methods:
        r = reported(m.name)
        rows.append((m.name,) + tuple(format_miou(r.miou[b]) if r else "-" for b in BENCHMARKS)
                    + ((r.note if r else "not in the survey's table"),))
    print("reported mIoU (%) — " + SOURCE)
    print(_table(("method",) + BENCHMARKS + ("note",), rows))
    print("\n`ovss weights download --method NAME` fetches a method's weights.")
    return 0


def markdown_table(methods) -> str:
    """The README's table: name, the models it loads by default, paper, official code, and the reported mIoU on
    the 8 benchmarks."""
    from .. import weights as W
    from ..methods.reported import BENCHMARKS, format_miou, reported
    head = ["`method=`", "models (defaults)", "paper", "official code"] + list(BENCHMARKS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        r = reported(m.name)
        # the official mask generator (SAM 2), not the one this machine has installed: the table is the same anywhere
        keys = W.keys_for_method(m.name, mask_generator="sam2")
        models = " + ".join(W.spec(k).description.split(" (")[0] for k in keys)
        cells = [f"`{m.name}`", models, m.paper, m.repo]
        cells += [format_miou(r.miou[b]) if r else "-" for b in BENCHMARKS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
