"""Seeding and the learning-rate schedule.

The schedule is written here rather than taken from ``transformers.get_scheduler``: its warm-up
starts at ``1 / warmup`` on the first step where transformers' starts at 0 (a first step that
does not learn), and every result visalign ships (the packaged micro-world base, the comparison
grid) was trained with it. Otherwise it is transformers' linear / cosine / constant schedule.
"""

from __future__ import annotations

import math
from typing import Callable


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) through accelerate's ``set_seed``."""
    from accelerate.utils import set_seed

    set_seed(seed)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f
