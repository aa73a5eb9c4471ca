"""Object HalBench (RLAIF-V eval_gpt_obj_halbench.py): file format, judge prompt, parsing,
metrics in judge and words modes.

EXPECTED_* are the ``overall_metrics`` RLAIF-V's ``eval/eval_gpt_obj_halbench.py`` computed on
this fixture (run offline: its judge replaced by REPLIES, spaCy by the same NLTK parser visalign's
``nlp="nltk"`` uses, so the comparison checks everything around the parser).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from visalign.eval.objhal import (OBJHAL_PROMPT, ObjHalScorer, objhal_messages, objhal_prompts,
                                  parse_object_list, read_objhal_file)
from visalign.io import DataError, write_json

# A table in synonyms_refine.txt's format (category first, ", "-separated), made for the test.
SYNONYMS = """person, man, woman, people, girl, boy, child, pedestrian
dog, puppy
car, taxi, van
bus
traffic light, traffic signal
dining table, table
wine glass
toilet
chair, seat, stool
hot dog
teddy bear
"""
CATS = ["person", "dog", "car", "bus", "traffic light", "dining table", "wine glass", "toilet",
        "chair", "hot dog", "teddy bear"]
IMAGES = [  # (id, split, instance categories, human captions)
    (11, "val", ["person", "dog"], ["A man walks his dog past a taxi."]),
    (12, "train", ["toilet"], ["A toilet and a sink."]),
    (13, "val", ["bus", "traffic light"], ["A bus stops at the traffic signal."]),
    (14, "val", ["dining table", "wine glass"], ["Wine glasses on a table."]),
]
ANSWERS = [  # (image id, answer)
    (11, "Assistant: A man and two dogs walk past a car near a pedestrian."),
    (12, "The toilet seat is up next to a chair and a teddy bear."),
    (13, "A bus."),                                   # <= 3 words: no judge call, no objects
    (14, "Two wine glasses stand on the dining table beside hot dogs."),
]
QUESTION = "Provide a thorough description of the given image."
REPLIES = {  # answer prefix -> the judge's reply
    "A man": '["man", "dogs", "car", "pedestrian"]',
    "The toilet": 'Objects:\n["toilet seat", "chair", "teddy bear"]',
    "Two wine": '["wine glasses", "dining table", "hot dogs"]',
}
EXPECTED_JUDGE = {"CHAIRs": 0.5, "CHAIRs_refine": 0.6666666666666666,
                  "CHAIRi": 0.3333333333333333, "obj_rec": 0.75, "avg_word_len": 9.5}
EXPECTED_WORDS = {"CHAIRs": 0.5, "CHAIRs_refine": 0.5, "CHAIRi": 0.2727272727272727,
                  "obj_rec": 0.875, "avg_word_len": 9.5}


def write_fixture(root):
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CATS)]
    cid = {n: i + 1 for i, n in enumerate(CATS)}
    k = 0
    for split in ("train", "val"):
        imgs = [x for x in IMAGES if x[1] == split]
        images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i, *_ in imgs]
        inst, caps = [], []
        for i, _, objs, texts in imgs:
            for o in objs:
                k += 1
                inst.append({"id": k, "image_id": i, "category_id": cid[o], "bbox": [0, 0, 1, 1]})
            for t in texts:
                k += 1
                caps.append({"id": k, "image_id": i, "caption": t})
        meta = {"info": {}, "licenses": []}
        write_json(ann / f"instances_{split}2014.json",
                   {**meta, "images": images, "categories": cats, "annotations": inst})
        write_json(ann / f"captions_{split}2014.json", {**meta, "images": images,
                                                        "annotations": caps})
    (root / "synonyms_refine.txt").write_text(SYNONYMS)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="JPEG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    with open(root / "obj_halbench_300_with_image.jsonl", "w") as f:
        for image_id, _ in ANSWERS:
            f.write(json.dumps({"image_id": image_id, "question": QUESTION, "image": b64}) + "\n")
    return root


class FakeClient:
    model = "fake-judge"

    def __init__(self):
        self.batches = []

    def chat_many(self, batch, workers=None, **params):
        self.batches.append((batch, params))
        out = []
        for msgs in batch:
            text = msgs[0]["content"]
            answer = text.split("[Start of Examiner's Answer]\n\n")[1]
            out.append(next((r for k, r in REPLIES.items() if answer.startswith(k)),
                            "I cannot tell."))
        return out


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("objhal"))


def scorer(fixture_dir, mode):
    from visalign.data.coco import CocoRoot

    s = ObjHalScorer(fixture_dir / "synonyms_refine.txt", mode=mode, nlp="nltk")
    rows = read_objhal_file(fixture_dir / "obj_halbench_300_with_image.jsonl")
    inst, caps = CocoRoot(fixture_dir).merged(image_ids=[r["image_id"] for r in rows])
    s.load_ground_truth(inst, caps, [r["image_id"] for r in rows])
    items = [{"id": r["id"], "image_id": r["image_id"], "question": r["question"], "answer": a}
             for r, (_, a) in zip(rows, ANSWERS)]
    return s, items


def check(m, expected):
    assert m["objhal_chair_s"] == pytest.approx(expected["CHAIRs"])
    assert m["objhal_response_hall"] == pytest.approx(expected["CHAIRs_refine"])
    assert m["objhal_object_hall"] == pytest.approx(expected["CHAIRi"])
    assert m["objhal_recall"] == pytest.approx(expected["obj_rec"])
    assert m["objhal_avg_len"] == pytest.approx(expected["avg_word_len"])


def test_judge_mode_matches_the_reference(fixture_dir, nltk_tagger_data, wordnet_available):
    s, items = scorer(fixture_dir, "judge")
    client = FakeClient()
    res = s.score(items, client)
    check(res["metrics"], EXPECTED_JUDGE)
    assert res["metrics"]["objhal_judge_unparsed"] == 0
    batch, params = client.batches[0]
    assert len(batch) == 3 and params == {"temperature": 0.2, "max_tokens": 512}
    assert batch[0] == objhal_messages(QUESTION, ANSWERS[0][1][len("Assistant: "):])
    assert res["protocol"] == {"mode": "judge", "nlp": "nltk",
                               "synonyms": str(fixture_dir / "synonyms_refine.txt")}
    toilet = res["responses"][1]
    assert toilet["objects"] == ["toilet", "chair", "teddy bear"]   # "toilet seat" -> toilet


def test_words_mode_matches_the_reference(fixture_dir, nltk_tagger_data, wordnet_available):
    s, items = scorer(fixture_dir, "words")
    res = s.score(items)
    check(res["metrics"], EXPECTED_WORDS)
    assert res["protocol"]["mode"] == "words" and res["protocol"]["nlp"] is None


def test_unparsed_replies_are_counted_and_left_out(fixture_dir, nltk_tagger_data,
                                                   wordnet_available, monkeypatch):
    s, items = scorer(fixture_dir, "judge")
    monkeypatch.setitem(REPLIES, "A man", "man, dogs and a car")
    res = s.score(items, FakeClient())
    assert res["metrics"]["objhal_judge_unparsed"] == 1 and res["metrics"]["objhal_n"] == 3
    assert res["responses"][0]["parsed"] is False


@pytest.mark.parametrize("reply,expected", [
    ('["dog", "car"]', ["dog", "car"]),
    ('Here they are:\n["dog"]', ["dog"]),
    ("[]", []),
    ("()", None),
    ('{"objects": ["dog"]}', None),
    ("dog, car", None),
])
def test_parse_object_list(reply, expected):
    assert parse_object_list(reply) == expected


def test_prompt_is_verbatim_and_filled_by_replace():
    assert OBJHAL_PROMPT.startswith("You are an expert in image objects extraction according "
                                    "to a question answer pair.")
    assert 'Present the results in a JSON list format: ["object_1", ..., "object_n"].' \
        in OBJHAL_PROMPT
    msgs = objhal_messages("Describe {it}.", "A dog.")
    assert msgs[0]["role"] == "system"
    assert "<image> Describe {it}.\n\n[End of Question]" in msgs[0]["content"]
    assert "[Start of Examiner's Answer]\n\nA dog.\n\n" in msgs[0]["content"]


def test_file_as_it_ships_and_its_errors(fixture_dir, tmp_path):
    rows = read_objhal_file(fixture_dir / "obj_halbench_300_with_image.jsonl")
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"] and rows[0]["image_id"] == 11
    prompts = objhal_prompts(rows, tmp_path / "img")
    assert prompts[0]["prompt"] == QUESTION
    with Image.open(prompts[0]["image"]) as im:
        assert im.size == (8, 8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image_id": 1, "question": "q", "image": "%%%"}) + "\n")
    with pytest.raises(DataError, match="cannot decode the base64 image"):
        objhal_prompts(read_objhal_file(bad), tmp_path / "img2", bad)
    bad.write_text(json.dumps({"question": "q", "image": "x"}) + "\n")
    with pytest.raises(DataError, match="field 'image_id'"):
        read_objhal_file(bad)


def test_spacy_missing_is_one_line_naming_both_choices(fixture_dir):
    import importlib.util

    if importlib.util.find_spec("spacy") is not None:
        pytest.skip("spaCy is installed")
    from visalign.eval.nltk_data import MissingResource

    with pytest.raises(MissingResource, match="pip install spacy.*objhal_nlp=nltk"):
        ObjHalScorer(fixture_dir / "synonyms_refine.txt", mode="judge", nlp="spacy")
