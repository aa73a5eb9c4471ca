"""Whom a model says "Yes" to on POPE, split by what a reference description named.

A method that moves POPE's Yes rate may have learned "answer Yes only to what you would
describe" (the change sits on the objects the reference model's description did not name) or
a plain lean towards one answer (the change is spread over every bucket). Splitting the
questions by the reference model's own description of the image tells the two apart:

- ``present_named`` / ``present_unnamed``: the object is in the image, and the description
  named it / did not;
- ``absent_hallucinated`` / ``absent_unnamed``: the object is not in the image, and the
  description named it (a hallucination) / did not.
"""

from __future__ import annotations

import collections
from typing import Iterable, Mapping

from visalign.io import DataError

BUCKETS = ("present_named", "present_unnamed", "absent_hallucinated", "absent_unnamed")


def mention_bucket(label: str, object_named: bool) -> str:
    """The bucket of one question: ``label`` is POPE's ``yes``/``no``."""
    if label == "yes":
        return "present_named" if object_named else "present_unnamed"
    return "absent_hallucinated" if object_named else "absent_unnamed"


def yes_rate_by_mention(questions: Iterable[dict], answers: Mapping, named: Mapping[int, set[str]]
                        ) -> dict[str, dict]:
    """Yes rate per bucket (and ``all``) on one POPE split.

    ``questions``: POPE records (``question_id``, ``image_id``, ``object``, ``label``);
    ``answers``: question id -> the model's answer text (parsed with POPE's yes/no rule);
    ``named``: image id -> the categories the reference description of that image names.
    Questions without an answer or a reference description are left out (the counts say how
    many were used)."""
    from visalign.eval.pope import parse_yes_no

    n: collections.Counter = collections.Counter()
    yes: collections.Counter = collections.Counter()
    for i, q in enumerate(questions):
        for field in ("question_id", "image_id", "object", "label"):
            if field not in q:
                raise DataError(None, "POPE question without this field", record=i, field=field)
        if q["question_id"] not in answers or q["image_id"] not in named:
            continue
        key = mention_bucket(q["label"], q["object"] in named[q["image_id"]])
        said_yes = parse_yes_no(answers[q["question_id"]]) == "yes"
        for k in (key, "all"):
            n[k] += 1
            yes[k] += said_yes
    return {k: {"yes_rate": round(yes[k] / n[k], 4), "questions": n[k]} for k in sorted(n)}
