"""nSFT data construction on hand-made records: judges, codebook tags, doubled QA, yes/no
balancing, Is/Are share, answer length, LLM replies from a local endpoint, the report."""

from __future__ import annotations

import copy
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from visalign.eval.judge import JudgeConfig
from visalign.methods.nsft import (CATEGORY_KEYS, NSFT_PROMPT, QA, SHORT_ANSWER_CATEGORIES,
                                   UNSPECIFIED, AnnotationJudge, GroundTruth, LLMJudge,
                                   LLMParseError, NsftDataConfig, add_yes_pairs, balance_yes_no,
                                   build_nsft_data, clip_words, doubled_pairs, is_short,
                                   limit_is_are, match_category, nsft_messages, parse_llm_reply,
                                   report_markdown, short_answer_correct)
from visalign.methods.nsft.dialogue import Scene

# ---------------------------------------------------------------------------------------------
# Hand-made ground truth: image 1 is a kitchen (a red cup on the left, two brown dogs on the
# right, a blue chair in the centre), image 2 a beach with a white bench. 100 x 100 images.
# ---------------------------------------------------------------------------------------------

CATS = [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "chair"},
        {"id": 4, "name": "cat"}, {"id": 5, "name": "bench"}]


def instances(with_fields: bool = True) -> dict:
    anns = [
        (1, 1, [5, 40, 20, 20], "red", "small", "left"),
        (1, 2, [70, 10, 20, 20], "brown", "large", "top right"),
        (1, 2, [70, 60, 20, 20], "brown", "large", "bottom right"),
        (1, 3, [40, 40, 20, 20], "blue", "large", "center"),
        (2, 5, [40, 40, 20, 20], "white", "large", "center"),
    ]
    out = []
    for i, (img, cat, bbox, color, size, region) in enumerate(anns, 1):
        a = {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "iscrowd": 0,
             "area": bbox[2] * bbox[3]}
        if with_fields:
            a.update(color=color, size=size, region=region)
        out.append(a)
    images = [{"id": 1, "file_name": "img1.png", "width": 100, "height": 100},
              {"id": 2, "file_name": "img2.png", "width": 100, "height": 100}]
    if with_fields:
        images[0]["theme"], images[1]["theme"] = "kitchen", "beach"
    return {"images": images, "annotations": out, "categories": CATS}


def rec(rid, image_id, task, question, gt_answer, **extra):
    return {"id": rid, "image": f"img{image_id}.png", "image_id": image_id, "task": task,
            "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                              {"from": "gpt", "value": gt_answer}], **extra}


D1_ANSWER = ("In this kitchen, the green cup is on the right side. There are three dogs. "
             "The chair is to the right of the dogs. A cat sits in the top left corner.")
RECORDS = [
    rec("d1", 1, "detail", "Describe the image in detail.",
        "A kitchen with a red cup on the left, two brown dogs on the right and a blue chair."),
    rec("d2", 2, "detail", "Describe the image.", "A white bench on a sunny beach."),
    rec("d3", 2, "detail", "What do you see?", "A white bench on a sunny beach."),
    rec("s1", 1, "color", "What color is the cup?", "Red"),
    rec("s2", 1, "count", "How many dogs are there?", "Two"),
    rec("s3", 1, "existence", "Is there a cat in the image?", "No"),
    rec("s4", 1, "color", "What color is the chair?", "Blue"),
]
ANSWERS = [{"id": "d1", "answer": D1_ANSWER},
           {"id": "d2", "answer": "A white bench on a beach."},
           {"id": "d3", "answer": "A white bench in a kitchen."},
           {"id": "s1", "answer": "Green."},
           {"id": "s2", "answer": "2"},
           {"id": "s3", "answer": "Yes"}]          # s4: no answer -> skipped


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return GroundTruth(instances())


def _errs(gt, answer, image_id=1):
    return [(e.category, e.meta.get("attribute"), e.wrong, e.right, e.object)
            for e in AnnotationJudge().long_answer_errors(answer, image_id, gt)]


# ---------------------------------------------------------------------------------------------
# Short answers: correctness and the doubled QA pair (Sec. B.1)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer,gt_answer,ok", [
    ("Two", "two", True), ("3", "Three", True), ("There are two cups.", "Two", True),
    ("It is a red cup.", "Red", True), ("Yes", "No", False), ("No, there is not.", "No", True),
    ("On the left", "Left", True), ("Dog", "Chair", False), ("Not a chair", "Chair", False),
    ("Blue and red", "Red", False), ("four", "Two", False),
])
def test_short_answer_correct(answer, gt_answer, ok):
    assert short_answer_correct(answer, gt_answer) is ok


def test_doubled_pairs_exact():
    qas = doubled_pairs("What color is the cup?", " Green. ", "Red")
    assert [(q.question, q.answer, q.kind) for q in qas] == [
        ("What color is the cup? Is the answer Green?", "No.", "doubled_no"),
        ("What color is the cup?", "Red", "doubled_answer")]


