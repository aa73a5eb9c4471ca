"""LoRA on the language model only (peft).

The vision tower is the FiSAO verifier and must stay frozen and unadapted, and the projector is
left alone too: adapters go on the language model's attention and MLP projections. With LoRA the
reference policy of PPO/DPO is the same model with the adapter switched off
(:func:`reference_policy`), so no second copy of the weights is needed.
"""

from __future__ import annotations

import contextlib
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


def add_lora(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: str | Sequence[str] = "auto"):
    """Wrap ``model`` in a peft ``PeftModel`` with LoRA on the LM projections only.

    ``target_modules="auto"`` picks :func:`lm_linear_names`; a list of projection suffixes
    (e.g. ``["q_proj", "v_proj"]``) restricts them, still only inside the language model. All
    base weights (vision tower included) are frozen.
    """
    from peft import LoraConfig, get_peft_model

    projections = LM_PROJECTIONS if target_modules == "auto" else (
        [target_modules] if isinstance(target_modules, str) else list(target_modules))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lm_linear_names(model, projections))
    return get_peft_model(model, config)


@contextlib.contextmanager
def reference_policy(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Context in which ``model`` (a PeftModel) computes with its adapters disabled."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError("reference_policy needs a peft model (use add_lora); a full fine-tune "
                        "needs a separate frozen reference copy")
    with model.disable_adapter():
        yield model
