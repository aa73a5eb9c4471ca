"""How often a description's object sentences only repeat objects it already named.

A small model often describes its first object again and again ("A big black dog is in the
center. A big black dog can be seen in the center."): the description is long, but it names
few distinct objects, which caps recall. :func:`object_repetition` counts it.
"""

from __future__ import annotations

import re
from typing import Iterable


def object_repetition(captions: Iterable[dict]) -> dict:
    """Object sentences after the first that name only objects named before, over CHAIR caption
    records (``caption`` + ``mentions`` with character ``start``/``end`` and ``category``).

    Returns the count of object sentences (sentences after a description's first that name an
    object), how many of them only repeat, their share, and the distinct objects named per
    description."""
    rep = tot = unique = n = 0
    for c in captions:
        n += 1
        text = c["caption"]
        seen: set[str] = set()
        pos = 0
        for k, s in enumerate(x for x in re.split(r"(?<=\.)\s+", text) if x):
            st = text.find(s, pos)
            pos = st + len(s)
            cats = [m["category"] for m in c["mentions"] if m["start"] >= st and m["end"] <= pos]
            if k and cats:
                tot += 1
                rep += all(x in seen for x in cats)
            seen |= set(cats)
        unique += len(seen)
    return {"object_sentences": tot, "repeat_only_sentences": rep,
            "repeat_only_share": round(rep / tot, 4) if tot else None,
            "unique_objects_per_caption": round(unique / max(1, n), 3)}