def test_is_short_by_task_then_by_length():
    cfg = NsftDataConfig()
    assert is_short(RECORDS[3], cfg) and not is_short(RECORDS[0], cfg)
    no_task = {"id": "x", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A red cup"}]}
    assert is_short(no_task, cfg)
    no_task["conversations"][1]["value"] = "A red cup next to a dog"
    assert not is_short(no_task, cfg)


# ---------------------------------------------------------------------------------------------
# Annotation judge: one test per checkable codebook category
# ---------------------------------------------------------------------------------------------

def test_hallucinated_object_is_object_identity(gt):
    assert _errs(gt, "A cat sits near the chair.") == [
        ("object_identity", None, "cat", None, "cat")]
    # placed in a region: the follow-up names what is really there (the cup is in "left").
    e = AnnotationJudge().long_answer_errors("On the left there is a cat.", 1, gt)
    assert (e[0].category, e[0].where, e[0].right) == ("object_identity", "left", "cup")


def test_wrong_colour_and_size_are_object_attribute(gt):
    assert _errs(gt, "There is a green cup.") == [
        ("object_attribute", "color", "green", "red", "cup")]
    assert _errs(gt, "The cup is green.") == [("object_attribute", "color", "green", "red",
                                                "cup")]
    assert _errs(gt, "There is a large cup.") == [("object_attribute", "size", "large",
                                                    "small", "cup")]
    assert _errs(gt, "There is a red cup and a blue chair.") == []


def test_wrong_count_is_object_attribute(gt):
    assert _errs(gt, "There are three dogs.") == [
        ("object_attribute", "count", "three", "2", "dog")]
    assert _errs(gt, "There are two dogs.") == []
    assert _errs(gt, "Two of the dogs sleep.") == []   # a part, not the total


def test_wrong_positions_are_locations_and_relative_positions(gt):
    assert _errs(gt, "The cup is on the right side.") == [
        ("object_locations", None, "right", "left", "cup")]
    assert _errs(gt, "The cup is on the left.") == []
    assert _errs(gt, "The chair is to the right of the dogs.") == [
        ("relative_positions", None, "to the right of", "to the left of", "chair")]
    assert _errs(gt, "The chair is to the left of the dogs.") == []
    assert _errs(gt, "The dogs are on the right side of the image.") == []


def test_wrong_scene_is_background_knowledge(gt):
    assert _errs(gt, "A white bench in a kitchen.", image_id=2) == [
        ("background_knowledge", None, "kitchen", "beach", None)]
    assert _errs(gt, "A white bench on a beach.", image_id=2) == []


def test_unchecked_categories_and_plain_coco_notes():
    judge = AnnotationJudge()
    unchecked = set(CATEGORY_KEYS) - judge.checkable_categories
    assert unchecked == {"object_actions", "events", "event_planning", "reasoning"}
    # ... in long answers; short answers (compared with the GT answer) add object_actions.
    assert SHORT_ANSWER_CATEGORIES - judge.checkable_categories == {"object_actions"}
    assert judge.short_answer_categories == SHORT_ANSWER_CATEGORIES
    plain = GroundTruth(instances(with_fields=False))
    notes = " ".join(judge.notes(plain))
    for word in ("colour", "size", "absolute location", "background"):
        assert word in notes
    assert "relative position" not in notes          # bboxes are there
    # Without colour/region fields only identity, count and relative positions are checked.
    assert _errs(plain, "A green cup on the right side, a cat and three dogs.") == [
        ("object_identity", None, "cat", None, "cat"),
        ("object_attribute", "count", "three", "2", "dog")]


# ---------------------------------------------------------------------------------------------
# Post-processing: answer length, Is/Are share, yes/no balancing
# ---------------------------------------------------------------------------------------------

def test_clip_words_keeps_at_most_max_tokens():
    long = " ".join(f"w{i}" for i in range(30))
    assert clip_words(long, 20) == " ".join(f"w{i}" for i in range(20)) + "."
    assert len(clip_words(long, 20).split()) == 20
    assert clip_words("Short answer.", 20) == "Short answer."
    s = "One two three four five six seven eight nine ten eleven twelve. Thirteen " + long
    assert clip_words(s, 20) == "One two three four five six seven eight nine ten eleven twelve."
    # A sentence end keeping less than half of the budget is not used: hard cut instead.
    s = "One two three. " + long
    assert clip_words(s, 20) == "One two three. " + " ".join(f"w{i}" for i in range(17)) + "."


def test_limit_is_are_rephrases_the_last_ones():
    qas = [QA("Is there a cat in the image?", "No, there is no cat."),
           QA("What color is the cup?", "It is red."),
           QA("Are there any dogs?", "Yes, there are two dogs."),
           QA("Is the cup red?", "Yes."),
           QA("Is the chair blue?", "Yes."),
           QA("GT question", "GT answer", gt=True)]
    # 5 constructed questions, max share 0.6 -> at most 3 may start with Is/Are: 4 do.
    assert limit_is_are(qas, 0.6) == 1
    assert [q.question for q in qas[:5]] == [
        "Is there a cat in the image?", "What color is the cup?", "Are there any dogs?",
        "Is the cup red?", "Looking at the image, is the chair blue?"]
    qas2 = [QA("Is there a cat?", "No."), QA("Are there dogs here?", "Yes.")]
    assert limit_is_are(qas2, 0.0) == 2
    assert [q.question for q in qas2] == ["Can you see a cat?", "Can you see dogs here?"]


def _convs(spec: list[str]) -> list[list[QA]]:
    """'YNN' -> one conversation with answers Yes, No, No."""
    return [[QA(f"q{ci}{j}", {"Y": "Yes.", "N": "No.", "O": "Red."}[c])
             for j, c in enumerate(s)] for ci, s in enumerate(spec)]


def test_balance_yes_no_exact_count_and_seeded():
    # yes = 2, no = 8, target 0.5: erase k >= 2 + 8 - 2 / 0.5 = 6 -> 2 / (2 + 2) = 0.5.
    convs = _convs(["YNNN", "NNNO", "YNNO"])
    res = balance_yes_no(convs, 0.5, random.Random(0))
    assert res == {"erased": 6, "reached": True, "needed": 6, "already_above": False}
    answers = [q.answer for c in convs for q in c]
    assert answers.count("Yes.") == 2 and answers.count("No.") == 2
    assert answers.count("Red.") == 2 and all(c for c in convs)
    # Same seed -> the same pairs erased; the choice is random across seeds.
    picks = set()
    for seed in range(6):
        c = _convs(["YNNN", "NNNO", "YNNO"])
        balance_yes_no(c, 0.5, random.Random(seed))
        picks.add(tuple(q.question for cc in c for q in cc))
        again = _convs(["YNNN", "NNNO", "YNNO"])
        balance_yes_no(again, 0.5, random.Random(seed))
        assert [q.question for cc in again for q in cc] == [q.question for cc in c for q in cc]
    assert len(picks) > 1
    # yes = 1, no = 4, target 0.4: k >= 5 - 2.5 -> 3 (k = 2 would leave 1/3 < 0.4).
    convs = _convs(["YNN", "NN"])
    assert balance_yes_no(convs, 0.4, random.Random(1))["erased"] == 3


def test_balance_never_erases_the_last_pair_and_skips_gt_and_doubled():
    convs = _convs(["N", "N", "YN"])
    convs[2].append(QA("gt", "No.", gt=True))
    convs[2] += doubled_pairs("Is it a cat?", "Yes", "No")
    res = balance_yes_no(convs, 1.0, random.Random(0))
    # Only the "No" of the third conversation may go: single pairs stay, GT and doubled
    # pairs are neither counted nor erased.
    assert res["erased"] == 1 and res["reached"] is False
    assert [len(c) for c in convs] == [1, 1, 4]
    assert balance_yes_no(_convs(["NN"]), 0.5, random.Random(0)) == {
        "erased": 0, "reached": False, "needed": None, "already_above": False}  # no "Yes"
    assert balance_yes_no(_convs(["YN"]), 0.5, random.Random(0))["erased"] == 0
    assert balance_yes_no(_convs(["YNN"]), 0.0, random.Random(0)) == {           # disabled
        "erased": 0, "reached": True, "needed": 0, "already_above": False}


def test_balance_target_is_a_minimum_yes_share():
    """Erasing "No" pairs only raises the Yes share: a share above the target is left alone
    (a 0.8 share stays 0.8 with target 0.5), and the result says so."""
    convs = _convs(["YYN", "YY"])
    before = [[q.answer for q in c] for c in convs]
    assert balance_yes_no(convs, 0.5, random.Random(0)) == {
        "erased": 0, "reached": True, "needed": 0, "already_above": True}
    assert [[q.answer for q in c] for c in convs] == before
    # Exactly at the target also counts as already met; just below it does not.
    assert balance_yes_no(_convs(["YN"]), 0.5, random.Random(0))["already_above"] is True
    res = balance_yes_no(_convs(["YNN"]), 0.5, random.Random(0))
    assert res["already_above"] is False and res["erased"] == 1


# ---------------------------------------------------------------------------------------------
# Build with the annotation judge: output records and the report
# ---------------------------------------------------------------------------------------------

def _by_id(data):
    return {r["nsft"]["source_id"]: r for r in data}


def _turns(r):
    c = r["conversations"]
    return [(c[i]["value"], c[i + 1]["value"]) for i in range(0, len(c), 2)]


def test_build_annotation_outputs_and_report(gt):
    cfg = NsftDataConfig(yes_ratio_target=0.0)
    data, rep = build_nsft_data(RECORDS, ANSWERS, gt, cfg, AnnotationJudge(cfg))
    out = _by_id(data)
    assert sorted(out) == ["d1", "d3", "s1", "s3"]
    # Long answer: 5 connected pairs, one per error, in answer order.
    assert _turns(out["d1"]) == [
        ("<image>\nWhat color is the cup?", "It is red."),
        ("Where is the cup?", "On the left side."),
        ("How many dogs are there?", "There are two dogs."),
        ("Where is the chair relative to the dogs?", "It is to the left of the dogs."),
        ("Is there a cat in the image?", "No, there is no cat.")]
    assert [e["category"] for e in out["d1"]["nsft"]["errors"]] == [
        "object_attribute", "object_locations", "object_attribute", "relative_positions",
        "object_identity"]
    assert out["d1"]["id"] == "d1_nsft" and out["d1"]["image"] == "img1.png"
    assert out["d1"]["image_id"] == 1 and out["d1"]["task"] == "detail"
    # Short answer: GT conversation kept (default), doubled pair appended at the tail.
    assert _turns(out["s1"]) == [
        ("<image>\nWhat color is the cup?", "Red"),
        ("What color is the cup? Is the answer Green?", "No."),
        ("What color is the cup?", "Red")]
    assert _turns(out["s3"])[1:] == [("Is there a cat in the image? Is the answer Yes?", "No."),
                                     ("Is there a cat in the image?", "No")]
    assert out["s3"]["nsft"]["errors"][0]["category"] == "object_identity"
    # Long answers never keep the GT by default; every output is a valid LLaVA record.
    assert _turns(out["d3"])[0] == ("<image>\nWhat kind of place is shown in the image?",
                                    "It is a beach.")
    from visalign.data.llava import validate_llava_record
    for i, r in enumerate(data):
        validate_llava_record(r, None, i)

    assert rep["n_records"] == 7 and rep["n_output"] == 4 and rep["n_with_errors"] == 4
    assert rep["n_no_error"] == 2 and sorted(rep["no_error_ids"]) == ["d2", "s2"]
    assert rep["skipped"]["count"] == 1 and rep["skipped"]["records"][0]["id"] == "s4"
    assert rep["n_judged"] == 6 and rep["tasks"] == {"short": 2, "long": 2}
    assert rep["n_images_judged"] == 2 and rep["n_images_no_error"] == 0
    assert rep["errors_per_category"] == {
        "object_identity": 2, "object_attribute": 3, "object_actions": 0,
        "object_locations": 1, "relative_positions": 1, "background_knowledge": 1,
        "events": 0, "event_planning": 0, "reasoning": 0, UNSPECIFIED: 0}
    assert rep["errors_per_level"] == {"instance": 5, "image": 3}
    assert rep["unchecked_categories"] == ["events", "event_planning", "reasoning"]
    assert rep["checked_short_answers_only"] == ["object_actions"]
    assert "object_actions" in rep["checkable_categories"]
    assert rep["judge"] == "annotation" and rep["llm_unparsed"] == 0
    md = report_markdown(rep)
    assert "| instance | Object Identity | 2 | yes |" in md
    assert "| instance | Object actions | 0 | short answers only |" in md
    assert "| image | Reasoning | 0 | no (unchecked) |" in md


def test_build_yes_no_balancing_in_report(gt):
    # Balanced scope (long conversations): d1 has one "No" (the cat), d3 one "Yes" (the
    # bench). Target 0.75: erase 1 "No" -> 1 / 1.
    cfg = NsftDataConfig(yes_ratio_target=0.75)
    data, rep = build_nsft_data(RECORDS, ANSWERS, gt, cfg, AnnotationJudge(cfg))
    yn = rep["yes_no"]
    assert yn["before"] == {"yes": 1, "no": 1, "yes_ratio": 0.5}
    assert yn["after"] == {"yes": 1, "no": 0, "yes_ratio": 1.0}
    assert yn["erased_no_pairs"] == 1 and yn["reached"] is True
    assert yn["already_above_target"] is False
    d1 = _by_id(data)["d1"]
    assert len(_turns(d1)) == 4 and all("cat" not in q for q, _ in _turns(d1))
    # Erasing left d1 one pair short of n_pairs; d3 keeps its 5.
    assert len(_turns(_by_id(data)["d3"])) == 5
    assert rep["n_pairs"] == 5 and rep["conversations_under_n_pairs"] == 1
    # Doubled pairs (short answers) are kept whole and reported apart.
    assert len(_turns(_by_id(data)["s1"])) == 3
    assert yn["doubled"] == {"yes": 0, "no": 3}


def test_build_yes_share_above_target_is_left_alone(gt):
    """yes_ratio_target is a minimum: 2 Yes / 1 No (0.67) with target 0.5 erases nothing,
    reports ``already_above_target`` and says so in report.md."""
    records = [RECORDS[0], RECORDS[2]]
    answers = {"d1": "A cat sits near the chair.", "d3": "A white bench in a kitchen."}
    cfg = NsftDataConfig(yes_ratio_target=0.5)
    data, rep = build_nsft_data(records, answers, gt, cfg, AnnotationJudge(cfg))
    yn = rep["yes_no"]
    assert yn["before"] == yn["after"] == {"yes": 2, "no": 1, "yes_ratio": 2 / 3}
    assert yn["erased_no_pairs"] == 0 and yn["added_yes_pairs"] == 0
    assert yn["already_above_target"] is True and yn["reached"] is True
    assert "already at or above the target, left as is" in report_markdown(rep)
    # add_yes_pairs adds nothing either when the share is already above the target.
    cfg = NsftDataConfig(yes_ratio_target=0.5, add_yes_pairs=True)
    data2, rep2 = build_nsft_data(records, answers, gt, cfg, AnnotationJudge(cfg))
    assert rep2["yes_no"]["added_yes_pairs"] == 0 and data2 == data
    # Above this target the same data is balanced: one "No" erased, flag off.
    cfg = NsftDataConfig(yes_ratio_target=0.75)
    _, rep3 = build_nsft_data(records, answers, gt, cfg, AnnotationJudge(cfg))
    assert rep3["yes_no"]["erased_no_pairs"] == 1
    assert rep3["yes_no"]["already_above_target"] is False
    assert "already at or above" not in report_markdown(rep3)


def test_add_yes_pairs_appends_yes_about_unasked_gt_objects(gt):
    """A lone "No" pair cannot be erased; "Yes" pairs about GT objects not asked about yet
    are appended until the share reaches the target, and stop when no object is left."""
    def conv():
        return [QA("Is there a cat in the image?", "No, there is no cat.", "exists_no", "cat")]

    scene = Scene(gt, 1)            # two dogs, a chair, a cup (most frequent first)
    convs = [(conv(), scene)]
    assert add_yes_pairs(convs, 0.5, random.Random(0)) == 1
    assert [(q.question, q.answer) for q in convs[0][0][1:]] == [
        ("Are there any dogs in the image?", "Yes, there are two dogs.")]
    convs = [(conv(), scene)]
    assert add_yes_pairs(convs, 0.9, random.Random(0)) == 3      # 9 needed, 3 objects
    assert [q.object for q in convs[0][0][1:]] == ["dog", "chair", "cup"]
    assert all(q.answer.startswith("Yes") for q in convs[0][0][1:])
    assert add_yes_pairs([(conv(), scene)], 0.0, random.Random(0)) == 0     # disabled


def test_short_action_answer_is_reported_as_checked_for_short_answers(gt):
    """A wrong answer to a "doing" question is compared with the GT answer and tagged
    object_actions; the report must not also list object_actions as unchecked."""
    records = [rec("a1", 1, "vqa", "What is the dog doing?", "Sleeping"), RECORDS[0]]
    answers = {"a1": "Running.", "d1": "A cat sits near the chair."}
    cfg = NsftDataConfig()
    data, rep = build_nsft_data(records, answers, gt, cfg, AnnotationJudge(cfg))
    a1 = _by_id(data)["a1"]
    assert [e["category"] for e in a1["nsft"]["errors"]] == ["object_actions"]
    assert _turns(a1)[1:] == [("What is the dog doing? Is the answer Running?", "No."),
                              ("What is the dog doing?", "Sleeping")]
    assert rep["errors_per_category"]["object_actions"] == 1
    # No category is both counted and listed as unchecked; the three lists split the codebook.
    counted = {k for k, n in rep["errors_per_category"].items() if n and k != UNSPECIFIED}
    assert counted and not counted & set(rep["unchecked_categories"])
    assert set(rep["checked_short_answers_only"]) <= set(rep["checkable_categories"])
    assert set(rep["checkable_categories"]) | set(rep["unchecked_categories"]) == \
        set(CATEGORY_KEYS)
    assert not set(rep["checkable_categories"]) & set(rep["unchecked_categories"])
    assert rep["checked_short_answers_only"] == ["object_actions"]
    md = report_markdown(rep)
    assert "| instance | Object actions | 1 | short answers only |" in md
    assert "Object actions | 1 | no (unchecked)" not in md
    # The LLM judge checks every category in long answers: nothing is short-answers-only.
    class Canned:
        def chat(self, messages):
            return NO_HAL_REPLY
    llm = LLMJudge(Canned(), cfg=cfg)
    _, rep_llm = build_nsft_data(records, answers, gt, cfg, llm)
    assert rep_llm["errors_per_category"]["object_actions"] == 1
    assert rep_llm["checked_short_answers_only"] == [] and rep_llm["unchecked_categories"] == []
    assert "| instance | Object actions | 1 | yes |" in report_markdown(rep_llm)


def test_conversations_under_n_pairs_counts_short_long_conversations(gt):
    """n_pairs is a target: a scene with too few definite questions and an LLM reply with
    fewer pairs both give shorter conversations, and the report counts them."""
    plain = GroundTruth(instances(with_fields=False))   # image 2: one bench, no colour/region
    cfg = NsftDataConfig()
    data, rep = build_nsft_data([RECORDS[2]], {"d3": "A white bench and a cat."}, plain, cfg,
                                AnnotationJudge(cfg))
    assert len(_turns(data[0])) == 4
    assert rep["conversations_under_n_pairs"] == 1 and rep["yes_no"]["erased_no_pairs"] == 0
    assert "under the target of 5 pairs: 1" in report_markdown(rep)
    # The same answer on the annotated image fills all 5 pairs: nothing counted.
    data, rep = build_nsft_data([RECORDS[2]], {"d3": "A white bench and a cat."}, gt, cfg,
                                AnnotationJudge(cfg))
    assert len(_turns(data[0])) == 5 and rep["conversations_under_n_pairs"] == 0

    class Canned:
        def chat(self, messages):
            return MARKDOWN_REPLY                          # three QA pairs
    cfg = NsftDataConfig(judge="llm", yes_ratio_target=0.0)
    data, rep = build_nsft_data([RECORDS[2]], {"d3": "A bench at a party in a kitchen."}, gt,
                                cfg, LLMJudge(Canned(), cfg=cfg))
    assert len(_turns(data[0])) == 3 and rep["conversations_under_n_pairs"] == 1
    # Short-answer (doubled) conversations are not counted against n_pairs.
    data, rep = build_nsft_data(RECORDS[3:4], ANSWERS, gt, cfg, AnnotationJudge(cfg))
    assert len(data) == 1 and rep["conversations_under_n_pairs"] == 0


def test_build_keep_gt_switches(gt):
    cfg = NsftDataConfig(keep_gt_short=False, keep_gt_long=True, yes_ratio_target=0.0)
    data, rep = build_nsft_data(RECORDS, ANSWERS, gt, cfg, AnnotationJudge(cfg))
    out = _by_id(data)
    assert _turns(out["s1"]) == [("<image>\nWhat color is the cup? Is the answer Green?", "No."),
                                 ("What color is the cup?", "Red")]
    assert _turns(out["d1"])[0] == ("<image>\nDescribe the image in detail.",
                                    RECORDS[0]["conversations"][1]["value"])
    assert len(_turns(out["d1"])) == 6 and rep["keep_gt"] == {"short": False, "long": True}


def test_build_fills_to_n_pairs_with_ground_truth_questions(gt):
    """One hallucinated object: its "No", a "Yes" about what is there (the most frequent
    object), what the image holds, then ground-truth fillers up to 5 pairs."""
    cfg = NsftDataConfig()
    data, rep = build_nsft_data([RECORDS[0]], {"d1": "A cat sits near the chair."}, gt, cfg,
                                AnnotationJudge(cfg))
    assert _turns(data[0]) == [
        ("<image>\nIs there a cat in the image?", "No, there is no cat."),
        ("Are there any dogs in the image?", "Yes, there are two dogs."),
        ("What objects can you see in the image?",
         "Two brown dogs, a blue chair and a red cup."),
        ("What color are the dogs?", "They are brown."),
        ("Where are the dogs?", "In the top right corner and in the bottom right corner.")]
    # Balanced by construction: nothing erased at the default target 0.5.
    assert rep["yes_no"]["before"] == {"yes": 1, "no": 1, "yes_ratio": 0.5}
    assert rep["yes_no"]["erased_no_pairs"] == 0


def test_yes_about_unnamed_asks_yes_of_objects_the_answer_did_not_name(gt):
    """The answer names dogs and chair (and hallucinates a cat): 'near' asks "Yes" about the
    most frequent object (dogs), 'unnamed' about the cup, and its fillers follow the cup."""
    answer = {"d1": "A cat sits near the chair and the two dogs."}
    near = NsftDataConfig()
    data, _ = build_nsft_data([RECORDS[0]], answer, gt, near, AnnotationJudge(near))
    assert _turns(data[0])[1] == ("Are there any dogs in the image?", "Yes, there are two dogs.")
    cfg = NsftDataConfig(yes_about="unnamed")
    data, rep = build_nsft_data([RECORDS[0]], answer, gt, cfg, AnnotationJudge(cfg))
    assert _turns(data[0]) == [
        ("<image>\nIs there a cat in the image?", "No, there is no cat."),
        ("Is there a cup in the image?", "Yes, there is a cup."),
        ("What objects can you see in the image?",
         "Two brown dogs, a blue chair and a red cup."),
        ("What color is the cup?", "It is red."),
        ("Where is the cup?", "On the left side.")]
    assert rep["yes_no"]["before"] == {"yes": 1, "no": 1, "yes_ratio": 0.5}
    # the filler "Yes" about the named cup moves to the unnamed chair (whose fillers follow)
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "The cup is blue. A dog."}, gt, cfg,
                              AnnotationJudge(cfg))
    assert _turns(data[0])[3:] == [("Is there a chair in the image?", "Yes, there is a chair."),
                                   ("What color is the chair?", "It is blue.")]
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "The cup is blue. A dog."}, gt, near,
                              AnnotationJudge(near))
    assert _turns(data[0])[3] == ("Is there a cup in the image?", "Yes, there is a cup.")
    # every present object named: the "Yes" falls back to the 'near' choice
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "A cat, a cup, a chair and two dogs."}, gt,
                              cfg, AnnotationJudge(cfg))
    assert _turns(data[0])[1] == ("Are there any dogs in the image?", "Yes, there are two dogs.")


