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
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from visalign.config import ConfigError, field, save_run_config
from visalign.io import JsonlAppender, write_json


@dataclasses.dataclass
class LoraSettings:
    r: int = field(16, help="LoRA rank")
    alpha: int = field(32, help="LoRA alpha")
    dropout: float = field(0.0, help="LoRA dropout")
    target_modules: str = field(
        "auto", help="'auto' = the language model's linear layers; 'q_proj+v_proj' (or "
        "comma-separated) = only those; 'none' = none (with projector=true)")
    projector: bool = field(
        False, help="also adapt the projector's linear layers (the vision tower never trains)")


@dataclasses.dataclass
class TrainConfig:
    """Settings shared by every trainer."""

    model: str = field("", help="model dir (HF format) or hub id")
    out: str = field("", help="output dir: model/, checkpoints/, log.jsonl, config.yaml")
    image_root: str = field("", help="root for relative image paths in the data")
    trainable: Literal["lora", "full", "lm", "projector", "lm+projector"] = field(
        "lora", help="which parameters train; the vision tower never does")
    lora: LoraSettings = field(default_factory=LoraSettings)
    epochs: float = field(1.0, help="passes over the data (fractions allowed)")
    max_steps: int = field(0, help="optimiser steps; 0 = from epochs")
    batch_size: int = field(8, help="per-device micro-batch size")
    grad_accum: int = field(1, help="gradient accumulation steps")
    lr: float = field(2e-4, help="peak learning rate")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    warmup_ratio: float = field(0.03, help="share of steps with linear warm-up")
    schedule: Literal["cosine", "linear", "constant"] = field("cosine", help="LR schedule")
    max_grad_norm: float = field(1.0, help="gradient clipping (0 = off)")
    max_length: int = field(0, help="truncate sequences to this many tokens (0 = no limit)")
    seed: int = field(0, help="seed for data order, init of new weights and sampling")
    dtype: str = field("float32", help="model dtype: float32, bfloat16, float16")
    mixed_precision: Literal["no", "bf16"] = field(
        "no", help="bf16 = autocast the loss computation to bfloat16 (weights, gradients and "
        "optimiser stay in the model dtype); also pays on CPUs with AVX512-BF16 or AMX")
    save_every: int = field(0, help="checkpoint every N optimiser steps (0 = only at the end)")
    log_every: int = field(10, help="log every N optimiser steps")
    save_merged: bool = field(True, help="with LoRA, also save the merged model to out/model")
    progress: bool = field(True, help="show a progress bar")
    group_by_length: bool = field(
        False, help="batch items of similar length together (less padding; each epoch still "
        "shuffles which batches come when)")
    padding_free: bool = field(
        False, help="pack each batch's sequences end to end with a block-diagonal causal mask "
        "(data.packing): the same sequences and loss, no padded positions; for token-level "
        "losses (SFT, the base stages), not DPO or FiSAO; not for Qwen2-VL's 3-D positions")
    padding_free_capacity: int = field(
        0, help="with padding_free, row length in tokens (0 = the batch's longest sequence)")


def item_length(item: Any) -> int:
    """Cheap length proxy of a dataset item for length grouping: characters of its text (a
    ``(prompt, answer)`` tuple, a string, or a record with ``conversations``)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, (tuple, list)):
        return sum(item_length(x) for x in item)
    if isinstance(item, dict):
        if "conversations" in item:
            return sum(len(str(t.get("value", ""))) for t in item["conversations"])
        return sum(item_length(v) for v in item.values() if isinstance(v, (str, list, tuple)))
    return 0


class LengthGroupedSampler:
    """Indices in batches of similar length, the batches in random order.

    Each epoch: a seeded permutation is cut into mega-batches of ``batch_size × mega`` items,
    each sorted by length and cut into batches; the batches are then shuffled (a partial batch,
    if any, stays last so the DataLoader's batching lines up with ours). The same idea as
    transformers' ``LengthGroupedSampler``; ours is an index sampler with ``set_epoch`` so
    accelerate's sharding, ``skip_first_batches`` and resume work unchanged. On padded text
    (the micro-world's LM pre-training) it cuts the tokens processed by about half.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(1, mega)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n, bs = len(self.lengths), self.batch_size
        perm = torch.randperm(n, generator=g).tolist()
        full, partial = [], []
        chunk = bs * self.mega
        for i in range(0, n, chunk):
            part = sorted(perm[i:i + chunk], key=lambda j: -self.lengths[j])
            for k in range(0, len(part), bs):
                (full if len(part[k:k + bs]) == bs else partial).append(part[k:k + bs])
        order = torch.randperm(len(full), generator=g).tolist()
        return [full[b] for b in order] + partial

    def __iter__(self):
        for b in self.batches():
            yield from b

    def __len__(self) -> int:
        return len(self.lengths)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_trainable(model: Any, which: str) -> int:
    """Freeze/unfreeze parameters by role; returns the number of trainable parameters.

    The vision tower (``vision_tower``/``visual`` blocks) never trains: it is FiSAO's verifier
    and LLaVA's recipe keeps it frozen. The projector is ``multi_modal_projector`` (LLaVA) or
    ``visual.merger`` (Qwen2-VL).
    """
    n = 0
    for name, p in model.named_parameters():
        is_proj = "multi_modal_projector" in name or ".merger." in name
        is_vision = (not is_proj) and ("vision_tower" in name or re.search(r"(^|\.)visual\.", name)
                                       is not None)
        if which == "projector":
            train = is_proj
        elif which == "lm":
            train = not is_proj and not is_vision
        elif which in ("lm+projector", "full"):
            train = not is_vision
        elif which == "lora":
            train = "lora_" in name
        else:
            raise ValueError(f"unknown trainable={which!r}")
        p.requires_grad_(train)
        n += p.numel() if train else 0
    if n == 0:
        raise ValueError(f"trainable={which!r} selects no parameters")
    return n


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def latest_checkpoint(out: str | Path) -> Path | None:
    ckdir = Path(out) / "checkpoints"
    if not ckdir.exists():
        return None
    cks = [p for p in ckdir.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
           and (p / "trainer_state.json").exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1]), default=None)


