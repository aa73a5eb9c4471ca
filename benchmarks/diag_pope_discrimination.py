"""Does a trained model still *tell* present from absent objects, or only answer Yes more or
less often? Separates POPE's two failure modes.

For each model and POPE split, on the same questions: the teacher-forced log-odds
log P(Yes) − log P(No) of the first answer token (``eval.grounding.yes_no_scores``), its mean
(the bias) and its AUROC for present vs absent objects (the discrimination, independent of
any threshold). With ``--verifier`` the same AUROC for the verifier CLIP's score
S(object, image) (``verifier.scorer.ClipScorer``, image pooling, the calibration template):
how much a reward built from it could teach about these questions at best. With
``--calibration`` also where Eq. 8's thresholds put those scores: the share of present objects
above mu_gt and below mu_hal, of absent ones below mu_hal, and the verifier's accuracy when
thresholded at mu_hal or at the midpoint of the two.

    python benchmarks/diag_pope_discrimination.py --pope-dir GRID/cells/base/eval \
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


def _records(path: Path, limit: int) -> list[dict]:
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return recs[:limit] if limit else recs


def probe_model(model_dir: str, recs_by_split: dict[str, list[dict]]) -> dict:
    """Per split: mean yes log-odds, its AUROC and its accuracy at threshold 0."""
    import numpy as np
    from PIL import Image

    from visalign.eval.grounding import yes_no_scores
    from visalign.models import load_vlm
    from visalign.verifier.calibration import auroc

    vlm = load_vlm(model_dir)
    out = {}
    for split, recs in recs_by_split.items():
        ims = [Image.open(r["image"]).convert("RGB") for r in recs]
        s = np.array(yes_no_scores(vlm, ims, [r["question"] for r in recs]))
        y = np.array([r["label"] == "yes" for r in recs])
        out[split] = {"mean_log_odds_yes": round(float(s.mean()), 4),
                      "auroc": round(float(auroc(s[y].tolist(), s[~y].tolist())), 4),
                      "accuracy_at_0": round(float(((s > 0) == y).mean()), 4),
                      "yes_rate_at_0": round(float((s > 0).mean()), 4), "n": len(recs)}
    return out


def probe_verifier(verifier: str, recs_by_split: dict[str, list[dict]],
                   template: str = "a photo of a {}.", calibration: str = "") -> dict:
    """Per split: AUROC of the verifier's S(object, image) for present vs absent objects, and
    with a ``calibration.json`` where its Eq. 7 means put those scores."""
    import numpy as np
    from PIL import Image

    from visalign.verifier.calibration import auroc
    from visalign.verifier.scorer import ClipScorer

    scorer = ClipScorer.from_pretrained(verifier, template=template)
    out = {}
    for split, recs in recs_by_split.items():
        emb = scorer.image_embeddings([Image.open(r["image"]).convert("RGB") for r in recs])
        s = np.array([float(scorer.score([r["object"]], emb[i]).reshape(-1)[0])
                      for i, r in enumerate(recs)])
        y = np.array([r["label"] == "yes" for r in recs])
        out[split] = {"auroc": round(float(auroc(s[y].tolist(), s[~y].tolist())), 4),
                      "n": len(recs)}
        if calibration:
            cal = json.loads(Path(calibration).read_text())
            gt, hal = cal["mu_gt"], cal["mu_hal"]
            mid = (gt + hal) / 2
            out[split].update({
                "present_above_mu_gt": round(float((s[y] > gt).mean()), 4),
                "present_below_mu_hal": round(float((s[y] < hal).mean()), 4),
                "absent_below_mu_hal": round(float((s[~y] < hal).mean()), 4),
                "accuracy_at_mu_hal": round(float(((s > hal) == y).mean()), 4),
                "accuracy_at_midpoint": round(float(((s > mid) == y).mean()), 4)})
    return out


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
    recs = {s: _records(Path(args.pope_dir) / f"answers_pope_{s}.jsonl", args.limit)
            for s in SPLITS}
    report: dict = {"pope_dir": args.pope_dir, "limit": args.limit, "models": {}}
    for spec in args.models:
        name, _, path = spec.partition("=")
        report["models"][name] = {"dir": path, **probe_model(path, recs)}
    if args.verifier:
        report["verifier"] = {"dir": args.verifier, **probe_verifier(args.verifier, recs,
                                                                     args.template,
                                                                     args.calibration)}
    json.dump(report, sys.stdout, indent=1)
    print()
    return report


if __name__ == "__main__":
    main()
