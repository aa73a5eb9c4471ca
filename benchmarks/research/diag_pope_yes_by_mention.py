"""Whom a model says "Yes" to on POPE, split by what the base model's description named; prints
one JSON object.

For each POPE split and each evaluation directory: the "Yes" rate on present objects the base's
description of that image named vs did not name, and on absent objects it hallucinated vs did
not (:mod:`visalign.analysis.pope_by_mention`). Tests whether a method that moves the Yes rate
learned "answer Yes only to what you would describe" (the change sits on unnamed present
objects) or a plain bias (the change is spread evenly). For an nSFT cell it also counts the
yes/no answers its data teach. Questions come from the world's cached POPE files, so run it on
evaluations made with the same world and eval settings (a `visalign compare`/`demo` output).

    python benchmarks/research/diag_pope_yes_by_mention.py --run DEMO [--cells base nsft-300 ...] \
        [--extra NAME=EVAL_DIR ...] [--split val] [--pope-images 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a compare/demo output dir (world/ and cells/)")
    ap.add_argument("--cells", nargs="*", default=None, help="cells to report (default: all)")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=EVAL_DIR",
                    help="more evaluation dirs of the same world and settings (e.g. a "
                         "diag_nsft_pope.py variant's eval/)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--pope-images", type=int, default=200)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from visalign.analysis.pope_by_mention import yes_rate_by_mention
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.eval.pope import SPLITS
    from visalign.eval.suite import pope_questions_path
    from visalign.io import read_jsonl
    from visalign.world import load_world

    run = Path(args.run)
    world = load_world(run / "world")
    chair = Chair.from_coco(world.instances_path(args.split),
                            synonyms=load_synonyms(world.synonyms_path))
    base_detail = run / "cells" / "base" / "eval" / "answers_detail.jsonl"
    if not base_detail.exists():
        sys.exit(f"no base descriptions at {base_detail}: run the grid's base cell first")
    named = {r["image_id"]: {m.category for m in chair.mentions(r["answer"])}
             for r in read_jsonl(base_detail)}
    cells = args.cells or sorted(p.name for p in (run / "cells").iterdir()
                                 if (p / "eval").is_dir())
    evals = {c: run / "cells" / c / "eval" for c in cells}
    for spec in args.extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--extra wants NAME=EVAL_DIR, got {spec!r}")
        evals[name] = Path(path)
    report: dict = {"run": str(run), "split": args.split, "cells": {}}
    for sp in SPLITS:
        qpath = pope_questions_path(world, args.split, sp, args.pope_images, args.negatives,
                                    args.seed)
        if not qpath.exists():
            sys.exit(f"no POPE questions at {qpath}: check --pope-images/--negatives/--seed")
        qs = read_jsonl(qpath)
        for cell, edir in evals.items():
            apath = edir / f"answers_pope_{sp}.jsonl"
            if not apath.exists():
                continue
            ans = {r["question_id"]: r["answer"] for r in read_jsonl(apath)}
            report["cells"].setdefault(cell, {})[sp] = yes_rate_by_mention(qs, ans, named)
    for cell in cells:
        data_dir = run / "cells" / cell / "nsft_data"
        if (data_dir / "nsft.json").exists():
            report.setdefault("nsft_data", {})[cell] = _nsft_data_answers(data_dir, world)
    print(json.dumps(report, indent=2))
    return report


def _nsft_data_answers(data_dir: Path, world) -> dict:
    """Yes/No answers an nSFT data set teaches: existence questions split by whether the base's
    original answer named the object, the doubled "Is the answer X?" -> "No." pairs apart."""
    import re

    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_json, read_jsonl

    chair = Chair.from_coco(world.instances_path(world.train_split),
                            synonyms=load_synonyms(world.synonyms_path))
    original = {r["id"]: r["answer"] for r in read_jsonl(data_dir / "answers.jsonl")}
    counts: collections.Counter = collections.Counter()
    polarity: collections.Counter = collections.Counter()
    for rec in read_json(data_dir / "nsft.json"):
        named = {m.category for m in chair.mentions(original.get(rec["nsft"]["source_id"], ""))}
        conv = rec["conversations"]
        for q, a in zip(conv[0::2], conv[1::2]):
            question = q["value"].replace("<image>\n", "")
            first = (a["value"].split() or [""])[0].strip(",.")
            if first not in ("Yes", "No"):
                counts["open"] += 1
                continue
            polarity[first] += 1
            if " Is the answer " in " " + question:
                counts[f"doubled_{first.lower()}"] += 1
            elif re.match(r"^(Is|Are) there\b", question):
                said = {m.category for m in chair.mentions(question)} & named
                counts[f"exists_{first.lower()}_{'named' if said else 'unnamed'}"] += 1
            else:
                counts[f"other_{first.lower()}"] += 1
    yes, no = polarity["Yes"], polarity["No"]
    return {"answers": dict(sorted(counts.items())),
            "yes_share_all_binary": round(yes / (yes + no), 4) if yes + no else None}


if __name__ == "__main__":
    main()