def test_repeated_error_is_asked_once(gt):
    cfg = NsftDataConfig(yes_ratio_target=0.0)
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "A green cup. The cup is blue."}, gt, cfg,
                              AnnotationJudge(cfg))
    qs = [q for q, _ in _turns(data[0])]
    assert qs[0] == "<image>\nWhat color is the cup?" and len(qs) == len(set(qs)) == 5


def test_region_answers_only_name_objects_in_that_region(gt):
    """"What is in the top right corner?" must not claim both dogs (one is bottom right), and
    the cup in the middle-left cell is not "in the top left corner"."""
    cfg = NsftDataConfig(yes_ratio_target=0.0)
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "In the top right corner there is a cat."},
                              gt, cfg, AnnotationJudge(cfg))
    turns = _turns(data[0])
    assert turns[1:3] == [("Are there any dogs in the image?", "Yes, there are two dogs."),
                          ("What is in the top right corner of the image?", "A brown dog.")]
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "In the top left corner there is a cat."},
                              gt, cfg, AnnotationJudge(cfg))
    assert all("top left" not in q for q, _ in _turns(data[0])[1:])


def test_relative_question_uses_the_plural_the_image_needs(gt):
    cfg = NsftDataConfig(yes_ratio_target=0.0)
    data, _ = build_nsft_data([RECORDS[0]], {"d1": "The dog is to the left of the chair."},
                              gt, cfg, AnnotationJudge(cfg))
    assert _turns(data[0])[0] == ("<image>\nWhere are the dogs relative to the chair?",
                                  "They are to the right of the chair.")


