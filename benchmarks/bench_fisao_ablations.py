"""FiSAO ablations on the micro-world: margin λ sweep and sentence-level reward (the paper's
Sec. 4.3), plus a learning-rate sensitivity run (how far PPO moves the policy); prints one JSON
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
import dataclasses
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
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these extra settings (skip the λ/sentence/lr rows), each "
                    "'name:key=value,key=value' over the grid's FiSAO settings, e.g. "
                    "'oracle:reward_source=annotations' (the oracle's instances and synonyms "
                    "are filled in from the demo's world)")
    ap.add_argument("--calibration", default="",
                    help="calibration.json to train with ('' = the demo's), e.g. one from "
                    "`visalign fisao calibrate ... pooling=patch`")
    ap.add_argument("--eval-world", default="",
                    help="also evaluate every model (and the base) on this world's "
                    "--eval-split with the grid's settings, e.g. a world built with n_test=300 "
                    "for choosing settings on a split the grid does not report")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--eval-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="eval settings of the --eval-world split only, e.g. pope_images=150 "
                    "for a 300-image split (POPE needs images with enough annotated objects)")
    ap.add_argument("--plot", default="", help="write CHAIR vs POPE F1 of every setting (and "
                    "the base) to this PNG, one panel per evaluated split")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig, run_compare
    from visalign.config import _deep_merge, config_to_dict, load_config

    demo = Path(args.demo)
    base_cfg = load_config(CompareConfig, demo / "config.yaml")
    calib = Path(args.calibration) if args.calibration else \
        demo / "fisao_calibration" / "calibration.json"
    settings = [(f"token, λ={lam:g}", {"lam": lam}) for lam in args.lams]
    settings.append(("sentence, λ=0", {"lam": 0.0, "reward_level": "sentence",
                                       "sentence_calibration": str(
                                           demo / "fisao_calibration" /
                                           "calibration_sentence.json")}))
    settings += [(f"token, λ=0, lr={lr:g}", {"lam": 0.0, "lr": lr}) for lr in args.lrs]
    if args.only is not None:
        settings = [_parse_setting(s, demo) for s in args.only]
    rows, base_row = [], None
    eval_world = eval_cfg = base_test = None
    if args.eval_world:
        from visalign.world import load_world
        eval_world = load_world(args.eval_world)
        import yaml

        sets = dict(kv.split("=", 1) for kv in args.eval_set)
        eval_cfg = dataclasses.replace(base_cfg.eval, split=args.eval_split,
                                       **{k: yaml.safe_load(v) for k, v in sets.items()})
        base_test = _evaluate(demo / "base", eval_world, Path(args.out) / "base_eval", eval_cfg)
    for name, over in settings:
        over = dict(over)
        cal = over.pop("calibration", None) or calib
        tag = (name.replace(", ", "_").replace("λ=", "lam").replace("lr=", "lr")
               .replace(" ", "").replace("=", "").replace(",", "_"))
        d = dict(config_to_dict(base_cfg))
        d.update(out=str(Path(args.out) / tag), world=str(demo / "world"),
                 base_model=str(demo / "base"), methods=["fisao"], data_sizes=[args.size],
                 fisao_calibration=str(cal), progress=False,
                 fisao=_deep_merge(base_cfg.fisao, over))
        # the grid's commands print progress lines; stdout is this script's JSON alone
        with contextlib.redirect_stdout(sys.stderr):
            res = run_compare(load_config(CompareConfig, None, d))
        if res["failures"]:
            raise RuntimeError(f"{name}: {res['failures']}")
        base_row = base_row or _with_fluency(res["rows"][0]["metrics"],
                                             Path(d["out"]) / "cells" / "base" / "eval",
                                             demo / "world")
        m = _with_fluency(res["rows"][1]["metrics"],
                          Path(d["out"]) / "cells" / f"fisao-{args.size}" / "eval", demo / "world")
        train_dir = Path(d["out"]) / "cells" / f"fisao-{args.size}" / "train"
        summ = json.loads((train_dir / "train_summary.json").read_text())
        test = (_evaluate(train_dir / "model", eval_world, Path(d["out"]) / "eval_test",
                          eval_cfg) if eval_world is not None else None)
        rows.append({"setting": name, **{k: round(m[k], 4) for k in
                                          ("chair", "chair_s", "chair_i", "recall", "pope_f1",
                                           "qa_accuracy", "degenerate_share")},
                     "overrides": over, "calibration": str(cal),
                     "train_seconds": summ.get("seconds"),
                     **({f"{args.eval_split}_split": test} if test is not None else {}),
                     "verifier_share_of_rollout": summ.get("verifier_share_of_rollout"),
                     # how far the policy drifted from the reference by the end of training
                     "kl_ref_last10": _kl_last(train_dir / "log.jsonl"),
                     # how far the last PPO update moved the policy
                     **{k: summ.get("last", {}).get(k) for k in
                        ("approx_kl", "clip_fraction", "mean_reward", "pos_share", "neg_share")}})
    keys = ["chair", "chair_s", "chair_i", "recall", "pope_f1", "qa_accuracy", "degenerate_share"]
    table = ["| setting | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|",
             "| base | " + " | ".join(f"{100 * base_row[k]:.1f}" for k in keys) + " |"]
    table += ["| " + r["setting"] + " | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys)
              + " |" for r in rows]
    report = {"base": {k: round(base_row[k], 4) for k in keys}, "rows": rows,
              "table_md": "\n".join(table)}
    if base_test is not None:
        report[f"base_{args.eval_split}_split"] = base_test
        report["eval_world"] = args.eval_world
    if args.plot:
        report["plot"] = str(_plot(report, args.plot, args.eval_split))
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _plot(report: dict, path: str, split: str) -> Path:
    """CHAIR (x) against POPE F1 (y) for each setting; the base as a cross and guide lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from visalign.analysis.distributions import _save

    panels = [("val (grid)", report["base"], [(r["setting"], r) for r in report["rows"]])]
    if f"base_{split}_split" in report:
        panels.append((f"{split} split", report[f"base_{split}_split"],
                       [(r["setting"], r[f"{split}_split"]) for r in report["rows"]]))
    fig = Figure(figsize=(5.2 * len(panels), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, base, rows) in zip(axes, panels):
        bx, by = 100 * base["chair"], 100 * base["pope_f1"]
        ax.scatter([bx], [by], marker="x", s=80, color="black", label="base")
        ax.axvline(0.85 * bx, ls=":", color="grey", lw=1, label="-15 % CHAIR")
        ax.axhline(by, ls="--", color="grey", lw=1, label="base POPE F1")
        for name, m in rows:
            color = "tab:green" if "oracle" in name else "tab:blue"
            ax.scatter([100 * m["chair"]], [100 * m["pope_f1"]], color=color, s=18)
            ax.annotate(name, (100 * m["chair"], 100 * m["pope_f1"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xlabel("CHAIR (avg of CHAIR_s, CHAIR_i), lower is better")
        ax.set_ylabel("POPE F1")
        ax.set_title(f"FiSAO settings, {title}", fontsize=9)
        ax.legend(fontsize=6, loc="best")
    return _save(fig, path)


TEST_KEYS = ("chair", "chair_s", "chair_i", "recall", "pope_f1", "avg_len", "degenerate_share",
             "oov_word_rate")


def _with_fluency(m: dict, eval_dir: Path, world_dir) -> dict:
    """``m`` plus the fluency metrics, recomputed from the eval dir's descriptions (evaluations
    written before the suite reported them, or before its vocabulary covered every split)."""
    from visalign.eval.fluency import fluency_of_answers, world_vocabulary
    from visalign.world import load_world

    vocab = world_vocabulary(load_world(world_dir))
    return {**m, **fluency_of_answers(Path(eval_dir) / "answers_detail.jsonl", vocab)}


def _kl_last(log: Path, n: int = 10) -> float:
    """Mean per-token KL π_old‖π_ref (the log's ``kl``) over the last ``n`` rollouts."""
    kl = [json.loads(ln)["kl"] for ln in log.read_text().splitlines() if ln.strip()][-n:]
    return round(sum(kl) / len(kl), 4)


def _evaluate(model: Path, world, out: Path, eval_cfg) -> dict:
    """The grid's evaluation of ``model`` on another world/split (resumable: reuses eval.json)."""
    from visalign.eval.suite import evaluate_model

    done = out / "eval.json"
    if done.exists():
        m = json.loads(done.read_text())["metrics"]
    else:
        with contextlib.redirect_stdout(sys.stderr):
            m = evaluate_model(str(model), world, out, eval_cfg)["metrics"]
    m = _with_fluency(m, out, world.root)
    return {k: round(m[k], 4) for k in TEST_KEYS}


def _parse_setting(spec: str, demo: Path) -> tuple[str, dict]:
    """'name:key=value,...' -> (name, overrides); values parsed as YAML scalars; a dotted key
    ('lora.projector=true') sets a nested field."""
    import yaml

    name, _, rest = spec.partition(":")
    over: dict = {"lam": 0.0}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        *parents, leaf = k.strip().split(".")
        node = over
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(v)
    if over.get("reward_source") == "annotations":
        over.setdefault("oracle_instances",
                        str(demo / "world" / "annotations" / "instances_train.json"))
        over.setdefault("oracle_synonyms", str(demo / "world" / "synonyms.txt"))
    return name, over


if __name__ == "__main__":
    main()
