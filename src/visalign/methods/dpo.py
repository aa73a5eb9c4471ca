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
from visalign.data.llava import resolve_image
from visalign.training import TrainConfig, TrainResult, run_training


STAGES = ("all", "sequential")


@dataclasses.dataclass
class DpoConfig(TrainConfig):
    """``visalign train dpo``: TrainConfig plus the DPO settings. ``image_root`` defaults to the
    pair file's directory."""

    pairs: str = field("", help="preference pairs file (see visalign.methods.pairs)")
    preset: str = field("", help="method name recorded with the run (gt-dpo, seva, sima, povid)")
    beta: float = field(0.1, help="DPO temperature β")
    label_smoothing: float = field(0.0, help="conservative DPO label smoothing")
    stages: str = field("all", help="'all' trains every pair at once; 'sequential' runs "
                                    "meta.stage 1, then 2, ... (POVID), each from the previous "
                                    "stage's model, each for max_steps/epochs")
    limit: int = field(0, help="use only the first N pairs (0 = all)")


def _conv(prompt: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": answer}]


def _open_rgb(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def make_pair_collate(vlm: Any, max_length: int = 0):
    """``collate(items) -> batch`` of 2b rows: the b chosen conversations, then the b rejected
    ones, each on the pair's image."""

    def collate(items: list[dict]) -> dict:
        images = [_open_rgb(it["image"]) for it in items]
        convs = [_conv(it["prompt"], it["chosen"]) for it in items] + \
                [_conv(it["prompt"], it["rejected"]) for it in items]
        return vlm.encode(images + images, convs, max_length=max_length or None)
    return collate


def dpo_loss_fn(beta: float, label_smoothing: float = 0.0, ref_model: Any = None):
    """``loss_fn(model, batch)`` for :func:`visalign.training.run_training` on a
    :func:`make_pair_collate` batch.

    The reference log-probs come from ``ref_model`` (a frozen copy, moved to the policy's
    device on first use) or, when it is None, from ``model`` itself with its LoRA adapters
    disabled (the initial policy: peft starts LoRA's B at zero).
    """
    import torch

    from visalign.losses import dpo_loss
    from visalign.models import sequence_logprobs

    def loss_fn(model: Any, batch: dict) -> tuple:
        logps = sequence_logprobs(model, batch).sum(-1)          # (2b,)
        with torch.no_grad():
            if ref_model is not None:
                device = logps.device
                if next(ref_model.parameters()).device != device:
                    ref_model.to(device)
                ref = sequence_logprobs(ref_model, batch).sum(-1)
            else:
                base = model.module if hasattr(model, "module") else model
                if not hasattr(base, "disable_adapter"):
                    raise TypeError("DPO without a reference model needs a LoRA (peft) policy")
                with base.disable_adapter():
                    ref = sequence_logprobs(base, batch).sum(-1)
        b = logps.shape[0] // 2
        loss, ch, rj = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta=beta,
                                label_smoothing=label_smoothing)
        return loss, {"reward_chosen": ch.mean(), "reward_rejected": rj.mean(),
                      "reward_margin": (ch - rj).mean(),
                      "reward_acc": (ch > rj).float().mean()}
    return loss_fn


def pair_items(cfg: DpoConfig) -> list[dict]:
    """The pairs of ``cfg.pairs`` (validated, ``limit`` applied) with image paths resolved
    against ``cfg.image_root`` (default: the pair file's directory) and checked to exist."""
    from visalign.io import DataError
    from visalign.methods.pairs import load_pairs

    if not cfg.pairs:
        raise ValueError("train dpo: --pairs is required")
    pairs = load_pairs(cfg.pairs)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    root = cfg.image_root or str(Path(cfg.pairs).parent)
    items = []
    for i, p in enumerate(pairs):
        image = str(resolve_image(p["image"], root or None))
        if not Path(image).is_file():
            raise DataError(cfg.pairs, f"image not found: {image} (image_root: {root})",
                            record=f"{i} (id {p['id']!r})", field="image")
        items.append({**p, "image": image})
    return items


def _stage_of(p: dict) -> int:
    return int((p.get("meta") or {}).get("stage", 1))


def train_dpo(cfg: DpoConfig, vlm: Any = None) -> TrainResult:
    """Train on ``cfg.pairs`` with DPO; POVID-style stages when ``cfg.stages == 'sequential'``.

    Sequential stages write ``out/stage<k>/`` and copy the last stage's model to ``out/model``;
    a rerun skips stages that finished (their ``train_summary.json`` and model exist) and
    resumes the others from their checkpoints.
    """
    import copy
    import json

    from visalign.training import load_for_training

    if cfg.stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {cfg.stages!r}")
    if cfg.padding_free or cfg.padding_free_capacity:
        # DPO sums log-probs per response: a packed row holds several responses
        raise ValueError("padding_free=true does not apply to DPO (one row per response is "
                         "needed for sequence log-probabilities); leave it off")
    items = pair_items(cfg)
    groups: list[list[dict]] = [items]
    if cfg.stages == "sequential":
        stages = sorted({_stage_of(p) for p in items})
        groups = [[p for p in items if _stage_of(p) == s] for s in stages]
    result = None
    for k, group in enumerate(groups):
        stage_cfg = cfg if len(groups) == 1 else dataclasses.replace(
            cfg, out=str(Path(cfg.out) / f"stage{k + 1}"))
        stage_out = Path(stage_cfg.out)
        done = stage_out / "train_summary.json"
        if len(groups) > 1 and k < len(groups) - 1 and done.exists() and \
                ((stage_out / "model").exists() or (stage_out / "adapter").exists()):
            summary = json.loads(done.read_text(encoding="utf-8"))
            model_dir = stage_out / "model" if (stage_out / "model").exists() else \
                stage_out / "adapter"
            result = TrainResult(stage_out, model_dir, int(summary.get("steps", 0)), 0.0,
                                 int(summary.get("samples", 0)), summary.get("last", {}))
            vlm = None
            continue
        if k > 0 or vlm is None:
            # A later stage starts from the previous stage's model (POVID Sec. 3), merged.
            vlm = load_for_training(cfg, str(result.model_dir) if k > 0 else cfg.model)
            if hasattr(vlm.model, "merge_and_unload"):
                vlm.model = vlm.model.merge_and_unload()
        ref = None
        if cfg.trainable != "lora":
            ref = copy.deepcopy(vlm.model).eval().requires_grad_(False)
        result = run_training(stage_cfg, vlm, group, make_pair_collate(vlm, cfg.max_length),
                              dpo_loss_fn(cfg.beta, cfg.label_smoothing, ref),
                              name=f"{cfg.preset or 'dpo'}" + (f"-s{k + 1}" if len(groups) > 1
                                                               else ""), config_obj=cfg)
    if len(groups) > 1:
        import shutil

        from visalign.config import save_run_config

        save_run_config(cfg, Path(cfg.out))
        final = Path(cfg.out) / "model"
        tmp = Path(cfg.out) / ".model.final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(result.model_dir, tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
        result = dataclasses.replace(result, out=Path(cfg.out), model_dir=final)
    return result
