"""Every shipped recipe loads with ``visalign train KIND --config RECIPE`` and trains two steps
on a tiny model in its family's real file format (llava-hf/llava-1.5-7b-hf's, Qwen2-VL's), with
the recipe's own settings (LoRA rank, learning rate, dtype, gradient checkpointing, attention)
and only the sizes shortened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
# two optimiser steps on a few records; nothing else of the recipe changes
SHORT = ["max_steps=2", "grad_accum=1", "progress=false", "save_merged=false"]
KIND = {"cont-sft": "sft", "nsft": "sft", "gt-dpo": "dpo", "seva": "dpo", "sima": "dpo",
        "povid": "dpo", "fisao": "fisao"}


def _recipe_cases() -> list[tuple[str, str]]:
    return [(p.parent.name, p.stem) for p in sorted(RECIPES.glob("*/*.yaml"))]


def test_every_shipped_recipe_is_covered():
    names = {m for _, m in _recipe_cases()}
    assert {m for f, m in _recipe_cases() if f == "llava-1.5-7b"} == set(KIND)
    assert names <= set(KIND) and ("qwen2-vl-7b", "nsft") in _recipe_cases()


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory, coco_root):
    """Hand-made pairs on the COCO root's train2017 images, two per POVID stage."""
    from visalign.methods.pairs import write_pairs

    root = tmp_path_factory.mktemp("recipe_pairs")
    img = str(coco_root / "train2017" / "000000000009.jpg")
    img2 = str(coco_root / "train2017" / "000000000025.jpg")
    pairs = [
        {"id": "a1", "image": img, "prompt": "<image>\nDescribe the image.",
         "chosen": "A man walks two dogs.", "rejected": "A man rides a horse.",
         "meta": {"stage": 1}},
        {"id": "b1", "image": img2, "prompt": "<image>\nWhat is in the image?",
         "chosen": "A cat on a chair.", "rejected": "A dog on a sofa.", "meta": {"stage": 1}},
        {"id": "a2", "image": img, "prompt": "<image>\nIs there a cat?",
         "chosen": "No, there is no cat.", "rejected": "Yes, there is a cat.",
         "meta": {"stage": 2}},
        {"id": "b2", "image": img2, "prompt": "<image>\nWhat color is the car?",
         "chosen": "There is no car.", "rejected": "The car is red.", "meta": {"stage": 2}},
    ]
    return write_pairs(root / "pairs.json", pairs)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, openai_clip_dir):
    """A calibration on the verifier's score scale."""
    from _tiny import write_calibration

    path = tmp_path_factory.mktemp("recipe_calib") / "calibration.json"
    write_calibration(openai_clip_dir, path)
    return path


@pytest.mark.parametrize("family,method", _recipe_cases(),
                         ids=[f"{f}/{m}" for f, m in _recipe_cases()])
def test_recipe_trains_two_steps(family, method, request, tmp_path, instruct_file, pair_file,
                                 calibration, openai_clip_dir):
    from visalign.cli import main

    model = request.getfixturevalue("llava15_hf_dir" if family == "llava-1.5-7b"
                                    else "tiny_qwen2vl_dir")
    recipe = RECIPES / family / f"{method}.yaml"
    kind = KIND[method]
    out = tmp_path / "out"
    argv = ["train", kind, "--config", str(recipe), "--model", str(model), "--out", str(out)]
    if kind == "sft":
        argv += ["--data", str(instruct_file), "--image-root", str(instruct_file.parent),
                 "batch_size=2", "log_every=1"]
    elif kind == "dpo":
        argv += ["--pairs", str(pair_file), "batch_size=2", "log_every=1"]
    else:
        argv += ["--data", str(instruct_file), "--image-root", str(instruct_file.parent),
                 "--verifier", str(openai_clip_dir), "--calibration", str(calibration),
                 "rollout_batch=2", "ppo_minibatch=0", "ppo_epochs=1", "max_new_tokens=8",
                 "limit=0"]
    assert main([*argv, *SHORT]) == 0

    # the run trained with the recipe's settings, written next to its outputs
    written = yaml.safe_load((out / "config.yaml").read_text())
    recipe_cfg = yaml.safe_load(recipe.read_text())
    for key in ("lr", "lora", "gradient_checkpointing", "attn_implementation", "dtype"):
        if isinstance(recipe_cfg.get(key), dict):
            assert recipe_cfg[key].items() <= written[key].items(), key
        elif key in recipe_cfg:
            assert written[key] == recipe_cfg[key], key
    # POVID's sequential stages train one after the other, each with its own log
    logs = sorted(out.glob("stage*/log.jsonl")) if method == "povid" else [out / "log.jsonl"]
    assert len(logs) == (2 if method == "povid" else 1)
    for path in logs:
        log = [json.loads(x) for x in path.read_text().splitlines()]
        assert log[-1]["step"] == 2 and all(r["loss"] == r["loss"] for r in log)  # not NaN
    adapter = out / ("model" if method == "povid" else "adapter") / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == recipe_cfg["lora"]["r"]
