"""What would FiSAO's verifier pay for naming each category where it is present vs absent?

For every CHAIR category and every calibration image, scores S(category, image) with the
verifier the calibration was made with (its pooling and labels), turns it into the Eq. 8 reward
(λ from the calibration) and averages per category over the images that hold it and those that
do not. A category whose absent-image reward is not clearly below its present-image reward
cannot be taught by the verifier; present objects earning about 0 on average mean that
penalties on correct mentions push probability to other object words. Prints one JSON object.

    python benchmarks/diag_fisao_category_rewards.py --grid GRID \\
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
    """Per category: mean reward on images with / without it and P(reward > 0 | absent)."""
    import torch
    from PIL import Image

    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_jsonl
    from visalign.verifier.reward import Calibration, normalized_reward
    from visalign.verifier.scorer import ClipScorer

    w = Path(world)
    chair = Chair.from_coco(w / "annotations" / "instances_train.json",
                            synonyms=load_synonyms(w / "synonyms.txt"))
    rows = read_jsonl(answers)
    seen, ans = set(), []
    for r in rows:           # one entry per image
        if r["image_id"] not in seen:
            seen.add(r["image_id"])
            ans.append(r)
    cal = Calibration.from_json(calibration)
    sc = ClipScorer.from_pretrained(verifier, template=cal.template, pooling=cal.pooling,
                                    patch_labels=cal.patch_labels or None)
    cats = chair.categories
    emb = sc.image_embeddings([Image.open(w / "images" / a["image"]).convert("RGB")
                               for a in ans])
    R = normalized_reward(sc.score(cats, emb), cal)                       # (images, C)
    present = torch.tensor([[c in chair.gt_objects(a["image_id"]) for c in cats] for a in ans])
    per = {}
    for j, c in enumerate(cats):
        p, a = R[:, j][present[:, j]], R[:, j][~present[:, j]]
        per[c] = {"present": round(float(p.mean()), 4) if len(p) else None,
                  "absent": round(float(a.mean()), 4) if len(a) else None,
                  "p_positive_absent": round(float((a > 0).float().mean()), 4) if len(a) else None,
                  "n_present": int(len(p))}
    valid = [v for v in per.values() if v["present"] is not None and v["absent"] is not None]
    return {"calibration": calibration, "pooling": cal.pooling, "n_images": len(ans),
            "mean_reward_present": round(sum(v["present"] for v in valid) / len(valid), 4),
            "mean_reward_absent": round(sum(v["absent"] for v in valid) / len(valid), 4),
            "categories_rewarded_when_absent": sorted(
                c for c, v in per.items() if v["absent"] is not None and v["absent"] > 0),
            "per_category": per}


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
