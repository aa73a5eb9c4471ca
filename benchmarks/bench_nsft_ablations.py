"""nSFT ablations on the micro-world: the paper's construction against keeping the GT description
and a per-token KL to the reference; prints one JSON object with a markdown table.

Starts from a finished demo/compare dir (its world and base model), trains nSFT once per setting
with the grid's trainer settings and evaluates every model with the grid's suite, so the rows
compare with the demo's. Besides CHAIR and POPE it reports where the model's yes/no decision
sits: the mean log-odds log P(Yes) − log P(No) over the random-split POPE questions and their
AUROC (``visalign.eval.grounding.yes_no_scores``): a shift of the mean with a steady AUROC is a
bias toward one answer, not lost grounding.

    python benchmarks/bench_nsft_ablations.py --demo demo_out --out runs/nsft_ablations [--size 300]
    python benchmarks/bench_nsft_ablations.py --demo demo_out --out runs/nsft_seeds --size 600 \
        --only 'seed1:sft.seed=1' 'seed2:sft.seed=2'         # trainer-seed spread
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SETTINGS = [
    ("paper construction", {}, {}),
    ("+ GT description kept (keep_gt_long)", {"keep_gt_long": True}, {}),
    ("+ per-token KL to the reference (ξ=1)", {}, {"kl_coef": 1.0}),
]


def yes_no_probe(model_dir: str, pope_answers: Path, limit: int = 240) -> dict:
    """Mean log-odds of "Yes" and its AUROC on the POPE questions of an answers file
    (:func:`visalign.analysis.yes_no_discrimination.yes_no_discrimination`)."""
    from visalign.analysis.yes_no_discrimination import yes_no_discrimination
    from visalign.io import read_jsonl
    from visalign.models import load_vlm

    rep = yes_no_discrimination(load_vlm(model_dir), read_jsonl(pope_answers)[:limit])
    return {k: rep[k] for k in ("mean_log_odds_yes", "auroc", "accuracy_at_0", "n")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="finished `visalign demo` dir")
    ap.add_argument("--out", default="runs/nsft_ablations")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these settings instead of the paper/GT/KL rows, each "
                    "'name:key=value,...' where a key is sft.FIELD or nsft_data.FIELD (a dotted "
                    "sub-field like sft.lora.r too), e.g. 'seed1:sft.seed=1' for a trainer seed")
    ap.add_argument("--method", default="nsft", choices=["nsft", "cont-sft"],
                    help="the grid method the settings apply to (cont-sft: its baseline rows)")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig, grid_dirs, run_compare
    from visalign.config import _deep_merge, config_to_dict, load_config

    demo = Path(args.demo)
    base_cfg = load_config(CompareConfig, demo / "config.yaml")
    world, base = grid_dirs(base_cfg, demo)
    settings = SETTINGS if args.only is None else [_parse_setting(x) for x in args.only]
    rows, base_row, base_probe = [], None, None
    for name, data_over, sft_over in settings:
        tag = "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in name).strip("_")
        d = dict(config_to_dict(base_cfg))
        d.update(out=str(Path(args.out) / tag), world=str(world), base_model=str(base),
                 methods=[args.method], data_sizes=[args.size], progress=False,
                 nsft_data=_deep_merge(base_cfg.nsft_data, data_over),
                 sft=_deep_merge(base_cfg.sft, sft_over))
        # the grid's commands print progress lines; stdout is this script's JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            res = run_compare(load_config(CompareConfig, None, d))
        if res["failures"]:
            raise RuntimeError(f"{name}: {res['failures']}")
        cells = Path(d["out"]) / "cells"
        base_row = base_row or res["rows"][0]["metrics"]
        if base_probe is None:
            base_probe = yes_no_probe(str(base),
                                      cells / "base" / "eval" / "answers_pope_random.jsonl")
        m = res["rows"][1]["metrics"]
        cell = cells / f"{args.method}-{args.size}"
        rep_path = cell / "nsft_data" / "report.json"
        rep = json.loads(rep_path.read_text()) if rep_path.exists() else None
        rows.append({"setting": name, "model": str(cell / "train" / "model"),
                     **{k: round(m[k], 4) for k in ("chair", "chair_s", "chair_i", "recall",
                                                    "avg_len", "pope_f1", "qa_accuracy")},
                     "yes_no": yes_no_probe(str(cell / "train" / "model"),
                                            cell / "eval" / "answers_pope_random.jsonl"),
                     "data_yes_ratio": rep and rep["yes_no"]["after"]["yes_ratio"],
                     "doubled_no_pairs": rep and rep["yes_no"]["doubled"]["no"]})
    keys = ["chair", "chair_s", "chair_i", "recall", "pope_f1"]
    head = "| setting | " + " | ".join(keys) + " | avg. words | yes log-odds | yes/no AUROC |"
    table = [head, "|---" * (len(keys) + 4) + "|",
             "| base | " + " | ".join(f"{100 * base_row[k]:.1f}" for k in keys)
             + f" | {base_row['avg_len']:.1f} | {base_probe['mean_log_odds_yes']:+.2f} | "
             f"{base_probe['auroc']:.3f} |"]
    table += ["| " + r["setting"] + " | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys)
              + f" | {r['avg_len']:.1f} | {r['yes_no']['mean_log_odds_yes']:+.2f} | "
              f"{r['yes_no']['auroc']:.3f} |" for r in rows]
    report = {"base": {**{k: round(base_row[k], 4) for k in keys + ["avg_len"]},
                       "yes_no": base_probe},
              "rows": rows, "table_md": "\n".join(table),
              "command": shlex.join(["python", "benchmarks/bench_nsft_ablations.py",
                                     *(argv if argv is not None else sys.argv[1:])])}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _parse_setting(spec: str) -> tuple[str, dict, dict]:
    """'name:sft.seed=1,nsft_data.keep_gt_long=true' -> (name, nsft_data overrides, sft
    overrides); values parsed as YAML scalars."""
    from visalign.config import parse_overrides

    name, _, rest = spec.partition(":")
    items = [kv for kv in rest.split(",") if kv]
    for kv in items:
        section, dot, field = kv.partition("=")[0].strip().partition(".")
        if section not in ("sft", "nsft_data") or not dot or not field:
            raise SystemExit(f"{spec!r}: keys are sft.FIELD or nsft_data.FIELD, not "
                             f"{kv.partition('=')[0]!r}")
    over = parse_overrides(items)
    return name, over.get("nsft_data", {}), over.get("sft", {})


if __name__ == "__main__":
    main()
