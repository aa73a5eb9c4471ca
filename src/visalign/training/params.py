"""Loading a model for training (dtype, attention kernel, 4-bit) and which parameters train:
LoRA adapters, the language model, the projector; never the vision tower."""

from __future__ import annotations

import re
from typing import Any

from visalign.config import ConfigError
from visalign.training.config import TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


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


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> bfloat16 on a CUDA GPU that supports it, else float32; others unchanged."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
        else "float32"


def check_memory_settings(cfg: TrainConfig) -> None:
    """One-line errors for memory settings this machine or this run cannot honour (before any
    model is loaded or any output is written)."""
    import importlib.util

    import torch

    resolve_dtype(cfg.dtype)
    if cfg.attn_implementation not in ATTENTION:
        raise ConfigError(f"attn_implementation: {cfg.attn_implementation!r} is not one of "
                          f"{', '.join(ATTENTION)}")
    if cfg.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("attn_implementation=flash_attention_2 needs the flash-attn "
                              "package (pip install flash-attn --no-build-isolation): install it "
                              "or use attn_implementation=sdpa")
        if not torch.cuda.is_available():
            raise ConfigError("attn_implementation=flash_attention_2 needs a CUDA GPU: use "
                              "attn_implementation=sdpa on this machine")
        if resolve_dtype(cfg.dtype) == "float32":
            raise ConfigError("attn_implementation=flash_attention_2 runs in bfloat16/float16 "
                              "only: set dtype=bfloat16 (or auto on a GPU)")
    if cfg.load_in_4bit:
        if cfg.trainable != "lora":
            raise ConfigError(f"load_in_4bit=true trains LoRA adapters on a frozen 4-bit base: "
                              f"set trainable=lora (got {cfg.trainable!r})")
        if not torch.cuda.is_available():
            raise ConfigError("load_in_4bit=true needs a CUDA GPU (bitsandbytes 4-bit kernels) "
                              "and this machine has none: set load_in_4bit=false")
        if cfg.save_merged:
            raise ConfigError("load_in_4bit=true: save_merged=true would merge the adapter into "
                              "4-bit weights; set save_merged=false (the adapter loads on the "
                              "bfloat16 base with peft, or merge it there)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("load_in_4bit=true needs bitsandbytes: pip install "
                              "'visalign[gpu]' (or bitsandbytes), or set load_in_4bit=false")
    report = getattr(cfg, "report_to", "none")
    if report not in ("none", "tensorboard", "wandb"):
        raise ConfigError(f"report_to: {report!r} is not one of none, tensorboard, wandb")
    if report != "none" and importlib.util.find_spec(report) is None:
        raise ConfigError(f"report_to={report} needs the {report} package: pip install "
                          f"'visalign[track]', or set report_to=none")


def load_for_training(cfg: TrainConfig, path: str | None = None, device: str = "cpu") -> Any:
    """Load ``path`` (default ``cfg.model``) as a :class:`~visalign.models.VLM` with the run's
    dtype (``auto`` resolved), attention kernel and, with ``load_in_4bit``, as a QLoRA base:
    NF4 weights with double quantisation and bfloat16 compute, on this process's GPU."""
    import os

    from visalign.models import load_vlm

    check_memory_settings(cfg)
    dtype = resolve_dtype(cfg.dtype)
    quant = None
    if cfg.load_in_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16,
                                   # a float storage type lets FSDP2 shard the 4-bit weights
                                   bnb_4bit_quant_storage=torch.bfloat16)
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        dtype = "bfloat16"
    from visalign.training.engine import plain_init

    with plain_init():   # whole on every process; prepare shards it (FSDP, ZeRO-3)
        return load_vlm(path or cfg.model, dtype=dtype, device=device,
                        attn_implementation=cfg.attn_implementation, quantization_config=quant)


def _vision_modules(model: Any) -> list:
    return [m for n, m in model.named_modules()
            if n.endswith("vision_tower") or re.search(r"(^|\.)visual$", n)]


def prepare_model(vlm: Any, cfg: TrainConfig) -> Any:
    """Apply LoRA / freezing per ``cfg.trainable``, gradient checkpointing and the 4-bit
    preparation; returns the module to optimise."""
    model = vlm.model
    if getattr(cfg, "load_in_4bit", False):
        import torch
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        # peft upcasts every non-quantised weight to float32; the frozen vision tower (FiSAO's
        # verifier side) goes back to the compute dtype
        for m in _vision_modules(model):
            m.to(torch.bfloat16)
    elif getattr(cfg, "gradient_checkpointing", False):
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"gradient_checkpointing=true: {type(model).__name__} does not "
                              "support it; set gradient_checkpointing=false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.trainable == "lora":
            # frozen embeddings give checkpointed blocks inputs without grad; LoRA's adapters
            # inside them still need the backward to reach them
            model.enable_input_require_grads()
    if cfg.trainable == "lora":
        from visalign.models.lora import add_lora

        model = add_lora(model, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                         target_modules=cfg.lora.target_modules,
                         projector=cfg.lora.projector)
        vlm.model = model
    set_trainable(model, cfg.trainable)
    return model
