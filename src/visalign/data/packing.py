"""Padding-free training batches: a right-padded batch repacked into fewer rows.

A random batch of short and long sequences is mostly padding (55 % of the micro-world's LM
pre-training positions, 34 % of its instruction tuning), and the forward and backward passes pay
for every padded position. :func:`pack_padded_batch` places the same sequences end to end in as
few rows as fit (first-fit decreasing, rows as long as the longest sequence or a set capacity), restarts
``position_ids`` at 0 for each sequence and drops ``attention_mask``; transformers then builds a
block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``),
so no token attends across a sequence boundary. The batch holds the same sequences and the same
label tokens, so a token-mean or token-sum loss is the same number up to float rounding; only
the shape changes. This is not ``data.llava.pack_by_image`` (several turns of one image in one
conversation, which changes what the model sees).

Works for models whose language model takes 1-D ``position_ids`` (Llama, Mistral, Qwen2 and the
LLaVA models built on them) with an eager or SDPA attention; per-image tensors (``pixel_values``,
``image_sizes``) are reordered to follow the sequences. Models with multimodal rotary positions
(Qwen2-VL's ``image_grid_thw``) and losses that need one row per sample (DPO's per-sequence
log-probabilities) cannot use it; :func:`pack_padded_batch` raises on the former, the DPO
trainer refuses the option.
"""

from __future__ import annotations

from typing import Any, Callable

from visalign.data.batch import IGNORE_INDEX, TOKEN_KEYS

# Attention implementations that build the packed-sequence mask for any number of rows;
# flash-attention derives it from position_ids only for a single row and would let tokens
# attend across sequences otherwise.
PACKING_ATTENTION = ("eager", "sdpa", "flex_attention")
# Keys whose meaning depends on positions in a way a plain repacking would break.
_UNSUPPORTED = ("image_grid_thw", "video_grid_thw", "rope_deltas", "cache_position")


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row: first-fit decreasing into rows of ``capacity`` tokens.

    Within a row the sequences keep their batch order, so the plan (and the packed batch) is a
    pure function of the lengths. Every length must be between 1 and ``capacity``.
    """
    if any(n < 1 or n > capacity for n in lengths):
        raise ValueError(f"lengths must lie in [1, {capacity}], got {lengths}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return [sorted(r) for r in rows]


def pack_padded_batch(batch: dict, pad_token_id: int = 0, capacity: int = 0) -> dict:
    """The padding-free form of a right-padded batch (see the module docstring).

    Args:
        batch: ``input_ids``, ``attention_mask`` (right padding) and ``labels`` of shape (B, T),
            optionally other (B, T) per-token tensors and per-sample tensors with first dim B
            (one image per sample: ``pixel_values``, ``image_sizes``).
        pad_token_id: the id written into the rows' unused tail.
        capacity: row length; 0 = the longest sequence (longer rows pack more sequences
            but pay more attention per token, since the block-diagonal mask is applied to a
            full row-by-row score matrix).

    Returns:
        a batch with ``input_ids``, ``labels``, ``position_ids`` (R, C) with R <= B rows of
        C = max(longest sequence, ``capacity``), no ``attention_mask``, ``use_cache=False`` (a cache would
        turn the packed-sequence mask off), the per-token tensors packed the same way and the
        per-sample tensors in the order their sequences now appear.
    """
    import torch

    for k in ("input_ids", "attention_mask", "labels"):
        if k not in batch:
            raise ValueError(f"packing needs {k!r} in the batch (keys: {sorted(batch)})")
    bad = [k for k in _UNSUPPORTED if k in batch]
    if bad:
        raise ValueError(f"packing does not support batches with {bad}: these models place "
                         "tokens by multimodal positions that a repacking would break; train "
                         "them with padding_free=false")
    ids, am = batch["input_ids"], batch["attention_mask"]
    b, t = ids.shape
    n_real = am.sum(1, keepdim=True)
    lengths = n_real.flatten().tolist()
    if any(n < 1 for n in lengths):
        raise ValueError("packing: a sequence in the batch is empty")
    if not bool((am == (torch.arange(t) < n_real).to(am.dtype)).all()):
        raise ValueError("packing needs right padding (attention_mask 1...1 0...0 per row)")
    cap = max(max(lengths), capacity)
    rows = plan_rows(lengths, cap)
    order = [i for r in rows for i in r]

    def new(like: Any, fill: int) -> Any:
        return torch.full((len(rows), cap, *like.shape[2:]), fill, dtype=like.dtype)

    per_token = {k: v for k, v in batch.items() if k in TOKEN_KEYS and k != "attention_mask"}
    for k, v in per_token.items():
        if not torch.is_tensor(v) or tuple(v.shape[:2]) != (b, t):
            raise ValueError(f"packing: {k!r} is not a (B, T) = {(b, t)} tensor")
    fills = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}
    out = {k: new(v, fills.get(k, 0)) for k, v in per_token.items()}
    pos = torch.zeros(len(rows), cap, dtype=torch.long)
    for r, seqs in enumerate(rows):
        off = 0
        for i in seqs:
            n = lengths[i]
            for k, v in per_token.items():
                out[k][r, off:off + n] = v[i, :n]
            # The first token of a sequence is never a target in its own row; packed, it
            # would be predicted from the previous sequence's last token.
            out["labels"][r, off] = IGNORE_INDEX
            pos[r, off:off + n] = torch.arange(n)
            off += n
        # The unused tail counts as one more sequence (positions from 0), so find_packed_
        # sequence_indices keeps it apart; it is causal and after everything real anyway.
        pos[r, off:] = torch.arange(cap - off)
    out["position_ids"] = pos
    for k, v in batch.items():
        if k in per_token or k == "attention_mask":
            continue
        # One image per sequence, as VLM.encode makes them: per-sample tensors follow their
        # sequences (a batch with several images per sequence would need a count per sample).
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b:
            out[k] = v[order]
        elif torch.is_tensor(v):
            raise ValueError(f"packing: cannot place {k!r} of shape {tuple(v.shape)} "
                             f"(neither per token (B, T) = {(b, t)} nor per sample)")
        else:
            out[k] = v
    out["use_cache"] = False
    return out


def check_attention(model: Any) -> None:
    """Raise unless the attention implementation of ``model``'s config and of its language
    model's (``text_config``) builds packed-sequence masks for several rows
    (:data:`PACKING_ATTENTION`)."""
    cfg = getattr(model, "config", None)
    seen = []
    for c in (cfg, getattr(cfg, "text_config", None)):
        impl = getattr(c, "_attn_implementation", None) if c is not None else None
        if impl is not None:
            seen.append(impl)
    bad = [i for i in seen if i not in PACKING_ATTENTION]
    if bad:
        raise ValueError(f"padding_free needs attention in {PACKING_ATTENTION}; this model "
                         f"uses {bad[0]!r}, which would let packed sequences attend to each "
                         "other (load it with attn_implementation='sdpa' or turn "
                         "padding_free off)")


def packing_collate(collate: Callable[[list], dict], pad_token_id: int = 0,
                    capacity: int = 0) -> Callable[[list], dict]:
    """``collate`` followed by :func:`pack_padded_batch`."""
    if capacity < 0:
        raise ValueError(f"padding_free_capacity must be >= 0, got {capacity}")
    def packed(items: list) -> dict:
        return pack_padded_batch(collate(items), pad_token_id, capacity)
    return packed

