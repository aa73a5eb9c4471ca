"""CHAIR: mentions (synonyms, plurals, double words, special rules), ground truth, metrics, CLI.

Expected values are worked out by hand in the comments next to each case.
"""

from __future__ import annotations

import json

import pytest

from visalign.cli import main
from visalign.eval.chair import Chair, Mention, load_synonyms
from visalign.io import DataError, write_json, write_jsonl

CATS = ["person", "dog", "toilet", "giraffe", "car", "chair"]

# Generated captions of the hand-worked example (image_id, caption).
CAPTIONS = [
    # mentions: dog, man(person), hot dog, chair; gt {person, dog} -> 2 of 4 hallucinated
    (1, "Two dogs and a man eating hot dogs next to a chair."),
    # toilet, cat, toilet ("seat" dropped, "toilet seat" -> toilet); gt {toilet} -> 1 of 3
    (2, "The seat of the toilet is up and a cat sits on the toilet seat."),
    # giraffe ("baby giraffe"), car ("cars"); gt {giraffe, car (from its human caption)} -> 0/2
    (3, "A baby giraffe stands beside cars."),
    # no objects; gt {teddy bear, bed} (both only from the human caption)
    (4, "Nothing to see here."),
]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    d = tmp_path_factory.mktemp("coco")
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATS)]
    cid = {n: i + 1 for i, n in enumerate(CATS)}
    anns = [(1, "dog"), (1, "person"), (1, "dog"), (2, "toilet"), (3, "giraffe")]
    inst = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)],
            "categories": cats,
            "annotations": [{"id": k, "image_id": im, "category_id": cid[c]}
                            for k, (im, c) in enumerate(anns)]}
    caps = {"images": inst["images"], "annotations": [
        {"id": 1, "image_id": 1, "caption": "A man walks a dog."},
        {"id": 2, "image_id": 3, "caption": "A baby giraffe near a car."},
        {"id": 3, "image_id": 4, "caption": "A teddy bear on a bed."},
    ]}
    write_json(d / "instances.json", inst)
    write_json(d / "captions.json", caps)
    return d


@pytest.fixture(scope="module")
def chair():
    return Chair()


def words(chair, text):
    return [(m.word, m.category) for m in chair.mentions(text)]


def test_packaged_table_has_the_80_coco_categories():
    table = load_synonyms(None)
    assert len(table) == 80
    cats = [line[0] for line in table]
    assert cats[:3] == ["person", "bicycle", "car"] and cats[-1] == "toothbrush"
    assert "dining table" in cats and "hair drier" in cats
    # the reference table's double-spaced entry and capitalised iPhone are normalised
    assert "motor bike" in table[3] and "iphone" in table[cats.index("cell phone")]


def test_synonyms_and_plurals(chair):
    assert words(chair, "A puppy chases two kittens.") == [("puppy", "dog"), ("kitten", "cat")]
    assert words(chair, "People, children, buses, knives and mice.") == [
        ("people", "person"), ("children", "person"), ("bus", "bus"), ("knife", "knife"),
        ("mouse", "mouse")]
    # words in the table are never singularised by inflect ("bus" would become "bu")
    assert words(chair, "A bus and scissors") == [("bus", "bus"), ("scissors", "scissors")]
    # upper case, possessive and punctuation
    assert words(chair, "The DOG's bowl!") == [("dog", "dog"), ("bowl", "bowl")]


def test_double_words_merge_and_spans(chair):
    text = "Hot dogs, teddy bears, a wine glass and traffic lights."
    ms = chair.mentions(text)
    assert [(m.word, m.category) for m in ms] == [
        ("hot dog", "hot dog"), ("teddy bear", "teddy bear"), ("wine glass", "wine glass"),
        ("traffic light", "traffic light")]
    # spans cover both words in the original text
    assert [text[m.start:m.end] for m in ms] == ["Hot dogs", "teddy bears", "wine glass",
                                                 "traffic lights"]
    assert isinstance(ms[0], Mention) and (ms[0].start, ms[0].end) == (0, 8)


def test_qualifier_rules(chair):
    # baby/adult <animal> -> the animal, not a person
    assert words(chair, "A baby elephant and an adult zebra") == [("elephant", "elephant"),
                                                                   ("zebra", "zebra")]
    # passenger jet/train -> jet (airplane) / train, not a person
    assert words(chair, "a passenger jet and a passenger train") == [("jet", "airplane"),
                                                                      ("train", "train")]
    # bow tie -> tie; train track is not a train; a lone baby is a person
    assert words(chair, "a man in a bow tie on train tracks") == [("man", "person"),
                                                                 ("tie", "tie")]
    assert words(chair, "a baby") == [("baby", "person")]


def test_toilet_seat_rule(chair):
    # "toilet seat" merges to toilet; a bare "seat" is dropped when a toilet is mentioned
    assert words(chair, "a toilet seat") == [("toilet", "toilet")]
    assert words(chair, "the seat next to the toilet") == [("toilet", "toilet")]
    # without a toilet a seat is a chair
    assert words(chair, "a seat by the window") == [("seat", "chair")]


