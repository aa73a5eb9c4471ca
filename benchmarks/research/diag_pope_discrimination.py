"""Does a trained model still *tell* present from absent objects, or only answer Yes more or
less often? Separates POPE's two failure modes.

For each model and POPE split, on the same questions: the teacher-forced log-odds
log P(Yes) − log P(No) of the first answer token, its mean (the bias) and its AUROC for present
vs absent objects (the discrimination, independent of any threshold). With ``--verifier`` the
same AUROC for the verifier CLIP's score S(object, image) (image pooling, the calibration
template): how much a reward built from it could teach about these questions at best. With
``--calibration`` also where Eq. 8's thresholds put those scores: the share of present objects
above mu_gt and below mu_hal, of absent ones below mu_hal, and the verifier's accuracy when
thresholded at mu_hal or at the midpoint of the two
(:mod:`visalign.analysis.yes_no_discrimination`).

    python benchmarks/research/diag_pope_discrimination.py --pope-dir GRID/cells/base/eval \
        --models base=GRID/base fisao=GRID/cells/fisao-600/train/model \
        --verifier GRID/base/verifier --limit 600

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPLITS = ("random", "popular", "adversarial")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pope-dir", required=True,
                    help="eval dir holding answers_pope_{split}.jsonl (their questions are used)")
    ap.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL_DIR")
    ap.add_argument("--verifier", default="", help="verifier CLIP dir (optional)")
    ap.add_argument("--template", default="a photo of a {}.")
    ap.add_argument("--calibration", default="",
                    help="calibration.json (mu_gt, mu_hal): threshold shares and accuracies")
    ap.add_argument("--limit", type=int, default=600, help="questions per split (0 = all)")
    args = ap.parse_args(argv)

    from visalign.analysis.yes_no_discrimination import verifier_discrimination, \
        yes_no_discrimination
    from visalign.io import read_json, read_jsonl
    from visalign.models import load_vlm
    from visalign.verifier.scorer import ClipScorer

    recs = {}
    for s in SPLITS:
        rows = read_jsonl(Path(args.pope_dir) / f"answers_pope_{s}.jsonl")
        recs[s] = rows[:args.limit] if args.limit else rows
    report: dict = {"pope_dir": args.pope_dir, "limit": args.limit, "models": {}}
    for spec in args.models:
        name, _, path = spec.partition("=")
        vlm = load_vlm(path)
        report["models"][name] = {"dir": path, **{s: yes_no_discrimination(vlm, r)
                                                  for s, r in recs.items()}}
    if args.verifier:
        scorer = ClipScorer.from_pretrained(args.verifier, template=args.template)
        cal = read_json(args.calibration) if args.calibration else None
        report["verifier"] = {"dir": args.verifier, **{
            s: verifier_discrimination(scorer, r, calibration=cal) for s, r in recs.items()}}
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