@dataclasses.dataclass
class TrainResult:
    out: Path
    model_dir: Path
    steps: int
    seconds: float
    samples: int
    last_stats: dict


def prepare_model(vlm: Any, cfg: TrainConfig) -> Any:
    """Apply LoRA / freezing per ``cfg.trainable``; returns the module to optimise."""
    model = vlm.model
    if cfg.trainable == "lora":
        from visalign.models.lora import add_lora

        model = add_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                         target_modules=cfg.lora.target_modules,
                         projector=cfg.lora.projector)
        vlm.model = model
    set_trainable(model, cfg.trainable)
    return model


def save_model(vlm: Any, cfg: TrainConfig, out: Path) -> Path:
    """Save the trained model as a loadable HF dir (``out/model``) and the adapter if LoRA."""
    model = vlm.model
    model_dir = out / "model"
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    if cfg.trainable == "lora":
        model.save_pretrained(out / "adapter")
        if cfg.save_merged:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp)
    if tmp.exists():
        vlm.processor.save_pretrained(tmp)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    return model_dir if model_dir.exists() else out / "adapter"


def run_training(cfg: TrainConfig, vlm: Any, dataset: Sequence[Any],
                 collate: Callable[[list], dict], loss_fn: Callable[[Any, dict], tuple],
                 *, name: str = "train", config_obj: Any = None) -> TrainResult:
    """Train ``vlm`` on ``dataset`` with ``loss_fn``; resumable; returns where the model is.

    ``collate(items) -> batch`` builds tensors (via ``VLM.encode``); ``loss_fn(model, batch) ->
    (loss, stats_dict)``. Global batch = batch_size × grad_accum × processes.
    """
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        save_run_config(config_obj if config_obj is not None else cfg, out)
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
        acc.load_state(str(ck))
        state.update(json.loads((ck / "trainer_state.json").read_text()))
        acc.print(f"[{name}] resumed from {ck} at step {state['step']}")

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
            if log and (state["step"] % cfg.log_every == 0 or state["step"] == total):
                log.write({"step": state["step"], "lr": sched.get_last_lr()[0], **stats,
                           "elapsed": round(time.time() - t0, 2)})
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total:
                _checkpoint(acc, out, state)
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
    model_dir = out / "model"
    if acc.is_main_process:
        vlm.model = acc.unwrap_model(model)
        model_dir = save_model(vlm, cfg, out)
        seconds = time.time() - t0
        write_json(out / "train_summary.json", {
            "name": name, "steps": state["step"], "samples": state["samples"],
            "seconds": round(seconds, 3),
            "samples_per_second": round(state["samples"] / max(seconds, 1e-9), 3),
            "last": stats})
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, state["step"], time.time() - t0, state["samples"], stats)


def _checkpoint(acc: Any, out: Path, state: dict) -> None:
    path = out / "checkpoints" / f"step-{state['step']}"
    acc.save_state(str(path), safe_serialization=True)
    if acc.is_main_process:
        # Written last: a checkpoint dir without it is incomplete and ignored on resume.
        write_json(path / "trainer_state.json", state)
        for old in sorted((out / "checkpoints").glob("step-*"),
                          key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
