"""Re-evaluate every finished cell of a grid on more held-out images; prints one JSON object.

A grid evaluates each cell on ``eval.n_images`` descriptions (150 in the micro-world configs),
which gives paired CHAIR intervals of about ±5 points: wider than most method effects. This
script reuses the trained models (``cells/*/row.json`` names them), evaluates each with the
grid's settings but ``--n-images`` descriptions and ``--pope-images`` POPE images (the whole
val split by default), and reports per cell CHAIR, POPE F1, recall and words per description
with paired bootstrap intervals against the base: ΔCHAIR over images
(:func:`visalign.eval.significance.paired_chair_bootstrap`) and ΔPOPE F1 over POPE images.
Resumable: a cell whose ``OUT/<cell>/eval.json`` exists is read, not re-run.

    python benchmarks/bench_grid_reeval.py --grid GRID --out runs/reeval [--n-images 500]
        [--pope-images 200] [--world W --split val] [--cells C ...] [--extra NAME=MODEL ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

KEYS = ("chair", "chair_s", "chair_i", "recall", "pope_f1", "avg_len", "degenerate_share")
SPLITS = ("random", "popular", "adversarial")


def _pope(eval_dir: Path) -> dict:
    """(split, question_id) -> (image_id, label is yes, answered yes by POPE's rule)."""
    from visalign.eval.pope import parse_yes_no

    out = {}
    for sp in SPLITS:
        p = eval_dir / f"answers_pope_{sp}.jsonl"
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            r = json.loads(line)
            out[(sp, r["question_id"])] = (r["image_id"], r["label"] == "yes",
                                           parse_yes_no(r["answer"]) == "yes")
    return out


def _f1(pairs: list[tuple[bool, bool]]) -> float:
    tp = sum(lab and ans for lab, ans in pairs)
    fp = sum(ans and not lab for lab, ans in pairs)
    fn = sum(lab and not ans for lab, ans in pairs)
    return 2 * tp / max(2 * tp + fp + fn, 1)


def paired_pope_f1(base: dict, other: dict, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """ΔF1 (mean over the POPE splits) with a paired bootstrap over images."""
    import numpy as np

    keys = sorted(set(base) & set(other))
    images = sorted({base[k][0] for k in keys})
    by_image = {i: [] for i in images}
    for k in keys:
        by_image[base[k][0]].append(k)

    def mean_f1(sel: list, src: dict) -> float:
        return float(np.mean([_f1([(src[k][1], src[k][2]) for k in sel if k[0] == sp])
                              for sp in SPLITS if any(k[0] == sp for k in sel)]))

    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(images), len(images))
        sel = [k for j in pick for k in by_image[images[j]]]
        deltas.append(mean_f1(sel, other) - mean_f1(sel, base))
    return {"delta": mean_f1(keys, other) - mean_f1(keys, base),
            "ci": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))],
            "n_images": len(images), "n_questions": len(keys)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="finished compare/demo dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-images", type=int, default=500, help="descriptions per model")
    ap.add_argument("--pope-images", type=int, default=200, help="POPE images per split")
    ap.add_argument("--world", default="", help="world to evaluate on ('' = the grid's)")
    ap.add_argument("--split", default="", help="split ('' = the grid's)")
    ap.add_argument("--cells", nargs="*", default=None, help="only these cells (base always)")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=MODEL_DIR",
                    help="also evaluate these models (e.g. other trainer seeds or data sizes "
                    "of a method, trained from the grid's base), paired with the base like a cell")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig
    from visalign.config import load_config
    from visalign.eval.significance import paired_chair_bootstrap
    from visalign.eval.suite import evaluate_model
    from visalign.world import load_world

    grid, out = Path(args.grid), Path(args.out)
    cfg = load_config(CompareConfig, grid / "config.yaml")
    ev = dataclasses.replace(cfg.eval, n_images=args.n_images, pope_images=args.pope_images,
                             split=args.split or cfg.eval.split)
    world = load_world(args.world or grid / "world")
    cells = sorted(p.parent for p in (grid / "cells").glob("*/row.json"))
    names = [c.name for c in cells if c.name != "base" and
             (args.cells is None or c.name in args.cells)]

    extra = dict(e.split("=", 1) for e in args.extra)
    clash = set(extra) & set(names + ["base"])
    if clash:
        raise SystemExit(f"--extra names {sorted(clash)} clash with the grid's cells")
    names += list(extra)

    def evaluate(name: str) -> Path:
        d = out / name
        if not (d / "eval.json").exists():
            model = extra.get(name) or json.loads(
                (grid / "cells" / name / "row.json").read_text())["model"]
            with contextlib.redirect_stdout(sys.stderr):
                evaluate_model(model, world, d, ev)
        return d

    from visalign.compare import grid_dirs
    from visalign.eval.fluency import fluency_of_answers, world_vocabulary

    # the language the models were trained on, plus the evaluated world's: a fresh world built
    # with few train images (n_train=30) lacks rarer words of the same generator ("close"),
    # which would count as broken text
    vocab = world_vocabulary(world) | world_vocabulary(load_world(grid_dirs(cfg, grid)[0]))

    def metrics(d: Path) -> dict:
        m = json.loads((d / "eval.json").read_text())["metrics"]
        # recomputed: evaluations written before the suite reported fluency, or before its
        # vocabulary covered every split, lack it or undercount the language
        return {**m, **fluency_of_answers(d / "answers_detail.jsonl", vocab)}

    base_dir = evaluate("base")
    base_m = metrics(base_dir)
    base_caps = json.loads((base_dir / "chair.json").read_text())["captions"]
    base_pope = _pope(base_dir)
    rows = []
    for name in names:
        d = evaluate(name)
        m = metrics(d)
        ch = paired_chair_bootstrap(base_caps, json.loads((d / "chair.json").read_text())
                                    ["captions"], seed=0)
        pf = paired_pope_f1(base_pope, _pope(d))
        rows.append({"cell": name, **{k: round(m[k], 4) for k in KEYS},
                     "delta_chair": round(ch["delta"]["chair"], 4),
                     "ci95_chair": [round(x, 4) for x in ch["ci"]["chair"]],
                     "rel_change_chair": round(ch["delta"]["chair"] / base_m["chair"], 4),
                     "p_lower_chair": round(ch["p_lower"]["chair"], 3),
                     "delta_pope_f1": round(pf["delta"], 4),
                     "ci95_pope_f1": [round(x, 4) for x in pf["ci"]]})
    table = ["| cell | CHAIR | Δ CHAIR (95 % CI) | rel. | POPE F1 | Δ F1 (95 % CI) | recall | words "
             "| degenerate |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| base | {100 * base_m['chair']:.1f} | | | {100 * base_m['pope_f1']:.1f} | | "
             f"{100 * base_m['recall']:.1f} | {base_m['avg_len']:.1f} | "
             f"{100 * base_m['degenerate_share']:.1f} % |"]
    for r in rows:
        table.append(
            f"| {r['cell']} | {100 * r['chair']:.1f} | {100 * r['delta_chair']:+.1f} "
            f"[{100 * r['ci95_chair'][0]:+.1f}, {100 * r['ci95_chair'][1]:+.1f}] | "
            f"{100 * r['rel_change_chair']:+.0f} % | {100 * r['pope_f1']:.1f} | "
            f"{100 * r['delta_pope_f1']:+.1f} [{100 * r['ci95_pope_f1'][0]:+.1f}, "
            f"{100 * r['ci95_pope_f1'][1]:+.1f}] | {100 * r['recall']:.1f} | {r['avg_len']:.1f} | "
            f"{100 * r['degenerate_share']:.1f} % |")
    report = {"grid": str(grid), "world": str(world.root), "split": ev.split,
              "n_images": args.n_images, "pope_images": args.pope_images,
              "base": {k: round(base_m[k], 4) for k in KEYS}, "rows": rows,
              "table_md": "\n".join(table)}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
