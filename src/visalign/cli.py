"""The ``visalign`` command: a thin dispatcher over the library.

Each command group lives in ``visalign.commands.<name>`` and exposes ``register(subparsers)``;
heavy imports (torch, transformers) happen inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from visalign import __version__

# Order = order in --help. A module missing here is a packaging bug, not a soft skip.
COMMAND_MODULES = [
    "world", "generate", "eval", "pope", "nsft", "pairs", "train", "fisao", "compare", "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visalign",
        description="Align vision-language models against hallucination: nSFT, FiSAO and the "
                    "baselines they compare with, measured on one harness.")
    parser.add_argument("--version", action="version", version=f"visalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"visalign.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers' per-file "Loading weights" bars drown visalign's own progress; they follow
    # huggingface_hub's switch, read at import time. A user's explicit setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        # Bad input (DataError, ConfigError, ...) gets one clear line, not a traceback.
        if getattr(args, "debug", False):
            raise
        print(f"visalign {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