def test_bad_inputs_name_the_record():
    from visalign.io import DataError

    bad = copy.deepcopy(RECORDS[:1])
    bad[0]["conversations"] = [{"from": "human", "value": "<image>\nQ?"}]
    with pytest.raises(DataError, match="d1"):
        build_nsft_data(bad, {"d1": "x"}, None, NsftDataConfig(), AnnotationJudge())
    with pytest.raises(DataError, match="answer"):
        build_nsft_data(RECORDS, [{"id": "d1"}], None, NsftDataConfig(), AnnotationJudge())


def test_long_answer_without_ground_truth_is_skipped_not_dropped():
    cfg = NsftDataConfig()
    data, rep = build_nsft_data(RECORDS[:1] + RECORDS[3:4], ANSWERS, None, cfg,
                                AnnotationJudge(cfg))
    assert [r["nsft"]["source_id"] for r in data] == ["s1"]
    assert rep["skipped"]["records"][0]["id"] == "d1"
    assert "no ground truth" in rep["skipped"]["records"][0]["reason"]


# ---------------------------------------------------------------------------------------------
# Codebook and the Fig. 9 prompt
# ---------------------------------------------------------------------------------------------

def test_codebook_prompt_and_category_matching():
    for phrase in ("Object Identity", "Object attribute", "Object actions", "Object locations",
                   "Relative positions between objects", "Background knowledge of objects",
                   "Events in the image", "Event planning based on objects", "Reasoning",
                   "Responses should be concise, within 20 tokens",
                   'Do not always ask question that starts with "Is" or "Are"',
                   "Each conversation must include five question-answer pairs"):
        assert phrase in NSFT_PROMPT
    assert match_category("Relative positions between objects: the cup is left") == \
        "relative_positions"
    assert match_category("Object locations: the cup") == "object_locations"
    assert match_category("Color: the cup is green") == "object_attribute"
    assert match_category("the cat is not there") == UNSPECIFIED
    assert match_category("Counting - three dogs -> two dogs") == "object_attribute"
    # Loose aliases are read from the label only, never from the content.
    assert match_category("There is no dog in the scene") == UNSPECIFIED
    assert match_category("kitchen counter: there is none") == UNSPECIFIED
    assert match_category("the cup is misplaced (Object locations)") == "object_locations"
    m = nsft_messages("GT caption", "model text")
    assert m[0]["content"] == NSFT_PROMPT
    assert "DETAILED IMAGE CAPTION:\nGT caption" in m[1]["content"]
    assert "DESCRIPTION:\nmodel text" in m[1]["content"]


