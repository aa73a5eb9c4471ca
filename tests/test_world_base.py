"""`visalign world base` on the tiny preset: HF-format model + verifier + eval, resumable."""

from __future__ import annotations

import json


def test_tiny_base_end_to_end(tiny_base_dir):
    from transformers import CLIPModel, LlavaForConditionalGeneration

    from visalign.models import load_vlm

    ev = json.loads((tiny_base_dir / "eval.json").read_text())
    m = ev["metrics"]
    for key in ("chair_s", "chair_i", "chair", "recall", "clip_auroc", "qa_accuracy",
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
    assert (tiny_base_dir / "base_config.yaml").exists()


def test_base_stages_resume(tiny_world_dir, tiny_base_dir, tmp_path):
    """A re-run over finished stages reloads them instead of retraining."""
    import shutil

    from visalign.world.base import base_config, build_base_model

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