def test_caption_without_objects(chair):
    assert chair.mentions("It is sunny and bright today.") == []
    assert chair.mentions("") == []
    # no mentions at all: nothing hallucinated, CHAIR_i defined as 0 (not a division by zero)
    c = Chair.from_annotations({1: {"dog"}})
    m = c.evaluate([{"image_id": 1, "caption": "Sunny."}, {"image_id": 1, "caption": ""}])
    assert m["metrics"] == {"chair_s": 0.0, "chair_i": 0.0, "chair": 0.0, "recall": 0.0,
                            "n_captions": 2, "avg_len": 0.5}


def test_custom_table_with_multiword_terms(tmp_path):
    p = tmp_path / "syn.txt"
    p.write_text("red cube, cube, block\nbig sphere, ball, orb\n", encoding="utf-8")
    c = Chair(load_synonyms(p))
    text = "Two red cubes near big spheres and a block."
    ms = c.mentions(text)
    assert [(m.word, m.category, text[m.start:m.end]) for m in ms] == [
        ("red cube", "red cube", "red cubes"), ("big sphere", "big sphere", "big spheres"),
        ("block", "red cube", "block")]


def test_conflicting_synonym_is_an_error(tmp_path):
    p = tmp_path / "syn.txt"
    p.write_text("dog, pup\ncat, pup\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: synonym .pup. is listed under both .dog."):
        load_synonyms(p)


def test_ground_truth_is_union_of_instances_and_captions(coco):
    c = Chair.from_coco(coco / "instances.json", coco / "captions.json")
    assert c.gt_objects(1) == {"person", "dog"}
    assert c.gt_objects(3) == {"giraffe", "car"}  # car only from the human caption
    assert c.gt_objects(4) == {"teddy bear", "bed"}  # no instances at all
    assert Chair.from_coco(coco / "instances.json").gt_objects(3) == {"giraffe"}
    with pytest.raises(DataError, match="image_id 99"):
        c.gt_objects(99)


def test_evaluate_hand_computed(coco):
    c = Chair.from_coco(coco / "instances.json", coco / "captions.json")
    res = c.evaluate([{"image_id": i, "caption": t} for i, t in CAPTIONS])
    m = res["metrics"]
    # 2 of 4 captions hallucinate; 3 of 9 mentions are hallucinated
    assert m["chair_s"] == pytest.approx(0.5)
    assert m["chair_i"] == pytest.approx(3 / 9)
    assert m["chair"] == pytest.approx((0.5 + 3 / 9) / 2)
    # recalled gt objects: 2 + 1 + 2 + 0 of 2 + 1 + 2 + 2
    assert m["recall"] == pytest.approx(5 / 7)
    assert m["n_captions"] == 4
    assert m["avg_len"] == pytest.approx((12 + 15 + 6 + 4) / 4)
    first = res["captions"][0]
    assert first["words"] == ["dog", "man", "hot dog", "chair"]
    assert first["hallucinated"] == ["chair", "hot dog"]
    assert [x["hallucinated"] for x in first["mentions"]] == [False, False, True, True]
    assert first["chair_i"] == pytest.approx(0.5)
    assert res["captions"][3]["words"] == [] and res["captions"][3]["chair_i"] == 0.0


def test_from_annotations_and_answer_records():
    c = Chair.from_annotations({7: {"dog", "puppy"}, 8: set()})
    res = c.evaluate([{"image_id": 7, "answer": "A dog and a cat."},
                      {"image_id": "8", "answer": "Empty room."}])
    # cat hallucinated: 1 of 2 mentions, 1 of 2 captions; recall 1/1 (dog)
    assert res["metrics"]["chair_i"] == pytest.approx(0.5)
    assert res["metrics"]["chair_s"] == pytest.approx(0.5)
    assert res["metrics"]["recall"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="not in the synonym table"):
        Chair.from_annotations({1: {"spaceship"}})


def test_bad_records_name_record_and_field():
    c = Chair.from_annotations({1: {"dog"}})
    with pytest.raises(DataError, match="record 1: field 'image_id'"):
        c.evaluate([{"image_id": 1, "caption": "a dog"}, {"image_id": 5, "caption": "x"}])
    with pytest.raises(DataError, match="record 0: field 'caption'"):
        c.evaluate([{"image_id": 1, "text": "a dog"}])


def test_cli_writes_json_and_markdown(coco, tmp_path):
    caps = tmp_path / "answers.jsonl"
    write_jsonl(caps, [{"id": str(i), "image_id": i, "answer": t} for i, t in CAPTIONS])
    out = tmp_path / "result.json"
    rc = main(["eval", "chair", "--captions", str(caps), "--instances",
               str(coco / "instances.json"), "--coco-captions", str(coco / "captions.json"),
               "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["metrics"]["chair_s"] == pytest.approx(0.5)
    assert res["captions"][0]["id"] == "1"
    md = (tmp_path / "result.md").read_text()
    assert "| chair_s | 0.5000 |" in md and "| n_captions | 4 |" in md


def test_cli_unknown_image_is_a_clear_error(coco, tmp_path, capsys):
    caps = tmp_path / "caps.jsonl"
    write_jsonl(caps, [{"image_id": 1234, "caption": "a dog"}])
    out = tmp_path / "r.json"
    rc = main(["eval", "chair", "--captions", str(caps), "--instances",
               str(coco / "instances.json"), "--out", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "caps.jsonl: record 0: field 'image_id'" in err and "1234" in err