# ---------------------------------------------------------------------------------------------
# LLM judge: reply parsing and a local chat-completions endpoint
# ---------------------------------------------------------------------------------------------

GOOD_REPLY = """Hallucinations:
- Object Identity: a cat -> there is no cat
- Object attribute: the green cup -> the cup is red

Constructed Topic1: Correcting the cat and the cup

User: Is there a cat in the image?
GPT: No, there is no cat in the image.
User: Is the cup green?
GPT: No, the cup is red.
User: Where is the cup?
GPT: The cup is on the left side of the kitchen table, next to a blue chair and close to the
two brown dogs resting on the floor.
User: Are there any dogs?
GPT: Yes, there are two dogs.
User: Is the chair blue?
GPT: Yes, it is blue.
"""

MARKDOWN_REPLY = """**Hallucinations:**
1. **Object locations**: the bench is not in a kitchen
2. Events in the image: a party -> a quiet beach

**Constructed Topic1:** the place

1. Q: Where is the bench?
   A: On a beach.
2. Q: What is the weather like?
   A: Sunny.
3. Human: How many benches are there?
   Assistant: One.
"""

NO_HAL_REPLY = "There are no hallucinations in the generated description, so I end this chat."
MALFORMED_REPLY = "Sorry, I cannot comply with that request."


