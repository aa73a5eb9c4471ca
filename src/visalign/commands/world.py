"""``visalign world``: the micro-world. Subcommands: ``build`` (data; more may be added).

Each subcommand registers itself on the group's sub-parser with a ``_register_<name>`` function,
so new ones (``world base``) slot in next to ``build``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from visalign.commands._common import add_config_args

if TYPE_CHECKING:  # torch-free at CLI start-up
    from visalign.methods.base_model import BaseModelConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "world", help="the micro-world: synthetic scenes, annotations and instruction data",
        description="The micro-world: the embedded default that lets every method run and be "
                    "measured on a CPU with no download.")
    sub = p.add_subparsers(dest="world_command", metavar="SUBCOMMAND")
    _register_build(sub)
    _register_base(sub)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)


def _register_build(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "build", help="generate images, COCO annotations, captions and LLaVA instruction data",
        description="Generate a micro-world into DIR: images/{split}/*.png, "
                    "annotations/instances_{split}.json and captions_{split}.json, "
                    "llava/{split}.json, prompts/{split}_detail.jsonl, synonyms.txt, "
                    "world.json. Config keys: see --help-config.")
    b.add_argument("--out", help="output directory (required; must be new or empty)")
    b.add_argument("--preset", default="small", choices=["small", "tiny"],
                   help="sizes: small = 3000 train + 500 val images, tiny = 120 + 40")
    b.add_argument("--seed", type=int, default=None, help="master seed (overrides config)")
    b.add_argument("--force", action="store_true", help="replace an existing DIR")
    b.add_argument("--progress", action="store_true", help="show a progress bar")
    b.add_argument("--help-config", action="store_true", help="list config keys and exit")
    add_config_args(b)
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from visalign.config import describe_config
    from visalign.world.build import WorldConfig, build_world, world_config

    if args.help_config:
        print(describe_config(WorldConfig))
        return 0
    if not args.out:
        print("visalign world build: error: --out DIR is required", file=sys.stderr)
        return 2
    cfg = world_config(args.preset, args.config, args.overrides, seed=args.seed)
    t0 = time.perf_counter()
    summary = build_world(cfg, args.out, overwrite=args.force, preset=args.preset,
                          progress=args.progress)
    dt = time.perf_counter() - t0
    brief = {"out": str(args.out), "preset": args.preset, "seed": cfg.seed,
             "seconds": round(dt, 2),
             "splits": {s: {k: v[k] for k in ("n_images", "n_objects", "records",
                                               "detail_with_injected")}
                        for s, v in summary["splits"].items()}}
    print(json.dumps(brief, indent=2))
    return 0


def _register_base(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "base", help="train the micro-world's base VLM (tiny CLIP + tiny LLaVA) and evaluate it",
        description="Tokenizer → CLIP (vision tower + FiSAO verifier) → LM pre-training → "
                    "LLaVA stage 1 (projector) → stage 2 (instruction tuning) → held-out "
                    "evaluation. Writes MODELDIR (HF format), MODELDIR/verifier (CLIP) and "
                    "MODELDIR/eval.json; stages are resumable from MODELDIR.stages/.")
    b.add_argument("--world", required=True, help="world dir from `visalign world build`")
    b.add_argument("--out", required=True, help="model dir to write")
    b.add_argument("--preset", default="small", choices=["small", "tiny"],
                   help="model/epoch sizes: small (default, minutes) or tiny (tests, seconds)")
    b.add_argument("--seed", type=int, default=None,
                   help="seed of every stage (overrides config and seed=...; default 0)")
    add_config_args(b)
    b.set_defaults(func=_base)


def base_config_from_args(args: argparse.Namespace) -> BaseModelConfig:
    """The resolved ``BaseModelConfig`` of a ``visalign world base`` command line."""
    from visalign.config import load_config
    from visalign.methods.base_model import BaseModelConfig, base_config

    cfg = base_config(args.preset, args.overrides)
    if args.config:
        cfg = load_config(BaseModelConfig, args.config, args.overrides, base=cfg)
    # --seed only when given: a default here used to override `seed=N` silently
    given = {"world": args.world, "out": args.out}
    if args.seed is not None:
        given["seed"] = args.seed
    return load_config(BaseModelConfig, None, given, base=cfg)


def _base(args: argparse.Namespace) -> int:
    from visalign.methods.base_model import build_base_model

    cfg = base_config_from_args(args)
    result = build_base_model(cfg)
    if "stopped_after" in result:
        print(f"stopped after {result['stopped_after']}: stages in {args.out}.stages/ "
              f"(run again without stop_after to go on)")
        return 0
    m = result["metrics"]
    keys = ("chair_s", "chair_i", "chair", "recall", "pope_random_accuracy",
            "pope_popular_accuracy", "pope_adversarial_accuracy", "qa_accuracy", "clip_auroc")
    print(json.dumps({k: round(m[k], 4) for k in keys if k in m}, indent=2))
    print(f"model: {args.out}  eval: {args.out}/eval.json")
    return 0
