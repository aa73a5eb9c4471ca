"""``visalign world base``: train the micro-world's base VLM from scratch, the LLaVA way.

Stages (each resumable: a finished stage is loaded, not retrained):

0. tokenizer: byte-level BPE trained on the world's training text, LLaVA-1.5 chat template;
1. CLIP: a tiny ``CLIPModel`` trained contrastively on images vs captions and object phrases —
   it becomes the VLM's vision tower *and* FiSAO's verifier (``MODELDIR/verifier``);
2. LM pre-training: the tiny Llama learns the world's language from text alone, so it brings a
   language prior (co-occurrence statistics) to the VLM the way a pretrained LLM does;
3. LLaVA stage 1: projector only, on short captions (feature alignment);
4. LLaVA stage 2: projector + LM on the instruction data (with its GPT-4-like defects);
5. evaluation on the held-out split: CHAIR, POPE ×3, short-answer accuracy, caption metrics,
   and the verifier's AUROC for "a photo of a {object}" → ``MODELDIR/eval.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Literal

from visalign.config import field, save_run_config
from visalign.eval.suite import EvalSettings
from visalign.io import JsonlAppender, read_json, write_json
from visalign.training import TrainConfig
from visalign.world.clip_train import ClipTrainSettings
from visalign.world.vocab import KEYED_ORDERS


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
    # here), and the VLM on top hallucinates more (docs/microworld_grounding.md, stop 20)
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
        "(docs/microworld_grounding.md)")
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
    # (under-fit); 3 cut CHAIR by a quarter and raised POPE F1 3-4 points (stop 23,
    # benchmarks/results/base_stage2_epochs.json)
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


def _world_texts(world: Any) -> list[str]:
    from visalign.data.llava import load_llava_records
    from visalign.data.coco import load_coco_captions

    texts = []
    for r in load_llava_records(world.llava_path("train")):
        texts += [t["value"].replace("<image>", "") for t in r["conversations"]]
    for caps in load_coco_captions(world.captions_path("train")).values():
        texts += caps
    for words in _synonym_table(world).values():
        texts += [f"a photo of a {w}." for w in words]
    return texts


def _synonym_table(world: Any) -> dict[str, list[str]]:
    """Category name -> its surface words (name first), from the world's CHAIR synonyms file."""
    syn = {}
    for line in Path(world.synonyms_path).read_text().splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        if words:
            syn[words[0]] = words
    return syn


def _clip_examples(world: Any, split: str, categories: list[str] | None = None,
                   patch_size: int = PATCH_SIZE) -> tuple[list, list[set[str]]]:
    """CLIP training examples of a split (with per-patch labels over ``categories`` if given)
    and the set of object names present in each image."""
    from PIL import Image

    from visalign.data.coco import load_coco_captions, load_coco_instances
    from visalign.world.clip_train import ClipExample, patch_labels

    coco = load_coco_instances(world.instances_path(split))
    caps = load_coco_captions(world.captions_path(split))
    syn = _synonym_table(world)
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    examples, present = [], []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        names = sorted({cats[a["category_id"]] for a in anns})
        image = Image.open(Path(world.image_root) / info["file_name"]).convert("RGB")
        labels = None
        if categories:
            labels = patch_labels([(*a["bbox"], categories.index(cats[a["category_id"]]))
                                   for a in anns], world.image_size, patch_size)
        examples.append(ClipExample(image, caps.get(img_id, []) or [" "],
                                    [(n, syn.get(n, [n])) for n in names], labels))
        present.append(set(names))
    return examples, present


def _generated_clip_examples(world: Any, start: int, n: int,
                             categories: list[str] | None = None,
                             patch_size: int = PATCH_SIZE) -> list:
    """``n`` more CLIP examples drawn in memory from the world's training distribution: train
    items ``start ..`` (``world.build.generate_scenes``), exactly the images and captions a
    world built with a larger ``n_train`` would hold. Nothing is written."""
    from visalign.world.build import generate_scenes
    from visalign.world.clip_train import ClipExample, patch_labels

    syn = _synonym_table(world)
    out = []
    for scene, image, caps in generate_scenes(world.config, world.vocab, world.train_split,
                                              start, n):
        names = sorted(scene.present())
        labels = None
        if categories:
            labels = patch_labels([(*o.bbox, categories.index(o.category))
                                   for o in scene.objects], world.image_size, patch_size)
        out.append(ClipExample(image, caps or [" "], [(c, syn.get(c, [c])) for c in names],
                               labels))
    return out


