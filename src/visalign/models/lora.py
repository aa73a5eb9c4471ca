"""LoRA on the language model, and optionally the projector (peft).

The vision tower is the FiSAO verifier and must stay frozen and unadapted. By default the
projector is left alone too and adapters go on the language model's attention and MLP
projections; ``projector=True`` also adapts the projector's linear layers, so a reward can
change how image features are read and not only what the language model prefers to say. With LoRA the
reference policy of PPO/DPO is the same model with the adapter switched off
(:func:`reference_policy`), so no second copy of the weights is needed.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch

LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The text decoder inside a VLM (``model.model.language_model`` in transformers 5)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None and hasattr(model, "get_decoder"):
        lm = model.get_decoder()
    if lm is None:
        raise ValueError(f"cannot find the language model inside {type(model).__name__}")
    return lm


def lm_linear_names(model: torch.nn.Module,
                    projections: Sequence[str] = LM_PROJECTIONS) -> list[str]:
    """Full names of the language model's projection ``nn.Linear`` layers."""
    lm = language_model(model)
    prefix = next(name for name, mod in model.named_modules() if mod is lm)
    names = [f"{prefix}.{n}" if prefix else n for n, m in lm.named_modules()
             if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in projections]
    if not names:
        raise ValueError(f"no {list(projections)} linear layers in the language model")
    return names


def projector_linear_names(model: torch.nn.Module) -> list[str]:
    """Full names of the projector's ``nn.Linear`` layers (LLaVA ``multi_modal_projector``,
    Qwen2-VL ``visual.merger``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and ("multi_modal_projector" in n or ".merger." in n)]
    if not names:
        raise ValueError(f"no projector linear layers in {type(model).__name__}")
    return names


def _projection_suffixes(target_modules: str | Sequence[str]) -> tuple[str, ...]:
    """'auto' -> every LM projection; 'none' -> (); 'q_proj+v_proj' / 'q_proj,v_proj' / a
    list -> those suffixes."""
    if isinstance(target_modules, str):
        if target_modules == "auto":
            return LM_PROJECTIONS
        if target_modules == "none":
            return ()
        target_modules = [t for t in re.split(r"[+,\s]+", target_modules) if t]
    unknown = set(target_modules) - set(LM_PROJECTIONS)
    if unknown:
        raise ValueError(f"lora target_modules: unknown {sorted(unknown)}; use 'auto', 'none' "
                         f"or names from {list(LM_PROJECTIONS)}")
    return tuple(target_modules)


def add_lora(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: str | Sequence[str] = "auto", projector: bool = False):
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA on the LM projections (and, with
    ``projector``, on the projector's linear layers).

    ``target_modules="auto"`` picks :func:`lm_linear_names`; a list of projection suffixes
    (e.g. ``["q_proj", "v_proj"]`` or ``"q_proj+v_proj"``) restricts them, still only inside the
    language model; ``"none"`` puts no adapter on the LM (then ``projector`` must be set). All
    base weights (vision tower included) are frozen.
    """
    from peft import LoraConfig, get_peft_model

    projections = _projection_suffixes(target_modules)
    targets = lm_linear_names(model, projections) if projections else []
    if projector:
        targets += projector_linear_names(model)
    if not targets:
        raise ValueError("LoRA with target_modules='none' needs projector=true")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=targets)
    return get_peft_model(model, config)


@contextlib.contextmanager
def reference_policy(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Context in which ``model`` (a PeftModel) computes with its adapters disabled."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError("reference_policy needs a peft model (use add_lora); a full fine-tune "
                        "needs a separate frozen reference copy")
    with model.disable_adapter():
        yield model
