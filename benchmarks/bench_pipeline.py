"""Wall time per stage and throughput of the micro-world pipeline; prints one JSON object.

Runs ``visalign demo`` into ``--out`` (resumable: an existing finished demo dir is only read),
then reports

- ``stages``: seconds per stage as the grid recorded them (world, base, each cell's train and
  eval), and the demo's total;
- ``train``: samples/second of every trainer run (SFT, DPO, FiSAO's PPO, and the base model's
  stages), from their ``train_summary.json``; FiSAO's verifier share of rollout time;
- ``generation``: tokens/second of batched greedy description generation with the base model,
  measured here on ``--gen-images`` held-out prompts (new tokens counted with the tokenizer);
- ``evaluation``: CHAIR captions/second on the base model's held-out descriptions;
- ``quality``: the results table's headline numbers per row (CHAIR, POPE F1, recall).

    python benchmarks/bench_pipeline.py --out demo_out [--gen-images 64] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _summaries(root: Path) -> dict:
    out = {}
    for p in sorted(root.glob("**/train_summary.json")):
        s = json.loads(p.read_text())
        rel = str(p.parent.relative_to(root))
        out[rel] = {k: s[k] for k in ("steps", "samples", "seconds", "samples_per_second",
                                      "verifier_share_of_rollout") if k in s}
    return out


def _generation_speed(base: Path, world, n: int) -> dict:
    from visalign.io import read_jsonl
    from visalign.models import load_vlm
    from PIL import Image

    vlm = load_vlm(str(base))
    prompts = read_jsonl(world.prompts_path(world.eval_split))[:n]
    images = [Image.open(world.image_root / p["image"]).convert("RGB") for p in prompts]
    tok = vlm.processor.tokenizer
    t = time.time()
    texts = []
    for i in range(0, len(prompts), 32):
        texts += vlm.generate(images[i:i + 32], [p["prompt"] for p in prompts[i:i + 32]],
                              max_new_tokens=96)
    dt = time.time() - t
    n_tok = sum(len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for x in texts)
    return {"responses": len(texts), "new_tokens": n_tok, "seconds": round(dt, 2),
            "tokens_per_second": round(n_tok / dt, 1)}


def _chair_speed(out: Path, world) -> dict:
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_jsonl

    answers = read_jsonl(out / "cells" / "base" / "eval" / "answers_detail.jsonl")
    caps = [{"image_id": a["image_id"], "caption": a["answer"]} for a in answers]
    split = world.eval_split
    t = time.time()
    chair = Chair.from_coco(world.instances_path(split), world.captions_path(split),
                            load_synonyms(world.synonyms_path))
    chair.evaluate(caps)
    dt = time.time() - t
    return {"captions": len(caps), "seconds": round(dt, 3),
            "captions_per_second": round(len(caps) / dt, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--gen-images", type=int, default=64)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from visalign.compare import demo_config, run_compare
    from visalign.world import load_world

    out = Path(args.out)
    t = time.time()
    # the grid's commands print progress lines; stdout is this script's JSON alone
    with contextlib.redirect_stdout(sys.stderr):
        results = run_compare(demo_config(str(out), args.overrides))
    wall = time.time() - t
    world = load_world(out / "world")
    report = {
        "out": str(out),
        "wall_seconds_this_run": round(wall, 1),
        "stages": results["timings"],
        "stages_total_seconds": round(sum(v for k, v in results["timings"].items()
                                          if k != "total_this_run"), 1),
        "train": _summaries(out),
        "generation": _generation_speed(out / "base", world, args.gen_images),
        "evaluation": _chair_speed(out, world),
        "quality": {f"{r['method']}-{r['data_size']}": {
            k: round(r["metrics"][k], 4) for k in ("chair", "chair_s", "chair_i", "recall",
                                                    "pope_f1", "qa_accuracy")
            if k in r["metrics"]} for r in results["rows"]},
        "analysis": results.get("analysis", {}),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
