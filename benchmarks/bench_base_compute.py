"""How far is the base recipe from its compute floor on this machine? Prints one JSON object.

For each LLaVA training stage of ``visalign world base`` (LM pre-training on scene text,
stage 1, stage 2), counts the tokens one epoch feeds the model (answer tokens, all real tokens,
and padded positions under the recipe's random batches), then times forward + backward +
AdamW steps of the packaged base on real batches of that stage with the stage's trainable
parameters, and reports the measured throughput and the implied seconds per stage. If the
implied seconds are close to the recorded stage times (``eval.json`` timings), the stage is
compute-bound and only fewer or shorter sequences, or a smaller model, can make it faster.

    python benchmarks/bench_base_compute.py --world W [--model M] [--steps 8]
        [--padding-free [--capacity stage2=320]]

``--padding-free`` also times each batch repacked by ``data.packing`` (the same batches,
padded and packed steps alternating so machine noise hits both alike) and reports the speed-up
and the implied stage seconds with ``padding_free=true``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time


def main() -> int:
    import torch

    from visalign.methods.base_model.packaged import packaged_base_dir
    from visalign.data.packing import pack_padded_batch
    from visalign.data.llava import load_llava_records
    from visalign.training import conversation_items, make_collate
    from visalign.models import load_vlm
    from visalign.training import set_trainable
    from visalign.world import load_world
    from visalign.methods.base_model import text_collate, base_config, scene_lm_texts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--model", default=None, help="default: the packaged base")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per stage (after 2 warm-up)")
    ap.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                    help="bf16: forward under torch.autocast (CPU bf16 matmuls), as "
                    "TrainConfig.mixed_precision=bf16 trains")
    ap.add_argument("--stages", default="lm_pretrain,stage1,stage2",
                    help="comma list of the stages to time")
    ap.add_argument("--padding-free", action="store_true",
                    help="also time the same batches packed without padding (data.packing)")
    ap.add_argument("--capacity", nargs="*", default=[],
                    help="STAGE=TOKENS packed row length per stage (default: longest sequence)")
    ap.add_argument("--count-batches", type=int, default=200,
                    help="random batches sampled to estimate padded positions")
    args = ap.parse_args()
    capacity = {k: int(v) for k, v in (c.split("=", 1) for c in args.capacity)}
    cfg = base_config("small")
    model_dir = args.model or str(packaged_base_dir())
    world = load_world(args.world)
    vlm = load_vlm(model_dir)
    tok = vlm.processor.tokenizer if hasattr(vlm.processor, "tokenizer") else vlm.tokenizer
    records = load_llava_records(world.llava_path("train"))
    s1_tasks = {t.strip() for t in cfg.stage1_tasks.split(",")}
    stages = {
        "lm_pretrain": (cfg.lm_pretrain, "lm",
                        scene_lm_texts(world, records, cfg.lookup_per_image, cfg.seed),
                        text_collate(tok, 256)),
        "stage1": (cfg.stage1, "projector",
                   conversation_items([r for r in records if r.get("task") in s1_tasks],
                                      str(world.image_root)), make_collate(vlm)),
        "stage2": (cfg.stage2, "lm+projector",
                   conversation_items([r for r in records if r.get("task") != "caption"],
                                      str(world.image_root)), make_collate(vlm)),
    }
    model = vlm.model
    rng = random.Random(0)
    out: dict = {"model": model_dir, "threads": torch.get_num_threads(),
                 "mixed_precision": args.mixed_precision, "stages": {}}
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    for name, (st, trainable, items, collate) in stages.items():
        if name not in wanted:
            continue
        # one-epoch token counts, estimated from random batches of the stage's size
        real = padded = answer = 0
        for _ in range(args.count_batches):
            b = collate([items[rng.randrange(len(items))] for _ in range(st.batch_size)])
            real += int(b["attention_mask"].sum())
            padded += b["attention_mask"].numel()
            answer += int((b["labels"] != -100).sum())
        per_batch = {"real": real / args.count_batches, "padded": padded / args.count_batches,
                     "answer": answer / args.count_batches}
        steps_per_epoch = len(items) / st.batch_size
        # timed steps
        set_trainable(model, trainable)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        times, packed_times, rows = [], [], []

        def step(b: dict) -> float:
            t0 = time.perf_counter()
            cast = (torch.autocast("cpu", dtype=torch.bfloat16)
                    if args.mixed_precision == "bf16" else contextlib.nullcontext())
            with cast:
                loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        for i in range(args.steps + 2):
            b = collate([items[rng.randrange(len(items))] for _ in range(st.batch_size)])
            pb = pack_padded_batch(b, vlm.pad_token_id, capacity.get(name, 0)) \
                if args.padding_free else None
            if pb is not None and i % 2:
                second, first = step(pb), step(b)
            else:
                first, second = step(b), (step(pb) if pb is not None else None)
            if i >= 2:
                times.append(first)
                if second is not None:
                    packed_times.append(second)
                    rows.append(pb["input_ids"].numel() / b["input_ids"].numel())
        step_s = sum(times) / len(times)
        out["stages"][name] = {
            "items": len(items), "epochs": st.epochs, "batch_size": st.batch_size,
            "tokens_per_batch": {k: round(v, 1) for k, v in per_batch.items()},
            "padding_share": round(1 - per_batch["real"] / per_batch["padded"], 3),
            "step_seconds": round(step_s, 4),
            "padded_tokens_per_second": round(per_batch["padded"] / step_s, 1),
            "implied_stage_seconds": round(step_s * steps_per_epoch * st.epochs, 1),
            "implied_seconds_without_padding": round(
                step_s * steps_per_epoch * st.epochs * per_batch["real"] / per_batch["padded"], 1),
        }
        if packed_times:
            pf = sum(packed_times) / len(packed_times)
            out["stages"][name]["padding_free"] = {
                "capacity": capacity.get(name, 0),
                "positions_vs_padded": round(sum(rows) / len(rows), 3),
                "step_seconds": round(pf, 4), "speedup": round(step_s / pf, 2),
                "implied_stage_seconds": round(pf * steps_per_epoch * st.epochs, 1)}
        print(json.dumps({name: out["stages"][name]}), flush=True, file=sys.stderr)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
