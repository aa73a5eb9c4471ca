"""benchmarks/diag_length_matched.py: the base's descriptions cut to a method's length, image by
image, on hand-made captions whose CHAIR is known."""

from __future__ import annotations

import pytest

from visalign.eval.chair import Chair


@pytest.fixture
def diag(load_benchmark):
    return load_benchmark("diag_length_matched")


def test_cut_to_words_counts_chair_tokens(diag):
    text = "A big dog sits. A traffic-light and a cat!"
    assert diag.cut_to_words(text, 3) == "A big dog"
    # a hyphenated word is one token, as CHAIR counts it
    assert diag.cut_to_words(text, 6) == "A big dog sits. A traffic-light"
    assert diag.cut_to_words(text, 99) == text       # shorter than n: whole
    assert diag.cut_to_words(text, 0) == ""


def test_length_matched_cuts_each_base_caption_to_the_cells_length(diag):
    chair = Chair.from_annotations({1: ["dog"], 2: ["cat", "kite"]})
    base = chair.evaluate([
        # image 1: the hallucinated cat comes after the dog
        {"image_id": 1, "caption": "A dog is here. A cat is there."},
        {"image_id": 2, "caption": "A cat and a kite."},
    ])["captions"]
    cell = chair.evaluate([
        {"image_id": 1, "caption": "A dog is here."},                          # 4 words
        {"image_id": 2, "caption": "A cat and a kite are in the sky today."},  # longer
    ])["captions"]
    cut = {c["image_id"]: c for c in diag.length_matched(chair, base, cell)}
    assert cut[1]["caption"] == "A dog is here"          # cut: the cat is gone
    assert cut[1]["chair_s"] == 0 and cut[1]["hallucinated"] == []
    assert cut[2]["caption"] == "A cat and a kite."      # the cell is longer: base kept whole
    # the full base hallucinates in image 1, the cut one does not
    assert [c["chair_s"] for c in base] == [1, 0]
    assert diag._summary(list(cut.values()))["chair_s"] == 0.0
