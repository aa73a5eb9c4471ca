"""`visalign world base` on the tiny preset: HF-format model + verifier + eval, resumable."""

from __future__ import annotations

import json

import pytest


def test_tiny_base_end_to_end(tiny_base_dir):
    from transformers import CLIPModel, LlavaForConditionalGeneration

    from visalign.models import load_vlm

    ev = json.loads((tiny_base_dir / "eval.json").read_text())
    m = ev["metrics"]
    for key in ("chair_s", "chair_i", "chair", "recall", "clip_auroc", "qa_accuracy",
                "oov_word_rate", "degenerate_share", "distinct_2",
                *(f"pope_{s}_{k}" for s in ("random", "popular", "adversarial")
                  for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))):
        assert key in m and 0.0 <= m[key] <= 1.0, key
    assert set(ev["timings"]) >= {"tokenizer", "clip", "lm_pretrain", "stage1", "stage2"}
    model = LlavaForConditionalGeneration.from_pretrained(tiny_base_dir)
    clip = CLIPModel.from_pretrained(tiny_base_dir / "verifier")
    # the verifier's vision side is the VLM's vision tower, weight for weight
    vt = model.model.vision_tower.state_dict()
    for k, v in clip.vision_model.state_dict().items():
        assert (vt["vision_model." + k] if "vision_model." + k in vt else vt[k]).equal(v), k
    vlm = load_vlm(str(tiny_base_dir))
    from PIL import Image

    img = Image.new("RGB", (vlm.image_size, vlm.image_size), (200, 30, 30)) \
        if hasattr(vlm, "image_size") else Image.new("RGB", (64, 64))
    (ans,) = vlm.generate([img], ["Describe this image in detail."], max_new_tokens=16)
    assert ans.strip(), "the tiny base model should write something"
    import yaml

    saved = yaml.safe_load((tiny_base_dir / "base_config.yaml").read_text())
    assert saved["scene_order"] == "category"   # auto, resolved to the tiny world's order


def test_base_stages_resume(tiny_world_dir, tiny_base_dir, tmp_path):
    """A re-run over finished stages reloads them instead of retraining."""
    import shutil

    from visalign.methods.base_model import base_config, build_base_model

    out = tmp_path / "base"
    stages = tmp_path / "base.stages"
    shutil.copytree(tiny_base_dir.parent / (tiny_base_dir.name + ".stages"), stages)
    weights = sorted(stages.glob("*/**/*.safetensors"))
    assert len(weights) >= 4
    before = {p: p.stat().st_mtime_ns for p in weights}
    build_base_model(base_config("tiny", {"world": str(tiny_world_dir), "out": str(out),
                                          "progress": False, "skip_eval": True}))
    assert {p: p.stat().st_mtime_ns for p in weights} == before  # nothing retrained
    assert (out / "config.json").exists() and (out / "verifier" / "config.json").exists()


def test_patch_labels_on_hand_made_boxes():
    from visalign.methods.base_model.clip_train import patch_labels

    # 32 px image, 8 px patches: a 4 x 4 grid; patch centres at 4, 12, 20, 28
    big = (0, 0, 16, 16, 3)        # covers the top-left 2 x 2 patches
    small = (8, 8, 8, 8, 7)        # covers the centre of patch (1, 1) only, drawn on top
    labels = patch_labels([small, big], 32, 8)
    assert labels[0] == 3 and labels[1] == 3 and labels[4] == 3
    assert labels[5] == 7          # the smaller box wins where they overlap
    assert labels.count(-1) == 12  # everything else is background


