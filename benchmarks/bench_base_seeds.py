"""Base-model recipes across seeds: is a recipe change bigger than the seed-to-seed spread?

Trains ``visalign world base`` once per (recipe, seed), several at a time, then prints one JSON
object: every run's held-out metrics and stage times, and per recipe the mean, standard
deviation, min and max of each metric plus how many runs meet the base's quality ranges.

    python benchmarks/bench_base_seeds.py --world W --out DIR --seeds 1 2 3 --jobs 3 \
        [--preset small|tiny] \
        --recipe shipped= \
        --recipe packed=pack_turns=true,lm_pretrain.batch_size=4,stage2.batch_size=4 \
        [--threads 1] [--deadline-s 0] [--shared-clip] [key=value ...]
        # key=value: given to every run

A recipe is ``NAME=`` followed by comma-separated ``key=value`` overrides of
``visalign world base`` (empty = the shipped defaults). Runs are resumable: a run whose
``eval.json`` exists is read, not retrained. ``--deadline-s`` stops unfinished runs after that
many seconds (they are reported as unfinished). ``--shared-clip`` trains the tokenizer and CLIP
once per seed (``stop_after=clip``, all seeds at once) and copies them into every recipe's
stages dir, so the runs differ only where the recipes do (refused for recipes that change the
tokenizer or CLIP). ``--python`` picks the interpreter, for a
machine where the package is on ``PYTHONPATH`` rather than installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("chair_s", "chair_i", "recall", "pope_random_accuracy", "pope_popular_accuracy",
           "pope_adversarial_accuracy", "qa_accuracy", "clip_auroc")


def meets_targets(m: dict) -> dict:
    """The base's held-out quality ranges (LLaVA-1.5-7B's on COCO), one flag each."""
    pope = [m.get(f"pope_{s}_accuracy", float("nan")) for s in ("random", "popular",
                                                                 "adversarial")]
    return {
        "chair_s_20_60": 0.20 <= m.get("chair_s", -1) <= 0.60,
        "chair_i_5_25": 0.05 <= m.get("chair_i", -1) <= 0.25,
        "recall_ge_50": m.get("recall", -1) >= 0.50,
        "pope_65_92": all(0.65 <= p <= 0.92 for p in pope),
        "pope_order": pope[2] < pope[1] <= pope[0],
        "clip_auroc_ge_85": m.get("clip_auroc", -1) >= 0.85,
    }


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--recipe {text!r}: expected NAME=key=value,key=value (or NAME=)")
    return name, [kv for kv in rest.split(",") if kv.strip()]


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["recipe"] for r in runs):
        done = [r for r in runs if r["recipe"] == name and r.get("metrics")]
        s: dict = {"runs": len(done), "seeds": [r["seed"] for r in done]}
        for k in METRICS + ("train_seconds",):
            vals = [r["metrics"][k] if k in r["metrics"] else r.get(k) for r in done]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if vals:
                s[k] = {"mean": round(statistics.fmean(vals), 4),
                        "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else None,
                        "min": round(min(vals), 4), "max": round(max(vals), 4)}
        if done:
            s["targets_met"] = {t: sum(r["targets"][t] for r in done)
                                for t in done[0]["targets"]}
        out[name] = s
    return out


SHARED_STAGES = ("tokenizer", "clip")


def share_clip(args: argparse.Namespace, recipes: list, out: Path, env: dict) -> None:
    """Train tokenizer + CLIP once per seed under ``out/_shared`` (all seeds at once)."""
    for name, ov in recipes:
        bad = [kv for kv in ov + args.overrides
               if kv.split("=")[0].split(".")[0] in ("clip", "clip_arch", "vocab_size")]
        if bad:
            raise SystemExit(f"--shared-clip: recipe {name!r} changes the tokenizer or CLIP "
                             f"({', '.join(bad)})")
    procs = []
    for seed in args.seeds:
        mdir = out / "_shared" / f"seed{seed}"
        if (mdir.parent / f"seed{seed}.stages" / "clip" / "clip_summary.json").exists():
            continue
        mdir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [args.python, "-m", "visalign.cli", "world", "base", "--world", args.world,
               "--out", str(mdir), "--preset", args.preset, f"seed={seed}", "progress=false",
               "stop_after=clip", *args.overrides]
        log = open(mdir.parent / f"seed{seed}.log", "w")
        procs.append((seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
    for seed, p in procs:
        if p.wait() != 0:
            raise SystemExit(f"--shared-clip: CLIP of seed {seed} failed, see "
                             f"{out / '_shared' / f'seed{seed}.log'}")
    SHARED["clip_seconds"] = round(time.time() - T0, 1)
    print(json.dumps({"shared_clip_seconds": SHARED["clip_seconds"]}), file=sys.stderr,
          flush=True)


T0 = time.time()
SHARED: dict = {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="small", choices=("small", "tiny"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", action="append", default=[], help="NAME=key=value,...")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP/torch threads per run (0: leave the environment's)")
    ap.add_argument("--deadline-s", type=float, default=0, help="0 = none")
    ap.add_argument("--shared-clip", action="store_true",
                    help="one tokenizer + CLIP per seed, copied into every recipe's run")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("overrides", nargs="*", help="key=value given to every run")
    args = ap.parse_args()
    recipes = [parse_recipe(r) for r in (args.recipe or ["shipped="])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.shared_clip:
        share_clip(args, recipes, out, env)
    todo = [(name, ov, seed) for seed in args.seeds for name, ov in recipes]
    t0 = T0     # the deadline counts the shared CLIP too
    running: list[tuple[subprocess.Popen, str, int, Path, float]] = []
    runs: list[dict] = []

    def record(name: str, seed: int, mdir: Path, seconds: float | None, rc: int | None) -> None:
        row: dict = {"recipe": name, "seed": seed, "dir": str(mdir), "rc": rc}
        ev = mdir / "eval.json"
        if ev.exists():
            res = json.loads(ev.read_text())
            row["metrics"] = res["metrics"]
            row["timings"] = res.get("timings", {})
            row["train_seconds"] = round(sum(v for k, v in row["timings"].items()
                                             if k != "eval"), 1)
            row["targets"] = meets_targets(res["metrics"])
        row["wall_seconds"] = seconds
        runs.append(row)
        print(json.dumps({k: row.get(k) for k in ("recipe", "seed", "rc", "train_seconds")}),
              file=sys.stderr, flush=True)

    while todo or running:
        while todo and len(running) < max(1, args.jobs):
            name, ov, seed = todo.pop(0)
            mdir = out / name / f"seed{seed}"
            if (mdir / "eval.json").exists():
                record(name, seed, mdir, None, 0)
                continue
            mdir.parent.mkdir(parents=True, exist_ok=True)
            if args.shared_clip:
                for part in SHARED_STAGES:
                    dst = mdir.parent / f"seed{seed}.stages" / part
                    if not dst.exists():
                        shutil.copytree(out / "_shared" / f"seed{seed}.stages" / part, dst)
            cmd = [args.python, "-m", "visalign.cli", "world", "base", "--world", args.world,
                   "--out", str(mdir), "--preset", args.preset, f"seed={seed}", "progress=false", *ov, *args.overrides]
            log = open(mdir.parent / f"seed{seed}.log", "w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((p, name, seed, mdir, time.time()))
        time.sleep(2)
        for item in list(running):
            p, name, seed, mdir, started = item
            if p.poll() is not None:
                running.remove(item)
                record(name, seed, mdir, round(time.time() - started, 1), p.returncode)
        if args.deadline_s and time.time() - t0 > args.deadline_s:
            for p, name, seed, mdir, started in running:
                p.kill()
                record(name, seed, mdir, round(time.time() - started, 1), None)
            running = []
            for name, _, seed in todo:
                runs.append({"recipe": name, "seed": seed, "rc": None, "skipped": True})
            todo = []
    result = {"world": args.world, "preset": args.preset, "recipes": {n: ov for n, ov in recipes},
              "common_overrides": args.overrides, "seeds": args.seeds, "jobs": args.jobs,
              "threads": args.threads, "wall_seconds": round(time.time() - t0, 1),
              "shared_clip": SHARED or None, "summary": summarise(runs), "runs": runs}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "summary.json")
    print(json.dumps(result, indent=1))
    return 0 if all(r.get("rc") == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
