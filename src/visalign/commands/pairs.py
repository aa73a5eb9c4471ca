"""``visalign pairs gt-dpo|seva|sima|povid``: build a DPO preference-pair file.

The pair file format is documented in :mod:`visalign.methods.pairs.common`; train it with
``visalign train dpo``. Each command writes ``--out`` (``.jsonl`` -> JSONL, else a JSON list),
``<out>.stats.json`` (what was built and skipped) and ``<out>.config.yaml``. With ``--model``
the responses are generated here (resumable, in ``<out stem>_work/``); noised images for SeVa
and POVID stage 2 are written there too (named by noise step, seed and resize, so changing
them never reuses stale images or answers). Image paths in the pair file are the data's (relative
to ``--image-root``, default the data file's directory): pass the same ``--image-root`` to
``visalign train dpo``.
"""

from __future__ import annotations

import argparse

from visalign.commands._common import add_config_args

_HELP = {
    "gt-dpo": "chosen = ground truth, rejected = the model's greedy answer",
    "seva": "chosen = answer on the image, rejected = answer on the diffusion-noised image",
    "sima": "k sampled answers ranked by the model as its own critic; best vs worst",
    "povid": "GT vs GT with injected hallucinations (stage 1) and vs answers on noised "
             "images (stage 2)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pairs`` command group."""
    p = subparsers.add_parser("pairs", help="build DPO preference pairs (gt-dpo, seva, sima, "
                                            "povid)", description=__doc__)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="method", metavar="METHOD")
    for method, help_ in _HELP.items():
        m = sub.add_parser(method, help=help_,
                           description=f"{help_}. Config keys (key=value): see PairsConfig in "
                                       "visalign.methods.pairs.")
        m.add_argument("--data", required=True, help="LLaVA records (JSON/JSONL)")
        m.add_argument("--image-root", default=None,
                       help="dir relative image paths start from (default: the data file's dir)")
        m.add_argument("--model", default=None, help="model dir: generate responses with it")
        m.add_argument("--out", required=True, help="pairs file (.json or .jsonl)")
        if method in ("gt-dpo", "seva"):
            m.add_argument("--answers", default=None,
                           help="the model's greedy answers on the images (JSONL id + answer)")
        if method in ("seva", "povid"):
            m.add_argument("--noisy-answers", default=None,
                           help="the model's answers on noised images (JSONL id + answer "
                                "[+ image])")
        if method == "sima":
            m.add_argument("--samples", default=None,
                           help="sampled responses: JSONL of id + responses (list), or several "
                                "id + answer lines per id (the critic still needs --model)")
        if method == "povid":
            m.add_argument("--instances", default=None, help="COCO instances JSON (rule edits)")
            m.add_argument("--coco-captions", default=None, help="COCO captions JSON")
            m.add_argument("--synonyms", default=None, help="CHAIR synonym table")
        add_config_args(m)
        m.set_defaults(func=_run)


# ---------------------------------------------------------------------------------------------
# Handler (the work is visalign.methods.pairs.build_method_pairs)
# ---------------------------------------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from visalign.config import load_config
    from visalign.methods.pairs import PairsConfig, write_method_pairs

    cfg = load_config(PairsConfig, args.config, args.overrides)
    method = args.method
    stats = write_method_pairs(
        method, cfg, args.data, args.out, image_root=args.image_root, model=args.model,
        answers=getattr(args, "answers", None), noisy_answers=getattr(args, "noisy_answers", None),
        samples=getattr(args, "samples", None), instances=getattr(args, "instances", None),
        captions=getattr(args, "coco_captions", None), synonyms=getattr(args, "synonyms", None),
        cli=True)
    print(f"pairs {method}: {stats['n_pairs']} pairs from {stats['n_records']} records -> "
          f"{args.out}")
    return 0
