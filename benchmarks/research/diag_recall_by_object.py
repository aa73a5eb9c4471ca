"""Which objects a model's descriptions miss; prints one JSON object.

From an evaluation's ``answers_detail.jsonl`` and the world's annotations: recall of each image's
objects by their size rank in the image (largest category instance first), by small/large
(largest instance under / over ``--small-area`` px²) and by how many categories the image has
(:func:`visalign.analysis.recall_by_object.recall_by_object`); plus CHAIR of the world's own
training descriptions (the ceiling the data sets).

    python benchmarks/research/diag_recall_by_object.py --world W \
        --answers EVAL/answers_detail.jsonl [--split val] [--small-area 100]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--answers", required=True, help="answers_detail.jsonl of an evaluation")
    ap.add_argument("--split", default="val")
    ap.add_argument("--small-area", type=float, default=100.0)
    args = ap.parse_args(argv)

    from visalign.analysis.recall_by_object import object_areas, recall_by_object
    from visalign.data.llava import load_llava_records
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_json, read_jsonl
    from visalign.world import load_world

    world = load_world(args.world)
    syn = load_synonyms(world.synonyms_path)
    chair = Chair.from_coco(world.instances_path(args.split), synonyms=syn)
    named = {r["image_id"]: {m.category for m in chair.mentions(r["answer"])}
             for r in read_jsonl(args.answers)}
    recall = recall_by_object(named, object_areas(read_json(world.instances_path(args.split))),
                              args.small_area)

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
