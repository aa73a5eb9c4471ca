"""Time per generated token of the micro-world model: ``VLM.generate`` (greedy, as
``visalign generate`` and the evaluation run it) and ``VLM.rollout`` (seeded sampling, as FiSAO
runs it), against a lower bound: the model's own forward pass with a KV cache, one step per
token, timed alone (no pre/post-processing, no generation loop, greedy argmax). Prints one JSON
object.

For each batch size the same ``--n`` prompts of the world's val split are answered in batches;
``steps`` counts decoding steps (a batch runs until its longest answer ends), ``tokens`` the
answer tokens (through EOS). The lower bound runs as many forward steps per batch as
``generate`` did, once with transformers' ``DynamicCache`` (what ``generate`` uses by default)
and, when this visalign has it, with :func:`visalign.models.decoding.growing_cache`. Times are
the minimum over ``--repeats`` of CPU time (``process_time``; with ``--threads 1`` it is the
compute time, robust to other jobs on the machine) and of wall time. ``tokens_sha256`` digests
every generated token id, so two runs (e.g. before/after a change, ``PYTHONPATH`` pointing at
either source tree) can be checked for identical outputs.

    python benchmarks/bench_generation.py --world W [--model DIR] [--batch-sizes 1,8,16,32,64]
        [--n 64] [--max-new-tokens 128] [--repeats 3] [--threads 1]

Without ``--world`` the small world (seed 0) is built in a temp dir (~20 s) and the packaged
base installed on it; ``--model`` defaults to that base.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _world_and_model(args, tmp: Path) -> tuple[Path, Path]:
    world = Path(args.world) if args.world else None
    if world is None:
        from visalign.world import build_world, world_config

        world = tmp / "world"
        print("building the small world (seed 0) ...", file=sys.stderr)
        build_world(world_config("small", seed=0), world, preset="small")
    model = Path(args.model) if args.model else None
    if model is None:
        from visalign.methods.base_model.packaged import install_packaged_base

        model = install_packaged_base(world, tmp / "base")
    return world, model


def _prompts(world: Path, n: int):
    from PIL import Image

    recs = [json.loads(line) for line in
            (world / "prompts" / "val_detail.jsonl").read_text().splitlines()[:n]]
    images = []
    for r in recs:
        with Image.open(world / "images" / r["image"]) as im:
            images.append(im.convert("RGB"))
    return images, [r["prompt"] for r in recs]


def _lower_bound(vlm, batches, steps_per_batch, cache_fn) -> tuple[float, float]:
    """Prefill + (steps - 1) one-token forwards per batch, greedy argmax, inputs prepared
    outside the timer."""
    import torch

    from visalign.models.adapter import to_model

    model = vlm.model
    prepared = [to_model(vlm._process(ims, vlm._prompt_texts(ps), padding_side="left"), model)
                for ims, ps in batches]
    wall = cpu = 0.0
    with torch.no_grad():
        for inputs, steps in zip(prepared, steps_per_batch):
            w0, c0 = _clock()
            cache = cache_fn(inputs["input_ids"].shape[1], steps)
            kw = {} if cache is None else {"cache": cache}
            out = model(**inputs, use_cache=True, logits_to_keep=1, **kw)
            cache, mask = out.cache, inputs["attention_mask"]
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps - 1):
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = model(input_ids=tok, attention_mask=mask, cache=cache, use_cache=True,
                            logits_to_keep=1)
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
            w1, c1 = _clock()
            wall, cpu = wall + w1 - w0, cpu + c1 - c0
    return wall, cpu


def bench_batch_size(vlm, images, prompts, bs: int, max_new: int, repeats: int) -> dict:
    batches = [(images[i:i + bs], prompts[i:i + bs]) for i in range(0, len(prompts), bs)]
    out: dict = {"batch_size": bs, "batches": len(batches)}
    steps_per_batch: list[int] = []
    for mode in ("generate", "rollout"):
        best_w = best_c = float("inf")
        for _ in range(repeats):
            steps, tokens, digest = [], 0, hashlib.sha256()
            w0, c0 = _clock()
            for b, (ims, ps) in enumerate(batches):
                seeds = [1000 + b * bs + i for i in range(len(ps))]
                if mode == "generate":
                    inputs, new = vlm._generate_tokens(
                        ims, ps, max_new_tokens=max_new, do_sample=False, temperature=1.0,
                        top_p=1.0, generator_seed=None, seeds=None)
                    rows, _, _ = vlm._responses(new)
                    vlm._decode(rows)
                else:
                    ro = vlm.rollout(ims, ps, max_new_tokens=max_new, seeds=seeds)
                    rows = ro.response_ids
                steps.append(max(map(len, rows)) if rows else 0)
                tokens += sum(map(len, rows))
                digest.update(json.dumps(rows).encode())
            w1, c1 = _clock()
            best_w, best_c = min(best_w, w1 - w0), min(best_c, c1 - c0)
        if mode == "generate":
            steps_per_batch = steps
        out[mode] = {"tokens": tokens, "steps": sum(steps), "cpu_s": round(best_c, 3),
                     "wall_s": round(best_w, 3),
                     "ms_per_token": round(1000 * best_c / tokens, 3),
                     "ms_per_step": round(1000 * best_c / sum(steps), 3),
                     "tokens_sha256": digest.hexdigest()[:16]}
    tokens = out["generate"]["tokens"]
    caches = {"forward_dynamic_cache": lambda p, s: None}
    try:
        from visalign.models.decoding import growing_cache

        caches["forward_growing_cache"] = lambda p, s: growing_cache(vlm.model, p + s)
    except ImportError:
        pass
    for name, fn in caches.items():
        best_w = best_c = float("inf")
        for _ in range(repeats):
            w, c = _lower_bound(vlm, batches, steps_per_batch, fn)
            best_w, best_c = min(best_w, w), min(best_c, c)
        out[name] = {"cpu_s": round(best_c, 3), "wall_s": round(best_w, 3),
                     "ms_per_token": round(1000 * best_c / tokens, 3),
                     "ms_per_step": round(1000 * best_c / sum(steps_per_batch), 3)}
    # per step: a rollout's answers (sampled) are not as long as the greedy ones
    lb = out["forward_dynamic_cache"]["ms_per_step"]
    out["generate_over_forward"] = round(out["generate"]["ms_per_step"] / lb, 3)
    out["rollout_over_forward"] = round(out["rollout"]["ms_per_step"] / lb, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--n", type=int, default=64, help="prompts answered per batch size")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    import visalign
    from visalign.models.loading import load_vlm

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        world, model_dir = _world_and_model(args, Path(tmp))
        vlm = load_vlm(str(model_dir))
        images, prompts = _prompts(world, args.n)
        rows = []
        for bs in (int(x) for x in args.batch_sizes.split(",")):
            print(f"batch size {bs} ...", file=sys.stderr, flush=True)
            rows.append(bench_batch_size(vlm, images, prompts, bs, args.max_new_tokens,
                                         args.repeats))
    out = {"benchmark": "generation", "visalign": str(Path(visalign.__file__).parent),
           "model": "packaged micro-world base" if not args.model else args.model,
           "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "by_batch_size": rows}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