def clip_training_examples(world: Any, images: int, categories: list[str] | None = None,
                           patch_size: int = PATCH_SIZE) -> list:
    """The CLIP's training examples: the world's training split, then (when ``images`` is
    larger) generated items of the same distribution up to ``images`` in all."""
    examples, _ = _clip_examples(world, world.train_split, categories, patch_size)
    if images > len(examples):
        examples += _generated_clip_examples(world, len(examples), images - len(examples),
                                             categories, patch_size)
    return examples


def _stage_done(stage_dir: Path) -> bool:
    return (stage_dir / "train_summary.json").exists() and (stage_dir / "model").exists()


def build_base_model(cfg: BaseModelConfig) -> dict:
    """Run every stage; returns the evaluation result (also in ``out/eval.json``)."""
    import torch

    from visalign.models import load_vlm
    from visalign.models.tiny import build_tiny_clip, build_tiny_llava
    from visalign.models.tokenizer import train_tokenizer
    from visalign.training import run_training, seed_everything
    from visalign.world import load_world
    from visalign.world.clip_train import object_auroc, train_clip

    packed = packed_stages(cfg)     # a typo fails here, before any training
    world = load_world(cfg.world)
    cfg = resolve_scene_order(cfg, world)   # the saved config says which order was used
    out = Path(cfg.out)
    work = out.parent / (out.name + ".stages")
    work.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, work, "base_config.yaml")
    log = JsonlAppender(work / "log.jsonl")
    timings: dict[str, float] = {}
    seed_everything(cfg.seed)

    # 0. tokenizer
    t = time.time()
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        tok = train_tokenizer(_world_texts(world), cfg.vocab_size)
        tok.save_pretrained(tok_dir)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    timings["tokenizer"] = time.time() - t

    # 1. CLIP (vision tower + verifier)
    t = time.time()
    clip_dir = work / "clip"
    a = cfg.clip_arch
    if not (clip_dir / "clip_summary.json").exists():
        from transformers import CLIPModel, CLIPProcessor

        tmp = work / "clip.init"
        build_tiny_clip(tmp, tok, image_size=world.image_size, patch_size=PATCH_SIZE,
                        vision_hidden=a.vision_hidden, text_hidden=a.text_hidden,
                        layers=(a.vision_layers, a.text_layers),
                        projection_dim=a.projection_dim, heads=a.heads, seed=cfg.seed)
        from visalign.models.loading import resolve_device

        clip = CLIPModel.from_pretrained(tmp).to(resolve_device("auto"))
        proc = CLIPProcessor.from_pretrained(tmp)
        cats = [c.name for c in world.vocab.categories]
        examples = clip_training_examples(world, cfg.clip.images, cats)
        summary = train_clip(clip, proc, examples, cfg.clip, seed=cfg.seed, categories=cats,
                             progress=cfg.progress, log=log.write)
        val_ex, val_present = _clip_examples(world, world.eval_split)
        summary["images"] = len(examples)
        summary["auroc"] = object_auroc(clip, proc, [e.image for e in val_ex], val_present, cats,
                                        cfg.clip.template)
        clip.cpu().save_pretrained(clip_dir)
        proc.save_pretrained(clip_dir)
        write_json(clip_dir / "clip_summary.json", summary)
        shutil.rmtree(tmp, ignore_errors=True)
    clip_summary = read_json(clip_dir / "clip_summary.json")
    timings["clip"] = time.time() - t
    if cfg.stop_after == "clip":
        return {"stopped_after": "clip", "timings": timings, "clip": clip_summary}

    # 2-4. LLaVA: LM pre-training, projector alignment, instruction tuning
    init_dir = work / "llava.init"
    if not (init_dir / "config.json").exists():
        build_tiny_llava(init_dir, tok, clip_dir=clip_dir, image_size=world.image_size,
                         patch_size=PATCH_SIZE, text_hidden=cfg.lm.hidden,
                         text_layers=cfg.lm.layers,
                         text_heads=cfg.lm.heads, text_intermediate=cfg.lm.intermediate,
                         seed=cfg.seed, vision_feature_layer=cfg.vision_feature_layer,
                         vision_feature_select_strategy=cfg.vision_feature_select)
    prev = init_dir
    from visalign.data.llava import load_llava_records, pack_by_image
    from visalign.methods.sft import conversation_items, make_collate

    records = load_llava_records(world.llava_path("train"))
    s1_tasks = {t.strip() for t in cfg.stage1_tasks.split(",") if t.strip()}
    stages = [
        ("lm_pretrain", cfg.lm_pretrain, "lm", None),
        ("stage1", cfg.stage1, "projector", [r for r in records if r.get("task") in s1_tasks]),
        ("stage2", cfg.stage2, "lm+projector",
         [r for r in records if r.get("task") != "caption"]),
    ]
    for name, st, trainable, recs in stages:
        t = time.time()
        sdir = work / name
        if not _stage_done(sdir):
            vlm = load_vlm(str(prev))
            tcfg = TrainConfig(model=str(prev), out=str(sdir), trainable=trainable,
                               epochs=st.epochs, batch_size=st.batch_size, lr=st.lr,
                               warmup_ratio=0.05, seed=cfg.seed, log_every=20,
                               progress=cfg.progress, save_every=0,
                               group_by_length=st.group_by_length,
                               mixed_precision=st.mixed_precision,
                               padding_free=st.padding_free,
                               padding_free_capacity=st.padding_free_capacity)
            if recs is None:
                if cfg.lm_text == "scene":
                    items = scene_lm_texts(world, records, cfg.lookup_per_image, cfg.seed,
                                           pack=name in packed, order=cfg.scene_order)
                else:
                    items = [(t, "") for t in _lm_texts(records)]
                collate = _text_collate(tok, max_length=1024 if name in packed else 256)
            else:
                if name in packed:
                    recs = pack_by_image(recs, cfg.seed)
                items = conversation_items(recs, str(world.image_root))
                collate = make_collate(vlm)

            ce = _stage_loss(st.token_weighting, items, collate, cfg.seed, st.batch_size,
                             unlikelihood=st.unlikelihood)
            run_training(tcfg, vlm, items, collate, ce, name=name)
        prev = sdir / "model"
        timings[name] = time.time() - t
        if cfg.stop_after == name:
            return {"stopped_after": name, "timings": timings, "clip": clip_summary}

    # final model dir = stage 2 model + verifier
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(prev, out)
    shutil.copytree(clip_dir, out / "verifier")
    result: dict = {"metrics": {"clip_auroc": clip_summary["auroc"]}}
    if not cfg.skip_eval:
        from visalign.eval.suite import evaluate_model

        t = time.time()
        ev = evaluate_model(str(out), world, work / "eval", cfg.eval)
        timings["eval"] = time.time() - t
        result["metrics"].update(ev["metrics"])
        result["eval_timings"] = ev["timings"]
    result["timings"] = {k: round(v, 2) for k, v in timings.items()}
    result["clip"] = clip_summary
    write_json(out / "eval.json", result)
    save_run_config(cfg, out, "base_config.yaml")
    log.close()
    del torch
    return result


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


