"""POPE as LLaVA-1.5 runs it, on the original POPE question files.

Files: RUCAIBox/POPE ``output/coco/coco_pope_{random,popular,adversarial}.json``, each a JSONL of
``{"question_id": n, "image": "COCO_val2014_....jpg", "text": "Is there a ... in the image?",
"label": "yes"|"no"}`` (3,000 questions, ids 1..3000 in every file), read as they ship.

Generation (haotian-liu/LLaVA ``scripts/v1_5/eval/pope.sh`` through ``model_vqa_loader.py``):
the question + ``"\\nAnswer the question using a single word or phrase."`` (the suffix LLaVA's
``llava_pope_test.jsonl`` carries), in the model's chat template, greedy, 128 new tokens.

Parsing, ``parser=``:

* ``llava`` (default; ``llava/eval/eval_pope.py``): keep the text before the first ".", drop
  commas, split on single spaces; "No", "no" or "not" among the words -> no, else yes. So "Not
  sure" and an empty answer count as yes, exactly as there.
* ``lmms`` (lmms-eval ``tasks/pope/utils.py``): the lower-cased, stripped answer must equal the
  label; precision and recall count only answers that are exactly "yes" or "no" (anything else
  is wrong for accuracy and counted in ``pope_<split>_unparsed``).

Metrics per split: ``pope_<split>_accuracy|precision|recall|f1|yes_ratio``, where ``yes_ratio``
is the share of the *model's* answers read as yes (eval_pope.py's; lmms-eval reports the labels'
share instead). Departures: answers are matched to questions by id (eval_pope.py zips the
answers of a category with the label file by position); a precision or recall with an empty
denominator is 0 (eval_pope.py divides by zero).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from visalign.eval.pope import SPLITS, _binary_metrics
from visalign.io import DataError, read_jsonl

__all__ = ["LLAVA_SUFFIX", "POPE_PARSERS", "pope_file", "read_pope_file", "pope_prompts",
           "parse_llava", "parse_lmms", "score_pope_answers"]

#: LLaVA-1.5's short-answer instruction (llava_pope_test.jsonl, lmms-eval's post_prompt).
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
POPE_PARSERS = ("llava", "lmms")


def pope_file(pope_dir: str | os.PathLike, split: str) -> Path:
    """``coco_pope_<split>.json`` in ``pope_dir`` (or its ``coco/`` or ``output/coco/``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; choose from {', '.join(SPLITS)}")
    base = Path(pope_dir)
    for sub in ("", "coco", "output/coco"):
        for ext in (".json", ".jsonl"):
            p = base / sub / f"coco_pope_{split}{ext}"
            if p.exists():
                return p
    raise DataError(base, f"coco_pope_{split}.json not found (the POPE repository's "
                          "output/coco/ files)")


def read_pope_file(path: str | os.PathLike) -> list[dict]:
    """The questions of one POPE file, validated (one JSON object per line)."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(path, "no questions")
    seen: set[str] = set()
    for i, r in enumerate(rows):
        for f in ("question_id", "image", "text", "label"):
            if f not in r:
                raise DataError(path, "missing field", record=f"line {i + 1}", field=f)
        if str(r["label"]).strip().lower() not in ("yes", "no"):
            raise DataError(path, f"label must be yes or no, got {r['label']!r}",
                            record=f"line {i + 1}", field="label")
        qid = str(r["question_id"])
        if qid in seen:
            raise DataError(path, f"duplicate question_id {qid}", record=f"line {i + 1}",
                            field="question_id")
        seen.add(qid)
    return rows


def pope_prompts(rows: Iterable[Mapping], split: str, image_dir: str | os.PathLike,
                 suffix: str = LLAVA_SUFFIX) -> list[dict]:
    """Generation records: ``id`` = ``"<split>-<question_id>"`` (the files reuse ids across
    splits), the image under ``image_dir``, ``prompt`` = question + ``suffix``."""
    out = []
    for r in rows:
        out.append({"id": f"{split}-{r['question_id']}", "image": str(Path(image_dir) / r["image"]),
                    "prompt": r["text"] + suffix, "question": r["text"],
                    "question_id": r["question_id"], "label": str(r["label"]).strip().lower(),
                    "split": split})
    return out


def parse_llava(text: str) -> str:
    """eval_pope.py's rule: "no" when "No"/"no"/"not" is among the words of the first
    sentence (commas dropped, split on single spaces), otherwise "yes"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_lmms(text: str) -> str:
    """lmms-eval's prediction: the lower-cased, stripped answer (compared exactly)."""
    return text.lower().strip()


def score_pope_answers(prompts: Iterable[Mapping], answers: Mapping[str, str],
                       parser: str = "llava", *, answers_path: Any = None) -> dict:
    """Score answers (``{id: text}``) of :func:`pope_prompts` records with ``parser``.

    Every prompt needs an answer and every answer a prompt: either mismatch is an error naming
    a few ids (an answer file of another split or run). Returns ``{"metrics", "splits"}``.
    """
    if parser not in POPE_PARSERS:
        raise ValueError(f"unknown POPE parser {parser!r}; choose from {', '.join(POPE_PARSERS)}")
    prompts = list(prompts)
    ids = [str(p["id"]) for p in prompts]
    _check_ids(ids, answers, answers_path)
    counts: dict[str, dict[str, int]] = {}
    for p in prompts:
        text = answers[str(p["id"])]
        if not isinstance(text, str):
            raise DataError(answers_path, "answer must be a string", record=p["id"],
                            field="answer")
        label = p["label"]
        c = counts.setdefault(p["split"], {"n": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0,
                                           "yes": 0, "unparsed": 0, "correct": 0})
        c["n"] += 1
        pred = parse_llava(text) if parser == "llava" else parse_lmms(text)
        if pred not in ("yes", "no"):
            c["unparsed"] += 1
        c["yes"] += pred == "yes"
        c["correct"] += pred == label
        if pred == "yes":
            c["tp" if label == "yes" else "fp"] += 1
        elif pred == "no":
            c["fn" if label == "yes" else "tn"] += 1
    metrics: dict[str, Any] = {}
    for split, c in counts.items():
        m = _binary_metrics(c["tp"], c["fp"], c["tn"], c["fn"])
        m["accuracy"] = c["correct"] / c["n"]
        m["yes_ratio"] = c["yes"] / c["n"]
        for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            metrics[f"pope_{split}_{k}"] = m[k]
        if parser == "lmms":
            metrics[f"pope_{split}_unparsed"] = c["unparsed"]
    done = [s for s in SPLITS if s in counts]
    if done:
        metrics["pope_f1"] = sum(metrics[f"pope_{s}_f1"] for s in done) / len(done)
        metrics["pope_accuracy"] = sum(metrics[f"pope_{s}_accuracy"] for s in done) / len(done)
    return {"metrics": metrics, "splits": counts, "parser": parser}


def _check_ids(ids: list[str], answers: Mapping[str, Any], path: Any) -> None:
    known = set(ids)
    missing = [i for i in ids if i not in answers]
    extra = [i for i in answers if i not in known]
    for what, bad in (("have no answer", missing), ("answer no question of this run", extra)):
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise DataError(path, f"{len(bad)} ids {what} ({shown}): answers of another "
                                  "split, file or run?")