def test_parse_llm_reply_formats():
    p = parse_llm_reply(GOOD_REPLY)
    assert p.hallucinations == ["Object Identity: a cat -> there is no cat",
                                "Object attribute: the green cup -> the cup is red"]
    assert len(p.qa_pairs) == 5 and p.qa_pairs[0] == ("Is there a cat in the image?",
                                                      "No, there is no cat in the image.")
    assert p.qa_pairs[2][1].endswith("resting on the floor.")     # continued answer line
    m = parse_llm_reply(MARKDOWN_REPLY)
    assert m.hallucinations == ["Object locations: the bench is not in a kitchen",
                                "Events in the image: a party -> a quiet beach"]
    assert m.qa_pairs == [("Where is the bench?", "On a beach."),
                          ("What is the weather like?", "Sunny."),
                          ("How many benches are there?", "One.")]
    n = parse_llm_reply(NO_HAL_REPLY)
    assert n.no_hallucinations and not n.qa_pairs
    with pytest.raises(LLMParseError):
        parse_llm_reply(MALFORMED_REPLY)
    with pytest.raises(LLMParseError):
        parse_llm_reply("Hallucinations:\n- a cat\n")     # items but no conversation
    with pytest.raises(LLMParseError):
        parse_llm_reply("   ")


class ChatServer:
    """A local OpenAI-compatible chat-completions endpoint with canned replies chosen by the
    DESCRIPTION the Fig. 9 user message carries."""

    def __init__(self, replies: dict[str, str]):
        self.requests: list[dict] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state.requests.append(body)
                user = body["messages"][-1]["content"]
                desc = user.split("DESCRIPTION:\n", 1)[-1].strip()
                text = replies.get(desc, MALFORMED_REPLY)
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                   "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant",
                                                            "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


