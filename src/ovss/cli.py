"""`ovss` command line. Each sub-command lives in `ovss/commands/<name>.py` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args, returns
an exit code). Errors meant for users (:class:`ovss.errors.OvssError`) are printed without a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["segment", "compare", "methods", "bench", "eval", "data", "masks", "weights", "app"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="ovss", description="Training-free open-vocabulary semantic segmentation.")
    p.add_argument("--version", action="version", version=f"ovss {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"ovss.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ovss.commands.{name}":
                continue  # command not part of this build
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import OvssError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OvssError as e:
        print(f"ovss {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ovss {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
