"""benchmarks/diag_hallucination_kinds.py: the kind of each hallucinated object, on hand-made
captions whose answers are known."""

from __future__ import annotations

import pytest

from visalign.eval.chair import Chair


@pytest.fixture
def diag(load_benchmark):
    return load_benchmark("diag_hallucination_kinds")


def _caption(text: str, gt: list[str]) -> dict:
    chair = Chair.from_annotations({1: gt})
    return chair.evaluate([{"image_id": 1, "caption": text}])["captions"][0]


def test_kinds_by_region_and_naming(diag):
    # a cat at top left (never named right), a dog at the center (named right), nothing at the
    # bottom; the caption names a bird at the top left, a cup at the center, a car at the
    # bottom and a bus only in a relation
    objects = [{"category": "cat", "region": "top left"},
               {"category": "dog", "region": "center"}]
    text = ("A white bird is in the top left corner. A big dog is in the center. "
            "A red cup is in the middle of the image. A car is at the bottom. "
            "The bus is to the left of the dog.")
    cap = _caption(text, ["cat", "dog"])
    shapes = {"cat": "circle", "bird": "circle", "cup": "star", "car": "bar", "bus": "bar",
              "dog": "square"}
    kinds = diag.classify(cap, objects, theme_members={"bird", "cup"}, shape_of=shapes)
    assert set(kinds) == {"bird", "cup", "car", "bus"}      # dog is present: not a hallucination
    assert kinds["bird"] == {"kind": "misnamed", "in_theme": True, "same_glyph": True}
    # the only object at the center is the dog, named right elsewhere: no misreading there
    assert kinds["cup"] == {"kind": "empty_spot", "in_theme": True, "same_glyph": False}
    assert kinds["car"]["kind"] == "empty_spot" and not kinds["car"]["in_theme"]
    assert kinds["bus"]["kind"] == "no_region"


def test_longest_region_phrase_wins_and_most_perceptual_reading_kept(diag):
    objects = [{"category": "cat", "region": "top left"}]
    shapes = {"cat": "circle", "bird": "star"}
    # "at the top left" must not read as "at the top" (no object there)
    cap = _caption("A bird is at the top left. There is a bird.", ["cat"])
    kinds = diag.classify(cap, objects, theme_members=set(), shape_of=shapes)
    assert kinds["bird"] == {"kind": "misnamed", "in_theme": False, "same_glyph": False}
    cap = _caption("A bird is at the top.", ["cat"])
    assert diag.classify(cap, objects, set(), shapes)["bird"]["kind"] == "empty_spot"
