"""Where nSFT's POPE collapse comes from: retrain a finished grid's nsft cell on edited copies of
its constructed data and measure the base's yes/no loss on that data; prints one JSON object.

Variants (each trained with the cell's own SFT config and evaluated with the grid's suite):
``no_doubled`` drops the doubled "Is the answer X?" -> "No." pairs; ``shuffled`` shuffles the QA
order of the long conversations; ``oneword`` cuts Yes/No answers to the one word; ``exist_only``
keeps only the Yes/No pairs of the long conversations; ``full`` is the cell's data unchanged
(the reference row under the same ``--set``); ``drop=REGEX`` drops the QA pairs whose
question matches REGEX (e.g. ``drop=^What color``). ``--set k=v`` overrides the cell's SFT config
(e.g. ``kl_coef=1.0``, ``lora.r=4``, ``lr=1e-4``) for every variant. ``yes_no_loss``: the base's
log P(Yes) − log P(No) on the data's existence questions (single turn), split by the answer the
data teach, with the summed first-token gradient mass Σ(1 − p(taught answer)).

    python benchmarks/research/diag_nsft_pope.py --grid GRID --out runs/nsft_pope_diag \
        [--size 300] [--variants full exist_only ...] [--set kl_coef=1.0 ...] [--skip-yes-no-loss]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DOUBLED = " Is the answer "
YES_NO = re.compile(r"^(Yes|No)\b")


def _with_image(conv: list[dict]) -> list[dict]:
    conv = [{**t, "value": t["value"].replace("<image>\n", "")} for t in conv]
    conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return conv


def _pairs(conv: list[dict]) -> list[list[dict]]:
    return [conv[i:i + 2] for i in range(0, len(conv), 2)]


def variant(data: list[dict], name: str) -> list[dict]:
    """An edited copy of nSFT records; short-answer (doubled) records stay unless dropped."""
    rng = random.Random(0)
    out = []
    for r in data:
        conv = r["conversations"]
        doubled = any(DOUBLED in t["value"] for t in conv)
        if name == "full":
            kept = _pairs(conv)
        elif name.startswith("drop="):
            pat = re.compile(name[5:])
            kept = [p for p in _pairs(conv)
                    if not pat.search(p[0]["value"].replace("<image>\n", ""))]
        elif name == "no_doubled":
            kept = [p for p in _pairs(conv)
                    if not (DOUBLED in p[0]["value"] and p[1]["value"] == "No.")]
        elif name == "oneword":
            kept = [[p[0], {**p[1], "value": YES_NO.match(p[1]["value"]).group(1)}]
                    if YES_NO.match(p[1]["value"]) else p for p in _pairs(conv)]
        elif doubled:
            kept = _pairs(conv)
        elif name == "shuffled":
            kept = _pairs(conv)
            rng.shuffle(kept)
        elif name == "exist_only":
            kept = [p for p in _pairs(conv) if YES_NO.match(p[1]["value"])]
        else:
            raise ValueError(name)
        if kept:
            out.append({**r, "conversations": _with_image([t for p in kept for t in p])})
    return out


def yes_no_loss(base: str, data: list[dict], image_root: Path) -> dict:
    import numpy as np
    from PIL import Image

    from visalign.eval.grounding import yes_no_scores
    from visalign.models import load_vlm

    qs: dict[str, list] = {"Yes": [], "No": []}
    for r in data:
        for q, a in _pairs(r["conversations"]):
            text = q["value"].replace("<image>\n", "")
            m = YES_NO.match(a["value"])
            if DOUBLED not in text and m and text.startswith(("Is there", "Are there",
                                                               "Can you see")):
                qs[m.group(1)].append((r["image"], text))
    vlm = load_vlm(base)
    out = {}
    for k, items in qs.items():
        s = np.array(yes_no_scores(vlm, [Image.open(image_root / im).convert("RGB")
                                         for im, _ in items], [q for _, q in items]))
        p_taught = 1 / (1 + np.exp(-s)) if k == "Yes" else 1 / (1 + np.exp(s))
        out[k] = {"n": len(items), "mean_log_odds_yes": round(float(s.mean()), 3),
                  "mean_loss": round(float(-np.log(p_taught).mean()), 3),
                  "gradient_mass": round(float((1 - p_taught).sum()), 1),
                  "share_base_already_right": round(float((p_taught > 0.5).mean()), 3)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="finished compare/demo dir with an nsft cell")
    ap.add_argument("--out", default="runs/nsft_pope_diag")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--variants", nargs="+",
                    default=["no_doubled", "shuffled", "oneword", "exist_only"])
    ap.add_argument("--set", nargs="*", default=[], metavar="K=V",
                    help="SFT config overrides for every variant")
    ap.add_argument("--skip-yes-no-loss", action="store_true")
    ap.add_argument("--cell", default=None,
                    help="grid cell whose training config and data are used (default "
                         "nsft-SIZE; e.g. cont-sft-300, which only makes sense with `full`)")
    ap.add_argument("--eval-world", default=None,
                    help="evaluate on this world instead of the grid's (same images and "
                         "training data, e.g. built with n_test=300)")
    ap.add_argument("--eval-split", default=None,
                    help="held-out split to evaluate on (default: the grid's, val). Choose "
                         "settings on a split the grid does not report, e.g. test")
    ap.add_argument("--with-base", action="store_true", help="also evaluate the grid's base")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig
    from visalign.config import load_config
    from visalign.eval.suite import evaluate_model
    from visalign.io import write_json
    from visalign.methods.sft import SftConfig, train_sft
    from visalign.world import load_world

    grid, out = Path(args.grid), Path(args.out)
    cell = grid / "cells" / (args.cell or f"nsft-{args.size}")
    cell_cfg = load_config(SftConfig, cell / "train" / "config.yaml")
    data = json.loads(Path(cell_cfg.data).read_text())
    world = load_world(grid / "world")
    eval_world = load_world(args.eval_world) if args.eval_world else world
    eval_cfg = load_config(CompareConfig, grid / "config.yaml").eval
    if args.eval_split:
        eval_cfg.split = args.eval_split
    keys = ("chair", "chair_s", "chair_i", "recall", "pope_f1", "pope_random_yes_ratio",
            "avg_len")
    report = {"grid": str(grid), "cell": cell.name, "sft_overrides": args.set,
              "eval_world": str(eval_world.root), "eval_split": eval_cfg.split, "rows": []}
    if args.with_base:
        with contextlib.redirect_stdout(sys.stderr):
            m = evaluate_model(str(grid / "base"), eval_world, out / "base" / "eval",
                               eval_cfg)["metrics"]
        report["rows"].append({"variant": "base", **{k: round(m[k], 4) for k in keys}})
    if not args.skip_yes_no_loss:
        report["yes_no_loss"] = yes_no_loss(str(grid / "base"), data, Path(world.image_root))
    for name in args.variants:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        recs = variant(data, name)
        write_json(d / "data.json", recs)
        cfg = load_config(SftConfig, cell / "train" / "config.yaml",
                          [*args.set, f"out={d / 'train'}", f"data={d / 'data.json'}",
                           "progress=false"])
        with contextlib.redirect_stdout(sys.stderr):
            res = train_sft(cfg)
            m = evaluate_model(str(res.model_dir), eval_world, d / "eval", eval_cfg)["metrics"]
        report["rows"].append({"variant": name, "records": len(recs),
                               **{k: round(m[k], 4) for k in keys}})
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
