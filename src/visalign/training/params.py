"""Which parameters train: LoRA adapters, the language model, the projector; never the vision tower."""

from __future__ import annotations

import re
from typing import Any

from visalign.training.config import TrainConfig


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
