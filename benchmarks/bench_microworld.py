"""The micro-world's base model against the real-model ranges; prints one JSON object.

Builds the world and trains the base model (``visalign world build`` + ``visalign world base``;
both resumable, so an existing ``--out`` is only re-evaluated), then reports the time of each
stage and the held-out numbers next to the ranges that real LLaVA-1.5-7B shows on COCO:
CHAIR_s 20-60 %, CHAIR_i 5-25 %, recall >= 50 %, POPE accuracy 65-92 % with
adversarial < popular <= random, and the verifier's AUROC >= 0.85 for "a photo of a {object}".

    python benchmarks/bench_microworld.py --out runs/microworld [--preset small] [key=value ...]

It also hashes the trained weights (``weights_sha256``). With the small preset, seed 0 and no
overrides that is the packaged base's recipe, and ``matches_packaged`` says whether the
retrained model and verifier are byte-identical to the shipped ones (the base must be
reproducible bit for bit by the command). Run it alone on the machine: the stage times are
wall-clock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "verifier/model.safetensors")


def weight_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of the model's and the verifier's weight files."""
    return {f: hashlib.sha256((model_dir / f).read_bytes()).hexdigest() for f in WEIGHT_FILES
            if (model_dir / f).exists()}

TARGETS = {
    "chair_s": (0.20, 0.60), "chair_i": (0.05, 0.25), "recall": (0.50, 1.0),
    "pope_random_accuracy": (0.65, 0.92), "pope_popular_accuracy": (0.65, 0.92),
    "pope_adversarial_accuracy": (0.65, 0.92), "clip_auroc": (0.85, 1.0),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/microworld")
    ap.add_argument("--preset", default="small", choices=["small", "tiny"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="base model config overrides")
    args = ap.parse_args(argv)

    from visalign.world import build_world, world_config
    from visalign.methods.base_model import base_config, build_base_model

    out = Path(args.out)
    world_dir, model_dir = out / "world", out / "base"
    t = time.time()
    if not (world_dir / "world.json").exists():
        build_world(world_config(args.preset, seed=args.seed), world_dir, overwrite=True,
                    preset=args.preset)
    t_world = time.time() - t
    cfg = base_config(args.preset, [*args.overrides, f"world={world_dir}", f"out={model_dir}",
                                    f"seed={args.seed}", "progress=false"])
    res = build_base_model(cfg)
    m = res["metrics"]
    checks = {k: {"value": round(m[k], 4), "range": list(r), "ok": r[0] <= m[k] <= r[1]}
              for k, r in TARGETS.items() if k in m}
    order_ok = (m["pope_adversarial_accuracy"] < m["pope_popular_accuracy"]
                <= m["pope_random_accuracy"])
    report = {
        "preset": args.preset, "seed": args.seed,
        "timings_s": {"world": round(t_world, 2), **res["timings"],
                      **{f"eval:{k}": v for k, v in res.get("eval_timings", {}).items()}},
        "metrics": {k: round(v, 4) for k, v in m.items() if isinstance(v, float)},
        "targets": checks,
        "pope_order_adv<pop<=rand": order_ok,
        "all_ok": all(c["ok"] for c in checks.values()) and order_ok,
        "weights_sha256": weight_hashes(model_dir),
    }
    if args.preset == "small" and args.seed == 0 and not args.overrides:
        from visalign.methods.base_model.packaged import packaged_base_dir

        shipped = weight_hashes(packaged_base_dir())
        report["packaged_sha256"] = shipped
        report["matches_packaged"] = bool(shipped) and shipped == report["weights_sha256"]
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
