"""Model loading, the VLM adapter (encode / generate / rollout), sequence_logprobs and LoRA,
on tiny LLaVA and Qwen2-VL models saved to disk and loaded back through load_vlm."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _tiny import CORPUS, solid_images, tiny_tokenizer
from visalign.io import DataError
from visalign.models import load_vlm, sequence_logprobs
from visalign.data.batch import IGNORE_INDEX

CONVS = [
    [{"from": "human", "value": "<image>\nWhat color is the ball?"},
     {"from": "gpt", "value": "The ball is red."}],
    [{"from": "human", "value": "Describe the image.\n<image>"},
     {"from": "gpt", "value": "A blue cube."},
     {"from": "human", "value": "Is there a dog?"},
     {"from": "gpt", "value": "No, there is no dog."}],
]
ANSWERS = [["The ball is red."], ["A blue cube.", "No, there is no dog."]]


@pytest.fixture(scope="module", params=["llava", "qwen2vl"])
def vlm(request, tiny_llava_dir, tiny_qwen2vl_dir):
    path = tiny_llava_dir if request.param == "llava" else tiny_qwen2vl_dir
    return load_vlm(path)


def test_tokenizer_specials_offsets_and_chat_template(tmp_path):
    from transformers import AutoTokenizer

    tok = tiny_tokenizer()
    for t in ("<s>", "</s>", "<pad>", "<unk>", "<image>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = "There is a red ball."
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    words = [text[s:e] for s, e in enc["offset_mapping"]]
    assert "red" in words and "ball" in words  # frequent words are one token, offsets trimmed
    assert tok(text)["input_ids"][0] == tok.bos_token_id
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1?"}]},
            {"role": "assistant", "content": "A1."},
            {"role": "user", "content": "Q2?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "USER: <image>\nQ1? ASSISTANT: A1.</s>USER: Q2? ASSISTANT:"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.chat_template == tok.chat_template
    assert again(CORPUS[0])["input_ids"] == tok(CORPUS[0])["input_ids"]


def test_tiny_llava_expands_one_image_token_per_patch(tiny_llava_dir):
    vlm = load_vlm(tiny_llava_dir)
    assert vlm.family == "llava"
    assert type(vlm.processor.image_processor).__name__ == "CLIPImageProcessorPil"
    batch = vlm.encode(solid_images(1), CONVS[:1])
    n_img = int((batch["input_ids"] == vlm.model.config.image_token_id).sum())
    assert n_img == (64 // 8) ** 2 == vlm.model.config.image_seq_length
    assert torch.isfinite(vlm.model(**batch).loss)


def test_tiny_llava_full_strategy_reads_the_cls_token_too(tmp_path, tiny_clip_dir):
    from visalign.models.tiny import build_tiny_llava

    path = build_tiny_llava(tmp_path / "full", tiny_tokenizer(), clip_dir=tiny_clip_dir,
                            text_hidden=64, text_layers=1, vision_feature_layer=-1,
                            vision_feature_select_strategy="full")
    vlm = load_vlm(path)
    batch = vlm.encode(solid_images(1), CONVS[:1])
    n_img = int((batch["input_ids"] == vlm.model.config.image_token_id).sum())
    assert n_img == (64 // 8) ** 2 + 1 == vlm.model.config.image_seq_length
    assert torch.isfinite(vlm.model(**batch).loss)
    # the first image feature is the projected CLS state of the chosen layer
    feats = vlm.model.model.get_image_features(pixel_values=batch["pixel_values"])
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats
    hidden = vlm.model.model.vision_tower(batch["pixel_values"],
                                          output_hidden_states=True).hidden_states[-1]
    cls = vlm.model.model.multi_modal_projector(hidden[:, :1])
    assert torch.allclose(feats.reshape(-1, feats.shape[-1])[0], cls[0, 0], atol=1e-5)
    out = vlm.generate(solid_images(1), ["Describe the image."], max_new_tokens=4)
    assert len(out) == 1
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        build_tiny_llava(tmp_path / "bad", tiny_tokenizer(), clip_dir=tiny_clip_dir,
                         vision_feature_select_strategy="cls")


def test_llava_vision_tower_is_the_clip_vision_model(tiny_llava_dir, tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    vlm = load_vlm(tiny_llava_dir)
    tower = vlm.model.model.vision_tower.state_dict()
    for k, v in clip.vision_model.state_dict().items():
        assert torch.equal(tower[k], v), k
    # The CLIP text side pools at </s>, which its tokenizer appends.
    proc = CLIPProcessor.from_pretrained(tiny_clip_dir)
    ids = proc(text=["a red ball"], return_tensors="pt")["input_ids"][0]
    assert ids[-1].item() == clip.config.text_config.eos_token_id


def test_load_encode_loss_generate(vlm):
    batch = vlm.encode(solid_images(2), CONVS)
    assert {"input_ids", "attention_mask", "labels", "pixel_values"} <= set(batch)
    if vlm.family == "qwen2_vl":
        assert {"image_grid_thw", "mm_token_type_ids"} <= set(batch)
    assert (batch["attention_mask"][:, 0] == 1).all()  # right padding
    out = vlm.model(**batch)
    assert torch.isfinite(out.loss)
    texts = vlm.generate(solid_images(2), ["What is this?", "Describe the image."],
                         max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert "<image>" in vlm.prompt_text("What?") or "<|image_pad|>" in vlm.prompt_text("What?")


def test_labels_cover_only_assistant_turns_and_their_eos(vlm):
    batch = vlm.encode(solid_images(2), CONVS)
    eos = vlm.tokenizer.convert_ids_to_tokens(vlm.eos_token_ids[0])
    for i, answers in enumerate(ANSWERS):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        labelled = labels != IGNORE_INDEX
        assert torch.equal(ids[labelled], labels[labelled])
        got = vlm.tokenizer.decode(ids[labelled], skip_special_tokens=False)
        assert got.replace(" ", "") == "".join(a + eos for a in answers).replace(" ", "")
        # The labelled tokens form one contiguous run per assistant turn.
        runs = int((labelled[1:] & ~labelled[:-1]).sum()) + int(labelled[0])
        assert runs == len(answers)


def test_encode_max_length_truncates_but_not_inside_image(vlm):
    full = vlm.encode(solid_images(2), CONVS)
    is_img = torch.isin(full["input_ids"], torch.tensor(vlm._image_token_ids()))
    cut = int(is_img.nonzero()[:, 1].max()) + 12
    short = vlm.encode(solid_images(2), CONVS, max_length=cut)
    assert short["input_ids"].shape[1] == cut
    for k in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(short[k], full[k][:, :cut])
    with pytest.raises(ValueError, match="image tokens"):
        vlm.encode(solid_images(2), CONVS, max_length=4)


def test_sequence_logprobs_equals_manual_gather(vlm):
    batch = vlm.encode(solid_images(2), CONVS)
    lp = sequence_logprobs(vlm.model, batch)
    with torch.no_grad():
        logits = vlm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    logp = torch.log_softmax(logits.float(), -1)
    labels = batch["labels"]
    manual = torch.zeros(labels.shape)
    for i in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[i, t] != IGNORE_INDEX:
                manual[i, t] = logp[i, t - 1, labels[i, t]]
    assert lp.shape == labels.shape
    assert torch.allclose(lp.detach(), manual, atol=1e-5)
    assert (lp[labels == IGNORE_INDEX] == 0).all()
    lp.sum().backward()  # differentiable
    # Same quantity as the model's own mean token loss.
    n = (labels[:, 1:] != IGNORE_INDEX).sum()
    assert torch.allclose(-lp.sum() / n, vlm.model(**batch).loss, atol=1e-5)


def test_left_padded_batch_matches_single_prompt(vlm):
    images = solid_images(2)
    prompts = ["What?", "Describe the image in detail, please, with all the objects."]
    both = vlm.generate(images, prompts, max_new_tokens=6)
    alone = vlm.generate(images[:1], prompts[:1], max_new_tokens=6)
    assert both[0] == alone[0]


def test_rollout_batch_reproduces_the_sampled_tokens(vlm):
    images, prompts = solid_images(3), ["What?", "Describe the image.", "Is there a dog?"]
    greedy = vlm.generate(images, prompts, max_new_tokens=6)
    ro = vlm.rollout(images, prompts, max_new_tokens=6, do_sample=False)
    assert ro.texts == greedy
    batch = ro.batch
    assert (batch["attention_mask"][:, 0] == 1).all()
    with torch.no_grad():
        logits = vlm.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"]
    for i in range(3):
        pos = (labels[i] != IGNORE_INDEX).nonzero().flatten()
        assert labels[i, pos].tolist() == ro.response_ids[i]
        # Greedy tokens are the argmax of the training forward: positions line up exactly.
        assert torch.equal(logits[i, pos - 1].argmax(-1), labels[i, pos])
        assert len(ro.response_offsets[i]) == len(ro.response_ids[i])
        for (s, e), tid in zip(ro.response_offsets[i], ro.response_ids[i]):
            piece = vlm.tokenizer.decode([tid], skip_special_tokens=True).strip()
            if "\ufffd" not in piece and s < e:
                assert ro.texts[i][s:e] == piece


def test_rollout_offsets_on_known_text(tiny_llava_dir):
    vlm = load_vlm(tiny_llava_dir)
    ids = vlm.tokenizer(" There is a red ball.", add_special_tokens=False)["input_ids"]
    texts, offsets = vlm._decode_with_offsets([ids + vlm.eos_token_ids])
    assert texts == ["There is a red ball."]
    words = [texts[0][s:e] for s, e in offsets[0]]
    assert words[-1] == ""  # EOS: empty span
    assert "".join(words[:-1]).replace(" ", "") == "Thereisaredball."
    assert "red" in words and "ball" in words


def test_sampling_is_seeded_and_per_sample(vlm):
    images, prompts = solid_images(2), ["What?", "Describe."]
    kw = dict(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=0.9)
    a = vlm.generate(images, prompts, seeds=[11, 12], **kw)
    b = vlm.generate(images, prompts, seeds=[11, 12], **kw)
    assert a == b
    alone = vlm.generate(images[1:], prompts[1:], seeds=[12], **kw)
    assert alone[0] == a[1]  # independent of the rest of the batch
    c = vlm.generate(images, prompts, generator_seed=5, **kw)
    assert c == vlm.generate(images, prompts, generator_seed=5, **kw)
    torch.manual_seed(0)
    d = vlm.generate(images, prompts, **kw)
    torch.manual_seed(0)
    assert d == vlm.generate(images, prompts, **kw)


def _adapted_logits_check_reference(model, inputs, base_logits):
    """Give the LoRA B matrices random weights; assert the adapted model differs from the base
    and that with adapters disabled it is the base again; return the adapted logits."""
    from visalign.models.lora import reference_policy

    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
        adapted = model(**inputs).logits
        with reference_policy(model) as ref:
            assert torch.allclose(ref(**inputs).logits, base_logits, atol=1e-6)
    assert not torch.allclose(adapted, base_logits, atol=1e-4)
    return adapted


def test_lora_only_on_language_model_and_disable_adapter_gives_base(tiny_llava_dir, tmp_path):
    from visalign.models.lora import add_lora

    vlm = load_vlm(tiny_llava_dir)
    batch = vlm.encode(solid_images(2), CONVS)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base_logits = vlm.model(**inputs).logits
    model = add_lora(vlm.model, r=4, alpha=8, dropout=0.0)
    lora_names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora_names and all(".language_model." in n for n in lora_names)
    assert {n.split(".")[-2] for n in lora_names} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    adapted = _adapted_logits_check_reference(model, inputs, base_logits)

    # The adapter dir loads back (explicitly, and as a LoRA-only dir naming its base).
    model.save_pretrained(tmp_path / "adapter")
    for loaded in (load_vlm(tiny_llava_dir, adapter=tmp_path / "adapter"),
                   load_vlm(tmp_path / "adapter")):
        with torch.no_grad():
            assert torch.allclose(loaded.model(**inputs).logits, adapted, atol=1e-5)


def test_lora_on_projector_and_restricted_targets(tiny_llava_dir, tmp_path):
    """`projector=True` adapts the projector too (the vision tower never), its adapter saves
    and loads back, and switching adapters off still gives the base; 'q_proj+v_proj' restricts
    the LM targets; 'none' alone is refused."""
    from visalign.models.lora import add_lora

    vlm = load_vlm(tiny_llava_dir)
    batch = vlm.encode(solid_images(2), CONVS)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base_logits = vlm.model(**inputs).logits
    model = add_lora(vlm.model, r=4, alpha=8, dropout=0.0, target_modules="none",
                     projector=True)
    lora_names = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora_names and all("multi_modal_projector" in n for n in lora_names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "multi_modal_projector" in n for n in trainable)
    adapted = _adapted_logits_check_reference(model, inputs, base_logits)
    model.save_pretrained(tmp_path / "adapter")
    loaded = load_vlm(tiny_llava_dir, adapter=tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(loaded.model(**inputs).logits, adapted, atol=1e-5)

    qv = add_lora(load_vlm(tiny_llava_dir).model, r=4, target_modules="q_proj+v_proj",
                  projector=True)
    names = [n for n, _ in qv.named_modules() if n.endswith("lora_A")]
    assert {n.split(".")[-2] for n in names if ".language_model." in n} == {"q_proj", "v_proj"}
    assert any("multi_modal_projector" in n for n in names)
    with pytest.raises(ValueError, match="projector=true"):
        add_lora(load_vlm(tiny_llava_dir).model, target_modules="none")
    with pytest.raises(ValueError, match="unknown"):
        add_lora(load_vlm(tiny_llava_dir).model, target_modules="qproj")


def test_load_vlm_clear_errors(tiny_llava_dir, tmp_path):
    no_proc = tmp_path / "no_proc"
    shutil.copytree(tiny_llava_dir, no_proc)
    (no_proc / "processor_config.json").unlink()
    with pytest.raises(DataError, match="processor"):
        load_vlm(no_proc)
    no_tpl = tmp_path / "no_tpl"
    shutil.copytree(tiny_llava_dir, no_tpl)
    (no_tpl / "chat_template.jinja").unlink()
    cfg = json.loads((no_tpl / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (no_tpl / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="chat template"):
        load_vlm(no_tpl)
    with pytest.raises(DataError, match="not found"):
        load_vlm(tmp_path / "missing")
