"""CHAIR's ``pattern`` variant: the reference chair.py exactly (NLTK's tokenizer, Pattern's
singular forms from the packaged table, the reference's table reading and double words).

The expected mentions below are what Maxlinn's standalone chair.py returns (``caption_to_words``
node words) for these captions when run with Pattern's own ``singularize``; they show the
quirks the reference has and visalign's default variant does not."""

from __future__ import annotations

import json

import pytest

CASES = [
    # Pattern singularises "bus" to "bu" (no object) and "buses" to "bus"
    ("A bus and two buses parked near the curb.", ["bus"]),
    ("A man holds a tennis racket; two ties hang on the wall.", ["person", "tennis racket"]),
    ("Two wine glasses sit on the table next to a cell phone.",
     ["wine glass", "dining table", "cell phone"]),
    ("The seat of the toilet is up.", ["toilet"]),
    # the table's double-spaced " motor bike" never matches; "baby giraffe" is a giraffe
    ("A motor bike and a baby giraffe near the skis.", ["giraffe", "skis"]),
    ("People ride bikes past a stop sign, and children play with sports balls.",
     ["person", "bicycle", "stop sign", "person", "sports ball"]),
]


@pytest.fixture(scope="module")
def chair(nltk_tagger_data):
    from visalign.eval.chair_pattern import ChairPattern

    return ChairPattern()


@pytest.mark.parametrize("caption,expected", CASES)
def test_mentions_are_the_reference_chair_py_ones(chair, caption, expected):
    assert [m.category for m in chair.mentions(caption)] == expected


def test_the_default_variant_departs_where_documented(chair):
    from visalign.eval.chair import Chair

    caption = CASES[0][0]
    assert [m.category for m in Chair().mentions(caption)] == ["bus", "bus"]
    assert [m.category for m in chair.mentions(caption)] == ["bus"]


def test_spans_point_into_the_caption(chair):
    caption = "Two wine glasses sit on the table."
    ments = chair.mentions(caption)
    assert [caption[m.start:m.end].lower() for m in ments] == ["wine glasses", "table"]


def test_every_matchable_word_is_in_the_table():
    """A token outside the table is treated as matching nothing, so every word the reference
    can match must be tabled (with Pattern's singular, which may differ: bus -> bu)."""
    from visalign.eval.chair_pattern import matchable_words, pattern_singular_table

    table, _ = pattern_singular_table()
    words = matchable_words()
    # synonyms, double-word parts (Pattern's "glas" of "wine glas") and the toilet-seat words
    assert {"bus", "skis", "glas", "baby", "passenger", "seat"} <= words
    assert "motor bike" not in words and "iphone" not in words
    assert words <= set(table)
    assert table["bus"] == "bu" and table["buses"] == "bus" and table["people"] == "person"


def test_cli_pattern_variant_scores_caches_and_refuses_custom_tables(nltk_tagger_data, tmp_path,
                                                                     capsys):
    from visalign.cli import main

    inst = {"images": [{"id": 1}, {"id": 2}],
            "categories": [{"id": 6, "name": "bus"}, {"id": 1, "name": "person"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 6, "bbox": [0, 0, 1, 1]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    caps = [{"image_id": 1, "caption": "Two buses and a man."},
            {"image_id": 2, "caption": "A bus and a person."}]
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    results = []
    for extra in ([], [], ["--no-cache"]):
        out = tmp_path / f"chair{len(results)}.json"
        assert main(["eval", "chair", "--variant", "pattern", "--captions",
                     str(tmp_path / "caps.jsonl"), "--instances", str(tmp_path / "inst.json"),
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(out), *extra]) == 0
        results.append(json.loads(out.read_text()))
    m = results[0]["metrics"]
    # image 1: bus (true) + man (hallucinated); image 2: "bus" is Pattern's "bu", person true
    assert (m["chair_s"], m["chair_i"]) == (0.5, pytest.approx(1 / 3))
    assert results[0]["variant"] == "pattern" and results[0]["inputs"]["variant"] == "pattern"
    assert results[1]["inputs"]["index_cache"] and all(r["metrics"] == m for r in results)
    rc = main(["eval", "chair", "--variant", "pattern", "--captions",
               str(tmp_path / "caps.jsonl"), "--instances", str(tmp_path / "inst.json"),
               "--synonyms", str(tmp_path / "inst.json"), "--out", str(tmp_path / "x.json")])
    assert rc != 0 and "packaged COCO table" in capsys.readouterr().err


TRICKY = ['He said "hello" (twice) -- and left... didn\'t he?', "can't won't 'tis gonna",
          "The U.S. dog's bowl: 3,000 items; 4:30 pm!", "«quoted» “curly” ‘single’ end.",
          "a cat.\nA dog .  two buses.", "e.g. a man's hat, i.e. mine.",
          "''double'' `back` [brackets] {braces} <angle>", "x--y —dash– ok", "wait... what?!",
          "teachers' lounge and dogs' toys.", "CANNOT Gimme 'Twas WANNA go",
          "'tis the dog’s “best” day", '"Quote at start." she said', "a\tb\u00a0c  d",
          "it's 5 o'clock; rock 'n' roll", "Two dogs* & cats @ home #1 $5 100% 3.5."]


@pytest.mark.parametrize("text", TRICKY)
def test_word_tokens_are_nltk_word_tokenize(nltk_tagger_data, text):
    """The variant's tokenizer skips NLTK steps that cannot match; the tokens stay NLTK's."""
    import nltk

    from visalign.eval.chair_pattern import word_tokens

    assert word_tokens(text) == nltk.word_tokenize(text)
    assert word_tokens(text.lower()) == nltk.word_tokenize(text.lower())
