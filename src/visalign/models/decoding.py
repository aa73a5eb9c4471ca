"""Decoding helpers behind :meth:`VLM.generate` and :meth:`VLM.rollout`.

- :func:`growing_cache`: a ``transformers`` KV cache whose layers write each step's keys and
  values into a buffer sized for the generation, instead of ``DynamicCache``'s concatenation
  (a copy of every layer's whole cache at every token: 10-20 % of a decoding step of the
  micro-world model at batch 16-64 on a CPU). Attention reads a view of the filled part, the
  same values in the same order, so the logits are bit-identical (tested).
- :func:`token_char_spans`: each response token's character span in its decoded text, from one
  decode per token for byte-level BPE tokenizers, instead of decoding every prefix of the
  response (quadratic in its length); other tokenizers, or responses where the shortcut cannot
  be proven equal, decode the prefixes as before.

What these do not change (measured in ``benchmarks/bench_generation.py``): which rows are
computed. Dropping finished rows from the batch would save the steps a batch spends after its
shorter answers ended, but a matrix product over fewer rows can round differently (BLAS picks
kernels and thread splits by shape), so greedy answers would no longer be the same tokens as a
full batch's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingLayer", "growing_cache", "token_char_spans"]


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer backed by a preallocated buffer of ``capacity`` positions.

    ``keys``/``values`` are views ``buffer[..., :length, :]``; the buffer doubles when full
    (amortised O(1) copying per token, where concatenation copies the whole cache).
    """

    def __init__(self, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._kbuf = self._vbuf = None
        self._length = 0
        self._allocate(key_states, value_states, self.capacity)
        self.is_initialized = True

    def _allocate(self, k: torch.Tensor, v: torch.Tensor, capacity: int) -> None:
        kbuf = k.new_empty((*k.shape[:-2], capacity, k.shape[-1]))
        vbuf = v.new_empty((*v.shape[:-2], capacity, v.shape[-1]))
        if self._kbuf is not None and self._length:
            kbuf[..., :self._length, :] = self._kbuf[..., :self._length, :]
            vbuf[..., :self._length, :] = self._vbuf[..., :self._length, :]
        self._kbuf, self._vbuf, self.capacity = kbuf, vbuf, capacity

    def _expose(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = self._kbuf[..., :self._length, :]
        self.values = self._vbuf[..., :self._length, :]
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self._length, self._length + key_states.shape[-2]
        if end > self.capacity:
            self._allocate(key_states, value_states, max(end, 2 * self.capacity))
        self._kbuf[..., start:end, :] = key_states
        self._vbuf[..., start:end, :] = value_states
        self._length = end
        return self._expose()

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def _rebuffer(self) -> None:
        # After an operation that replaced keys/values (crop, beam reordering, batch
        # selection), copy them into a fresh buffer so that updates keep writing in place.
        if not self.is_initialized or self.keys is None:
            return
        k, v = self.keys, self.values
        self._kbuf = self._vbuf = None
        self._length = 0
        self._allocate(k, v, max(self.capacity, k.shape[-2]))
        self._length = k.shape[-2]
        self._kbuf[..., :self._length, :] = k
        self._vbuf[..., :self._length, :] = v
        self._expose()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._rebuffer()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._rebuffer()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._rebuffer()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._rebuffer()

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        self._length = 0
        super().reset()


def growing_cache(model: Any, capacity: int) -> Any | None:
    """A ``DynamicCache`` for ``model`` whose layers are :func:`GrowingLayer` of ``capacity``
    positions, or None when the model's cache has other layer kinds (sliding-window, linear
    attention, shared layers) or none at all: ``generate`` then makes its default cache."""
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if callable(supports) and not supports():
        return None
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return None
    try:
        cache = DynamicCache(config=config.get_text_config(decoder=True))
    except Exception:  # an unusual config: leave the cache to generate
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [GrowingLayer(capacity) for _ in cache.layers]
    return cache


def _byte_level_decoder(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and type(decoder).__name__ == "ByteLevel"


def token_char_spans(tokenizer: Any, rows: Sequence[Sequence[int]]
                     ) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Decoded, stripped texts of ``rows`` and each token's (start, end) span in them.

    A token's span runs from where the text decoded from the tokens before it ends to where
    the text through it ends (so a token that completes a multi-byte character holds the whole
    character, and special tokens and pure whitespace get empty spans), with leading
    whitespace trimmed and clipped to the stripped text. For a byte-level BPE tokenizer
    (GPT-2, Qwen, the micro-world's) the decoded prefix through token k is the concatenation
    of the tokens' own decodings as long as each of those is whole UTF-8 text; that is checked
    per response (the concatenation must equal the full decode, no piece may hold U+FFFD) and
    any response where it fails is decoded prefix by prefix.
    """
    kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prefix_rows = list(range(len(rows)))
    lengths: dict[int, list[int]] = {}
    fulls: dict[int, str] = {}
    if _byte_level_decoder(tokenizer):
        flat = [t for r in rows for t in r]
        pieces = tokenizer.batch_decode([[t] for t in flat], **kw) if flat else []
        full = tokenizer.batch_decode([list(r) for r in rows], **kw)
        prefix_rows, pos = [], 0
        for i, r in enumerate(rows):
            own = pieces[pos:pos + len(r)]
            pos += len(r)
            if "".join(own) == full[i] and not any("\ufffd" in p for p in own):
                acc, cum = 0, []
                for p in own:
                    acc += len(p)
                    cum.append(acc)
                lengths[i], fulls[i] = cum, full[i]
            else:
                prefix_rows.append(i)
    if prefix_rows:
        prefixes = [list(rows[i][:k]) for i in prefix_rows for k in range(1, len(rows[i]) + 1)]
        decoded = tokenizer.batch_decode(prefixes, **kw) if prefixes else []
        pos = 0
        for i in prefix_rows:
            pre = decoded[pos:pos + len(rows[i])]
            pos += len(rows[i])
            lengths[i] = [len(p) for p in pre]
            fulls[i] = pre[-1] if pre else ""
    texts, offsets = [], []
    for i in range(len(rows)):
        full = fulls[i]
        text = full.strip()
        lead = len(full) - len(full.lstrip())
        spans, prev = [], 0
        for n in lengths[i]:
            # Clip: a prefix cut inside a multi-byte character decodes to U+FFFD.
            end = min(max(prev, n - lead), len(text))
            start = prev
            while start < end and text[start].isspace():
                start += 1
            spans.append((start, end))
            prev = end
        texts.append(text)
        offsets.append(spans)
    return texts, offsets
