"""visalign.eval.length_matched: the base's descriptions cut to a method's length, image by
image, on hand-made captions whose CHAIR is known (and benchmarks/research/diag_length_matched.py over
it)."""

from __future__ import annotations

import pytest

from visalign.eval.chair import Chair


from visalign.eval import length_matched as lm


def test_cut_to_words_counts_chair_tokens():
    text = "A big dog sits. A traffic-light and a cat!"
    assert lm.cut_to_words(text, 3) == "A big dog"
    # a hyphenated word is one token, as CHAIR counts it
    assert lm.cut_to_words(text, 6) == "A big dog sits. A traffic-light"
    assert lm.cut_to_words(text, 99) == text       # shorter than n: whole
    assert lm.cut_to_words(text, 0) == ""


def test_length_matched_cuts_each_base_caption_to_the_cells_length():
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
    cut = {c["image_id"]: c for c in lm.length_matched_captions(chair, base, cell)}
    assert cut[1]["caption"] == "A dog is here"          # cut: the cat is gone
    assert cut[1]["chair_s"] == 0 and cut[1]["hallucinated"] == []
    assert cut[2]["caption"] == "A cat and a kite."      # the cell is longer: base kept whole
    # the full base hallucinates in image 1, the cut one does not
    assert [c["chair_s"] for c in base] == [1, 0]
    assert lm.caption_summary(list(cut.values()))["chair_s"] == 0.0


def test_shorter_cell_that_drops_the_late_hallucination_is_no_better_than_the_cut_base():
    chair = Chair.from_annotations({i: ["dog", "cat"] for i in range(20)})
    # the base names a dog, a cat, then a hallucinated kite; the cell only writes less
    base = chair.evaluate([{"image_id": i, "caption": "A dog and a cat and a kite."}
                           for i in range(20)])["captions"]
    short = chair.evaluate([{"image_id": i, "caption": "A dog and a cat."}
                            for i in range(20)])["captions"]
    res = lm.chair_vs_length_matched_base(chair, base, short, n_boot=200)
    assert res["n"] == 20
    assert res["base_cut"]["chair"] == res["other"]["chair"] == 0.0    # equal: only shorter
    assert res["delta"]["chair"] == 0.0
    # a cell of the same length that swaps the true cat for a kite is worse than the cut base
    wrong = chair.evaluate([{"image_id": i, "caption": "A dog and a kite."}
                            for i in range(20)])["captions"]
    res = lm.chair_vs_length_matched_base(chair, base, wrong, n_boot=200)
    assert res["delta"]["chair_s"] == 1.0 and res["ci"]["chair_s"][0] > 0
    with pytest.raises(ValueError, match="in common"):
        lm.length_matched_captions(chair, base, [])


def test_diag_script_on_a_world(load_benchmark, tiny_world_dir, tmp_path):
    """The script reads two evaluation dirs of the same prompts on a real world."""
    from visalign.eval.chair import load_synonyms
    from visalign.io import read_json, write_json
    from visalign.world import load_world

    world = load_world(tiny_world_dir)
    chair = Chair.from_coco(world.instances_path("val"),
                            synonyms=load_synonyms(world.synonyms_path))
    inst = read_json(world.instances_path("val"))
    names = {c["id"]: c["name"] for c in inst["categories"]}
    present: dict = {}
    for a in inst["annotations"]:
        present.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    absent = {i: next(n for n in sorted(names.values()) if n not in objs)
              for i, objs in present.items()}
    # the base names what is there, then an absent object; the cell stops before it
    base = [{"image_id": i, "caption": f"There is a {sorted(o)[0]}. There is a {absent[i]}."}
            for i, o in present.items()]
    cell = [{"image_id": i, "caption": f"There is a {sorted(o)[0]}."} for i, o in present.items()]
    for name, caps in (("base", base), ("cell", cell)):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "chair.json", chair.evaluate(caps))
    diag = load_benchmark("diag_length_matched")
    rep = diag.main(["--world", str(tiny_world_dir), "--base", str(tmp_path / "base"),
                     "--cells", f"short={tmp_path / 'cell'}", "--n-boot", "100"])
    row = rep["rows"][0]
    assert row["cell"] == "short" and row["cell_metrics"]["n"] == len(present)
    assert rep["base_metrics"]["chair_s"] == 1.0 and row["cell_metrics"]["chair_s"] == 0.0
    # all of the gain over the full base is length: none over the cut base
    assert row["delta_vs_cut"]["chair"] == 0.0
    assert row["delta_vs_full"]["chair"] < 0
    assert row["length_share_of_chair_change"] == 1.0