LLM_ANSWERS = {"d1": "A cat and a green cup in a kitchen.", "d2": "A white bench on a beach.",
               "d3": "People having a party in a kitchen.", "s1": "Green."}


@pytest.fixture
def chat_server():
    srv = ChatServer({LLM_ANSWERS["d1"]: GOOD_REPLY, LLM_ANSWERS["d2"]: NO_HAL_REPLY,
                      LLM_ANSWERS["d3"]: "I don't know what to say."})
    yield srv
    srv.close()


def _llm_cfg(url, cache_dir) -> NsftDataConfig:
    cfg = NsftDataConfig(judge="llm", yes_ratio_target=0.0)
    cfg.llm = JudgeConfig(base_url=url, model="judge-x", cache_dir=str(cache_dir),
                          backoff=0.01, timeout=5.0, workers=2)
    return cfg


def test_llm_judge_build_unparsed_and_cache(chat_server, gt, tmp_path, monkeypatch):
    for name in ("VISALIGN_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    cfg = _llm_cfg(chat_server.url, tmp_path / "cache")
    records = RECORDS[:4]
    judge = LLMJudge(cfg=cfg)
    data, rep = build_nsft_data(records, LLM_ANSWERS, gt, cfg, judge)
    # 3 long records go to the endpoint; the short one is judged by comparison.
    assert len(chat_server.requests) == 3
    body = chat_server.requests[0]
    assert body["model"] == "judge-x" and body["messages"][0]["content"] == NSFT_PROMPT
    assert "DESCRIPTION:\n" in body["messages"][1]["content"]
    out = _by_id(data)
    assert sorted(out) == ["d1", "s1"]
    turns = _turns(out["d1"])
    assert len(turns) == 5 and turns[0] == ("<image>\nIs there a cat in the image?",
                                            "No, there is no cat in the image.")
    assert all(len(a.split()) <= 20 for _, a in turns)
    # 4 of 5 questions start with Is/Are; at most 60% (3) may: the last one is rephrased.
    assert turns[4] == ("Looking at the image, is the chair blue?", "Yes, it is blue.")
    assert [e["category"] for e in out["d1"]["nsft"]["errors"]] == ["object_identity",
                                                                   "object_attribute"]
    assert out["d1"]["nsft"]["errors"][0]["right"] == "there is no cat"
    assert rep["judge"] == "llm" and rep["llm_unparsed"] == 1
    assert rep["llm_unparsed_ids"] == ["d3"] and rep["no_error_ids"] == ["d2"]
    # image 2: d2 has no error and d3 could not be judged -> one image without errors.
    assert rep["n_images_judged"] == 2 and rep["n_images_no_error"] == 1
    assert rep["skipped"]["by_reason"] == {"llm_unparsed": 1}
    assert rep["answers_truncated"] == 1 and rep["is_are"]["rephrased"] == 1
    assert rep["errors_per_category"]["object_identity"] == 1
    assert rep["errors_per_category"]["object_attribute"] == 2   # 1 from the LLM, 1 short
    assert rep["unchecked_categories"] == []
    assert judge.client.stats["requests"] == 3

    # Re-run with a fresh judge on the same cache: no request reaches the endpoint.
    judge2 = LLMJudge(cfg=cfg)
    data2, rep2 = build_nsft_data(records, LLM_ANSWERS, gt, cfg, judge2)
    assert len(chat_server.requests) == 3
    assert judge2.client.stats["cache_hits"] == 3 and judge2.client.stats["requests"] == 0
    assert data2 == data and rep2["llm_unparsed"] == 1


def test_llm_judge_uses_an_injected_client():
    class Canned:
        name = "canned"

        def __init__(self):
            self.calls = []

        def chat(self, messages):
            self.calls.append(messages)
            return MARKDOWN_REPLY

    client = Canned()
    judge = LLMJudge(client, cfg=NsftDataConfig())
    v = judge.review(RECORDS[2], "A bench at a party in a kitchen.", None)
    assert [e.category for e in v.errors] == ["object_locations", "events"]
    assert v.errors[1].wrong == "a party" and v.errors[1].right == "a quiet beach"
    assert len(v.qa_pairs) == 3
    assert "A white bench on a sunny beach." in client.calls[0][1]["content"]


def test_empty_short_answer_is_skipped_with_a_reason(gt):
    data, rep = build_nsft_data(RECORDS[3:4], {"s1": "  "}, gt, NsftDataConfig(),
                                AnnotationJudge())
    assert data == [] and rep["skipped"]["by_reason"] == {"empty_answer": 1}
