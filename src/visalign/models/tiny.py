"""Tiny, randomly initialised models of real ``transformers`` architectures, saved as HF dirs.

They serve two purposes: the micro-world trains them from scratch on a CPU, and the tests use them
to exercise exactly the loading/encoding/generation code that real checkpoints go through
(``save_pretrained`` here, ``load_vlm`` -> ``from_pretrained`` there). Nothing is downloaded.

- :func:`build_tiny_clip`: ``CLIPModel`` + ``CLIPProcessor`` (the FiSAO verifier form).
- :func:`build_tiny_llava`: ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) with a
  ``LlavaProcessor``; optionally its vision tower is copied from a tiny CLIP.
- :func:`build_tiny_qwen2vl`: ``Qwen2VLForConditionalGeneration`` with a ``Qwen2VLProcessor``,
  a second architecture so that nothing downstream is LLaVA-only.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import processors

from transformers import PreTrainedTokenizerBase

from visalign.models.tokenizer import BOS, EOS, IMAGE, PAD

QWEN_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")

# The Qwen2-VL chat format (system prompt added when none is given, images as
# <|vision_start|><|image_pad|><|vision_end|>), without the tool/video branches of the original.
QWEN2VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           (("bos", BOS), ("eos", EOS), ("pad", PAD), ("image", IMAGE))}
    missing = [n for n, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens for {missing} (use train_tokenizer)")
    return ids


def _set_generation_config(model: Any, *, bos: int, eos: int | list[int], pad: int) -> None:
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = bos, eos, pad
    gc.do_sample = False


def _clip_tokenizer(tokenizer: PreTrainedTokenizerBase, max_length: int) -> PreTrainedTokenizerBase:
    """A copy that also appends ``</s>``: CLIP pools the text at the first EOS position."""
    tok = copy.deepcopy(tokenizer)
    bos, eos = tok.convert_tokens_to_ids(BOS), tok.convert_tokens_to_ids(EOS)
    backend = tok.backend_tokenizer
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
                                      special_tokens=[(BOS, bos), (EOS, eos)]),
    ])
    tok.model_max_length = max_length
    return tok


def _pil_clip_image_processor(image_size: int):
    from transformers import CLIPImageProcessorPil

    # The PIL backend: torchvision is optional and absent on the CPU machines.
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def build_tiny_clip(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, *,
                    image_size: int = 64, patch_size: int = 8, vision_hidden: int = 64,
                    text_hidden: int = 64, layers: int | tuple[int, int] = 2, heads: int = 4,
                    projection_dim: int = 64, max_text_length: int = 64, seed: int = 0) -> Path:
    """Save a tiny ``CLIPModel`` + ``CLIPProcessor`` (PIL image processor) to ``out_dir``.

    ``layers`` is one depth for both towers or ``(vision_layers, text_layers)``. The processor's
    tokenizer is a copy of ``tokenizer`` that appends ``</s>`` (CLIP pools at the EOS token).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    ids = _special_ids(tokenizer)
    vision_layers, text_layers = (layers, layers) if isinstance(layers, int) else tuple(layers)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=text_hidden,
                         intermediate_size=4 * text_hidden, num_hidden_layers=text_layers,
                         num_attention_heads=heads, max_position_embeddings=max_text_length,
                         bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]),
        vision_config=dict(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                           intermediate_size=4 * vision_hidden,
                           num_hidden_layers=vision_layers, num_attention_heads=heads),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=_pil_clip_image_processor(image_size),
                              tokenizer=_clip_tokenizer(tokenizer, max_text_length))
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_llava(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, *,
                     clip_dir: str | os.PathLike | None = None, vision_config: dict | None = None,
                     image_size: int = 64, patch_size: int = 8, vision_hidden: int = 64,
                     vision_layers: int = 2, vision_heads: int = 4, text_hidden: int = 128,
                     text_layers: int = 3, text_heads: int = 4, text_intermediate: int | None = None,
                     max_position_embeddings: int = 1024, vision_feature_layer: int = -2,
                     vision_feature_select_strategy: str = "default", seed: int = 0) -> Path:
    """Save a tiny ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` to ``out_dir``.

    With ``clip_dir`` (a :func:`build_tiny_clip` dir, possibly trained) the vision tower takes that
    CLIP's vision config, weights and image processor, so the FiSAO verifier and the VLM see an
    image through exactly the same encoder. ``vision_config`` overrides the CLIPVisionConfig fields
    otherwise. The processor uses ``num_additional_image_tokens=1`` and the model's
    ``vision_feature_select_strategy``: ``"default"`` (LLaVA's: CLS dropped) expands one
    ``<image>`` to (image_size/patch_size)**2 tokens, ``"full"`` to one more (the CLS token first),
    matching the projected features.
    """
    if vision_feature_select_strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got "
                         f"{vision_feature_select_strategy!r}")
    from transformers import (AutoImageProcessor, CLIPModel, CLIPVisionConfig, LlamaConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    ids = _special_ids(tokenizer)
    clip = None
    if clip_dir is not None:
        clip = CLIPModel.from_pretrained(clip_dir)
        vcfg = clip.config.vision_config
        image_processor = AutoImageProcessor.from_pretrained(clip_dir)
        image_size, patch_size = vcfg.image_size, vcfg.patch_size
    else:
        fields = dict(image_size=image_size, patch_size=patch_size, hidden_size=vision_hidden,
                      intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
                      num_attention_heads=vision_heads)
        fields.update(vision_config or {})
        vcfg = CLIPVisionConfig(**fields)
        image_size, patch_size = vcfg.image_size, vcfg.patch_size
        image_processor = _pil_clip_image_processor(image_size)
    n_image_tokens = (image_size // patch_size) ** 2 + (vision_feature_select_strategy == "full")
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=text_hidden,
        intermediate_size=text_intermediate or 2 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=text_heads, num_key_value_heads=text_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=ids["bos"],
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vcfg, text_config=text_config,
                         image_token_index=ids["image"], image_seq_length=n_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy,
                         vision_feature_layer=vision_feature_layer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if clip is not None:
        # Exact copy: both LLaVA's tower and CLIPModel.vision_model are CLIPVisionModel.
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict(), strict=True)
    _set_generation_config(model, bos=ids["bos"], eos=ids["eos"], pad=ids["pad"])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch_size,
                               vision_feature_select_strategy=vision_feature_select_strategy,
                               num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def qwen_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` with the Qwen2-VL control tokens and chat template added."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)},
                           replace_extra_special_tokens=False)
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    return tok


def build_tiny_qwen2vl(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, *,
                       image_size: int = 64, patch_size: int = 8, merge_size: int = 2,
                       vision_embed: int = 32, vision_layers: int = 2, text_hidden: int = 64,
                       text_layers: int = 2, text_heads: int = 4, seed: int = 0) -> Path:
    """Save a tiny ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor`` to ``out_dir``.

    The tokenizer gets Qwen's control tokens (``<|im_start|>``, ``<|image_pad|>``, ...) and a
    Qwen-style chat template; turns end with ``<|im_end|>``, which is the generation EOS. Images
    are resized so both sides are multiples of ``patch_size * merge_size`` with about
    ``image_size**2`` pixels.
    """
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil, Qwen2VLProcessor)

    from visalign.models.loading import build_processor

    tok = qwen_tokenizer(tokenizer)
    tid = tok.convert_tokens_to_ids
    head_dim = text_hidden // text_heads
    half = head_dim // 2  # M-RoPE splits the rotary half-dim into (temporal, height, width)
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
            num_hidden_layers=text_layers, num_attention_heads=text_heads,
            num_key_value_heads=max(1, text_heads // 2), max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": mrope,
                             "rope_theta": 10000.0},
            bos_token_id=tid(BOS), eos_token_id=tid("<|im_end|>"), pad_token_id=tid(PAD)),
        vision_config=dict(depth=vision_layers, embed_dim=vision_embed, hidden_size=text_hidden,
                           num_heads=4, patch_size=patch_size, spatial_merge_size=merge_size,
                           temporal_patch_size=2, in_channels=3),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _set_generation_config(model, bos=tid(BOS), eos=[tid("<|im_end|>"), tid(EOS)], pad=tid(PAD))
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2,
        min_pixels=image_size * image_size // 2, max_pixels=image_size * image_size)
    video_config = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": patch_size,
                    "merge_size": merge_size, "temporal_patch_size": 2}
    processor = build_processor(Qwen2VLProcessor, image_processor=image_processor, tokenizer=tok,
                                chat_template=QWEN2VL_CHAT_TEMPLATE, video_config=video_config)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
