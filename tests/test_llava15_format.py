"""visalign loads a llava-1.5 saved in llava-hf's real file format (old key names, fp16 shards
with an index, chat_template.json, processor_config.json) and counts its image tokens right."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from _tiny import LLAVA15_IMAGE_TOKENS, solid_images
from visalign.models import load_vlm


@pytest.fixture(scope="module")
def vlm(llava15_hf_dir):
    return load_vlm(llava15_hf_dir)


def _stored(model_dir, name: str) -> torch.Tensor:
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    with safe_open(str(model_dir / index["weight_map"][name]), "pt") as f:
        return f.get_tensor(name)


def test_the_files_are_llava_hf_s(llava15_hf_dir):
    index = json.loads((llava15_hf_dir / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    assert len(set(index["weight_map"].values())) == 2
    for prefix in ("language_model.model.", "language_model.lm_head.",
                   "vision_tower.vision_model.", "multi_modal_projector."):
        assert any(n.startswith(prefix) for n in names), prefix
    assert _stored(llava15_hf_dir, "language_model.lm_head.weight").dtype == torch.float16
    proc = json.loads((llava15_hf_dir / "processor_config.json").read_text())
    assert proc["num_additional_image_tokens"] == 1
    assert proc["vision_feature_select_strategy"] == "default"
    assert json.loads((llava15_hf_dir / "config.json").read_text())["vision_feature_layer"] == -2


def test_old_key_names_load_with_nothing_missing(llava15_hf_dir):
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(
        str(llava15_hf_dir), output_loading_info=True)
    assert not any(info.values()), info
    assert model.dtype == torch.float16            # the checkpoint's dtype unless told
    w = model.model.vision_tower.embeddings.patch_embedding.weight
    assert torch.equal(w, _stored(llava15_hf_dir,
                                  "vision_tower.vision_model.embeddings.patch_embedding.weight"))


def test_load_vlm_dtype_template_and_weights(vlm, llava15_hf_dir):
    assert vlm.model.dtype == torch.float32 and vlm.family == "llava"
    assert load_vlm(llava15_hf_dir, dtype="auto").model.dtype == torch.float16
    assert vlm.model.config.vision_feature_layer == -2
    head = vlm.model.lm_head.weight
    assert torch.equal(head, _stored(llava15_hf_dir, "language_model.lm_head.weight").float())
    # llava-hf's chat template, from chat_template.json
    assert vlm.prompt_text("What is this?") == "USER: <image>\nWhat is this? ASSISTANT:"


def test_processor_counts_the_image_tokens(vlm):
    """56x56 image, patch 14, "default" strategy: 16 image tokens (the CLS feature dropped),
    as many as the projector emits, so a forward pass and generation run."""
    img = solid_images(1, 90)[0]
    enc = vlm.processor(text=[vlm.prompt_text("What is this?")], images=[img],
                        return_tensors="pt")
    n = int((enc["input_ids"] == vlm.model.config.image_token_id).sum())
    assert n == LLAVA15_IMAGE_TOKENS == 16
    with torch.no_grad():
        feats = vlm.model.get_image_features(pixel_values=enc["pixel_values"])
    feats = getattr(feats, "pooler_output", feats)
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats
    assert feats.reshape(-1, feats.shape[-1]).shape[0] == n
    out = vlm.generate([img, img], ["What is this?", "Describe the image."], max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_training_still_teaches_the_model_to_stop(vlm):
    """llava-hf's template writes no </s> after an answer; the labels still end with it."""
    b = vlm.encode(solid_images(1, 56), [[{"from": "human", "value": "<image>\nWhat?"},
                                         {"from": "gpt", "value": "A red ball."}]])
    labelled = b["labels"][0][b["labels"][0] != -100]
    assert labelled[-1].item() == vlm.tokenizer.eos_token_id
    assert vlm.tokenizer.decode(labelled[:-1]).strip() == "A red ball."
