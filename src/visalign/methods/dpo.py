"""DPO on preference pairs: the trainer behind GT-DPO, SeVa, SIMA, POVID and any external pair file.

The pair builders live in :mod:`visalign.methods.pairs`; this module only trains. Chosen and
rejected responses are encoded in one batch (2b rows) on the pair's original image, their
sequence log-probs summed over answer tokens, and the sigmoid DPO loss applied against the
reference policy: the same model with LoRA adapters disabled (no second copy in memory), or a
frozen copy under full fine-tuning. POVID's two stages (hallucinated text, then noisy-image
responses) are two consecutive runs over the pairs tagged ``meta.stage`` 1 and 2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from visalign.config import field
from visalign.methods.sft import resolve_image
from visalign.training import TrainConfig, TrainResult, run_training


@dataclasses.dataclass
class DpoConfig(TrainConfig):
    pairs: str = field("", help="preference pairs file (see visalign.methods.pairs)")
    preset: str = field("", help="method name recorded with the run (gt-dpo, seva, sima, povid)")
    beta: float = field(0.1, help="DPO temperature β")
    label_smoothing: float = field(0.0, help="conservative DPO label smoothing")
    stages: str = field("all", help="'all' trains every pair at once; 'sequential' runs "
                                    "meta.stage 1, then 2, ... (POVID)")
    limit: int = field(0, help="use only the first N pairs (0 = all)")


def _conv(prompt: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": answer}]


def make_pair_collate(vlm: Any, max_length: int = 0):
    from PIL import Image

    def collate(items: list[dict]) -> dict:
        images = [Image.open(it["image"]).convert("RGB") for it in items]
        convs = [_conv(it["prompt"], it["chosen"]) for it in items] + \
                [_conv(it["prompt"], it["rejected"]) for it in items]
        return vlm.encode(images + images, convs, max_length=max_length or None)
    return collate


def dpo_loss_fn(beta: float, label_smoothing: float = 0.0, ref_model: Any = None):
    import torch

    from visalign.losses import dpo_loss
    from visalign.models import sequence_logprobs

    def loss_fn(model: Any, batch: dict) -> tuple:
        logps = sequence_logprobs(model, batch).sum(-1)
        with torch.no_grad():
            if ref_model is not None:
                ref = sequence_logprobs(ref_model, batch).sum(-1)
            else:
                base = model.module if hasattr(model, "module") else model
                with base.disable_adapter():
                    ref = sequence_logprobs(base, batch).sum(-1)
        b = logps.shape[0] // 2
        loss, ch, rj = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta=beta,
                                label_smoothing=label_smoothing)
        return loss, {"reward_chosen": ch.mean().detach(), "reward_rejected": rj.mean().detach(),
                      "reward_acc": (ch > rj).float().mean().detach()}
    return loss_fn


def train_dpo(cfg: DpoConfig, vlm: Any = None) -> TrainResult:
    """Train on ``cfg.pairs`` with DPO; POVID-style stages when ``cfg.stages == 'sequential'``."""
    import copy

    from visalign.methods.pairs import load_pairs
    from visalign.models import load_vlm

    pairs = load_pairs(cfg.pairs)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    if not pairs:
        raise ValueError(f"{cfg.pairs}: no pairs")
    items = [{**p, "image": resolve_image(p["image"], cfg.image_root)} for p in pairs]
    if vlm is None:
        vlm = load_vlm(cfg.model, dtype=cfg.dtype)
    groups: list[list[dict]] = [items]
    if cfg.stages == "sequential":
        stages = sorted({int((p.get("meta") or {}).get("stage", 1)) for p in items})
        groups = [[p for p in items if int((p.get("meta") or {}).get("stage", 1)) == s]
                  for s in stages]
    result = None
    for k, group in enumerate(groups):
        stage_cfg = cfg if len(groups) == 1 else dataclasses.replace(
            cfg, out=str(Path(cfg.out) / f"stage{k + 1}"))
        if k > 0:
            # Next stage starts from the previous stage's merged model (POVID Sec. 3).
            vlm = load_vlm(str(result.model_dir), dtype=cfg.dtype)
        ref = None
        if cfg.trainable != "lora":
            ref = copy.deepcopy(vlm.model).eval().requires_grad_(False)
        result = run_training(stage_cfg, vlm, group, make_pair_collate(vlm, cfg.max_length),
                              dpo_loss_fn(cfg.beta, cfg.label_smoothing, ref),
                              name=f"{cfg.preset or 'dpo'}" + (f"-s{k + 1}" if len(groups) > 1
                                                               else ""), config_obj=cfg)
    if len(groups) > 1:
        import shutil

        final = Path(cfg.out) / "model"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(result.model_dir, final)
        result = dataclasses.replace(result, model_dir=final)
    return result
