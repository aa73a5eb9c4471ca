"""Continual SFT (the ``cont-sft`` baseline) and the training half of nSFT.

Both are supervised fine-tuning on LLaVA-format conversations; they differ only in the data:
cont-SFT trains on the ground-truth conversations of the alignment set, nSFT on the corrective
conversations that ``visalign nsft build`` makes from the model's own mistakes (seed
000_069bb0018e4a426c, Sec. 3 and B.1). The optional per-token KL to the frozen reference is the
full-vocabulary KL(π_ref ‖ π_θ) at every answer token, which the paper reports helps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from visalign.config import field
from visalign.training import TrainConfig, TrainResult, run_training


@dataclasses.dataclass
class SftConfig(TrainConfig):
    data: str = field("", help="LLaVA-format conversations (JSON list or JSONL)")
    preset: str = field("", help="method name recorded with the run (cont-sft, nsft, ...)")
    kl_coef: float = field(0.0, help="weight of the per-token KL(ref||policy) on answer tokens")
    limit: int = field(0, help="use only the first N records (0 = all)")


def resolve_image(path: str, image_root: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or not image_root else Path(image_root) / p)


def conversation_items(records: list[dict], image_root: str) -> list[dict]:
    """Dataset items (image path + conversation) from validated LLaVA records."""
    return [{"image": resolve_image(r["image"], image_root), "conversations": r["conversations"],
             "id": r["id"]} for r in records]


def make_collate(vlm: Any, max_length: int = 0):
    from PIL import Image

    def collate(items: list[dict]) -> dict:
        images = [Image.open(it["image"]).convert("RGB") for it in items]
        return vlm.encode(images, [it["conversations"] for it in items],
                          max_length=max_length or None)
    return collate


def sft_loss_fn(kl_coef: float = 0.0, ref_model: Any = None):
    """CE on answer tokens (+ ``kl_coef`` × mean per-token KL(ref‖θ) on the same tokens).

    With LoRA the reference is the same model with adapters disabled (no second copy); with
    full fine-tuning pass ``ref_model`` (a frozen copy).
    """
    import torch

    from visalign.losses import full_kl_from_logits

    def loss_fn(model: Any, batch: dict) -> tuple:
        out = model(**batch)
        loss = out.loss
        stats = {"ce": out.loss.detach()}
        if kl_coef > 0:
            with torch.no_grad():
                if ref_model is not None:
                    ref_logits = ref_model(**batch).logits
                else:
                    base = model.module if hasattr(model, "module") else model
                    with base.disable_adapter():
                        ref_logits = base(**batch).logits
            mask = batch["labels"][:, 1:] != -100
            kl = full_kl_from_logits(out.logits[:, :-1], ref_logits[:, :-1], mask)
            loss = loss + kl_coef * kl
            stats["kl"] = kl.detach()
        return loss, stats
    return loss_fn


def train_sft(cfg: SftConfig, vlm: Any = None) -> TrainResult:
    """Fine-tune ``cfg.model`` (or the given ``vlm``) on ``cfg.data``; see :class:`SftConfig`."""
    import copy

    from visalign.data.llava import load_llava_records
    from visalign.models import load_vlm

    records = load_llava_records(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise ValueError(f"{cfg.data}: no training records")
    if vlm is None:
        vlm = load_vlm(cfg.model, dtype=cfg.dtype)
    ref = None
    if cfg.kl_coef > 0 and cfg.trainable != "lora":
        ref = copy.deepcopy(vlm.model).eval().requires_grad_(False)
    items = conversation_items(records, cfg.image_root)
    return run_training(cfg, vlm, items, make_collate(vlm, cfg.max_length),
                        sft_loss_fn(cfg.kl_coef, ref), name=cfg.preset or "sft", config_obj=cfg)
