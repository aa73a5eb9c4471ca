"""visalign pope build: POPE yes/no questions from COCO-format instance annotations."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pope`` command group."""
    p = subparsers.add_parser("pope", help="build POPE questions (score them with "
                                           "`visalign eval pope`)", description=__doc__)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="pope_command", metavar="ACTION")
    b = sub.add_parser("build", help="sample images and build one POPE split")
    b.add_argument("--instances", required=True, help="COCO instances JSON")
    b.add_argument("--split", required=True, choices=["random", "popular", "adversarial"],
                   help="negative sampling strategy")
    b.add_argument("--images", type=int, default=500, help="number of images to sample")
    b.add_argument("--negatives", type=int, default=3,
                   help="positives (= negatives) per image; images need at least this many "
                        "annotated objects")
    b.add_argument("--seed", type=int, default=0,
                   help="seed (the same seed samples the same images for every split)")
    b.add_argument("--image-root", default=None,
                   help="image folder: adds 'image' (root/file_name) and 'prompt' so `visalign "
                        "generate` can answer the file directly")
    b.add_argument("--out", required=True, help="questions JSONL path")
    b.add_argument("--debug", action="store_true", help="show full tracebacks")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from visalign.eval.pope import build_pope
    from visalign.io import write_jsonl

    rows = build_pope(args.instances, args.split, args.images, args.negatives, args.seed,
                      image_root=args.image_root)
    write_jsonl(args.out, rows)
    n_yes = sum(r["label"] == "yes" for r in rows)
    print(f"wrote {len(rows)} {args.split} questions ({n_yes} yes / {len(rows) - n_yes} no) "
          f"on {args.images} images to {args.out}")
    return 0
