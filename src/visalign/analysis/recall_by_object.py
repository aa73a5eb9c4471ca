"""Which of an image's objects its descriptions miss.

CHAIR's recall is one number over every annotated object. These break it down by object:
:func:`recall_by_object` by the object's size rank in its image (largest category instance
first), by small / large (largest instance under / over an area) and by how many categories the
image holds; :func:`recall_by_size_class` by the annotations' own ``size`` attribute (the
micro-world's: an object with a large instance against objects with small instances only).
A low recall on the largest object points at recognition, not at hard-to-see objects.
"""

from __future__ import annotations

import collections
from typing import Iterable, Mapping

from visalign.io import DataError


def object_areas(instances: Mapping) -> dict[int, dict[str, float]]:
    """Image id -> category -> area of its largest instance, from a COCO ``instances`` dict."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    area: dict[int, dict[str, float]] = collections.defaultdict(dict)
    for i, a in enumerate(instances["annotations"]):
        if a["category_id"] not in names:
            raise DataError(None, f"unknown category id {a['category_id']}", record=i,
                            field="category_id")
        cat = names[a["category_id"]]
        area[a["image_id"]][cat] = max(area[a["image_id"]].get(cat, 0.0), float(a["area"]))
    return dict(area)


def recall_by_object(named: Mapping[int, set[str]], areas: Mapping[int, Mapping[str, float]],
                     small_area: float = 100.0) -> dict[str, dict]:
    """Recall of the annotated categories of each described image, grouped.

    ``named``: image id -> the categories its description names (e.g. from
    ``Chair.mentions``); ``areas``: :func:`object_areas`. Keys: ``rank_<i>`` (the image's i-th
    largest category, 0 first), ``small`` / ``large`` (largest instance under / at least
    ``small_area``), ``categories_<n>`` (images with n categories) and ``all``; each
    ``{recall, objects}``."""
    seen: collections.Counter = collections.Counter()
    hit: collections.Counter = collections.Counter()
    for image_id, said in named.items():
        if image_id not in areas:
            raise DataError(None, f"image {image_id} has no annotations", field="image_id")
        cats = areas[image_id]
        for rank, cat in enumerate(sorted(cats, key=lambda c: -cats[c])):
            size = "small" if cats[cat] < small_area else "large"
            for key in (f"rank_{rank}", size, f"categories_{len(cats)}", "all"):
                seen[key] += 1
                hit[key] += cat in said
    return {k: {"recall": round(hit[k] / seen[k], 4), "objects": seen[k]} for k in sorted(seen)}


def recall_by_size_class(captions: Iterable[dict], instances: Mapping) -> dict[str, dict]:
    """Recall over the categories with a ``size == "large"`` instance against those with small
    instances only, from CHAIR caption records (``image_id`` + ``mentions``) and a COCO
    ``instances`` dict whose annotations carry ``size``."""
    names = {c["id"]: c["name"] for c in instances["categories"]}
    large: dict[int, dict[str, bool]] = {}
    for a in instances["annotations"]:
        seen = large.setdefault(a["image_id"], {})
        n = names[a["category_id"]]
        seen[n] = seen.get(n, False) or a.get("size") == "large"
    captions = list(captions)
    out = {}
    for label, want in (("large", True), ("small_only", False)):
        hit = tot = 0
        for c in captions:
            said = {m["category"] for m in c["mentions"]}
            for n, is_large in large.get(c["image_id"], {}).items():
                if is_large == want:
                    tot += 1
                    hit += n in said
        out[label] = {"objects": tot, "recall": round(hit / tot, 4) if tot else None}
    return out
