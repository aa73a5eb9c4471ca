"""Character spans of entities -> indices of the response tokens that carry their reward.

FiSAO rewards the token y_t that names an object (Eq. 8: ``y_t in C``). A word is often several
tokens (``"skate" + "board"``, ``"cup" + "s"``) and entity names can be two words
(``"traffic light"``); visalign puts the reward on the token that *completes* the word — the
last token overlapping the entity span — by default (``position="last"``): only once that token
is generated has the policy committed to the object. ``"first"`` and ``"all"`` are offered for
ablations.

Offsets are each response token's ``(start, end)`` character range in the decoded response, as
a fast tokenizer's offset mapping gives them (byte-level BPE offsets may include the token's
leading space: ``" cup"`` -> ``(k - 1, k + 3)``), or as :func:`decode_with_offsets` computes
them for generated token ids. Zero-width tokens (special tokens, ``(0, 0)``) are never matched.
"""

from __future__ import annotations

from typing import Literal, Sequence

Position = Literal["last", "first", "all"]


def map_spans_to_tokens(offsets: Sequence[tuple[int, int] | None],
                        spans: Sequence[tuple[int, int]],
                        position: Position = "last") -> list[list[int]]:
    """Token indices for each character span.

    A token belongs to a span when their character ranges overlap (``tok_start < span_end`` and
    ``tok_end > span_start``); so a token with a leading space (``" cup"``), a token that
    straddles the span's end (``"s."`` of ``"cups."``) and every sub-token of a multi-token word
    or two-word entity are included, while a bare-space token just before the span is not.
    One token may belong to two spans (e.g. a merged ``"cup,plate"`` token); it is then listed
    for both.

    Args:
        offsets: per token ``(start, end)`` char offsets in the response, len T; ``None`` or
            zero-width entries (special tokens) never match.
        spans: entity ``(start, end)`` char spans (end exclusive).
        position: ``"last"`` (default) -> ``[t_last]``, ``"first"`` -> ``[t_first]``,
            ``"all"`` -> every overlapping token, in order.

    Returns:
        one list per span; empty when no token overlaps (e.g. the response was truncated).
    """
    if position not in ("last", "first", "all"):
        raise ValueError(f"position must be 'last', 'first' or 'all', got {position!r}")
    valid = [(i, o[0], o[1]) for i, o in enumerate(offsets)
             if o is not None and o[1] > o[0]]
    out: list[list[int]] = []
    for s, e in spans:
        if e <= s:
            raise ValueError(f"empty or reversed span ({s}, {e})")
        hit = [i for i, a, b in valid if a < e and b > s]
        if position == "last":
            hit = hit[-1:]
        elif position == "first":
            hit = hit[:1]
        out.append(hit)
    return out


def decode_with_offsets(tokenizer, token_ids: Sequence[int], *, skip_special_tokens: bool = True
                        ) -> tuple[str, list[tuple[int, int]]]:
    """Decode generated ids and give each token its ``(start, end)`` in the decoded text.

    Generated ids need not be the tokenization the tokenizer would give their text, so the
    offsets cannot come from re-encoding; they come from decoding growing prefixes: token i
    spans ``[len(decode(ids[:i])), len(decode(ids[:i + 1])))``. A token that completes a
    multi-byte character only when a later token arrives gets a zero-width span, and the
    character is given to the token that completes it. Special tokens (when skipped) get
    zero-width spans. Cost O(T^2) characters, fine for responses of a few hundred tokens.

    Args:
        tokenizer: any ``transformers`` tokenizer (or object with ``decode(ids, **kw)``).
        token_ids: response token ids, len T (no prompt).

    Returns:
        ``(text, offsets)`` with ``text == tokenizer.decode(token_ids, ...)`` and len(offsets)
        == T.
    """
    ids = [int(t) for t in token_ids]
    kw = {"skip_special_tokens": skip_special_tokens}
    try:
        kw["clean_up_tokenization_spaces"] = False
        text = tokenizer.decode(ids, **kw)
    except TypeError:
        kw.pop("clean_up_tokenization_spaces")
        text = tokenizer.decode(ids, **kw)
    offsets: list[tuple[int, int]] = []
    prev = 0
    for i in range(len(ids)):
        prefix = tokenizer.decode(ids[: i + 1], **kw)
        # Longest prefix of the full text this decoded prefix agrees with (a partial UTF-8
        # sequence decodes to U+FFFD, which must not count as progress).
        if text.startswith(prefix):
            k = len(prefix)
        else:
            n = min(len(prefix), len(text))
            k = 0
            while k < n and prefix[k] == text[k]:
                k += 1
        end = max(prev, k)
        offsets.append((prev, end))
        prev = end
    return text, offsets
