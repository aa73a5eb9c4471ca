"""What would FiSAO's verifier pay for naming each category where it is present vs absent?

For every CHAIR category and every calibration image, scores S(category, image) with the
verifier the calibration was made with (its pooling and labels), turns it into the Eq. 8 reward
(λ from the calibration) and averages per category over the images that hold it and those that
do not (:mod:`visalign.analysis.category_rewards`). A category whose absent-image reward is
not clearly below its present-image reward cannot be taught by the verifier; present objects
earning about 0 on average mean that penalties on correct mentions push probability to other
object words. Prints one JSON object.

    python benchmarks/research/diag_fisao_category_rewards.py --grid GRID \\
        [--calibration GRID/fisao_calibration/calibration.json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def category_rewards(calibration: str, verifier: str, answers: str, world: str) -> dict:
    """Per category: mean reward on the calibration images with / without it."""
    from PIL import Image

    from visalign.analysis.category_rewards import category_rewards as rewards_of
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_jsonl

    w = Path(world)
    chair = Chair.from_coco(w / "annotations" / "instances_train.json",
                            synonyms=load_synonyms(w / "synonyms.txt"))
    seen, ans = set(), []
    for r in read_jsonl(answers):           # one entry per image
        if r["image_id"] not in seen:
            seen.add(r["image_id"])
            ans.append(r)
    images = [Image.open(w / "images" / a["image"]).convert("RGB") for a in ans]
    return rewards_of(calibration, verifier, images,
                      [chair.gt_objects(a["image_id"]) for a in ans], chair.categories)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="finished compare/demo dir")
    ap.add_argument("--calibration", nargs="*", default=None,
                    help="calibration.json files to compare ('' = the grid's)")
    args = ap.parse_args(argv)
    grid = Path(args.grid)
    cals = args.calibration or [str(grid / "fisao_calibration" / "calibration.json")]
    answers = str(grid / "fisao_calibration" / "answers.jsonl")
    report = {"grid": str(grid), "verifiers": [
        category_rewards(c, str(grid / "base" / "verifier"), answers, str(grid / "world"))
        for c in cals]}
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
