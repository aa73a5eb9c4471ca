"""POPE: the three negative samplers on a hand-worked example, answer parsing, scoring, CLI."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from visalign.cli import main
from visalign.eval.pope import build_pope, parse_yes_no, pope_question, score_pope
from visalign.io import DataError, read_jsonl, write_json, write_jsonl

# image id -> its objects in annotation order. Image 4 has one object, so with 2 negatives it is
# never sampled and "zebra" (only there) is never asked.
IMAGES = {1: ["person", "dog"], 2: ["person", "car"], 3: ["dog", "cat"],
          4: ["zebra"], 5: ["person", "dog", "apple"]}


def make_coco(images=IMAGES):
    names = sorted({o for objs in images.values() for o in objs})
    cid = {n: i + 1 for i, n in enumerate(names)}
    anns, k = [], 0
    for im, objs in images.items():
        for o in objs + objs[:1]:  # a repeated instance must not repeat the object
            anns.append({"id": k, "image_id": im, "category_id": cid[o]})
            k += 1
    return {"images": [{"id": im, "file_name": f"img_{im}.jpg"} for im in images],
            "categories": [{"id": cid[n], "name": n} for n in names], "annotations": anns}


def pairs(rows):
    """{image_id: [(positive, negative), ...]} from alternating yes/no rows."""
    out = {}
    for yes, no in zip(rows[::2], rows[1::2]):
        assert (yes["label"], no["label"]) == ("yes", "no") and yes["image_id"] == no["image_id"]
        out.setdefault(yes["image_id"], []).append((yes["object"], no["object"]))
    return out


def test_popular_hand_computed():
    # frequencies over the sampled images 1,2,3,5: dog 3, person 3, apple 1, car 1, cat 1
    # -> ranking dog, person, apple, car, cat (ties by name)
    rows = build_pope(make_coco(), "popular", n_images=4, n_negatives=2, seed=0)
    assert pairs(rows) == {1: [("person", "apple"), ("dog", "car")],
                           2: [("person", "dog"), ("car", "apple")],
                           3: [("dog", "person"), ("cat", "apple")],
                           5: [("person", "car"), ("dog", "cat")]}


def test_adversarial_hand_computed():
    # co-occurrence: person {dog 2, apple 1, car 1}; dog {person 2, apple 1, cat 1};
    # car {person 1}; cat {dog 1}
    rows = build_pope(make_coco(), "adversarial", n_images=4, n_negatives=2, seed=0)
    p = pairs(rows)
    assert p[1] == [("person", "apple"), ("dog", "cat")]
    assert p[5] == [("person", "car"), ("dog", "cat")]
    # car's only co-occurring object is in image 2 -> random fallback among the rest
    assert p[2][0] == ("person", "dog") and p[2][1][0] == "car"
    assert p[2][1][1] in {"apple", "cat"}
    assert p[3][0] == ("dog", "person") and p[3][1][1] in {"apple", "car"}


def test_random_negatives_are_absent_new_and_uniform():
    coco = make_coco()
    rows = build_pope(coco, "random", n_images=4, n_negatives=2, seed=3)
    assert build_pope(coco, "random", n_images=4, n_negatives=2, seed=3) == rows
    for im, ps in pairs(rows).items():
        negs = [n for _, n in ps]
        assert len(set(negs)) == len(negs)
        assert not set(negs) & set(IMAGES[im])
        assert "zebra" not in negs  # not an object of the sampled images
    # uniform over the candidates: image 5's first negative is car or cat, each ~half the time
    counts = Counter(pairs(build_pope(coco, "random", 4, 2, seed=s))[5][0][1]
                     for s in range(400))
    assert set(counts) == {"car", "cat"} and 150 < counts["car"] < 250


def test_record_fields_and_same_images_across_splits(tmp_path):
    coco = make_coco()
    rows = {s: build_pope(coco, s, n_images=3, n_negatives=2, seed=11, image_root="/data/img")
            for s in ("random", "popular", "adversarial")}
    order = [r["image_id"] for r in rows["random"]]
    assert all([r["image_id"] for r in rows[s]] == order for s in rows)
    r = rows["popular"][0]
    assert set(r) == {"question_id", "image_id", "object", "question", "label", "split",
                      "image", "prompt"}
    assert r["image"] == f"/data/img/img_{r['image_id']}.jpg" and r["prompt"] == r["question"]
    assert r["split"] == "popular" and r["question_id"] == "popular-0"
    assert len({x["question_id"] for x in rows["popular"]}) == 3 * 2 * 2
    assert "image" not in build_pope(coco, "random", 3, 2, seed=11)[0]


def test_question_template():
    assert pope_question("dog") == "Is there a dog in the image?"
    assert pope_question("apple") == "Is there an apple in the image?"
    assert pope_question("umbrella") == "Is there an umbrella in the image?"


def test_too_few_images_and_no_negative_left():
    with pytest.raises(DataError, match="only 4 images have at least 2 annotated objects"):
        build_pope(make_coco(), "random", n_images=5, n_negatives=2, seed=0)
    # a single image holding every object: nothing is absent
    with pytest.raises(DataError, match="cannot find a negative object for image 1"):
        build_pope(make_coco({1: ["dog", "cat"]}), "random", n_images=1, n_negatives=2, seed=0)


@pytest.mark.parametrize("answer,expected", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("Yes. There is no cat next to it.", "yes"),  # only the first sentence counts
    ("no", "no"),
    ("No\nthere is none", "no"),  # any whitespace separates words
    ("Nope", "yes"),  # the reference rule: only "No"/"no"/"not" words mean no
    ("", "yes"),
])
def test_parse_yes_no(answer, expected):
    assert parse_yes_no(answer) == expected


def test_score_hand_computed():
    labels = ["yes", "yes", "yes", "no", "no"]
    preds = ["Yes.", "Yes, it is", "No.", "Yes", "No, not at all"]
    qs = [{"question_id": i, "label": l, "split": "random"} for i, l in enumerate(labels)]
    ans = [{"question_id": str(i), "answer": a} for i, a in enumerate(preds)]
    ans.append({"question_id": "other-1", "answer": "yes"})
    res = score_pope(qs, ans)
    # TP 2, FN 1, FP 1, TN 1
    m = res["metrics"]
    assert m["pope_random_accuracy"] == pytest.approx(3 / 5)
    assert m["pope_random_precision"] == pytest.approx(2 / 3)
    assert m["pope_random_recall"] == pytest.approx(2 / 3)
    assert m["pope_random_f1"] == pytest.approx(2 / 3)
    assert m["pope_random_yes_ratio"] == pytest.approx(3 / 5)
    assert res["splits"]["random"] == {"n": 5, "tp": 2, "fp": 1, "tn": 1, "fn": 1}
    assert res["n_extra_answers"] == 1
    # --split renames; without split names an error names the field
    assert "pope_mine_f1" in score_pope(qs, ans, split="mine")["metrics"]
    with pytest.raises(DataError, match="field 'split'"):
        score_pope([{"question_id": 0, "label": "yes"}], ans)


def test_missing_answers_are_an_error():
    qs = [{"question_id": f"q{i}", "label": "yes", "split": "random"} for i in range(8)]
    ans = [{"question_id": "q0", "answer": "yes"}]
    with pytest.raises(DataError, match=r"7 of 8 questions have no answer "
                                        r"\(question_id q1, q2, q3, q4, q5, \.\.\.\)"):
        score_pope(qs, ans)


def test_cli_build_then_eval(tmp_path):
    inst = tmp_path / "instances.json"
    write_json(inst, make_coco())
    qpath = tmp_path / "q.jsonl"
    assert main(["pope", "build", "--instances", str(inst), "--split", "popular", "--images",
                 "4", "--negatives", "2", "--seed", "1", "--image-root", "imgs", "--out",
                 str(qpath)]) == 0
    qs = read_jsonl(qpath)
    assert len(qs) == 16 and qs[0]["image"].startswith("imgs/")
    # a model that always says yes: accuracy 1/2, precision 1/2, recall 1, yes-ratio 1
    apath = tmp_path / "a.jsonl"
    write_jsonl(apath, [{**q, "answer": "Yes, there is."} for q in qs])
    out = tmp_path / "pope.json"
    assert main(["eval", "pope", "--questions", str(qpath), "--answers", str(apath), "--out",
                 str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["pope_popular_accuracy"] == 0.5 and m["pope_popular_recall"] == 1.0
    assert m["pope_popular_precision"] == 0.5 and m["pope_popular_yes_ratio"] == 1.0
    assert m["pope_popular_f1"] == pytest.approx(2 / 3)
    assert "| pope_popular_f1 | 0.6667 |" in (tmp_path / "pope.md").read_text()
