"""visalign.analysis.pope_by_mention: POPE Yes rates by what a reference description named."""

from __future__ import annotations

import pytest

from visalign.analysis.pope_by_mention import mention_bucket, yes_rate_by_mention
from visalign.io import DataError


def _q(qid: str, image_id: int, obj: str, label: str) -> dict:
    return {"question_id": qid, "image_id": image_id, "object": obj, "label": label}


def test_buckets():
    assert mention_bucket("yes", True) == "present_named"
    assert mention_bucket("yes", False) == "present_unnamed"
    assert mention_bucket("no", True) == "absent_hallucinated"
    assert mention_bucket("no", False) == "absent_unnamed"


def test_yes_rates_per_bucket():
    named = {1: {"cat", "kite"}, 2: set()}
    qs = [_q("a", 1, "cat", "yes"), _q("b", 1, "dog", "yes"), _q("c", 1, "kite", "no"),
          _q("d", 2, "bus", "no"), _q("e", 2, "car", "no"),
          _q("f", 3, "cat", "yes"),           # no reference description: left out
          _q("g", 2, "cup", "no")]            # not answered: left out
    answers = {"a": "Yes, there is.", "b": "No.", "c": "Yes", "d": "No", "e": "yes", "f": "Yes"}
    rep = yes_rate_by_mention(qs, answers, named)
    assert rep["present_named"] == {"yes_rate": 1.0, "questions": 1}
    assert rep["present_unnamed"] == {"yes_rate": 0.0, "questions": 1}
    assert rep["absent_hallucinated"] == {"yes_rate": 1.0, "questions": 1}
    assert rep["absent_unnamed"] == {"yes_rate": 0.5, "questions": 2}
    assert rep["all"] == {"yes_rate": 0.6, "questions": 5}


def test_question_without_a_field_is_refused():
    with pytest.raises(DataError, match="'object'"):
        yes_rate_by_mention([{"question_id": "a", "image_id": 1, "label": "yes"}], {}, {})
