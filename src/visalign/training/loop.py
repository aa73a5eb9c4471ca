"""The training loop every method shares (base-model stages, continual SFT, nSFT, DPO).

One loop instead of one trainer per algorithm: the methods differ only in their data and their
loss function (``loss_fn(model, batch) -> (loss, stats)``), so every method sees the same data
handling, optimiser, schedule, LoRA targets and checkpointing, which is what makes a comparison
honest. It runs under ``accelerate`` (``accelerate launch -m visalign.cli train ...`` for
DDP/DeepSpeed/FSDP), checkpoints with ``accelerator.save_state`` (safetensors) and resumes from
the newest checkpoint in ``out/checkpoints``. FiSAO's PPO has its own outer loop
(rollout → reward → e epochs) but reuses the pieces here.

Why not TRL's SFTTrainer/DPOTrainer: their VLM paths assume hub processors and per-model
collators; our ``VLM.encode`` already masks labels for every supported architecture, and a single
loop keeps cont-SFT, nSFT and the DPO baselines on identical footing. ``dpo_loss`` matches TRL's
sigmoid loss (tested by hand-computed values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from visalign.config import ConfigError, save_run_config
from visalign.io import JsonlAppender, write_json
from visalign.training.checkpoint import (check_resume, latest_checkpoint, save_checkpoint,
                                          save_model)
from visalign.training.config import TrainConfig
from visalign.training.engine import launched_engine, make_accelerator
from visalign.training.params import check_memory_settings, prepare_model
from visalign.training.sampler import LengthGroupedSampler, item_length
from visalign.training.schedule import lr_lambda, seed_everything
from visalign.training.tracking import (Throughput, end_tracking, start_tracking, track,
                                        tracking_dir)


@dataclasses.dataclass
class TrainResult:
    out: Path
    model_dir: Path
    steps: int
    seconds: float
    samples: int
    last_stats: dict


def run_training(cfg: TrainConfig, vlm: Any, dataset: Sequence[Any],
                 collate: Callable[[list], dict], loss_fn: Callable[[Any, dict], tuple],
                 *, name: str = "train", config_obj: Any = None) -> TrainResult:
    """Train ``vlm`` on ``dataset`` with ``loss_fn``; resumable; returns where the model is.

    ``collate(items) -> batch`` builds tensors (via ``VLM.encode``); ``loss_fn(model, batch) ->
    (loss, stats_dict)``. Global batch = batch_size × grad_accum × processes.
    """
    import torch
    from torch.utils.data import DataLoader

    check_memory_settings(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    acc = make_accelerator(grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm,
                           report_to=cfg.report_to, project_dir=str(tracking_dir(out)))
    run_cfg = config_obj if config_obj is not None else cfg
    if acc.is_main_process:
        save_run_config(run_cfg, out)
    model = prepare_model(vlm, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: dict = {"shuffle": True, "generator": gen}
    if cfg.group_by_length:
        order = {"sampler": LengthGroupedSampler([item_length(x) for x in dataset],
                                                 cfg.batch_size, cfg.seed)}
    if cfg.padding_free_capacity and not cfg.padding_free:
        raise ConfigError("padding_free_capacity is set but padding_free is off")
    if cfg.padding_free:
        from visalign.data.packing import check_attention, packing_collate

        check_attention(vlm.model)
        collate = packing_collate(collate, getattr(vlm, "pad_token_id", 0) or 0,
                                  cfg.padding_free_capacity)
    loader = DataLoader(list(range(len(dataset))), batch_size=cfg.batch_size, drop_last=False,
                        collate_fn=lambda idx: collate([dataset[i] for i in idx]), **order)
    steps_per_epoch = max(1, math.ceil(len(loader) / (cfg.grad_accum * acc.num_processes)))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.schedule, int(cfg.warmup_ratio * total), total))
    # The scheduler is not prepared: accelerate's wrapper steps it once per process per
    # optimiser step (it assumes a shrunken loader), running the schedule N times too fast on
    # N processes. It is stepped here once per synchronised step and checkpointed with the rest.
    model, opt, loader = acc.prepare(model, opt, loader)
    # FSDP2 replaces the parameters by sharded ones: clip the ones the optimiser now holds
    params = [p for p in model.parameters() if p.requires_grad]
    acc.register_for_checkpointing(sched)
    if cfg.mixed_precision == "bf16":
        def autocast():
            return torch.autocast(device_type=acc.device.type, dtype=torch.bfloat16)
    elif cfg.mixed_precision == "no":
        autocast = contextlib.nullcontext
    else:
        raise ConfigError(f"mixed_precision: {cfg.mixed_precision!r} is not 'no' or 'bf16'")

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples": 0}
    ck = latest_checkpoint(out)
    if ck is not None:
        saved = check_resume(acc, ck)
        acc.load_state(str(ck))
        state.update(saved)
        acc.print(f"[{name}] resumed from {ck} at step {state['step']}")
    global_batch = cfg.batch_size * cfg.grad_accum * acc.num_processes
    acc.print(f"[{name}] {launched_engine()}: {acc.num_processes} process(es) x batch "
              f"{cfg.batch_size} x grad_accum {cfg.grad_accum} = global batch {global_batch}; "
              f"{total} optimiser steps")
    start_tracking(acc, cfg.report_to, name, run_cfg)
    speed = Throughput()

    log = JsonlAppender(out / "log.jsonl") if acc.is_main_process else None
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=state["step"], desc=name, dynamic_ncols=True)
    t0 = time.time()
    stats: dict = {}
    model.train()
    done = state["step"] >= total
    while not done:
        acc_loader = loader
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state["epoch"])
        if state["batch_in_epoch"]:
            acc_loader = acc.skip_first_batches(loader, state["batch_in_epoch"])
        for batch in acc_loader:
            with acc.accumulate(model):
                # Autocast here rather than via Accelerator(mixed_precision=...): accelerate's
                # state is a process-wide singleton, so stages with different settings could
                # not run in one process (the base recipe, the test suite).
                with autocast():
                    loss, stats = loss_fn(model, batch)
                # packed batches (padding_free) carry no mask and no padding
                speed.add(batch["attention_mask"].sum() if "attention_mask" in batch
                          else batch["input_ids"].numel())
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                if acc.sync_gradients:
                    sched.step()
                opt.zero_grad()
            state["batch_in_epoch"] += 1
            state["samples"] += cfg.batch_size * acc.num_processes
            if not acc.sync_gradients:
                continue
            state["step"] += 1
            # the mean over processes: a log that shows process 0's micro-batch alone would
            # differ from the 1-process run of the same global batch
            names = ["loss", *stats]
            vals = torch.stack([loss.detach().float().reshape(()),
                                *[torch.as_tensor(v, dtype=torch.float32).detach().reshape(())
                                  for v in stats.values()]]).to(acc.device)
            if acc.num_processes > 1:
                vals = acc.reduce(vals, reduction="mean")
            stats = dict(zip(names, (float(v) for v in vals.cpu())))
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if state["step"] % cfg.log_every == 0 or state["step"] == total:
                if acc.num_processes > 1:   # every process counts its own tokens
                    speed.tokens = float(acc.reduce(torch.as_tensor(
                        speed.tokens, dtype=torch.float64).reshape(1).to(acc.device),
                        reduction="sum")[0])
                row = {"step": state["step"], "lr": sched.get_last_lr()[0], **stats,
                       **speed.row(acc.device), "elapsed": round(time.time() - t0, 2)}
                if log:
                    log.write(row)
                track(acc, cfg.report_to, row, state["step"])
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total:
                save_checkpoint(acc, out, state)
            if state["step"] >= total:
                done = True
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    if bar:
        bar.close()
    if log:
        log.close()
    acc.wait_for_everyone()
    model_dir = save_model(vlm, cfg, out, acc, model)
    vlm.model = acc.unwrap_model(model)
    if acc.is_main_process:
        seconds = time.time() - t0
        write_json(out / "train_summary.json", {
            "name": name, "steps": state["step"], "samples": state["samples"],
            "engine": launched_engine(), "processes": acc.num_processes,
            "global_batch": global_batch, "seconds": round(seconds, 3),
            "samples_per_second": round(state["samples"] / max(seconds, 1e-9), 3),
            "last": stats})
    end_tracking(acc, cfg.report_to)
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, state["step"], time.time() - t0, state["samples"], stats)


