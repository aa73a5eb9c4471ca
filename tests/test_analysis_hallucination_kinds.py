"""visalign.analysis.hallucination_kinds: the kind of each hallucinated object, on hand-made
captions whose answers are known, and the research script over it on a real world."""

from __future__ import annotations

import pytest

from visalign.analysis.hallucination_kinds import ImageFacts, classify, image_facts, \
    kinds_per_description
from visalign.eval.chair import Chair
from visalign.io import DataError


def _caption(text: str, gt: list[str], image_id: int = 1) -> dict:
    chair = Chair.from_annotations({image_id: gt})
    return chair.evaluate([{"image_id": image_id, "caption": text}])["captions"][0]


def test_kinds_by_region_and_naming():
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
    kinds = classify(cap, objects, theme_members={"bird", "cup"}, shape_of=shapes)
    assert set(kinds) == {"bird", "cup", "car", "bus"}      # dog is present: not a hallucination
    assert kinds["bird"] == {"kind": "misnamed", "in_theme": True, "same_glyph": True}
    # the only object at the center is the dog, named right elsewhere: no misreading there
    assert kinds["cup"] == {"kind": "empty_spot", "in_theme": True, "same_glyph": False}
    assert kinds["car"]["kind"] == "empty_spot" and not kinds["car"]["in_theme"]
    assert kinds["bus"]["kind"] == "no_region"


def test_longest_region_phrase_wins_and_most_perceptual_reading_kept():
    objects = [{"category": "cat", "region": "top left"}]
    shapes = {"cat": "circle", "bird": "star"}
    # "at the top left" must not read as "at the top" (no object there)
    cap = _caption("A bird is at the top left. There is a bird.", ["cat"])
    kinds = classify(cap, objects, theme_members=set(), shape_of=shapes)
    assert kinds["bird"] == {"kind": "misnamed", "in_theme": False, "same_glyph": False}
    cap = _caption("A bird is at the top.", ["cat"])
    assert classify(cap, objects, set(), shapes)["bird"]["kind"] == "empty_spot"


def test_counts_per_description_and_shares():
    facts = ImageFacts(objects={1: [{"category": "cat", "region": "top left"}], 2: []},
                       theme_of={1: {"bird"}, 2: {"bird"}},
                       shape_of={"cat": "circle", "bird": "circle", "car": "bar"})
    caps = [_caption("A bird is at the top left. A car is at the bottom.", ["cat"], 1),
            _caption("The car is left of the bird.", ["dog"], 2)]
    rep = kinds_per_description(caps, facts)
    # image 1: bird misnamed (a same-glyph theme guess), car at an empty spot;
    # image 2: car and bird only in a relation
    assert rep["n_descriptions"] == 2 and rep["hallucinated_per_description"] == 2.0
    assert (rep["misnamed_per_description"], rep["empty_spot_per_description"],
            rep["no_region_per_description"]) == (0.5, 0.5, 1.0)
    assert rep["misnamed_same_glyph_share"] == 1.0
    assert rep["in_theme_share"] == 0.5          # the two birds of four hallucinations
    assert rep["no_region_in_theme_share"] == 0.5
    with pytest.raises(DataError, match="image 3"):
        kinds_per_description([_caption("A cat.", ["dog"], 3)], facts)


def test_image_facts_and_script_on_a_world(tiny_world_dir, tmp_path, load_benchmark):
    from visalign.eval.suite import world_chair
    from visalign.io import write_json
    from visalign.world import load_world

    world = load_world(tiny_world_dir)
    facts = image_facts(world, "val")
    assert facts.objects and all(o["region"] for objs in facts.objects.values() for o in objs)
    assert set(facts.shape_of) == {c.name for c in world.vocab.categories}
    # a description that names each image's own objects hallucinates nothing ...
    chair = world_chair(world, "val")
    ids = sorted(facts.theme_of)
    right = chair.evaluate([{"image_id": i, "caption": " ".join(
        f"A {o['category']} is here." for o in facts.objects.get(i, []))} for i in ids])
    absent = {i: next(c for c in sorted(facts.shape_of)
                      if c not in chair.gt_objects(i)) for i in ids}
    # ... one that adds an absent object in a relation sentence hallucinates once per image
    wrong = chair.evaluate([{"image_id": i, "caption": f"The {absent[i]} is left of it."}
                            for i in ids])
    for name, res in (("right", right), ("wrong", wrong)):
        write_json(tmp_path / name / "chair.json", res)
    rep = load_benchmark("diag_hallucination_kinds").main(
        ["--evals", str(tmp_path), "--world", str(tiny_world_dir), "--split", "val"])
    assert rep["cells"]["right"]["hallucinated_per_description"] == 0
    assert rep["cells"]["wrong"]["no_region_per_description"] == 1.0
