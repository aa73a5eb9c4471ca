"""Models: loading HF VLMs + processors, the VLM adapter, LoRA, tiny-model builders, generation.

Imports are lazy so that ``import visalign.models`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VLM": "adapter", "Rollout": "adapter", "sequence_logprobs": "adapter",
    "IGNORE_INDEX": "adapter", "to_model": "adapter",
    "load_vlm": "loading", "load_processor": "loading",
    "add_lora": "lora", "reference_policy": "lora", "lm_linear_names": "lora",
    "train_tokenizer": "tokenizer",
    "build_tiny_clip": "tiny", "build_tiny_llava": "tiny", "build_tiny_qwen2vl": "tiny",
    "generate_answers": "generation", "GenerationConfig": "generation",
    "GenerateConfig": "generation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"visalign.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'visalign.models' has no attribute {name!r}")
