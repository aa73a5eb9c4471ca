"""Checkpoints (resumable training state) and the saved model (a loadable HF dir, the adapter)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from visalign.io import write_json
from visalign.training.config import TrainConfig


def latest_checkpoint(out: str | Path) -> Path | None:
    ckdir = Path(out) / "checkpoints"
    if not ckdir.exists():
        return None
    cks = [p for p in ckdir.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
           and (p / "trainer_state.json").exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(acc: Any, out: Path, state: dict) -> None:
    """Save the accelerator's state to ``out/checkpoints/step-N`` (safetensors); keeps the two
    newest. ``trainer_state.json`` (``state``) is written last and marks the dir complete."""
    path = out / "checkpoints" / f"step-{state['step']}"
    acc.save_state(str(path), safe_serialization=True)
    if acc.is_main_process:
        # Written last: a checkpoint dir without it is incomplete and ignored on resume.
        write_json(path / "trainer_state.json", state)
        for old in sorted((out / "checkpoints").glob("step-*"),
                          key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def save_model(vlm: Any, cfg: TrainConfig, out: Path) -> Path:
    """Save the trained model as a loadable HF dir (``out/model``) and the adapter if LoRA."""
    model = vlm.model
    model_dir = out / "model"
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    if cfg.trainable == "lora":
        model.save_pretrained(out / "adapter")
        if cfg.save_merged:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp)
    if tmp.exists():
        vlm.processor.save_pretrained(tmp)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    return model_dir if model_dir.exists() else out / "adapter"