def _stage_loss(weighting: str, items: list, collate: Any, seed: int, batch_size: int,
                n_probe: int = 20, unlikelihood: float = 0.0):
    """The stage's loss function. 'dataset' weighting divides the summed token loss by the
    mean answer-token count of ``n_probe`` seeded random batches (see ``losses.sft_loss``);
    ``unlikelihood`` > 0 adds that weight times ``losses.repetition_unlikelihood_loss``,
    normalised the same way."""
    import random

    from visalign.losses import repetition_unlikelihood_loss, sft_loss

    if weighting not in ("batch", "dataset"):
        raise ValueError(f"token_weighting: {weighting!r} is not 'batch' or 'dataset'")
    if unlikelihood < 0:
        raise ValueError(f"unlikelihood must be >= 0, got {unlikelihood}")
    if weighting == "batch" and unlikelihood == 0:
        def ce(model, batch):
            return model(**batch).loss, {}
        return ce
    normaliser = None
    if weighting == "dataset":
        rng = random.Random(f"{seed}:token-weighting")
        counts = []
        for _ in range(n_probe):
            probe = collate([items[rng.randrange(len(items))] for _ in range(batch_size)])
            counts.append(int((probe["labels"][:, 1:] != -100).sum()))
        normaliser = max(1.0, sum(counts) / len(counts))

    def ce_combined(model, batch):
        labels = batch["labels"]
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        loss = sft_loss(out.logits, labels, normaliser=normaliser)
        stats = {}
        if normaliser is not None:
            n = (labels[:, 1:] != -100).sum().clamp(min=1)
            stats["batch_mean_ce"] = loss.detach() * normaliser / n
        if unlikelihood > 0:
            ul = repetition_unlikelihood_loss(out.logits, labels, normaliser=normaliser)
            stats["unlikelihood"] = ul.detach()
            loss = loss + unlikelihood * ul
        return loss, stats
    return ce_combined


