"""Batch order: length-grouped batches (less padding) that keep accelerate's sharding and resume."""

from __future__ import annotations

from typing import Any, Sequence


def item_length(item: Any) -> int:
    """Cheap length proxy of a dataset item for length grouping: characters of its text (a
    ``(prompt, answer)`` tuple, a string, or a record with ``conversations``)."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, (tuple, list)):
        return sum(item_length(x) for x in item)
    if isinstance(item, dict):
        if "conversations" in item:
            return sum(len(str(t.get("value", ""))) for t in item["conversations"])
        return sum(item_length(v) for v in item.values() if isinstance(v, (str, list, tuple)))
    return 0


class LengthGroupedSampler:
    """Indices in batches of similar length, the batches in random order.

    Each epoch: a seeded permutation is cut into mega-batches of ``batch_size × mega`` items,
    each sorted by length and cut into batches; the batches are then shuffled (a partial batch,
    if any, stays last so the DataLoader's batching lines up with ours). The same idea as
    transformers' ``LengthGroupedSampler``; ours is an index sampler with ``set_epoch`` so
    accelerate's sharding, ``skip_first_batches`` and resume work unchanged. On padded text
    (the micro-world's LM pre-training) it cuts the tokens processed by about half.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = max(1, mega)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n, bs = len(self.lengths), self.batch_size
        perm = torch.randperm(n, generator=g).tolist()
        full, partial = [], []
        chunk = bs * self.mega
        for i in range(0, n, chunk):
            part = sorted(perm[i:i + chunk], key=lambda j: -self.lengths[j])
            for k in range(0, len(part), bs):
                (full if len(part[k:k + bs]) == bs else partial).append(part[k:k + bs])
        order = torch.randperm(len(full), generator=g).tolist()
        return [full[b] for b in order] + partial

    def __iter__(self):
        for b in self.batches():
            yield from b

    def __len__(self) -> int:
        return len(self.lengths)
