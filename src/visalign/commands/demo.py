"""``visalign demo``: the README's main job on the micro-world, end to end."""

from __future__ import annotations

import argparse

from visalign.commands._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="micro-world end to end: world, base model, nSFT, FiSAO, baselines, report",
        description="Build the micro-world, train its tiny CLIP + tiny LLaVA, align the base "
                    "with nSFT, FiSAO and baselines, evaluate every model the same way and "
                    "write DIR/results.json, results.md, figures/ and report.md. Resumable. "
                    "key=value overrides apply to the demo's compare config "
                    "(e.g. methods=[nsft,fisao] data_sizes=[200]).")
    p.add_argument("--out", default="demo_out", help="output dir (default: demo_out)")
    add_config_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from visalign.commands.compare import _print_summary
    from visalign.compare import CompareConfig, demo_config, run_compare
    from visalign.config import load_config

    cfg = demo_config(args.out, args.overrides)
    if args.config:
        cfg = load_config(CompareConfig, args.config, args.overrides, base=cfg)
    return _print_summary(run_compare(cfg), cfg.out)