def _lm_texts(records: list[dict]) -> list[str]:
    """Plain text for LM pre-training: every answer of the instruction data."""
    return [t["value"] for r in records for t in r["conversations"] if t["from"] == "gpt"]


def scene_text(theme: str, objects: list[dict], names: dict, rng: Any,
               order: str = "random", keys: dict[str, tuple] | None = None) -> str:
    """The true scene in words, where the image goes: "beach: large black person bottom left;
    large white chair top." Objects in random order (position in the list means nothing) or,
    with ``order="reading"``, by ``scenes.reading_key`` (the order of ``Scene.
    categories_in_reading_order``), or with ``order="category"|"rank"`` by ``keys`` (category
    name -> sort key, ``Vocab.order_keys``). The sorts are stable (instances of one category keep their annotation order) and the fixed
    orders draw nothing from ``rng``."""
    objs = list(objects)
    if order == "reading":
        objs.sort(key=_reading_key)
    elif order in KEYED_ORDERS:
        if keys is None:
            raise ValueError(f"scene order {order!r} needs the vocabulary's order keys")
        objs.sort(key=lambda a: keys[names[a["category_id"]]])
    elif order == "random":
        rng.shuffle(objs)
    else:
        raise ValueError(f"scene order {order!r} is not 'random', 'reading', 'category' or "
                         "'rank'")
    parts = [f"{a.get('size', '')} {a.get('color', '')} {names[a['category_id']]} "
             f"{a.get('region', '')}".strip() for a in objs]
    return f"{theme}: " + "; ".join(" ".join(p.split()) for p in parts) + "."


def _order_keys(world: Any, order: str) -> dict[str, tuple] | None:
    return world.vocab.order_keys(order) if order in KEYED_ORDERS else None


def _reading_key(a: dict) -> tuple[int, float]:
    from visalign.world.scenes import reading_key

    x, _, w, _ = a["bbox"]
    return reading_key(a["region"], x + w / 2)


def scene_lm_texts(world: Any, records: list[dict], lookup_per_image: int,
                   seed: int, pack: bool = False, order: str = "random") -> list:
    """(prompt, answer) chat texts for LM pre-training with the scene written out in words.

    A pretrained LLM brings two things to LLaVA: a language prior and the ability to read its
    context ("is X among the things mentioned?"). A tiny LM trained on answers alone gets only
    the first, and then never learns to look at the image tokens (on the micro-world its POPE
    answers did not change when the image was replaced by a blank one). Here every instruction
    turn is rendered with the true scene in place of ``<image>``, plus ``lookup_per_image``
    balanced existence questions per image (any category, synonyms included). The defects of
    the instruction data stay: a description that names an absent object still does so next to
    a scene that lacks it, which is the prior that makes the VLM hallucinate.

    Items are ``(prompt, answer)`` pairs; with ``pack`` each item is instead the list of one
    image's turns (the scene written once, in the first turn; records and lookups in a seeded
    random order), as :func:`visalign.data.llava.pack_by_image` does for the VLM stages.
    ``order`` is :func:`scene_text`'s object order.
    """
    import random

    from visalign.world.text import EXISTENCE_QUESTIONS
    from visalign.data.words import with_article

    if pack:
        return _packed_scene_lm_texts(world, records, lookup_per_image, seed, order)
    rng = random.Random(f"{seed}:scene-lm")
    by_file, names = _train_scenes(world)
    syn = _synonym_table(world)
    keys = _order_keys(world, order)
    tmpl = world_chat_template()
    out = []
    for r in records:
        if r["image"] not in by_file:
            continue
        theme, anns = by_file[r["image"]]
        conv = r["conversations"]
        q = conv[0]["value"].replace("<image>", scene_text(theme, anns, names, rng, order, keys))
        out.append((tmpl[0].format(q=q), tmpl[1].format(a=conv[1]["value"])))
    for theme, anns in by_file.values():
        for noun, yes in _lookups(rng, anns, names, syn, lookup_per_image):
            q = (scene_text(theme, anns, names, rng, order, keys) + "\n"
                 + rng.choice(EXISTENCE_QUESTIONS).format(a=with_article(noun)))
            out.append((tmpl[0].format(q=q), tmpl[1].format(a="Yes" if yes else "No")))
    rng.shuffle(out)
    return out


