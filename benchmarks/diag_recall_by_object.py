"""Which objects a model's descriptions miss; prints one JSON object.

From an evaluation's ``answers_detail.jsonl`` and the world's annotations: recall of each image's
objects by their size rank in the image (largest category instance first), by small/large
(largest instance under / over ``--small-area`` px²) and by how many categories the image has;
plus CHAIR of the world's own training descriptions (the ceiling the data sets).

    python benchmarks/diag_recall_by_object.py --world W --answers EVAL/answers_detail.jsonl \
        [--split val] [--small-area 100]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--answers", required=True, help="answers_detail.jsonl of an evaluation")
    ap.add_argument("--split", default="val")
    ap.add_argument("--small-area", type=float, default=100.0)
    args = ap.parse_args(argv)

    from visalign.data.llava import load_llava_records
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_json, read_jsonl
    from visalign.world import load_world

    world = load_world(args.world)
    syn = load_synonyms(world.synonyms_path)
    chair = Chair.from_coco(world.instances_path(args.split), synonyms=syn)
    inst = read_json(world.instances_path(args.split))
    names = {c["id"]: c["name"] for c in inst["categories"]}
    area: dict = collections.defaultdict(dict)      # image -> category -> largest instance area
    for a in inst["annotations"]:
        cat = names[a["category_id"]]
        area[a["image_id"]][cat] = max(area[a["image_id"]].get(cat, 0.0), a["area"])
    seen = collections.Counter()
    hit = collections.Counter()
    for r in read_jsonl(args.answers):
        named = {m.category for m in chair.mentions(r["answer"])}
        cats = area[r["image_id"]]
        for rank, cat in enumerate(sorted(cats, key=lambda c: -cats[c])):
            size = "small" if cats[cat] < args.small_area else "large"
            for key in (f"rank_{rank}", size, f"categories_{len(cats)}", "all"):
                seen[key] += 1
                hit[key] += cat in named
    recall = {k: {"recall": round(hit[k] / seen[k], 4), "objects": seen[k]} for k in sorted(seen)}

    train = Chair.from_coco(world.instances_path(world.train_split), synonyms=syn)
    recs = [{"image_id": r["image_id"], "caption": r["conversations"][1]["value"]}
            for r in load_llava_records(world.llava_path(world.train_split))
            if r.get("task") == "detail"]
    data = train.evaluate(recs)["metrics"]
    report = {"answers": args.answers, "world": args.world, "split": args.split,
              "recall": recall,
              "training_descriptions": {k: round(data[k], 4) for k in
                                        ("chair_s", "chair_i", "recall", "n_captions")}}
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
