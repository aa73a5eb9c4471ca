"""FiSAO ablations on the micro-world (seed 004, Sec. 4.3): margin λ sweep and sentence-level
reward, plus a learning-rate sensitivity run (how far PPO moves the policy); prints one JSON
object with a markdown table.

Starts from a finished demo/compare dir (its world, base model and verifier calibration), trains
FiSAO once per setting with the grid's trainer settings, and evaluates every model with the
grid's suite, so the rows compare with the demo's. Each setting is its own resumable grid under
``--out``.

    python benchmarks/bench_fisao_ablations.py --demo demo_out --out runs/fisao_ablations \
        [--lams 0 0.05 0.1 0.2] [--size 300] [--lrs 3e-4 1e-3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="demo_out", help="finished `visalign demo` dir")
    ap.add_argument("--out", default="runs/fisao_ablations")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--lrs", type=float, nargs="*", default=[3e-4, 1e-3],
                    help="extra token-level λ=0 runs at these learning rates: how far the "
                    "policy moves (approx. KL, clip fraction) and what that does to CHAIR; a "
                    "sensitivity analysis, not a tuned default")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig, run_compare
    from visalign.config import config_to_dict, load_config

    demo = Path(args.demo)
    base_cfg = load_config(CompareConfig, demo / "config.yaml")
    calib = demo / "fisao_calibration" / "calibration.json"
    settings = [(f"token, λ={lam:g}", {"lam": lam}) for lam in args.lams]
    settings.append(("sentence, λ=0", {"lam": 0.0, "reward_level": "sentence",
                                       "sentence_calibration": str(
                                           demo / "fisao_calibration" /
                                           "calibration_sentence.json")}))
    settings += [(f"token, λ=0, lr={lr:g}", {"lam": 0.0, "lr": lr}) for lr in args.lrs]
    rows, base_row = [], None
    for name, over in settings:
        tag = name.replace(", ", "_").replace("λ=", "lam").replace("lr=", "lr").replace(" ", "")
        d = dict(config_to_dict(base_cfg))
        d.update(out=str(Path(args.out) / tag), world=str(demo / "world"),
                 base_model=str(demo / "base"), methods=["fisao"], data_sizes=[args.size],
                 fisao_calibration=str(calib), progress=False,
                 fisao={**base_cfg.fisao, **over})
        # the grid's commands print progress lines; stdout is this script's JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            res = run_compare(load_config(CompareConfig, None, d))
        if res["failures"]:
            raise RuntimeError(f"{name}: {res['failures']}")
        base_row = base_row or res["rows"][0]["metrics"]
        m = res["rows"][1]["metrics"]
        summ = json.loads((Path(d["out"]) / "cells" / f"fisao-{args.size}" / "train" /
                           "train_summary.json").read_text())
        rows.append({"setting": name, **{k: round(m[k], 4) for k in
                                          ("chair", "chair_s", "chair_i", "recall", "pope_f1",
                                           "qa_accuracy")},
                     "verifier_share_of_rollout": summ.get("verifier_share_of_rollout"),
                     # how far the last PPO update moved the policy
                     **{k: summ.get("last", {}).get(k) for k in
                        ("approx_kl", "clip_fraction", "mean_reward", "pos_share", "neg_share")}})
    keys = ["chair", "chair_s", "chair_i", "recall", "pope_f1", "qa_accuracy"]
    table = ["| setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| base | " + " | ".join(f"{100 * base_row[k]:.1f}" for k in keys) + " |"]
    table += ["| " + r["setting"] + " | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys)
              + " |" for r in rows]
    report = {"base": {k: round(base_row[k], 4) for k in keys}, "rows": rows,
              "table_md": "\n".join(table)}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
