"""``visalign nsft build``: nSFT corrective conversations from a model's own mistakes.

Writes ``OUT/nsft.json`` (LLaVA conversations, train them with ``visalign train sft``),
``OUT/report.json`` + ``OUT/report.md`` (errors per vision-error-codebook category and which
categories the judge checks, yes/no balance, skipped records) and ``OUT/config.yaml``.
``yes_ratio_target`` is a minimum "Yes" share, reached by erasing "No" pairs; a share already
above it is left alone. With ``--model`` the original (greedy) answers are generated first into
``OUT/answers.jsonl`` (resumable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visalign.commands._common import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``nsft`` command group."""
    p = subparsers.add_parser("nsft", help="build nSFT data (negative supervision "
                                           "conversations)", description=__doc__)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="nsft_command", metavar="COMMAND")
    b = sub.add_parser(
        "build", help="judge a model's answers and write corrective conversations",
        description=__doc__ + "\nConfig keys (key=value): see NsftDataConfig in "
                              "visalign.methods.nsft (e.g. yes_ratio_target=0.5, "
                              "a minimum Yes share; keep_gt_long=true llm.model=gpt-4o).")
    b.add_argument("--data", required=True, help="alignment data: LLaVA records (JSON/JSONL)")
    b.add_argument("--image-root", default=None,
                   help="dir relative image paths start from (default: the data file's dir)")
    b.add_argument("--instances", default=None,
                   help="COCO instances JSON (required by --judge annotation)")
    b.add_argument("--coco-captions", default=None, help="COCO captions JSON (references)")
    b.add_argument("--synonyms", default=None,
                   help="CHAIR synonym table (default: the packaged COCO table)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--answers", default=None,
                     help="the model's answers (JSONL: id + answer), e.g. from visalign generate")
    src.add_argument("--model", default=None, help="model dir: generate the greedy answers")
    b.add_argument("--judge", choices=["annotation", "llm"], default=None,
                   help="error judge (default: config 'judge', i.e. annotation)")
    b.add_argument("--out", required=True, help="output directory")
    add_config_args(b)
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from visalign.config import load_config
    from visalign.methods.nsft import NsftDataConfig, write_nsft_data

    cfg = load_config(NsftDataConfig, args.config, args.overrides)
    if args.judge:
        cfg.judge = args.judge
    out = Path(args.out)
    image_root = args.image_root or str(Path(args.data).parent)
    report = write_nsft_data(cfg, args.data, out, image_root=image_root, model=args.model,
                             answers=args.answers, instances=args.instances,
                             captions=args.coco_captions, synonyms=args.synonyms)
    yn = report["yes_no"]["after"]["yes_ratio"]
    # Say when the share was left above the target, so 0.79 vs 0.5 reads as intended.
    above = " (already at or above the minimum, left as is)" if \
        report["yes_no"]["already_above_target"] else ""
    print(f"nsft: {report['n_output']} conversations from {report['n_records']} records "
          f"({report['n_no_error']} without errors, {report['skipped']['count']} skipped, "
          f"{report['llm_unparsed']} unparsed); yes ratio "
          f"{'n/a' if yn is None else f'{yn:.2f}'}{above} -> {out / 'nsft.json'}")
    # Image paths in nsft.json stay relative to the same image root as the input data.
    print(f"train with: visalign train sft --preset nsft --data {out / 'nsft.json'} "
          f"--image-root {image_root} --model MODEL --out DIR")
    return 0