def test_dense_clip_term_is_trained(tiny_world_dir, tmp_path):
    """With patch labels the dense loss is computed and falls; without, it is not computed."""
    import math

    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

    from visalign.models.tiny import build_tiny_clip
    from visalign.models.tokenizer import train_tokenizer
    from visalign.world import load_world
    from visalign.methods.base_model import clip_examples, tokenizer_texts
    from visalign.methods.base_model.clip_train import ClipTrainSettings, train_clip

    world = load_world(tiny_world_dir)
    tok = train_tokenizer(tokenizer_texts(world), 300)
    tok.save_pretrained(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    cats = [c.name for c in world.vocab.categories]
    examples, _ = clip_examples(world, "train", cats)
    assert all(len(e.patch_labels) == (world.image_size // 8) ** 2 for e in examples)
    assert any(lab >= 0 for e in examples for lab in e.patch_labels)
    logs = {}
    for dense in (1.0, 0.0):
        build_tiny_clip(tmp_path / f"c{dense}", tok, image_size=world.image_size, patch_size=8,
                        vision_hidden=32, text_hidden=32, layers=(1, 1), projection_dim=32,
                        heads=2, seed=0)
        clip = CLIPModel.from_pretrained(tmp_path / f"c{dense}")
        proc = CLIPProcessor.from_pretrained(tmp_path / f"c{dense}")
        rows: list[dict] = []
        cfg = ClipTrainSettings(epochs=6.0, batch_size=32, dense_weight=dense)
        train_clip(clip, proc, examples, cfg, categories=cats, progress=False, log=rows.append)
        logs[dense] = [r["dense_loss"] for r in rows]
    assert logs[1.0][-1] < logs[1.0][0]
    assert all(math.isnan(v) for v in logs[0.0])


def test_generated_clip_images_equal_a_larger_worlds(tmp_path):
    """`clip.images` beyond the train split draws the items a world built with a larger
    n_train holds: same pixels, captions, objects and patch labels; nothing is written."""
    import numpy as np

    from visalign.world import build_world, load_world, world_config
    from visalign.methods.base_model import clip_examples, clip_training_examples

    small = tmp_path / "w6"
    big = tmp_path / "w10"
    for out, n in ((small, 6), (big, 10)):
        build_world(world_config("tiny", seed=3, overrides={"n_train": n, "n_val": 2}), out)
    before = sorted(p.name for p in small.rglob("*"))
    w_small, w_big = load_world(small), load_world(big)
    cats = w_small.categories
    got = clip_training_examples(w_small, 10, cats)
    want, _ = clip_examples(w_big, "train", cats)
    assert len(got) == len(want) == 10
    for g, w in zip(got, want):
        assert np.array_equal(np.asarray(g.image), np.asarray(w.image))
        assert g.captions == w.captions and g.objects == w.objects
        assert g.patch_labels == w.patch_labels
    # the generated ones are new scenes, not repeats of the first six
    assert not any(np.array_equal(np.asarray(got[k].image), np.asarray(got[j].image))
                   for k in range(6, 10) for j in range(6))
    assert len(clip_training_examples(w_small, 0, cats)) == 6     # 0 = the split alone
    assert len(clip_training_examples(w_small, 4, cats)) == 6     # never fewer than the split
    assert sorted(p.name for p in small.rglob("*")) == before


def test_scene_lm_texts_state_the_truth(tiny_world_dir, tiny_base_dir):
    """Scene text names exactly the image's objects; lookup questions are answered from it;
    the prompt/answer format is the one the VLM's chat template renders."""
    import re

    from transformers import AutoTokenizer

    from visalign.data.coco import load_coco_instances
    from visalign.data.llava import load_llava_records
    from visalign.world import load_world
    from visalign.methods.base_model import scene_lm_texts, world_chat_template

    world = load_world(tiny_world_dir)
    records = load_llava_records(world.llava_path("train"))
    items = scene_lm_texts(world, records, 4, seed=0)
    n_images = len(load_coco_instances(world.instances_path("train")).getImgIds())
    assert len(items) == len(records) + 4 * n_images
    assert not any("<image>" in p for p, _ in items)
    names = {c.name for c in world.vocab.categories}
    syn = {}
    for line in world.synonyms_path.read_text().splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        for w in words:
            syn[w] = words[0]
    checked = yes = 0
    for prompt, answer in items:
        m = re.match(r"USER: (\w[\w ]*): (.*)\.\n(Is there an? (.+) in the image\?) ASSISTANT:$",
                     prompt)
        if not m:
            continue
        scene, in_scene = m.group(2), set()
        for n in sorted(names, key=len, reverse=True):  # "hot dog" before "dog"
            if re.search(rf"\b{n}\b", scene):
                in_scene.add(n)
                scene = re.sub(rf"\b{n}\b", "", scene)
        asked = syn.get(m.group(4), m.group(4))
        assert answer == (" Yes</s>" if asked in in_scene else " No</s>"), (prompt, answer)
        checked += 1
        yes += answer == " Yes</s>"
    assert checked > 20 and 0.3 < yes / checked < 0.7
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    p_fmt, a_fmt = world_chat_template()
    msgs = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == p_fmt.format(q="Q?") + a_fmt.format(
        a="A")
    assert tok.apply_chat_template(msgs[:1], tokenize=False,
                                   add_generation_prompt=True) == p_fmt.format(q="Q?")


@pytest.mark.parametrize("argv, seed", [
    ([], 0), (["seed=3"], 3), (["--seed", "5"], 5), (["--seed", "5", "seed=3"], 5)])
def test_world_base_cli_seed_resolution(argv, seed):
    """`seed=N` counts unless --seed is given (a --seed default once overrode it silently)."""
    from visalign.cli import build_parser
    from visalign.commands.world import base_config_from_args

    args = build_parser().parse_args(["world", "base", "--world", "W", "--out", "M", *argv])
    cfg = base_config_from_args(args)
    assert (cfg.seed, cfg.world, cfg.out) == (seed, "W", "M")


def test_packed_scene_lm_texts(tiny_world_dir, tiny_base_dir):
    """Packed LM pre-training: one conversation per image, the scene written once (first turn),
    every record's QA and every lookup present, rendered as the chat template renders turns,
    and the loss on exactly the answers."""
    from collections import Counter

    from transformers import AutoTokenizer

    from visalign.data.coco import load_coco_instances
    from visalign.data.llava import load_llava_records
    from visalign.world import load_world
    from visalign.methods.base_model import text_collate, scene_lm_texts

    world = load_world(tiny_world_dir)
    records = load_llava_records(world.llava_path("train"))
    items = scene_lm_texts(world, records, 4, seed=0, pack=True)
    assert items == scene_lm_texts(world, records, 4, seed=0, pack=True)
    n_images = len(load_coco_instances(world.instances_path("train")).getImgIds())
    per_image = Counter(r["image"] for r in records)
    assert len(items) == n_images
    assert sorted(len(it) for it in items) == sorted(n + 4 for n in per_image.values())
    flat = [q for it in items for q, _ in it]
    assert not any("<image>" in q for q in flat)
    for it in items:
        assert ":" in it[0][0].split("\n")[0] and "\n" in it[0][0]   # scene, then question
        assert all("\n" not in q for q, _ in it[1:])                  # written once
    # Every record's answer is there, once per record.
    answers = Counter(a for it in items for _, a in it)
    for a, n in Counter(f" {r['conversations'][1]['value']}</s>" for r in records).items():
        assert answers[a] >= n

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    msgs = []
    for q, a in [("Q1?", "A1"), ("Q2?", "A2")]:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    turns = [("USER: Q1? ASSISTANT:", " A1</s>"), ("USER: Q2? ASSISTANT:", " A2</s>")]
    assert tok.apply_chat_template(msgs, tokenize=False) == "".join(p + a for p, a in turns)
    batch = text_collate(tok, 1024)([turns, turns[:1]])
    for row, n in ((0, 2), (1, 1)):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        got = tok.decode(ids[labels != -100])
        assert got.split() == " A1</s> A2</s>".split()[:n]
    single = text_collate(tok, 1024)([turns[0]])
    assert (single["labels"] == text_collate(tok, 1024)([turns[:1]])["labels"]).all()


def test_packed_stages_resolution():
    """`pack_turns=true` packs every stage; `pack_stages` names some; a typo is an error."""
    import pytest

    from visalign.methods.base_model import base_config, packed_stages

    assert packed_stages(base_config("tiny")) == set()
    assert packed_stages(base_config("tiny", {"pack_turns": True})) == {
        "lm_pretrain", "stage1", "stage2"}
    assert packed_stages(base_config("tiny", {"pack_stages": "lm_pretrain, stage2"})) == {
        "lm_pretrain", "stage2"}
    with pytest.raises(ValueError, match="lm_pretrian"):
        packed_stages(base_config("tiny", {"pack_stages": "lm_pretrian"}))


def test_scene_text_reading_order():
    """scene_order=reading lists objects by grid row, then centre x, whatever their input
    order, and draws nothing from the rng; the default order is a seeded shuffle."""
    import random

    from visalign.methods.base_model import scene_text

    names = {1: "cup", 2: "fork", 3: "dog"}
    anns = [  # bbox = x, y, w, h
        {"category_id": 3, "bbox": [40, 50, 10, 10], "region": "bottom right", "color": "black"},
        {"category_id": 1, "bbox": [30, 2, 10, 10], "region": "top", "color": "red"},
        {"category_id": 2, "bbox": [2, 25, 10, 10], "region": "left", "color": "white"},
        {"category_id": 2, "bbox": [2, 4, 6, 6], "region": "top left", "color": "white"},
    ]
    rng = random.Random(0)
    state = rng.getstate()
    got = scene_text("kitchen", anns, names, rng, "reading")
    assert got == ("kitchen: white fork top left; red cup top; white fork left; "
                   "black dog bottom right.")
    assert rng.getstate() == state
    assert scene_text("kitchen", anns[::-1], names, rng, "reading") == got
    by_id = {"cup": (1,), "fork": (2,), "dog": (3,)}
    by_cat = scene_text("kitchen", anns[::-1], names, rng, "category", by_id)
    assert by_cat == ("kitchen: red cup top; white fork top left; white fork left; "
                      "black dog bottom right.")
    assert rng.getstate() == state
    keys = {"cup": (1, 0), "fork": (0, 0), "dog": (0, 2)}
    assert scene_text("kitchen", anns, names, rng, "rank", keys) == (
        "kitchen: white fork left; white fork top left; black dog bottom right; red cup top.")
    with pytest.raises(ValueError, match="order keys"):
        scene_text("kitchen", anns, names, rng, "rank")
    with pytest.raises(ValueError, match="scene order"):
        scene_text("kitchen", anns, names, rng, "size")
    shuffled = {scene_text("kitchen", anns, names, random.Random(s)) for s in range(8)}
    assert len(shuffled) > 1
    assert scene_text("kitchen", anns, names, random.Random(3)) == scene_text(
        "kitchen", anns, names, random.Random(3))


def test_scene_order_auto_follows_the_worlds_description_order():
    """scene_order=auto takes the order of the world's descriptions (salience -> random, and a
    world whose config predates description_order is salience-ordered); an explicit order wins."""
    from types import SimpleNamespace

    from visalign.methods.base_model import base_config, resolve_scene_order

    cfg = base_config("tiny")
    assert cfg.scene_order == "auto"
    for order, want in (("category", "category"), ("rank", "rank"), ("reading", "reading"),
                        ("salience", "random")):
        world = SimpleNamespace(meta={"config": {"description_order": order}})
        assert resolve_scene_order(cfg, world).scene_order == want
    assert resolve_scene_order(cfg, SimpleNamespace(meta={"config": {}})).scene_order == "random"
    explicit = base_config("tiny", ["scene_order=reading"])
    world = SimpleNamespace(meta={"config": {"description_order": "category"}})
    assert resolve_scene_order(explicit, world).scene_order == "reading"


def test_base_with_packed_turns(tiny_world_dir, tiny_base_dir, tmp_path):
    """`pack_stages` trains the named stages on one conversation per training image and the
    others on one sequence per record (CLIP and tokenizer reused from the tiny base)."""
    import json
    import shutil

    from visalign.data.coco import load_coco_instances
    from visalign.data.llava import load_llava_records
    from visalign.models import load_vlm
    from visalign.world import load_world
    from visalign.methods.base_model import base_config, build_base_model

    stages = tmp_path / "base.stages"
    src = tiny_base_dir.parent / (tiny_base_dir.name + ".stages")
    for name in ("tokenizer", "clip", "llava.init"):
        shutil.copytree(src / name, stages / name)
    cfg = base_config("tiny", {"world": str(tiny_world_dir), "out": str(tmp_path / "base"),
                               "progress": False, "skip_eval": True,
                               "pack_stages": "lm_pretrain,stage2",
                               "lm_pretrain": {"batch_size": 8, "epochs": 1.0},
                               "stage1": {"batch_size": 8, "epochs": 1.0},
                               "stage2": {"batch_size": 8, "epochs": 1.0}})
    build_base_model(cfg)
    n_images = len(load_coco_instances(load_world(tiny_world_dir).instances_path("train"))
                   .getImgIds())
    s1_records = [r for r in load_llava_records(load_world(tiny_world_dir).llava_path("train"))
                  if r.get("task") in ("caption", "existence")]
    for name, n in (("lm_pretrain", n_images), ("stage1", len(s1_records)),
                    ("stage2", n_images)):
        summary = json.loads((stages / name / "train_summary.json").read_text())
        assert summary["samples"] == n, name     # packed: one conversation per image, one epoch
        assert summary["last"]["loss"] == summary["last"]["loss"]  # not NaN
    vlm = load_vlm(str(tmp_path / "base"))
    assert vlm.model is not None


def test_stage_loss_dataset_weighting(tiny_world_dir, tiny_base_dir):
    """'dataset' token weighting: summed answer-token CE over the mean answer tokens of random
    batches; a batch of short answers then weighs less than under the batch mean."""
    import pytest
    import torch
    from transformers import AutoTokenizer

    from visalign.data.llava import load_llava_records
    from visalign.losses import sft_loss
    from visalign.models import load_vlm
    from visalign.world import load_world
    from visalign.methods.base_model import stage_loss, text_collate, scene_lm_texts

    world = load_world(tiny_world_dir)
    items = scene_lm_texts(world, load_llava_records(world.llava_path("train")), 2, seed=0)
    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    collate = text_collate(tok)
    model = load_vlm(str(tiny_base_dir)).model
    short = collate(sorted(items, key=lambda it: len(it[1]))[:8])   # one-word answers
    with torch.no_grad():
        batch_loss, _ = stage_loss("batch", items, collate, 0, 8)(model, short)
        ds = stage_loss("dataset", items, collate, 0, 8)
        ds_loss, stats = ds(model, short)
        logits = model(**{k: v for k, v in short.items() if k != "labels"}).logits
    n_short = int((short["labels"][:, 1:] != -100).sum())
    assert batch_loss.item() == pytest.approx(sft_loss(logits, short["labels"]).item(), abs=1e-5)
    assert stats["batch_mean_ce"].item() == pytest.approx(batch_loss.item(), abs=1e-5)
    # sum / normaliser, with a normaliser (an average random batch) above this short batch's
    ratio = ds_loss.item() / batch_loss.item()
    assert 0 < ratio < 1
    normaliser = n_short / ratio
    assert normaliser > n_short
    with pytest.raises(ValueError, match="token_weighting"):
        stage_loss("tokens", items, collate, 0, 8)
    # unlikelihood: the CE plus its weight times the repetition loss on the same logits
    from visalign.losses import repetition_unlikelihood_loss
    long = collate(sorted(items, key=lambda it: -len(it[1]))[:4])    # descriptions
    with torch.no_grad():
        ul_loss, ul_stats = stage_loss("batch", items, collate, 0, 8, unlikelihood=0.5)(
            model, long)
        lg = model(**{k: v for k, v in long.items() if k != "labels"}).logits
    ul = repetition_unlikelihood_loss(lg, long["labels"]).item()
    assert ul > 0
    assert ul_stats["unlikelihood"].item() == pytest.approx(ul, abs=1e-5)
    assert ul_loss.item() == pytest.approx(sft_loss(lg, long["labels"]).item() + 0.5 * ul,
                                           abs=1e-4)
    with pytest.raises(ValueError, match="unlikelihood"):
        stage_loss("batch", items, collate, 0, 8, unlikelihood=-1.0)


def test_base_stop_after_keeps_stages_and_resumes(tiny_world_dir, tiny_base_dir, tmp_path):
    """`stop_after=lm_pretrain` ends with the LM stage saved and no model dir; the same command
    without it resumes from there (the LM stage is not retrained)."""
    import json
    import shutil

    from visalign.methods.base_model import base_config, build_base_model

    stages = tmp_path / "base.stages"
    src = tiny_base_dir.parent / (tiny_base_dir.name + ".stages")
    for name in ("tokenizer", "clip", "llava.init"):
        shutil.copytree(src / name, stages / name)
    over = {"world": str(tiny_world_dir), "out": str(tmp_path / "base"), "progress": False,
            "skip_eval": True, "lm_pretrain": {"epochs": 0.5}, "stage1": {"epochs": 0.25},
            "stage2": {"epochs": 0.25}}
    res = build_base_model(base_config("tiny", {**over, "stop_after": "lm_pretrain"}))
    assert res["stopped_after"] == "lm_pretrain"
    assert (stages / "lm_pretrain" / "model" / "config.json").exists()
    assert not (stages / "stage1").exists() and not (tmp_path / "base").exists()
    lm_summary = (stages / "lm_pretrain" / "train_summary.json").read_text()
    build_base_model(base_config("tiny", over))
    assert (tmp_path / "base" / "config.json").exists()
    assert (stages / "lm_pretrain" / "train_summary.json").read_text() == lm_summary
    assert json.loads((stages / "stage2" / "train_summary.json").read_text())["steps"] > 0


def test_padding_free_stages_train_like_padded_ones(tiny_world_dir, tiny_base_dir, tmp_path):
    """`lm_pretrain.padding_free` / `stage1.padding_free` change the batches' shape, not the
    training: same losses as the padded stages (same seed, same batches), float rounding aside."""
    import json
    import shutil

    from visalign.methods.base_model import base_config, build_base_model

    src = tiny_base_dir.parent / (tiny_base_dir.name + ".stages")
    runs = {}
    for tag, pf in (("padded", False), ("packed", True)):
        stages = tmp_path / tag / "base.stages"
        for name in ("tokenizer", "clip", "llava.init"):
            shutil.copytree(src / name, stages / name)
        build_base_model(base_config("tiny", {
            "world": str(tiny_world_dir), "out": str(tmp_path / tag / "base"),
            "progress": False, "skip_eval": True, "stop_after": "stage1",
            "lm_pretrain": {"epochs": 0.3, "padding_free": pf},
            "stage1": {"epochs": 0.3, "padding_free": pf}}))
        runs[tag] = stages
    for name in ("lm_pretrain", "stage1"):
        a, b = (json.loads((runs[t] / name / "train_summary.json").read_text())
                for t in ("padded", "packed"))
        assert a["steps"] == b["steps"] > 1
        assert b["last"]["loss"] == pytest.approx(a["last"]["loss"], rel=2e-3), name
        assert "padding_free: true" in (runs["packed"] / name / "config.yaml").read_text()
        assert "padding_free: false" in (runs["padded"] / name / "config.yaml").read_text()
