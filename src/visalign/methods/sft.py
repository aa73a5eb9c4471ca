"""Continual SFT (the ``cont-sft`` baseline) and the training half of nSFT.

Both are supervised fine-tuning on LLaVA-format conversations; they differ only in the data:
cont-SFT trains on the ground-truth conversations of the alignment set, nSFT on the corrective
conversations that ``visalign nsft build`` makes from the model's own mistakes (the nSFT
paper, "Continual SFT Matches Multimodal RLHF with Negative Supervision", Sec. 3 and B.1). The optional per-token KL to the frozen reference
(``kl_coef``) is the full-vocabulary KL(π_ref ‖ π_θ) averaged over the answer tokens; it is
our addition (the supplementary material describes none) and is off in both presets. With
LoRA the reference is the model with its adapter disabled, with full fine-tuning a frozen copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from visalign.config import field
from visalign.io import DataError
from visalign.training import (TrainConfig, TrainResult, check_memory_settings,
                               conversation_items, load_for_training, make_collate, run_training)


@dataclasses.dataclass
class SftConfig(TrainConfig):
    data: str = field("", help="LLaVA-format conversations (JSON list or JSONL)")
    preset: str = field("", help="method name recorded with the run (cont-sft, nsft, ...)")
    kl_coef: float = field(0.0, help="weight of the per-token KL(ref||policy) on answer tokens")
    limit: int = field(0, help="use only the first N records (0 = all)")


def sft_loss_fn(kl_coef: float = 0.0, ref_model: Any = None):
    """CE on answer tokens (+ ``kl_coef`` × mean per-token KL(ref‖θ) on the same tokens).

    With LoRA the reference is the same model with adapters disabled (no second copy); with
    full fine-tuning pass ``ref_model`` (a frozen copy).
    """
    import torch

    from visalign.losses import full_kl_from_logits, masked_mean

    def loss_fn(model: Any, batch: dict) -> tuple:
        out = model(**batch)
        loss = out.loss
        stats = {"ce": out.loss.detach()}
        if kl_coef > 0:
            with torch.no_grad():
                if ref_model is not None:
                    dev = batch["input_ids"].device
                    if next(ref_model.parameters()).device != dev:
                        ref_model.to(dev)  # the frozen copy follows the policy's device
                    ref_logits = ref_model(**batch).logits
                else:
                    base = model.module if hasattr(model, "module") else model
                    if not hasattr(base, "disable_adapter"):
                        raise ValueError("kl_coef > 0 without LoRA needs a frozen ref_model")
                    with base.disable_adapter():
                        ref_logits = base(**batch).logits
            # Position t predicts token t+1: the KL is taken where the CE is (answer tokens).
            mask = batch["labels"][:, 1:] != -100
            kl_tok = full_kl_from_logits(out.logits[:, :-1], ref_logits[:, :-1], mask)
            kl = masked_mean(kl_tok, mask)
            loss = loss + kl_coef * kl
            stats["kl"] = kl.detach()
        return loss, stats
    return loss_fn


def train_sft(cfg: SftConfig, vlm: Any = None) -> TrainResult:
    """Fine-tune ``cfg.model`` (or the given ``vlm``) on ``cfg.data``; see :class:`SftConfig`."""
    import copy

    from visalign.data.llava import load_llava_records

    check_memory_settings(cfg)
    records = load_llava_records(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise ValueError(f"{cfg.data}: no training records")
    # Relative image paths start at image_root, else at the data file's directory (as
    # `visalign nsft build` and `visalign generate` resolve them).
    items = conversation_items(records, cfg.image_root or str(Path(cfg.data).parent))
    for it in items:  # fail before loading the model, naming the record
        if not Path(it["image"]).is_file():
            raise DataError(cfg.data, f"image file not found: {it['image']}", record=it["id"],
                            field="image")
    if vlm is None:
        vlm = load_for_training(cfg)
    ref = None
    if cfg.kl_coef > 0 and cfg.trainable != "lora":
        ref = copy.deepcopy(vlm.model).eval().requires_grad_(False)
    return run_training(cfg, vlm, items, make_collate(vlm, cfg.max_length, cfg.data),
                        sft_loss_fn(cfg.kl_coef, ref), name=cfg.preset or "sft", config_obj=cfg)
