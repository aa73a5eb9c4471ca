"""Length-grouped batching of the shared training loop."""

from __future__ import annotations

import random

import pytest

from visalign.training import LengthGroupedSampler, item_length


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([10, 12, 200, 220, 50]) + rng.randrange(5) for _ in range(n)]


def _padded(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_every_index_once_per_epoch_and_full_batches_first():
    lengths = _lengths(1003)
    s = LengthGroupedSampler(lengths, batch_size=16, seed=3, mega=4)
    batches = s.batches()
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert list(s) == [i for b in batches for i in b]
    assert len(s) == 1003
    sizes = [len(b) for b in batches]
    assert all(x == 16 for x in sizes[:-1]) and sizes[-1] == 1003 % 16


def test_grouping_cuts_padding_against_random_batches():
    lengths = _lengths(2000)
    s = LengthGroupedSampler(lengths, batch_size=32, seed=0)
    rng = random.Random(0)
    perm = list(range(2000))
    rng.shuffle(perm)
    rand = [perm[i:i + 32] for i in range(0, 2000, 32)]
    real = sum(lengths)
    assert _padded(lengths, s.batches()) < 1.05 * real
    assert _padded(lengths, rand) > 1.5 * real


def test_seeded_and_reshuffled_each_epoch():
    lengths = _lengths(500)
    a = LengthGroupedSampler(lengths, 8, seed=1)
    b = LengthGroupedSampler(lengths, 8, seed=1)
    assert a.batches() == b.batches()
    first = a.batches()
    a.set_epoch(1)
    assert a.batches() != first
    assert LengthGroupedSampler(lengths, 8, seed=2).batches() != first
    # the batches are shuffled, not served longest-first
    maxes = [max(lengths[i] for i in bt) for bt in first[:-1]]
    assert maxes != sorted(maxes) and maxes != sorted(maxes, reverse=True)


def test_bad_batch_size_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler([1, 2], 0)


def test_item_length_of_the_item_kinds_the_loop_sees():
    assert item_length(("USER: hi ASSISTANT:", " Yes</s>")) == len("USER: hi ASSISTANT:") + 8
    rec = {"image": "/x/y.png", "id": "r1", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A dog."}]}
    assert item_length(rec) == len("<image>\nWhat?") + len("A dog.")
    assert item_length("abc") == 3 and item_length(3.0) == 0
