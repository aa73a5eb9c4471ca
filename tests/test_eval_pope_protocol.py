"""POPE as LLaVA-1.5 runs it: the shipped files, the prompt suffix, eval_pope.py's and
lmms-eval's parsing.

The expected numbers come from running haotian-liu/LLaVA ``llava/eval/eval_pope.py``
(``eval_pope``: TP 6, FP 4, TN 4, FN 1) and lmms-eval ``tasks/pope/utils.py`` (accuracy 1/3,
precision = recall = F1 = 0.75) on CASES.
"""

from __future__ import annotations

import json

import pytest

from visalign.eval.pope_protocol import (LLAVA_SUFFIX, parse_llava, parse_lmms, pope_file,
                                         pope_prompts, read_pope_file, score_pope_answers)
from visalign.io import DataError

# (label, model answer): the edge cases the references treat in their own ways
CASES = [("yes", "Yes"), ("no", "No"), ("no", "Not sure"), ("yes", ""), ("yes", "yes."),
         ("no", "No, there is not."), ("no", "There is no dog in the image."),
         ("yes", "Yes, there is a dog. No cat."), ("no", "no\nthere is none"), ("yes", "YES"),
         ("no", "Nope"), ("yes", "Yes"), ("no", "no"), ("yes", "No"), ("no", "Yes")]


def write_pope(d, split, n=len(CASES)):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"coco_pope_{split}.json", "w") as f:
        for i in range(n):
            f.write(json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg",
                                "text": "Is there a dog in the image?",
                                "label": CASES[i][0]}) + "\n")
    return d / f"coco_pope_{split}.json"


@pytest.fixture
def prompts(tmp_path):
    rows = read_pope_file(write_pope(tmp_path / "coco", "random"))
    return pope_prompts(rows, "random", tmp_path / "val2014")


def answers_for(prompts):
    return {p["id"]: a for p, (_, a) in zip(prompts, CASES)}


def test_prompts_carry_llava_suffix_and_split_ids(prompts, tmp_path):
    p = prompts[0]
    assert p["id"] == "random-1" and p["label"] == "yes"
    assert p["prompt"] == "Is there a dog in the image?\nAnswer the question using a single " \
                          "word or phrase." == p["question"] + LLAVA_SUFFIX
    assert p["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000000000.jpg")
    assert pope_file(tmp_path, "random").name == "coco_pope_random.json"


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("No", "no"), ("Not sure", "yes"), ("", "yes"), ("no\nthere", "yes"),
    ("Yes. No.", "yes"), ("There is not a dog", "no"), ("No,", "no")])
def test_llava_parser(text, expected):
    assert parse_llava(text) == expected


def test_llava_scoring_matches_eval_pope(prompts):
    res = score_pope_answers(prompts, answers_for(prompts), "llava")
    m = res["metrics"]
    tp, fp, tn, fn = 6, 4, 4, 1
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert m["pope_random_accuracy"] == pytest.approx((tp + tn) / 15)
    assert m["pope_random_precision"] == pytest.approx(p)
    assert m["pope_random_recall"] == pytest.approx(r)
    assert m["pope_random_f1"] == pytest.approx(2 * p * r / (p + r))
    assert round(m["pope_random_f1"], 3) == 0.706
    assert m["pope_random_yes_ratio"] == pytest.approx(10 / 15)   # the model's, not the labels'
    assert "pope_random_unparsed" not in m and m["pope_f1"] == m["pope_random_f1"]


def test_lmms_scoring_matches_lmms_eval(prompts):
    assert parse_lmms(" Yes ") == "yes"
    m = score_pope_answers(prompts, answers_for(prompts), "lmms")["metrics"]
    assert m["pope_random_accuracy"] == pytest.approx(5 / 15)
    assert m["pope_random_precision"] == pytest.approx(0.75)
    assert m["pope_random_recall"] == pytest.approx(0.75)
    assert m["pope_random_f1"] == pytest.approx(0.75)
    assert m["pope_random_yes_ratio"] == pytest.approx(4 / 15)
    assert m["pope_random_unparsed"] == 8   # neither exactly "yes" nor "no"


def test_missing_and_extra_answers_are_errors(prompts):
    ans = answers_for(prompts)
    del ans["random-3"]
    with pytest.raises(DataError, match=r"1 ids have no answer \(random-3\)"):
        score_pope_answers(prompts, ans)
    ans = answers_for(prompts)
    ans["popular-1"] = "Yes"
    with pytest.raises(DataError, match="answer no question of this run"):
        score_pope_answers(prompts, ans)


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="coco_pope_adversarial.json not found"):
        pope_file(tmp_path, "adversarial")
    p = tmp_path / "coco_pope_random.json"
    p.write_text(json.dumps({"question_id": 1, "image": "x.jpg", "text": "q",
                             "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="label must be yes or no"):
        read_pope_file(p)
