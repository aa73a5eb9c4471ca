"""Watching a run: accelerate's trackers (TensorBoard, W&B), throughput and peak GPU memory.

``log.jsonl`` is always written; ``report_to=tensorboard|wandb`` also sends every logged row to
accelerate's tracker, with the resolved config as the run's hyper-parameters. Event files (and
W&B's offline run) go under ``OUT/tracking``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from visalign.config import config_to_dict


def tracking_dir(out: str | Path) -> Path:
    return Path(out) / "tracking"


def flat_config(cfg: Any) -> dict:
    """The config as one level of scalars (``lora.r``), what tracker hyper-parameter tables take."""
    out: dict = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)
    walk("", config_to_dict(cfg))
    return out


def start_tracking(acc: Any, report_to: str, name: str, cfg: Any) -> None:
    """Open accelerate's tracker for this run (a no-op for ``report_to=none``)."""
    if report_to == "none":
        return
    init_kwargs = {}
    if report_to == "wandb":
        init_kwargs = {"wandb": {"dir": str(acc.project_dir)}}
    acc.init_trackers(name, config=flat_config(cfg), init_kwargs=init_kwargs)


def track(acc: Any, report_to: str, row: dict, step: int) -> None:
    """Send one logged row (numbers only) to the tracker."""
    if report_to == "none":
        return
    acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
            step=step)


def end_tracking(acc: Any, report_to: str) -> None:
    if report_to != "none":
        acc.end_training()


class Throughput:
    """Tokens per second between two log rows, and the peak GPU memory so far (CUDA only)."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.t0 = time.time()

    def add(self, n_tokens: Any) -> None:
        # kept as a tensor until a row is logged: no device sync per micro-batch
        self.tokens = self.tokens + n_tokens

    def row(self, device: Any) -> dict:
        """``tokens_per_s`` since the last call (global over processes when the counts were)
        and ``peak_gpu_mem_gb`` (this process's device; absent on CPU)."""
        import torch

        now = time.time()
        out = {"tokens_per_s": round(float(self.tokens) / max(now - self.t0, 1e-9), 2)}
        self.tokens, self.t0 = 0.0, now
        if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
            out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        return out
