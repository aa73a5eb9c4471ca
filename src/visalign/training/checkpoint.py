"""Checkpoints (resumable training state) and the saved model (a loadable HF dir, the adapter).

Under a sharded engine (FSDP, ZeRO-3) no process holds the whole model: :func:`save_model`
gathers the full state dict on every process (a collective), and the main process alone writes
the adapter and the merged model from it. Checkpoints are the engine's own
(``accelerator.save_state``: safetensors for one process and DDP; FSDP's and DeepSpeed's sharded
formats otherwise), so a run resumes only under the engine and world size that saved it
(:func:`check_resume`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from visalign.config import ConfigError
from visalign.io import write_json
from visalign.training.config import TrainConfig
from visalign.training.engine import plain_init


def latest_checkpoint(out: str | Path) -> Path | None:
    ckdir = Path(out) / "checkpoints"
    if not ckdir.exists():
        return None
    cks = [p for p in ckdir.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
           and (p / "trainer_state.json").exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1]), default=None)


def _launch_record(acc: Any) -> dict:
    from visalign.training.engine import launched_engine

    return {"engine": launched_engine(), "world_size": acc.num_processes}


def save_checkpoint(acc: Any, out: Path, state: dict) -> None:
    """Save the accelerator's state to ``out/checkpoints/step-N``; keeps the two newest.
    ``trainer_state.json`` (``state`` plus the engine and world size) is written last and marks
    the dir complete."""
    path = out / "checkpoints" / f"step-{state['step']}"
    acc.save_state(str(path), safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        # Written last: a checkpoint dir without it is incomplete and ignored on resume.
        write_json(path / "trainer_state.json", {**state, "launch": _launch_record(acc)})
        for old in sorted((out / "checkpoints").glob("step-*"),
                          key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def check_resume(acc: Any, ck: Path) -> dict:
    """The trainer state of checkpoint ``ck``; a one-line error when it was saved under another
    engine or world size (its optimiser shards, data position and RNG states are per process)."""
    state = json.loads((ck / "trainer_state.json").read_text())
    saved = state.pop("launch", None)
    now = _launch_record(acc)
    if saved is not None and saved != now:
        raise ConfigError(
            f"{ck}: checkpoint saved by {saved['world_size']} process(es) under "
            f"{saved['engine']}, this run has {now['world_size']} under {now['engine']}: launch "
            "with the accelerate config that saved it, or use a new out dir")
    return state


def _unsharded_class(module: Any) -> type:
    """The model's own class (FSDP2 swaps in a subclass of it)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def _full_copy(unwrapped: Any, state_dict: dict) -> Any:
    """A plain CPU model (PeftModel with LoRA) built from ``unwrapped``'s config and holding
    ``state_dict``, the gathered full weights; built on the meta device, so no weights are
    initialised or held twice."""
    import torch

    is_peft = hasattr(unwrapped, "peft_config")
    base = unwrapped.get_base_model() if is_peft else unwrapped
    with torch.device("meta"), plain_init():
        fresh = _unsharded_class(base)._from_config(copy.deepcopy(base.config))
        if is_peft:
            from peft import get_peft_model

            name = unwrapped.active_adapter
            fresh = get_peft_model(fresh, copy.deepcopy(unwrapped.peft_config[name]),
                                   adapter_name=name)
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"gathered state dict does not fit the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return fresh


def gather_full_state_dict(acc: Any, model: Any) -> dict:
    """The full state dict of a sharded model on the main process (empty elsewhere); every
    process must call it. DeepSpeed: accelerate's ``get_state_dict`` (ZeRO-3's 16-bit gather,
    which keeps the parameters' own dtype). FSDP2: each sharded tensor is all-gathered in turn
    (``DTensor.full_tensor``), so no process holds more than one gathered tensor beside its
    shards; accelerate 1.16's ``get_state_dict`` returns the sharded tensors themselves for a
    model on the CPU."""
    from visalign.training.engine import launched_engine

    if launched_engine() == "deepspeed":
        return acc.get_state_dict(model)
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in model.state_dict().items():     # the same order on every process
        if isinstance(v, DTensor):
            v = v.full_tensor()
        if acc.is_main_process:
            out[k] = v.detach().to("cpu", copy=True)
    return out


def _write_model_dir(model: Any, processor: Any, out: Path) -> Path:
    """``model`` and ``processor`` to ``out/model``, through a temp dir renamed into place."""
    model_dir, tmp = out / "model", out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    return model_dir


def save_model(vlm: Any, cfg: TrainConfig, out: Path, acc: Any = None,
               model: Any = None) -> Path:
    """Save the trained model as a loadable HF dir (``out/model``) and the adapter if LoRA.

    With ``acc`` and ``model`` (the prepared model) every process must call it: under a sharded
    engine the full state dict is gathered first, and only the main process writes. Without
    them, ``vlm.model`` is saved as it is (one process).
    """
    from visalign.training.engine import is_sharded

    if acc is not None and is_sharded():
        state_dict = gather_full_state_dict(acc, model)
        model_dir = out / "model"
        if acc.is_main_process:
            full = _full_copy(acc.unwrap_model(model), state_dict)
            model_dir = _save_plain(full, vlm.processor, cfg, out)
        acc.wait_for_everyone()
        return model_dir if model_dir.exists() else out / "adapter"
    if acc is not None:
        model_dir = out / "model"
        if acc.is_main_process:
            model_dir = _save_plain(acc.unwrap_model(model), vlm.processor, cfg, out)
        acc.wait_for_everyone()
        return model_dir if model_dir.exists() else out / "adapter"
    return _save_plain(vlm.model, vlm.processor, cfg, out)


def _save_plain(model: Any, processor: Any, cfg: TrainConfig, out: Path) -> Path:
    """Save an unsharded model: the adapter (LoRA) and the merged or full model dir."""
    if cfg.trainable == "lora":
        model.save_pretrained(out / "adapter")
        if cfg.save_merged:
            return _write_model_dir(copy.deepcopy(model).merge_and_unload(), processor, out)
        return out / "adapter"
    return _write_model_dir(model, processor, out)
