"""Caption metrics (pycocoevalcap) with hand-computed values, the no-Java fallback, the CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from visalign.cli import main
from visalign.eval import captions as cap
from visalign.io import DataError, write_json, write_jsonl

HAS_JAVA = shutil.which("java") is not None


def test_python_tokenizer():
    assert cap.python_tokenize("A dog's toy, on the Hot-Dog stand... (left)") == \
        "a dog's toy on the hot-dog stand left"


@pytest.mark.parametrize("tokenizer", ["python"] + (["ptb"] if HAS_JAVA else []))
def test_bleu_rouge_hand_computed(tokenizer):
    # hyp "a dog on grass" vs ref "a dog runs on grass":
    # unigram precision 4/4, bigram 2/3 ("a dog", "on grass"), brevity penalty exp(1 - 5/4)
    # ROUGE-L: LCS 4, P = 1, R = 4/5, beta 1.2 -> (1 + 1.44) * 0.8 / (0.8 + 1.44)
    res = cap.caption_metrics([{"image_id": 1, "caption": "A dog on grass."}],
                              {1: ["A dog runs on grass."]}, meteor=False, tokenizer=tokenizer)
    m = res["metrics"]
    bp = math.exp(1 - 5 / 4)
    assert m["bleu_1"] == pytest.approx(bp, rel=1e-6)
    assert m["bleu_2"] == pytest.approx(bp * math.sqrt(2 / 3), rel=1e-6)
    assert m["rouge_l"] == pytest.approx(2.44 * 0.8 / 2.24, rel=1e-6)
    assert res["tokenizer"] == tokenizer and "meteor" not in m


def test_cider_hand_computed():
    # Two images, disjoint vocabularies, each caption equal to its single reference: every
    # n-gram has idf log(2) - log(1), cosine 1 and no length penalty, so CIDEr-D = 10 * 1.
    res = cap.caption_metrics(
        [{"image_id": 1, "caption": "a red car parked outside"},
         {"image_id": 2, "answer": "two dogs play together"}],
        {1: ["a red car parked outside"], 2: ["two dogs play together"]},
        meteor=False, tokenizer="python")
    assert res["metrics"]["cider"] == pytest.approx(10.0)
    assert res["metrics"]["bleu_4"] == pytest.approx(1.0)
    assert [x["cider"] for x in res["images"]] == pytest.approx([10.0, 10.0])


def test_fallback_without_java(monkeypatch):
    monkeypatch.setattr(cap.shutil, "which", lambda name: None)
    res = cap.caption_metrics([{"image_id": 1, "caption": "a dog"}], {1: ["a dog"]})
    assert res["tokenizer"] == "python"
    assert res["meteor_skipped"] == "Java not found"
    assert "Java not found" in res["notes"][0]
    with pytest.raises(RuntimeError, match="needs Java"):
        cap.caption_metrics([{"image_id": 1, "caption": "a dog"}], {1: ["a dog"]},
                            tokenizer="ptb")


def test_input_errors():
    with pytest.raises(DataError, match="record 1: field 'image_id'.*second caption"):
        cap.caption_metrics([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
                            {1: ["a"]}, meteor=False)
    with pytest.raises(DataError, match="record 0: field 'image_id'.*no reference"):
        cap.caption_metrics([{"image_id": 2, "caption": "a"}], {1: ["a"]}, meteor=False)


def _coco_refs(tmp_path):
    refs = {"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog runs on the grass."},
        {"id": 2, "image_id": 1, "caption": "A brown dog running outside."},
        {"id": 3, "image_id": 2, "caption": "A cat sleeps on a red sofa."}]}
    write_json(tmp_path / "captions.json", refs)
    write_jsonl(tmp_path / "answers.jsonl", [
        {"image_id": 1, "answer": "A dog runs on the grass."},
        {"image_id": 2, "answer": "A cat sleeps on a red sofa."}])


def test_references_from_a_coco_file(tmp_path):
    _coco_refs(tmp_path)
    res = cap.caption_metrics([{"image_id": "2", "caption": "A cat sleeps on a red sofa."}],
                              str(tmp_path / "captions.json"), meteor=False,
                              tokenizer="python")
    assert res["metrics"]["bleu_4"] == pytest.approx(1.0)


def test_cli_no_meteor(tmp_path):
    _coco_refs(tmp_path)
    out = tmp_path / "caps.json"
    assert main(["eval", "captions", "--captions", str(tmp_path / "answers.jsonl"),
                 "--coco-captions", str(tmp_path / "captions.json"), "--no-meteor",
                 "--tokenizer", "python", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}
    assert res["metrics"]["bleu_1"] == pytest.approx(1.0)
    md = (tmp_path / "caps.md").read_text()
    assert "| rouge_l | 1.0000 |" in md and "METEOR skipped: disabled" in md


@pytest.mark.skipif(not HAS_JAVA, reason="METEOR needs Java")
def test_cli_meteor_with_java(tmp_path):
    _coco_refs(tmp_path)
    out = tmp_path / "caps.json"
    assert main(["eval", "captions", "--captions", str(tmp_path / "answers.jsonl"),
                 "--coco-captions", str(tmp_path / "captions.json"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tokenizer"] == "ptb" and res["meteor_skipped"] is None
    # each caption equals one of its references: METEOR near its maximum
    assert 0.9 < res["metrics"]["meteor"] <= 1.0
