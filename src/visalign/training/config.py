"""Settings every trainer shares (:class:`TrainConfig`) and the LoRA settings inside them."""

from __future__ import annotations

import dataclasses
from typing import Literal

from visalign.config import field


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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        "auto", help="weights' dtype: 'auto' = bfloat16 on a CUDA GPU that supports it, float32 "
        "otherwise (so CPU runs stay float32); a 7B model in float32 is 28 GB of weights alone")
    gradient_checkpointing: bool = field(
        False, help="recompute activations in the backward pass (transformers' checkpointing, "
        "use_reentrant=False; works with LoRA): ~30 % more compute for far less activation "
        "memory, what lets 7B-13B batches fit")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = field(
        "sdpa", help="attention kernel: sdpa (torch's, the default), eager, or flash_attention_2 "
        "(needs the flash-attn package and a CUDA GPU; fp16/bf16 only)")
    load_in_4bit: bool = field(
        False, help="QLoRA: load the frozen base in 4-bit NF4 with double quantisation and "
        "bfloat16 compute (bitsandbytes, CUDA only; pip install 'visalign[gpu]'), prepared with "
        "peft's prepare_model_for_kbit_training; needs trainable=lora")
    report_to: Literal["none", "tensorboard", "wandb"] = field(
        "none", help="also log the training curves (loss, reward, KL, clip fraction, lr, "
        "tokens/s, peak GPU memory) through accelerate's tracker: tensorboard writes event files "
        "under OUT/tracking, wandb a run (offline with WANDB_MODE=offline); the resolved config "
        "goes with the run. log.jsonl is always written")
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