def _lookups(rng: Any, anns: list[dict], names: dict[int, str], syn: dict[str, list[str]],
             n: int) -> Iterator[tuple[str, bool]]:
    """``n`` balanced lookup targets of one image: (noun, present?), alternating present and
    absent categories (any category of the world, synonyms included). A generator, so the
    caller's own draws interleave with these in a fixed order."""
    all_names = sorted(syn) or sorted(names.values())
    present = {names[a["category_id"]] for a in anns}
    absent = [c for c in all_names if c not in present]
    for k in range(n):
        yes = (k % 2 == 0 and bool(present)) or not absent
        obj = rng.choice(sorted(present) if yes else absent)
        yield rng.choice(syn.get(obj, [obj])), yes


def _packed_scene_lm_texts(world: Any, records: list[dict], lookup_per_image: int,
                           seed: int, order: str = "random") -> list[list[tuple[str, str]]]:
    import random

    from visalign.world.text import EXISTENCE_QUESTIONS
    from visalign.data.words import with_article

    rng = random.Random(f"{seed}:scene-lm-packed")
    by_file, names = _train_scenes(world)
    syn = _synonym_table(world)
    keys = _order_keys(world, order)
    turns: dict[str, list[tuple[str, str]]] = {f: [] for f in by_file}
    for r in records:
        if r["image"] in turns:
            conv = r["conversations"]
            turns[r["image"]].append((conv[0]["value"].replace("<image>", "").strip(),
                                      conv[1]["value"]))
    tmpl = world_chat_template()
    out = []
    for file, (theme, anns) in by_file.items():
        qa = turns[file]
        for noun, yes in _lookups(rng, anns, names, syn, lookup_per_image):
            qa.append((rng.choice(EXISTENCE_QUESTIONS).format(a=with_article(noun)),
                       "Yes" if yes else "No"))
        if not qa:
            continue
        rng.shuffle(qa)
        qa[0] = (scene_text(theme, anns, names, rng, order, keys) + "\n" + qa[0][0], qa[0][1])
        out.append([(tmpl[0].format(q=q), tmpl[1].format(a=a)) for q, a in qa])
    rng.shuffle(out)
    return out


def _train_scenes(world: Any) -> tuple[dict[str, tuple[str, list[dict]]], dict[int, str]]:
    """file name -> (theme, annotations) of the training split, and category id -> name."""
    from visalign.data.coco import load_coco_instances

    coco = load_coco_instances(world.instances_path("train"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    by_file: dict[str, tuple[str, list[dict]]] = {}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        by_file[info["file_name"]] = (str(info.get("theme", "scene")),
                                      coco.loadAnns(coco.getAnnIds(imgIds=img_id)))
    return by_file, names


def world_chat_template() -> tuple[str, str]:
    """(prompt, answer) formats of the micro-world's chat template for a text-only user turn
    (``models.tiny``: "USER: {text} ASSISTANT: {answer}</s>")."""
    return "USER: {q} ASSISTANT:", " {a}</s>"


def _text_collate(tok: Any, max_length: int = 256):
    """Batch of (prompt, answer) texts: loss on the answer only (on everything if no prompt
    split is given, i.e. answer == ""). Items that are lists of such pairs (packed turns) get
    the loss on every answer."""
    def collate(items: list) -> dict:
        if items and isinstance(items[0], list):
            return _multi_turn_batch(tok, items, max_length)
        full = [p + a if a else p + tok.eos_token for p, a in items]
        enc = tok(full, padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        labels = enc["input_ids"].clone()
        split = [i for i, (_, a) in enumerate(items) if a]
        if split:
            prompts = tok([items[i][0] for i in split], truncation=True, max_length=max_length)
            for i, ids in zip(split, prompts["input_ids"]):
                labels[i, :len(ids)] = -100
        labels[enc["attention_mask"] == 0] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": labels}
    return collate


def _multi_turn_batch(tok: Any, items: list[list[tuple[str, str]]], max_length: int) -> dict:
    """Right-padded batch of multi-turn texts, labels on the tokens inside each answer."""
    import torch

    texts, spans = [], []
    for turns in items:
        text, sp = "", []
        for p, a in turns:
            text += p
            sp.append((len(text), len(text) + len(a)))
            text += a
        texts.append(text)
        spans.append(sp)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
              return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping")
    labels = torch.full_like(enc["input_ids"], -100)
    for i, sp in enumerate(spans):
        start, end = offsets[i, :, 0], offsets[i, :, 1]
        inside = torch.zeros_like(start, dtype=torch.bool)
        for s0, s1 in sp:
            inside |= (start >= s0) & (end <= s1) & (start < s1)  # incl. a bare " " token
        inside &= enc["attention_mask"][i].bool()
        labels[i][inside] = enc["input_ids"][i][inside]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}
