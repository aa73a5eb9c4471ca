"""Compare base models on one world split, paired with the first; prints one JSON object.

`visalign world base` evaluates a base on 200 held-out descriptions and 100 POPE images per
split, where one seed's CHAIR_s moves by several points. This script evaluates each model with
the base's eval settings but more images (by default the whole val split: 500 descriptions, POPE
on 200 images), then reports the base's quality ranges per model (CHAIR_s, CHAIR_i, recall, POPE
accuracy per split, verifier AUROC from the model's own ``eval.json``) and paired bootstrap
intervals against the first model: ΔCHAIR over images and ΔPOPE F1 over POPE images. Use a world
built with more val images (``n_val=2000``, another seed) for fresh-image checks. Resumable:
``OUT/<name>/eval.json`` is read when it exists.

    python benchmarks/bench_base_compare.py --world W --out runs/bases \
        --models packaged=src/visalign/resources/microworld_base new=runs/base_new
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPLITS = ("random", "popular", "adversarial")
KEYS = ("chair_s", "chair_i", "chair", "recall", "avg_len", "pope_f1", "qa_accuracy",
        "degenerate_share", *(f"pope_{s}_accuracy" for s in SPLITS))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="world dir to evaluate on")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                    help="base model dirs; the first is the reference of the intervals")
    ap.add_argument("--n-images", type=int, default=500, help="descriptions per model")
    ap.add_argument("--pope-images", type=int, default=200, help="POPE images per split")
    args = ap.parse_args(argv)

    from bench_grid_reeval import _pope, paired_pope_f1

    from visalign.eval.significance import paired_chair_bootstrap
    from visalign.eval.suite import EvalSettings, evaluate_model
    from visalign.world import load_world

    world = load_world(args.world)
    out = Path(args.out)
    models = dict(m.split("=", 1) for m in args.models)
    if len(models) != len(args.models):
        raise SystemExit("--models: two models share a name")
    ev = EvalSettings(n_images=args.n_images, pope_images=args.pope_images, split=args.split,
                      caption_metrics=False)
    rows = []
    ref_caps = ref_pope = None
    for name, model in models.items():
        d = out / name
        if not (d / "eval.json").exists():
            with contextlib.redirect_stdout(sys.stderr):
                evaluate_model(model, world, d, ev)
        m = json.loads((d / "eval.json").read_text())["metrics"]
        own = Path(model) / "eval.json"
        auroc = json.loads(own.read_text())["metrics"].get("clip_auroc") if own.exists() else None
        caps = json.loads((d / "chair.json").read_text())["captions"]
        pope = _pope(d)
        row = {"model": name, "dir": str(model), **{k: round(m[k], 4) for k in KEYS if k in m},
               "clip_auroc": None if auroc is None else round(auroc, 4)}
        if ref_caps is None:
            ref_caps, ref_pope = caps, pope
        else:
            ch = paired_chair_bootstrap(ref_caps, caps, seed=0)
            pf = paired_pope_f1(ref_pope, pope)
            for k in ("chair_s", "chair_i", "chair"):
                row[f"delta_{k}"] = round(ch["delta"][k], 4)
                row[f"ci95_{k}"] = [round(x, 4) for x in ch["ci"][k]]
            row["delta_pope_f1"] = round(pf["delta"], 4)
            row["ci95_pope_f1"] = [round(x, 4) for x in pf["ci"]]
        rows.append(row)
    table = ["| model | CHAIR_s | CHAIR_i | recall | POPE r / p / a | POPE F1 | words | "
             "Δ CHAIR (95 % CI) | Δ F1 (95 % CI) | AUROC |", "|---" * 10 + "|"]
    for r in rows:
        pope = " / ".join(f"{100 * r[f'pope_{s}_accuracy']:.1f}" for s in SPLITS)
        dc = (f"{100 * r['delta_chair']:+.1f} [{100 * r['ci95_chair'][0]:+.1f}, "
              f"{100 * r['ci95_chair'][1]:+.1f}]") if "delta_chair" in r else "ref."
        df = (f"{100 * r['delta_pope_f1']:+.1f} [{100 * r['ci95_pope_f1'][0]:+.1f}, "
              f"{100 * r['ci95_pope_f1'][1]:+.1f}]") if "delta_pope_f1" in r else "ref."
        table.append(f"| {r['model']} | {100 * r['chair_s']:.1f} | {100 * r['chair_i']:.1f} | "
                     f"{100 * r['recall']:.1f} | {pope} | {100 * r['pope_f1']:.1f} | "
                     f"{r['avg_len']:.1f} | {dc} | {df} | "
                     f"{'' if r['clip_auroc'] is None else format(r['clip_auroc'], '.3f')} |")
    report = {"world": str(world.root), "split": args.split, "n_images": args.n_images,
              "pope_images": args.pope_images, "rows": rows, "table_md": "\n".join(table)}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
