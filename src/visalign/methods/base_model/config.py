"""Settings of the micro-world's base model: architectures, stages, presets."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from visalign.config import field
from visalign.eval.suite import EvalSettings
from visalign.methods.base_model.clip_train import ClipTrainSettings


PATCH_SIZE = 8  # ViT patch side in pixels: an 8 x 8 grid of image tokens at 64 px


@dataclasses.dataclass
class ClipArch:
    vision_hidden: int = field(128, help="ViT width")
    vision_layers: int = field(4, help="ViT depth")
    text_hidden: int = field(128, help="text transformer width")
    text_layers: int = field(3, help="text transformer depth")
    projection_dim: int = field(128, help="joint embedding size")
    heads: int = field(4, help="attention heads")


@dataclasses.dataclass
class LmArch:
    hidden: int = field(192, help="Llama width")
    layers: int = field(4, help="Llama depth")
    heads: int = field(4, help="attention heads")
    intermediate: int = field(512, help="MLP width")


@dataclasses.dataclass
class StageSettings:
    epochs: float = field(1.0, help="passes over the stage's data")
    lr: float = field(1e-3, help="peak learning rate")
    batch_size: int = field(32, help="batch size")
    group_by_length: bool = field(
        False, help="batch similar lengths together (the stages' texts range from one-word "
        "answers to long descriptions: random LM pre-training batches pad to 2.2x the real "
        "tokens); off in the shipped recipe until a base trained with it is evaluated")
    token_weighting: Literal["batch", "dataset"] = field(
        "batch", help="loss normalisation: 'batch' = mean over the batch's answer tokens (HF's "
        "default); 'dataset' = their sum over the answer tokens of an average random batch, so "
        "length-grouped batches do not shrink the weight of long answers")
    mixed_precision: Literal["no", "bf16"] = field(
        "no", help="bf16 = autocast the forward pass (TrainConfig.mixed_precision); on a 2-core "
        "CPU with AVX512-BF16 a stage step is 1.07-1.21x faster")
    unlikelihood: float = field(
        0.0, help="weight of the token-level unlikelihood loss against repeating a token already "
        "written in the same answer (losses.repetition_unlikelihood_loss, Welleck et al. 2019); "
        "0 = off. Aimed at the base's habit of naming its first object again")
    padding_free: bool = field(
        False, help="pack the stage's batches without padding (TrainConfig.padding_free: same "
        "sequences, same loss, block-diagonal mask); LM pre-training steps are ~2.2x faster "
        "on a 2-core CPU. Off in the shipped recipe so `visalign world base` still reproduces "
        "the packaged base bit for bit")
    padding_free_capacity: int = field(
        0, help="with padding_free, row length in tokens (0 = the batch's longest sequence)")


@dataclasses.dataclass
class BaseModelConfig:
    world: str = field("", help="world dir from `visalign world build`")
    out: str = field("", help="model dir to write (HF format; verifier/ and eval.json inside)")
    preset: Literal["small", "tiny"] = field("small", help="sizes/epochs preset")
    seed: int = field(0, help="seed of every stage")
    vocab_size: int = field(1000, help="BPE vocabulary size")
    clip_arch: ClipArch = field(default_factory=ClipArch)
    # 36,000 distinct images x 4 epochs: trained 12 epochs on the 3,000 training images alone,
    # the tiny ViT over-fits and names a large held-out object right 64 % of the time (88 %
    # here), and the VLM on top hallucinates more (docs/research/base-clip-data.md)
    clip: ClipTrainSettings = field(
        default_factory=lambda: ClipTrainSettings(epochs=4.0, images=36000))
    lm: LmArch = field(default_factory=LmArch)
    lm_pretrain: StageSettings = field(default_factory=lambda: StageSettings(2.0, 2e-3, 64))
    lm_text: Literal["scene", "answers"] = field(
        "scene", help="LM pre-training text: 'scene' = each instruction turn with the true scene "
        "written out in words where the image goes, plus `lookup_per_image` existence questions "
        "(teaches the LM to read its context); 'answers' = the answers alone (language only)")
    lookup_per_image: int = field(
        6, help="extra yes/no existence questions per training image in the 'scene' LM text")
    scene_order: Literal["auto", "random", "reading", "category", "rank"] = field(
        "auto", help="object order of the 'scene' LM text: 'auto' = the order of the world's "
        "descriptions (its description_order: category, rank or reading; 'random' for a "
        "salience world), 'random' (position in the list means nothing), 'reading' (rows of the "
        "3x3 grid top to bottom, then left to right, the order of the image's patch tokens and "
        "of a world built with description_order=reading), 'category' or 'rank' (the fixed "
        "orders of a world built with that description_order)")
    pack_turns: bool = field(
        False, help="train each stage on one multi-turn conversation per image (its records "
        "in a seeded random order, like LLaVA-665K) instead of one sequence per record: the "
        "image, or the scene text in LM pre-training, is encoded once per image rather than "
        "once per question (the scene-text LM pre-training is mostly prompt tokens). Batch "
        "sizes count conversations, so lower them to keep the optimiser steps. Off: on the "
        "micro-world it cut LM pre-training 2.4x but POPE fell towards chance "
        "(docs/research/base-training-speed.md)")
    pack_stages: str = field(
        "", help="comma-separated stages (lm_pretrain, stage1, stage2) to train on packed "
        "per-image conversations; `pack_turns=true` packs all three. 'lm_pretrain' alone keeps "
        "the VLM stages one question per image sequence, so answers cannot be read off earlier "
        "turns there")
    vision_feature_layer: int = field(
        -1, help="ViT hidden layer the VLM reads (-1: the last, which the dense CLIP loss trains)")
    vision_feature_select: Literal["default", "full"] = field(
        "default", help="image features the VLM reads: 'default' the patch tokens (LLaVA's), "
        "'full' the CLS token too (the one the contrastive loss trains), one more image token")
    stage1_tasks: str = field(
        "caption,existence", help="instruction tasks of LLaVA stage 1 (projector alignment)")
    stage1: StageSettings = field(default_factory=lambda: StageSettings(2.0, 2e-3, 32))
    # 3 epochs: after 1 the base scored the same on its training images as on held-out ones
    # (under-fit); 3 cut CHAIR by a quarter and raised POPE F1 3-4 points
    # (docs/research/base-model-recipe.md, benchmarks/results/base_stage2_epochs.json)
    stage2: StageSettings = field(default_factory=lambda: StageSettings(3.0, 3e-4, 32))
    eval: EvalSettings = field(default_factory=EvalSettings)
    stop_after: Literal["", "clip", "lm_pretrain", "stage1"] = field(
        "", help="end after this stage (its outputs stay in OUT.stages/, a later run without "
        "it resumes from there); no model dir, no evaluation")
    skip_eval: bool = field(False, help="do not run the held-out evaluation")
    progress: bool = field(True, help="progress bars")


TINY_OVERRIDES = {
    "vocab_size": 400,
    "clip_arch": {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 32, "text_layers": 1,
                  "projection_dim": 32, "heads": 2},
    "clip": {"epochs": 2.0, "batch_size": 32, "images": 0},
    # Just enough training that the tiny model writes sentences naming objects (a tinier one
    # answers with EOS only, leaving the method tests nothing to correct): ~30 s of CPU.
    "lm": {"hidden": 64, "layers": 1, "heads": 2, "intermediate": 128},
    "lm_pretrain": {"epochs": 2.0, "batch_size": 32},
    "stage1": {"epochs": 0.5, "batch_size": 16},
    "stage2": {"epochs": 5.0, "lr": 3e-3, "batch_size": 16},
    "eval": {"n_images": 16, "pope_images": 8, "qa_per_task": 8, "max_new_tokens": 32,
             "caption_metrics": False},
}


def base_config(preset: str = "small", overrides: Any = ()) -> BaseModelConfig:
    """Preset defaults, then overrides (list of ``key=value`` or a dict)."""
    from visalign.config import load_config

    cfg = BaseModelConfig(preset=preset)
    if preset == "tiny":
        cfg = load_config(BaseModelConfig, None, {**TINY_OVERRIDES, "preset": "tiny"}, base=cfg)
    return load_config(BaseModelConfig, None, overrides, base=cfg)


# The scene text lists objects in the order the world's descriptions name them.
SCENE_ORDER_OF_DESCRIPTION_ORDER = {"salience": "random", "reading": "reading",
                                    "category": "category", "rank": "rank"}


def resolve_scene_order(cfg: BaseModelConfig, world: Any) -> BaseModelConfig:
    """``scene_order=auto`` -> the order of ``world``'s descriptions (worlds built before
    description_order existed are salience-ordered)."""
    if cfg.scene_order != "auto":
        return cfg
    order = world.meta["config"].get("description_order", "salience")
    return dataclasses.replace(cfg, scene_order=SCENE_ORDER_OF_DESCRIPTION_ORDER[order])


BASE_STAGES = ("lm_pretrain", "stage1", "stage2")


def packed_stages(cfg: BaseModelConfig) -> set[str]:
    """The stages that train on packed per-image conversations (``pack_turns`` = all)."""
    if cfg.pack_turns:
        return set(BASE_STAGES)
    packed = {x.strip() for x in cfg.pack_stages.split(",") if x.strip()}
    if packed - set(BASE_STAGES):
        raise ValueError(f"pack_stages: unknown stage(s) {sorted(packed - set(BASE_STAGES))}; "
                         f"choose from {', '.join(BASE_STAGES)}")
    return packed
