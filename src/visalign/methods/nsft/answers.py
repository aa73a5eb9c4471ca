"""Short answers (the paper's OCRVQA analogue, Sec. B.1): which records count as short, the
normalised comparison with the ground-truth answer that finds a wrong one, the codebook category
it is tagged with, and the doubled QA pair that corrects it."""

from __future__ import annotations

import re
from typing import Mapping

from visalign.data.llava import first_exchange
from visalign.data.words import COLOR_WORDS
from visalign.methods.nsft.codebook import level_of
from visalign.methods.nsft.config import NsftDataConfig
from visalign.methods.nsft.records import QA, Error
from visalign.methods.nsft.words import COLOR_NORM, NUMBER_VALUES


def is_short(record: Mapping, cfg: NsftDataConfig) -> bool:
    """Short-answer record (doubled QA pairs): by ``task``, else by GT answer length."""
    task = record.get("task")
    if task:
        return str(task) in cfg.short_tasks
    return len(first_exchange(record)[1].split()) <= cfg.short_max_words


_ARTICLES = {"a", "an", "the"}
_NEGATIONS = {"no", "not", "none", "never", "nothing", "isn't", "aren't", "isnt", "arent"}


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, number words -> digits ("Two cups." -> "2
    cups")."""
    toks = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
    out = []
    for t in toks:
        if t in _ARTICLES:
            continue
        v = NUMBER_VALUES.get(t)
        out.append(str(v) if v is not None else t)
    return " ".join(out)


def _polarity(norm: str) -> str | None:
    for t in norm.split():
        if t in ("yes", "no"):
            return t
    return None


def _first_number(norm: str) -> str | None:
    for t in norm.split():
        if t.isdigit():
            return t
    return None


_REGION_WORDS = {"left", "right", "top", "bottom", "center", "centre", "middle", "upper",
                 "lower"}


def _word_class(toks: list[str], vocab: set[str], norm: Mapping[str, str]) -> set[str]:
    return {norm.get(t, t) for t in toks if t in vocab}


def short_answer_correct(answer: str, gt_answer: str) -> bool:
    """Whether a short answer matches the ground truth after normalisation.

    Equal normalised strings match. Otherwise the first key-word class the ground truth has
    decides: yes/no (GT starts with yes/no: the answer's first yes/no must agree), a number
    (GT has exactly one: the answer's first number must equal it), colours or region words
    (same set of them in both). Failing those, the GT's words must appear in order in a short
    answer (at most 6 extra words: "It is a red cup." matches "red cup") adding no negation.
    """
    g, a = normalize_answer(gt_answer), normalize_answer(answer)
    if g == a:
        return True
    gt_toks, a_toks = g.split(), a.split()
    if gt_toks and gt_toks[0] in ("yes", "no"):
        return _polarity(a) == gt_toks[0]
    nums = [t for t in gt_toks if t.isdigit()]
    if len(nums) == 1 and _first_number(a) is not None:
        return _first_number(a) == nums[0]
    region_norm = {"centre": "center", "middle": "center", "upper": "top", "lower": "bottom"}
    for vocab, norm in ((set(COLOR_WORDS), COLOR_NORM), (_REGION_WORDS, region_norm)):
        gw = _word_class(gt_toks, vocab, norm)
        aw = _word_class(a_toks, vocab, norm)
        if gw and aw:
            return gw == aw
    if not gt_toks or len(a_toks) > len(gt_toks) + 6:
        return False
    if (set(a_toks) & _NEGATIONS) - set(gt_toks):
        return False
    n = len(gt_toks)
    return any(a_toks[i:i + n] == gt_toks for i in range(len(a_toks) - n + 1))


_SHORT_TASK_CATEGORY = {"existence": "object_identity", "count": "object_attribute",
                        "color": "object_attribute", "position": "object_locations"}

# Every key _short_category can return. A wrong short answer is found by comparing it with the
# record's GT answer, so these categories are genuinely checked for short answers, whatever a
# judge can see in long answers (the report needs this to call no counted category unchecked).
SHORT_ANSWER_CATEGORIES: frozenset[str] = frozenset(
    {"object_identity", "object_attribute", "object_actions", "object_locations",
     "relative_positions"})


def _short_category(task: str | None, question: str) -> str:
    """Codebook category of a wrong short answer, from its task or its question's wording.

    Free-form VQA questions that name no checkable aspect fall back to object identity (the
    answer names the wrong thing). Every key returned is in :data:`SHORT_ANSWER_CATEGORIES`.
    """
    q = question.lower()
    rel = re.search(r"\b(left|right) of\b|\babove\b|\bbelow\b", q)
    if task == "position" or (task not in _SHORT_TASK_CATEGORY and
                              re.search(r"\bwhere\b|\bwhich side\b|\bleft\b|\bright\b", q)):
        return "relative_positions" if rel else "object_locations"
    if task in _SHORT_TASK_CATEGORY:
        return _SHORT_TASK_CATEGORY[task]
    if re.search(r"\bcolou?r\b|\bhow many\b|\bnumber of\b|\bsize\b|\bshape\b", q):
        return "object_attribute"
    if re.search(r"\bdoing\b|\baction\b", q):
        return "object_actions"
    return "object_identity"


def short_answer_errors(record: Mapping, answer: str) -> list[Error]:
    """[] when the short answer is right, else the one mistake (Sec. B.1, OCRVQA analogue)."""
    question, gt_answer = first_exchange(record)
    if short_answer_correct(answer, gt_answer):
        return []
    cat = _short_category(record.get("task"), question)
    wrong = answer.strip().rstrip(".!").strip()
    return [Error(cat, level_of(cat), text=answer.strip(), wrong=wrong, right=gt_answer,
                  object=record.get("object"), meta={"short": True})]


def doubled_pairs(question: str, wrong: str, right: str) -> list[QA]:
    """The doubled QA pair for one short-answer mistake (Sec. B.1):
    ``"{question} Is the answer {wrong}?" -> "No."`` then ``"{question}" -> right``."""
    q = question.strip()
    w = wrong.strip().rstrip(".!?").strip()
    return [QA(f"{q} Is the answer {w}?", "No.", kind="doubled_no"),
            QA(q, right.strip(), kind="doubled_answer")]
