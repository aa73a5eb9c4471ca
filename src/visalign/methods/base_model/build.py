"""The stages of ``visalign world base``, run in order, each resumable (see the package docstring)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from visalign.config import save_run_config
from visalign.io import JsonlAppender, read_json, write_json
from visalign.methods.base_model.clip_data import (clip_examples, clip_training_examples,
                                                   tokenizer_texts)
from visalign.methods.base_model.config import (PATCH_SIZE, BaseModelConfig, packed_stages,
                                                resolve_scene_order)
from visalign.methods.base_model.lm_texts import answer_texts, scene_lm_texts, text_collate
from visalign.training import TrainConfig


def stage_done(stage_dir: Path) -> bool:
    return (stage_dir / "train_summary.json").exists() and (stage_dir / "model").exists()


def build_base_model(cfg: BaseModelConfig) -> dict:
    """Run every stage; returns the evaluation result (also in ``out/eval.json``)."""
    import torch

    from visalign.models import load_vlm
    from visalign.models.tiny import build_tiny_clip, build_tiny_llava
    from visalign.models.tokenizer import train_tokenizer
    from visalign.training import run_training, seed_everything
    from visalign.world import load_world
    from visalign.methods.base_model.clip_train import object_auroc, train_clip

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
        tok = train_tokenizer(tokenizer_texts(world), cfg.vocab_size)
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
        val_ex, val_present = clip_examples(world, world.eval_split)
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
    from visalign.training import conversation_items, make_collate

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
        if not stage_done(sdir):
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
                    items = [(t, "") for t in answer_texts(records)]
                collate = text_collate(tok, max_length=1024 if name in packed else 256)
            else:
                if name in packed:
                    recs = pack_by_image(recs, cfg.seed)
                items = conversation_items(recs, str(world.image_root))
                collate = make_collate(vlm)

            ce = stage_loss(st.token_weighting, items, collate, cfg.seed, st.batch_size,
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


def stage_loss(weighting: str, items: list, collate: Any, seed: int, batch_size: int,
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
