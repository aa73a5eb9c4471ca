"""nSFT data construction: find the model's own mistakes, turn them into corrective conversations.

This is the data side of nSFT ("Continual SFT Matches Multimodal RLHF with Negative
Supervision", supplementary Sec. B.1, C.2, C.5, Fig. 9, Fig. 11). The trainer is plain
continual SFT on the conversations written here (:mod:`visalign.methods.sft`).

Pipeline (:func:`build_nsft_data`)
----------------------------------
1. *Original answers*: the model's greedy answer to each alignment record's first question
   ("the model's original answer without temperature sampling", Sec. B.1).
2. *Error identification* by a pluggable :class:`Judge` (``judge(record, answer, gt) ->
   list[Error]``), each error tagged with a vision-error-codebook category
   (:mod:`visalign.methods.codebook`, Fig. 9):

   * :class:`AnnotationJudge` (offline, deterministic): object annotations + CHAIR matching.
     Checks object identity (hallucinated objects), attributes (colour, size, counts),
     absolute locations, relative positions between two mentioned objects, and the background
     (scene/theme word mismatch). Actions, events, event planning and reasoning cannot be
     checked from annotations: they are declared in ``checkable_categories`` and the report
     lists them as unchecked.
   * :class:`LLMJudge`: the Fig. 9 prompt sent to an OpenAI-compatible endpoint through
     :class:`visalign.eval.judge.JudgeClient`; its "Hallucinations:" list becomes the errors and
     its five question-answer pairs the conversation. Unparseable replies are counted
     (``llm_unparsed``) and the record listed as skipped, never dropped silently.

   Short answers (tasks ``vqa``/``count``/``color``/``position``/``existence``, the OCRVQA
   analogue) are judged the same way by both judges: wrong iff the normalised answer differs
   from the ground truth (the paper builds these pairs by hand, Sec. B.1).
3. *Corrective conversations* (LLaVA format, ``<image>`` in the first human turn):

   * long answers: one conversation of ``n_pairs`` (5, Sec. B.1) logically connected QA pairs
     focused on the errors. From the annotation judge they are template-generated (hallucinated
     X: "Is there a X in the image?" -> "No, there is no X.", then "Is there a Y?" -> "Yes..."
     about an object that is there (at the place the answer put X when one is), then what that
     place or the image really holds; wrong colour: "What color is the X?" -> "It is blue."; ...), filled with
     ground-truth-grounded questions about the erroneous and other present objects when there
     are fewer errors than pairs. Answers are cut to ``max_answer_tokens`` (20, Fig. 9 guideline
     4) whitespace tokens, and at most ``max_is_are_share`` (60%) of the questions start with
     "Is"/"Are" (Fig. 9 guideline 6: "Do not always ask question that starts with Is or Are";
     60% is our number). From the LLM judge the conversation is its parsed QA pairs, with the
     same two limits enforced.
   * short answers: the *doubled* QA pair per mistake (Sec. B.1): ``"{question} Is the answer
     {wrong}?" -> "No."`` then ``"{question}" -> "{right answer}"``, appended to the tail of
     the ground-truth conversation (``keep_gt_short``, default on: "without the original GT
     conversation ... the training process can be unstable", Sec. B.1). Long-answer
     conversations do not keep the GT by default (``keep_gt_long``; Table 6: GT "not
     necessary" for TextCaps/LLaVA-150k).
   * Yes/No balance (Sec. C.5: "we balance the 'Yes' and 'No' ratio ... by randomly erase some
     'No' answers"): whole constructed QA pairs whose answer starts with "No" are erased at
     random (seeded) until the share of "Yes" among yes/no answers reaches
     ``yes_ratio_target``; the last remaining constructed pair of a conversation is never
     erased. The balancing covers the long-answer conversations (the paper's Fig. 11 kind);
     doubled pairs are kept whole and reported apart. Optionally (``add_yes_pairs``, off by
     default since the paper only erases), "Is there a X?" -> "Yes, there is a X." pairs about
     ground-truth objects are appended when erasing alone cannot reach the target.
4. Output: LLaVA-format records plus a construction report (counts per codebook category,
   yes/no ratio before/after balancing, records without errors, skipped records and why, the
   judge used, checks that could not run on this ground truth).

Where this departs from the paper (on purpose)
----------------------------------------------
* The paper uses GPT-4 for long answers only; the offline :class:`AnnotationJudge` with
  template conversations is ours, so the whole method runs without an endpoint (the
  micro-world, and COCO with instance annotations).
* Only the *first* human/gpt exchange of a record is judged (the answer file holds one answer
  per id). Kept GT conversations keep all turns.
* Yes/no balancing counts and erases constructed pairs of long-answer conversations only;
  kept GT turns and doubled pairs are neither counted nor erased (a doubled pair's "No." is
  the negative supervision of its mistake; erasing it would leave a copy of the GT answer).
  The report gives the doubled pairs' yes/no counts separately (``yes_no.doubled``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from visalign.config import field
from visalign.eval.judge import JudgeConfig
from visalign.io import DataError
from visalign.methods.codebook import (CATEGORY_KEYS, CODEBOOK, UNSPECIFIED, level_of,
                                       match_category, nsft_messages)

__all__ = [
    "NsftDataConfig", "Error", "QA", "Verdict", "Judge", "JudgeSkip", "LLMParseError",
    "GroundTruth", "GTObject", "AnnotationJudge", "LLMJudge", "ParsedReply", "parse_llm_reply",
    "build_nsft_data", "doubled_pairs", "balance_yes_no", "limit_is_are", "clip_words",
    "normalize_answer", "short_answer_correct", "is_short", "report_markdown", "first_exchange",
    "COLOR_WORDS",
]

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

SHORT_TASKS = ["vqa", "count", "color", "position", "existence"]


@dataclasses.dataclass
class NsftDataConfig:
    """Settings of nSFT data construction (``visalign nsft build``)."""

    judge: str = field("annotation", help="error judge: 'annotation' (offline) or 'llm' (Fig. 9)")
    seed: int = field(0, help="seed of the yes/no balancing RNG")
    short_tasks: list[str] = field(SHORT_TASKS, help="tasks whose answers are short (doubled "
                                                     "QA pairs, Sec. B.1)")
    short_max_words: int = field(3, help="records without 'task': short iff the GT answer has "
                                         "at most this many words")
    keep_gt_short: bool = field(True, help="append the doubled pairs to the GT conversation "
                                           "(Sec. B.1: unstable without it)")
    keep_gt_long: bool = field(False, help="prepend the GT conversation to long-answer "
                                           "conversations (Table 6: not needed)")
    n_pairs: int = field(5, help="QA pairs per long-answer conversation (Sec. B.1)")
    max_answer_tokens: int = field(20, help="answers are cut to this many whitespace tokens "
                                            "(Fig. 9 guideline 4)")
    max_is_are_share: float = field(0.6, help="at most this share of a long conversation's "
                                              "questions start with Is/Are (Fig. 9 guideline 6)")
    yes_ratio_target: float = field(0.5, help="target share of 'Yes' among yes/no answers after "
                                              "erasing 'No' pairs (Sec. C.5); <= 0 disables")
    add_yes_pairs: bool = field(False, help="also append GT-grounded 'Yes' pairs when erasing "
                                            "'No' pairs cannot reach the target")
    relation_margin: float = field(0.0625, help="relative positions: a claim is wrong only when "
                                                "the centres are at least this fraction of the "
                                                "image width the other way")
    # LLM judge endpoint, model, cache and retries: the shared JudgeClient settings.
    llm: JudgeConfig = dataclasses.field(
        default_factory=JudgeConfig,
        metadata={"help": "JudgeClient settings for judge=llm (llm.model=..., llm.base_url=...,"
                          " llm.cache_dir=...; API key from $VISALIGN_JUDGE_API_KEY)"})
    # Generation of the original answers (--model).
    max_new_tokens: int = field(256, help="generation length of the original answers")
    batch_size: int = field(8, help="generation batch size")
    dtype: str = field("float32", help="model dtype for generation")
    device: str = field("auto", help="device for generation (auto = cuda when available)")


# ---------------------------------------------------------------------------------------------
# Errors, QA pairs, judge protocol
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Error:
    """One mistake in a model answer.

    ``category`` is a codebook key (or ``"unspecified"`` for an LLM item we cannot map),
    ``level`` its codebook level; ``text`` is the erroneous span as written in the answer,
    ``wrong``/``right`` the claimed and the true value (``right`` None when unknown), ``object``
    the object the error is about. ``where``: for a hallucinated object, the region the answer
    placed it in; ``other``: the second object of a relative-position error; ``meta``: the
    attribute kind (``color``/``size``/``count``) and whether the mention was plural.
    """

    category: str
    level: str | None
    text: str
    wrong: str
    right: str | None = None
    object: str | None = None
    where: str | None = None
    other: str | None = None
    span: tuple[int, int] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class QA:
    """One question-answer pair of a constructed conversation.

    ``gt`` marks pairs copied from the ground-truth conversation (never erased or counted by
    the yes/no balancing); ``kind`` names the template that produced the pair.
    """

    question: str
    answer: str
    kind: str = "constructed"
    object: str | None = None
    gt: bool = False


@dataclasses.dataclass
class Verdict:
    """A judge's full output: errors and, for LLM judges, the conversation it proposed."""

    errors: list[Error]
    qa_pairs: list[tuple[str, str]] | None = None


class JudgeSkip(Exception):
    """Raised by a judge that cannot judge a record; the builder lists it as skipped."""

    reason = "judge_skip"


class LLMParseError(JudgeSkip):
    """An LLM judge reply that matches none of the accepted formats (counted ``llm_unparsed``)."""

    reason = "llm_unparsed"


@runtime_checkable
class Judge(Protocol):
    """Finds the errors of ``answer`` (to ``record``'s first question) against ground truth.

    ``name`` goes into the report; ``checkable_categories`` are the codebook keys the judge can
    detect (the report lists the others as unchecked). A judge may also offer
    ``review(record, answer, gt) -> Verdict`` to propose the conversation itself (LLM judges).
    """

    name: str
    checkable_categories: frozenset[str]

    def __call__(self, record: dict, answer: str, gt: "GroundTruth | None") -> list[Error]:
        ...


# ---------------------------------------------------------------------------------------------
# Small text helpers
# ---------------------------------------------------------------------------------------------

_P = None


def _inflect():
    global _P
    if _P is None:
        import inflect
        _P = inflect.engine()
    return _P


def _plural(noun: str) -> str:
    return _inflect().plural_noun(noun) or noun


def _a(noun: str) -> str:
    return _inflect().a(noun)


_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen", "nineteen", "twenty"]
_NUM_VALUE = {w: i for i, w in enumerate(_NUMBER_WORDS)}


def _num_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _num_value(tok: str) -> int | None:
    t = tok.lower()
    if t.isdigit():
        return int(t)
    return _NUM_VALUE.get(t)


# Basic colour terms; the ground truth's own colour values are added per GroundTruth.
COLOR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
               "white", "gray", "grey", "silver", "gold")
_COLOR_NORM = {"grey": "gray"}
SIZE_WORDS = {"small": "small", "tiny": "small", "large": "large", "big": "large",
              "huge": "large"}

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")
# Clause boundaries: sentence punctuation and coordinating conjunctions. Commas alone are not
# boundaries ("On the left, there is a cup" keeps the region with its object).
_CLAUSE_SPLIT_RE = re.compile(r"[.!?;:\n]+|,?\s+\b(?:and|but|while|whereas)\b\s+", re.I)
_IMAGE_WORDS = {"image", "picture", "photo", "photograph", "scene", "frame", "view"}
# Words that cannot sit between an adjective and its noun ("a red ceramic cup" is fine,
# "red, the plate" or "red and is the cup" is not).
_GAP_STOP = {"the", "a", "an", "is", "are", "was", "were", "be", "has", "have", "with", "of",
             "on", "in", "at", "to", "next", "near", "by", "its", "their", "this", "that",
             "there", "from", "for", "behind", "beside", "under", "over", "above", "below"}
_COPULA_RE = re.compile(r"^[\s,]*(?:[A-Za-z'-]+\s+){0,2}?(?:is|are|was|were|looks?|appears?|"
                        r"seems?)\s+(?:[A-Za-z'-]+\s+)?$", re.I)


def clip_words(text: str, max_tokens: int) -> str:
    """Cut ``text`` to at most ``max_tokens`` whitespace tokens (Fig. 9: "within 20 tokens").

    Prefers ending at the last sentence end inside the limit when that keeps at least half of
    it (a 3-word first sentence is not a good answer to cut a 20-token one to); otherwise a
    hard cut with a final period.
    """
    toks = text.split()
    if len(toks) <= max_tokens:
        return text.strip()
    cut = toks[:max_tokens]
    for i in range(len(cut) - 1, max(0, (max_tokens + 1) // 2 - 2), -1):
        if cut[i].endswith((".", "!", "?")):
            return " ".join(cut[: i + 1])
    return " ".join(cut).rstrip(",;:") + "."


def _clauses(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _CLAUSE_SPLIT_RE.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _clause_of(pos: int, clauses: list[tuple[int, int]]) -> tuple[int, int] | None:
    for s, e in clauses:
        if s <= pos < e:
            return s, e
    return None


def _words_between(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _is_yes(answer: str) -> bool:
    return re.match(r"^\W*yes\b", answer, re.I) is not None


def _is_no(answer: str) -> bool:
    return re.match(r"^\W*no\b", answer, re.I) is not None


def strip_image(text: str) -> str:
    """A turn's text without the ``<image>`` placeholder (whitespace folded where it stood)."""
    return " ".join(text.replace("<image>", " ").split()) if "<image>" in text else text.strip()


# ---------------------------------------------------------------------------------------------
# Regions and relations
# ---------------------------------------------------------------------------------------------

_REGION_RE = re.compile(
    r"\b(?:on|at|in|near|to|toward|towards)\s+the\s+(?:far\s+|very\s+)?"
    r"(?P<region>(?:top|bottom|upper|lower)(?:[\s-]+(?:left|right))?|left|right|center|centre|"
    r"middle)\b"
    r"(?:\s+(?:hand\s+)?(?:side|part|half|edge|corner|area|portion))?"
    r"(?:\s+of\s+the\s+(?:image|picture|photo|photograph|scene|frame))?", re.I)
_REL_RE = re.compile(r"\b(?:(?:to|on)\s+the\s+)?(?P<lr>left|right)(?:\s+side)?\s+of\b|"
                     r"\b(?P<v>above|below)\b", re.I)


def _norm_region(r: str) -> str:
    r = re.sub(r"[\s-]+", " ", r.lower().strip())
    r = r.replace("upper", "top").replace("lower", "bottom").replace("centre", "center")
    return "center" if r == "middle" else r


def region_compatible(claimed: str, actual: str) -> bool:
    """Whether an answer's region word fits an annotated region.

    Regions may be a 3x3 grid ("top left", "left", ...): "on the left" fits an object in the
    "top left" cell and "in the top left corner" fits one annotated "left" (the words of one
    are a subset of the other's); "top" never fits "bottom"/"center".
    """
    c, a = set(_norm_region(claimed).split()), set(_norm_region(actual).split())
    return c <= a or a <= c


def region_contains(region: str, actual: str) -> bool:
    """Whether an object annotated in ``actual`` lies in ``region`` (for statements the
    templates make, stricter than :func:`region_compatible`): "left" holds objects in
    "top left", "left" and "bottom left", but "top left" holds only "top left" ones."""
    return set(_norm_region(region).split()) <= set(_norm_region(actual).split())


def region_phrase(region: str) -> str:
    """Short answer naming a region: "On the left side.", "In the top left corner."."""
    r = _norm_region(region)
    if r in ("left", "right"):
        return f"On the {r} side."
    if r in ("top", "bottom"):
        return f"At the {r}."
    if r == "center":
        return "In the center."
    if len(r.split()) == 2:
        return f"In the {r} corner."
    return f"In the {r} part of the image."


def region_question(region: str) -> str:
    r = _norm_region(region)
    if r in ("left", "right"):
        return f"What is on the {r} side of the image?"
    if r in ("top", "bottom"):
        return f"What is at the {r} of the image?"
    if r == "center":
        return "What is in the center of the image?"
    return f"What is in the {r} corner of the image?"


_REL_NAMES = {"left": "to the left of", "right": "to the right of", "above": "above",
              "below": "below"}


def _rel_delta(a: "GTObject", b: "GTObject", rel: str) -> float:
    """Signed evidence that "a <rel> b" (positive = true), from bbox centres (y grows down)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {"left": bx - ax, "right": ax - bx, "above": by - ay, "below": ay - by}[rel]


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GTObject:
    """One annotated instance: COCO category name (CHAIR table name), bbox ``[x, y, w, h]``,
    and the micro-world's extra fields when present (``color``, ``size``, ``region``)."""

    category: str
    bbox: tuple[float, float, float, float] | None = None
    color: str | None = None
    size: str | None = None
    region: str | None = None
    iscrowd: bool = False

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox  # type: ignore[misc]
        return x + w / 2.0, y + h / 2.0


def _load_coco_file(path: str | os.PathLike) -> Any:
    """Load a COCO JSON with pycocotools (its progress prints silenced); clear errors."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file not found")
    from pycocotools.coco import COCO
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(p))
    except (AssertionError, ValueError, KeyError, TypeError) as e:
        raise DataError(p, f"not a COCO annotation file ({type(e).__name__}: {e})") from None


def _world_themes(instances_path: str | os.PathLike) -> list:
    """The ``vocab.themes`` of the micro-world whose ``annotations/`` holds ``instances_path``
    (its images carry only the theme *name*, e.g. "living", whose text word is "living
    room"); [] when the file is not part of a world."""
    meta = Path(instances_path).resolve().parent.parent / "world.json"
    if not meta.is_file():
        return []
    try:
        import json
        themes = json.loads(meta.read_text(encoding="utf-8")).get("vocab", {}).get("themes")
    except (OSError, ValueError, AttributeError):
        return []
    return themes if isinstance(themes, list) else []


class GroundTruth:
    """Per-image ground truth for nSFT and the pair builders, from COCO-format annotations.

    Gives, per image: the annotated objects (:class:`GTObject`), the CHAIR ground-truth object
    set (instances ∪ objects named in reference captions, as :class:`visalign.eval.chair.Chair`
    defines it), reference captions, the image's theme/scene (micro-world images carry one) and
    its size. Works on real COCO too: there ``color``/``size``/``region``/theme are absent and
    ``has_field`` tells the judge which checks to skip.

    ``instances``/``captions`` are paths (loaded with pycocotools), pycocotools ``COCO`` objects
    or plain dicts; ``synonyms`` a CHAIR table (list of rows), a path, or None (packaged COCO).
    ``theme_words`` maps a theme name to the words that name it in text (default: a top-level
    ``themes`` list in the instances file with ``name``/``short``, else the themes of the
    micro-world's ``world.json`` when the instances file sits in a world's ``annotations/``,
    else the theme name).
    """

    THEME_KEYS = ("theme", "scene")

    def __init__(self, instances: Any, captions: Any = None, synonyms: Any = None, *,
                 theme_words: Mapping[str, Sequence[str]] | None = None):
        from visalign.eval.chair import Chair, load_synonyms, norm_image_id

        self._norm = norm_image_id
        self.source = instances if isinstance(instances, (str, os.PathLike)) else None
        inst = _load_coco_file(instances) if isinstance(instances, (str, os.PathLike)) else \
            instances
        caps = _load_coco_file(captions) if isinstance(captions, (str, os.PathLike)) else captions
        if synonyms is None or isinstance(synonyms, (str, os.PathLike)):
            synonyms = load_synonyms(synonyms)
        self.chair = Chair.from_coco(inst, caps, synonyms=synonyms)
        data = inst.dataset if hasattr(inst, "dataset") else inst
        if not isinstance(data, Mapping):
            raise DataError(self.source, "expected a COCO instances JSON object")
        w2c = self.chair.word_to_category

        cats: dict[Any, str] = {}
        for c in data.get("categories") or []:
            name = " ".join(str(c.get("name", "")).lower().split())
            cats[c.get("id")] = w2c.get(name, name)
        self.categories: list[str] = sorted(set(cats.values()))
        self.images: dict[Any, dict] = {}
        self._by_file: dict[str, Any] = {}
        for i, img in enumerate(data.get("images") or []):
            if "id" not in img:
                raise DataError(self.source, "image without 'id'", record=f"images[{i}]",
                                field="id")
            iid = norm_image_id(img["id"])
            self.images[iid] = img
            if img.get("file_name"):
                self._by_file[os.path.basename(str(img["file_name"]))] = iid
        self._objects: dict[Any, list[GTObject]] = defaultdict(list)
        seen_fields: set[str] = set()
        for i, ann in enumerate(data.get("annotations") or []):
            where = f"annotations[{i}]"
            if ann.get("category_id") not in cats:
                raise DataError(self.source, f"unknown category_id {ann.get('category_id')!r}",
                                record=where, field="category_id")
            bbox = ann.get("bbox")
            if bbox is not None:
                if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                        and all(isinstance(v, (int, float)) for v in bbox)):
                    raise DataError(self.source, f"bbox must be [x, y, w, h], got {bbox!r}",
                                    record=where, field="bbox")
                bbox = tuple(float(v) for v in bbox)
            obj = GTObject(
                category=cats[ann["category_id"]], bbox=bbox,
                color=_COLOR_NORM.get(str(ann["color"]).lower(), str(ann["color"]).lower())
                if ann.get("color") else None,
                size=str(ann["size"]).lower() if ann.get("size") else None,
                region=_norm_region(str(ann["region"])) if ann.get("region") else None,
                iscrowd=bool(ann.get("iscrowd", 0)))
            for f in ("color", "size", "region", "bbox"):
                if getattr(obj, f) is not None:
                    seen_fields.add(f)
            self._objects[norm_image_id(ann.get("image_id"))].append(obj)
        self.fields = frozenset(seen_fields)
        self._captions: dict[Any, list[str]] = defaultdict(list)
        if caps is not None:
            cdata = caps.dataset if hasattr(caps, "dataset") else caps
            for ann in cdata.get("annotations") or []:
                self._captions[norm_image_id(ann["image_id"])].append(str(ann["caption"]))
        # Themes: image-level field; words naming each theme.
        self._theme: dict[Any, str] = {}
        for iid, img in self.images.items():
            for k in self.THEME_KEYS:
                if img.get(k):
                    self._theme[iid] = str(img[k])
                    break
        if theme_words is None:
            themes = data.get("themes") or (_world_themes(self.source) if self.source else [])
            theme_words = {}
            for t in themes or []:
                if isinstance(t, Mapping) and t.get("name"):
                    theme_words[str(t["name"])] = [str(t.get("short") or t["name"])]
        tw = {str(k): [w.lower() for w in v] for k, v in theme_words.items()}
        for t in set(self._theme.values()):
            tw.setdefault(t, [t.lower()])
        self.theme_words: dict[str, list[str]] = tw
        self.colors = sorted({o.color for objs in self._objects.values() for o in objs
                              if o.color})
        self._cooc: dict[str, Counter] | None = None

    @classmethod
    def from_files(cls, instances: str | os.PathLike, captions: str | os.PathLike | None = None,
                   synonyms: str | os.PathLike | None = None, **kw) -> "GroundTruth":
        """Ground truth from COCO ``instances_*.json`` (+ ``captions_*.json``, + synonyms)."""
        return cls(instances, captions, synonyms, **kw)

    # -- lookups ---------------------------------------------------------------------------
    def has_field(self, name: str) -> bool:
        """Whether any annotation carries ``name`` (``color``, ``size``, ``region``, ``bbox``)."""
        return name in self.fields

    @property
    def has_themes(self) -> bool:
        return bool(self._theme)

    def image_id_for(self, record: Mapping) -> Any | None:
        """The record's COCO image id: its ``image_id`` if known, else by image file name."""
        if record.get("image_id") is not None:
            iid = self._norm(record["image_id"])
            if iid in self.images or iid in self._objects:
                return iid
        name = os.path.basename(str(record.get("image", "")))
        return self._by_file.get(name)

    def objects(self, image_id: Any) -> list[GTObject]:
        return list(self._objects.get(self._norm(image_id), ()))

    def annotated(self, image_id: Any) -> set[str]:
        """Categories with instance annotations in the image."""
        return {o.category for o in self.objects(image_id)}

    def present(self, image_id: Any) -> set[str]:
        """CHAIR ground-truth objects: instances ∪ objects named by the reference captions."""
        return self.chair.gt_objects(image_id)

    def captions(self, image_id: Any) -> list[str]:
        return list(self._captions.get(self._norm(image_id), ()))

    def theme(self, image_id: Any) -> str | None:
        return self._theme.get(self._norm(image_id))

    def image_size(self, image_id: Any) -> tuple[float, float] | None:
        img = self.images.get(self._norm(image_id)) or {}
        if img.get("width") and img.get("height"):
            return float(img["width"]), float(img["height"])
        return None

    def mentions(self, text: str) -> list:
        """CHAIR object mentions (``Mention(word, category, start, end)``) of ``text``."""
        return self.chair.mentions(text)

    def cooccurrence(self) -> dict[str, Counter]:
        """``{category: Counter(other category -> images where both are annotated)}``."""
        if self._cooc is None:
            cooc: dict[str, Counter] = defaultdict(Counter)
            for objs in self._objects.values():
                cs = sorted({o.category for o in objs})
                for a in cs:
                    for b in cs:
                        if a != b:
                            cooc[a][b] += 1
            self._cooc = dict(cooc)
        return self._cooc


# ---------------------------------------------------------------------------------------------
# Records and short answers
# ---------------------------------------------------------------------------------------------

def first_exchange(record: Mapping, index: Any = None, path: Any = None) -> tuple[str, str]:
    """(question without ``<image>``, ground-truth answer) of a record's first exchange."""
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(path, "missing or empty 'conversations'", record=record.get("id", index),
                        field="conversations")
    q = a = None
    for turn in conv:
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise DataError(path, "turns must be {'from', 'value'} objects",
                            record=record.get("id", index), field="conversations")
        if q is None and turn.get("from") == "human":
            q = strip_image(turn["value"])
        elif q is not None and turn.get("from") == "gpt":
            a = turn["value"].strip()
            break
    if q is None or a is None:
        raise DataError(path, "needs a human turn followed by a gpt turn",
                        record=record.get("id", index), field="conversations")
    return q, a


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
        v = _NUM_VALUE.get(t)
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
    for vocab, norm in ((set(COLOR_WORDS), _COLOR_NORM), (_REGION_WORDS, region_norm)):
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


def _short_category(task: str | None, question: str) -> str:
    """Codebook category of a wrong short answer, from its task or its question's wording.

    Free-form VQA questions that name no checkable aspect fall back to object identity (the
    answer names the wrong thing), documented as such in the report.
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


# ---------------------------------------------------------------------------------------------
# Annotation judge
# ---------------------------------------------------------------------------------------------

class AnnotationJudge:
    """Offline judge: CHAIR mentions + object annotations (see the module docstring).

    Checks per long answer, each only when the ground truth carries the needed fields:

    * ``object_identity``: a mentioned object not in the image's CHAIR ground truth;
    * ``object_attribute``: a colour / size word attached to a present object (adjective right
      before it, or predicate "the X is red") not among its annotated colours / sizes; a number
      >= 2 right before an object ("three cups") that differs from its instance count;
    * ``object_locations``: "on the left/at the top/in the top left corner ..." attached to an
      object none of whose instances lies in a compatible region;
    * ``relative_positions``: "X (to the) left/right of / above / below Y" with both present
      and every instance pair clearly the other way (bbox centres, ``relation_margin``);
    * ``background_knowledge``: the answer names another theme's scene word ("in a kitchen")
      when the image's theme is different.
    """

    name = "annotation"
    checkable_categories = frozenset({"object_identity", "object_attribute", "object_locations",
                                      "relative_positions", "background_knowledge"})

    def __init__(self, cfg: NsftDataConfig | None = None):
        self.cfg = cfg or NsftDataConfig()

    def notes(self, gt: GroundTruth | None) -> list[str]:
        """Checks this ground truth cannot support (listed in the report)."""
        if gt is None:
            return ["no ground truth: only short answers can be judged"]
        out = []
        if not gt.has_field("color"):
            out.append("colour checks skipped: annotations carry no 'color' field")
        if not gt.has_field("size"):
            out.append("size checks skipped: annotations carry no 'size' field")
        if not gt.has_field("region"):
            out.append("absolute location checks skipped: annotations carry no 'region' field")
        if not gt.has_field("bbox"):
            out.append("relative position checks skipped: annotations carry no 'bbox'")
        if not gt.has_themes:
            out.append("background checks skipped: images carry no 'theme'/'scene' field")
        return out

    def __call__(self, record: dict, answer: str, gt: GroundTruth | None) -> list[Error]:
        if is_short(record, self.cfg):
            return short_answer_errors(record, answer)
        if gt is None:
            raise JudgeSkip("long answer but no ground truth given")
        image_id = gt.image_id_for(record)
        if image_id is None:
            raise JudgeSkip("image not in the ground truth")
        return self.long_answer_errors(answer, image_id, gt)

    # -- long answers ----------------------------------------------------------------------
    def long_answer_errors(self, answer: str, image_id: Any, gt: GroundTruth) -> list[Error]:
        mentions = list(gt.mentions(answer))
        clauses = _clauses(answer)
        present = gt.present(image_id)
        objs = gt.objects(image_id)
        by_cat: dict[str, list[GTObject]] = defaultdict(list)
        for o in objs:
            by_cat[o.category].append(o)
        errors: list[Error] = []
        claims = self._region_claims(answer, mentions, clauses)

        # Object identity: hallucinated objects, once per category.
        seen: set[str] = set()
        for i, m in enumerate(mentions):
            if m.category in present or m.category in seen:
                continue
            seen.add(m.category)
            where = next((r for j, r, _ in claims if j == i), None)
            right = None
            if where:
                near = [o.category for o in objs if o.region and region_contains(where,
                                                                                 o.region)]
                right = near[0] if near else None
            surface = answer[m.start:m.end]
            errors.append(Error("object_identity", "instance", text=surface, wrong=m.category,
                                right=right, object=m.category, where=where,
                                span=(m.start, m.end), meta={"plural": _is_plural(surface)}))

        # Attributes: colours and sizes attached to present, annotated objects.
        if gt.has_field("color"):
            vocab = set(COLOR_WORDS) | set(gt.colors)
            errors += self._attribute_errors(answer, mentions, clauses, by_cat, vocab, "color")
        if gt.has_field("size"):
            errors += self._attribute_errors(answer, mentions, clauses, by_cat, set(SIZE_WORDS),
                                             "size")
        errors += self._count_errors(answer, mentions, clauses, by_cat)
        if gt.has_field("region"):
            done: set[tuple[str, str]] = set()
            for j, region, span in claims:
                cat = mentions[j].category
                regions = [o.region for o in by_cat.get(cat, []) if o.region]
                if not regions or (cat, region) in done:
                    continue
                done.add((cat, region))
                if not any(region_compatible(region, r) for r in regions):
                    right = Counter(regions).most_common(1)[0][0]
                    errors.append(Error("object_locations", "image", text=answer[span[0]:span[1]],
                                        wrong=region, right=right, object=cat, span=span))
        if gt.has_field("bbox"):
            errors += self._relative_errors(answer, mentions, clauses, by_cat,
                                            gt.image_size(image_id))
        theme = gt.theme(image_id)
        if theme is not None:
            errors += self._background_errors(answer, mentions, theme, gt.theme_words)
        errors.sort(key=lambda e: e.span[0] if e.span else len(answer))
        return errors

    @staticmethod
    def _attach(start: int, end: int, mentions: list, clauses: list[tuple[int, int]],
                text: str, *, max_gap: int = 3, predicative: bool = True) -> Any | None:
        """The object a modifier at ``text[start:end]`` describes, or None.

        Adjective position first: the next mention in the clause with at most ``max_gap``
        words between and no punctuation/determiner/verb among them ("a red ceramic cup").
        Then predicate position: the closest earlier mention linked by a copula ("the cup is
        red"). Anything else is left unattached (no error is better than a wrong one).
        """
        cl = _clause_of(start, clauses)
        if cl is None:
            return None
        inside = [m for m in mentions if cl[0] <= m.start < cl[1]]
        after = [m for m in inside if m.start >= end]
        if after:
            gap = text[end:after[0].start]
            words = _words_between(gap)
            if (len(words) <= max_gap and not re.search(r"[,;:.!?()]", gap)
                    and not (set(w.lower() for w in words) & _GAP_STOP)):
                return after[0]
        if predicative:
            before = [m for m in inside if m.end <= start]
            if before and _COPULA_RE.match(text[before[-1].end:start] + " "):
                return before[-1]
        return None

    def _attribute_errors(self, answer: str, mentions: list, clauses, by_cat, vocab: set[str],
                          kind: str) -> list[Error]:
        out: list[Error] = []
        done: set[tuple[str, str]] = set()
        spans = [(m.start, m.end) for m in mentions]
        for wm in _WORD_RE.finditer(answer):
            word = wm.group().lower()
            if word not in vocab or any(_overlaps((wm.start(), wm.end()), s) for s in spans):
                continue
            m = self._attach(wm.start(), wm.end(), mentions, clauses, answer)
            if m is None or m.category not in by_cat:
                continue
            if kind == "color":
                value = _COLOR_NORM.get(word, word)
                actual = [o.color for o in by_cat[m.category] if o.color]
            else:
                value = SIZE_WORDS[word]
                actual = [o.size for o in by_cat[m.category] if o.size]
            if not actual or value in actual or (m.category, value) in done:
                continue
            done.add((m.category, value))
            right = " and ".join(c for c, _ in Counter(actual).most_common())
            s, e = min(wm.start(), m.start), max(wm.end(), m.end)
            out.append(Error("object_attribute", "instance", text=answer[s:e], wrong=word,
                             right=right, object=m.category, span=(s, e),
                             meta={"attribute": kind}))
        return out

    def _count_errors(self, answer: str, mentions: list, clauses, by_cat) -> list[Error]:
        out: list[Error] = []
        done: set[str] = set()
        for wm in _WORD_RE.finditer(answer):
            n = _num_value(wm.group())
            if n is None or n < 2:
                continue  # "a cup"/"one cup" say little about the total; only plurals count
            m = self._attach(wm.start(), wm.end(), mentions, clauses, answer, max_gap=2,
                             predicative=False)
            if m is None or m.category not in by_cat or m.category in done:
                continue
            if "of" in (w.lower() for w in _words_between(answer[wm.end():m.start])):
                continue  # "two of the cups"
            insts = by_cat[m.category]
            if any(o.iscrowd for o in insts):
                continue  # a crowd annotation has no count
            done.add(m.category)
            if len(insts) != n:
                out.append(Error("object_attribute", "instance",
                                 text=answer[wm.start():m.end], wrong=wm.group(),
                                 right=str(len(insts)), object=m.category,
                                 span=(wm.start(), m.end), meta={"attribute": "count"}))
        return out

    @staticmethod
    def _region_claims(answer: str, mentions: list, clauses) -> list[tuple[int, str, tuple]]:
        """(mention index, region, span) for absolute region phrases attached to a mention."""
        out = []
        for rm in _REGION_RE.finditer(answer):
            region = _norm_region(rm.group("region"))
            rest = answer[rm.end():]
            if re.match(r"\s+of\b", rest):
                continue  # "on the left side of the table": relative, not absolute
            cl = _clause_of(rm.start(), clauses)
            if cl is None:
                continue
            inside = [(j, m) for j, m in enumerate(mentions) if cl[0] <= m.start < cl[1]]
            before = [(j, m) for j, m in inside if m.end <= rm.start()
                      and len(_words_between(answer[m.end:rm.start()])) <= 6]
            after = [(j, m) for j, m in inside if m.start >= rm.end()]
            pick = before[-1] if before else (after[0] if after else None)
            if pick is not None:
                out.append((pick[0], region, (rm.start(), rm.end())))
        return out

    def _relative_errors(self, answer: str, mentions: list, clauses, by_cat,
                         size: tuple[float, float] | None) -> list[Error]:
        out: list[Error] = []
        margin = self.cfg.relation_margin * size[0] if size else 0.0
        for rm in _REL_RE.finditer(answer):
            rel = (rm.group("lr") or rm.group("v")).lower()
            cl = _clause_of(rm.start(), clauses)
            if cl is None:
                continue
            following = _words_between(answer[rm.end():rm.end() + 40])[:3]
            if set(w.lower() for w in following) & _IMAGE_WORDS:
                continue  # "on the left side of the image" is absolute
            inside = [m for m in mentions if cl[0] <= m.start < cl[1]]
            before = [m for m in inside if m.end <= rm.start()]
            after = [m for m in inside if m.start >= rm.end()
                     and len(_words_between(answer[rm.end():m.start])) <= 3]
            if not before or not after:
                continue
            a, b = before[-1], after[0]
            if a.category == b.category:
                continue
            A = [o for o in by_cat.get(a.category, []) if o.bbox]
            B = [o for o in by_cat.get(b.category, []) if o.bbox]
            if not A or not B:
                continue  # hallucinated (identity covers it) or no boxes
            deltas = [_rel_delta(x, y, rel) for x in A for y in B]
            if all(d < 0 and -d >= margin for d in deltas):
                ax = sum(o.center[0] for o in A) / len(A)
                ay = sum(o.center[1] for o in A) / len(A)
                bx = sum(o.center[0] for o in B) / len(B)
                by = sum(o.center[1] for o in B) / len(B)
                if rel in ("left", "right"):
                    right = "left" if ax < bx else "right" if ax > bx else None
                else:
                    right = "above" if ay < by else "below" if ay > by else None
                out.append(Error("relative_positions", "image", text=answer[a.start:b.end],
                                 wrong=_REL_NAMES[rel],
                                 right=_REL_NAMES[right] if right else None, object=a.category,
                                 other=b.category, span=(a.start, b.end)))
        return out

    @staticmethod
    def _background_errors(answer: str, mentions: list, theme: str,
                           theme_words: Mapping[str, Sequence[str]]) -> list[Error]:
        out: list[Error] = []
        own = theme_words.get(theme, [theme.lower()])
        spans = [(m.start, m.end) for m in mentions]
        low = answer.lower()
        for other, words in sorted(theme_words.items()):
            if other == theme:
                continue
            for w in words:
                if w in own:
                    continue
                for mm in re.finditer(rf"\b{re.escape(w)}(?:e?s)?\b", low):
                    if any(_overlaps((mm.start(), mm.end()), s) for s in spans):
                        continue
                    out.append(Error("background_knowledge", "image",
                                     text=answer[mm.start():mm.end()], wrong=w, right=own[0],
                                     span=(mm.start(), mm.end())))
                    break
                else:
                    continue
                break
        return out


def _is_plural(surface: str) -> bool:
    """Whether a mention's surface form is plural ("cups", "people"; not "bus", "glass")."""
    last = surface.lower().split()[-1] if surface.split() else ""
    sing = _inflect().singular_noun(last) if last.isalpha() else False
    return bool(sing) and sing != last and not last.endswith(("us", "ss"))


# ---------------------------------------------------------------------------------------------
# LLM judge (Fig. 9)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ParsedReply:
    """A parsed Fig. 9 reply: the hallucination items and the QA pairs."""

    hallucinations: list[str]
    qa_pairs: list[tuple[str, str]]
    no_hallucinations: bool = False


_MD_RE = re.compile(r"\*\*|__|`")
_BULLET_RE = re.compile(r"^(?:[-*•]\s+|\(?\d+[.)]\s+)+")
_Q_RE = re.compile(r"^(?:[-*•]\s*)?(?:\(?\d+[.)]\s*)?(?:user|human|question|q)\s*\d*\s*[:：]\s*"
                   r"(?P<t>.*)$", re.I)
_A_RE = re.compile(r"^(?:[-*•]\s*)?(?:\(?\d+[.)]\s*)?(?:gpt|assistant|answer|a|ai)\s*\d*\s*"
                   r"[:：]\s*(?P<t>.*)$", re.I)
_HAL_RE = re.compile(r"^(?:#+\s*)?hallucinations?\s*[:：]\s*(?P<t>.*)$", re.I)
_TOPIC_RE = re.compile(r"^(?:#+\s*)?(?:constructed\s+)?topic\s*\d*\s*[:：]", re.I)
_NONE_ITEM_RE = re.compile(r"^(?:none|n/?a|no hallucinations?(?: found| exist| detected)?)"
                           r"\W*$", re.I)
_NO_HAL_RE = re.compile(
    r"\bno\s+hallucinations?\b|\b(?:does|do)\s+not\s+(?:contain|have|include)\s+any\s+"
    r"hallucinat|\bthere\s+(?:are|is)\s+no\s+hallucinat|\bhallucination[- ]free\b|"
    r"\bend(?:ing)?\s+(?:this|the)\s+chat\b|\bchat\s+(?:has\s+)?end(?:ed|s)\b|"
    r"\bwithout\s+(?:any\s+)?hallucinations?\b", re.I)


def parse_llm_reply(text: str) -> ParsedReply:
    """Parse a Fig. 9 reply into hallucination items and QA pairs.

    Accepts numbering ("1.", "1)", "Q1:"), ``User:``/``GPT:``, ``Human:``/``Assistant:`` or
    ``Q:``/``A:`` prefixes, blank lines, markdown bold/headers, and answers continued on the
    next line. "No hallucinations"/"end this chat" with no QA pairs -> no errors. Raises
    :class:`LLMParseError` when the reply fits none of this.
    """
    if not isinstance(text, str) or not text.strip():
        raise LLMParseError("empty reply")
    lines = [_MD_RE.sub("", ln).strip() for ln in text.splitlines()]
    items: list[str] = []
    pairs: list[tuple[str, str]] = []
    in_hal = False
    q: str | None = None
    cur: list[str] | None = None   # the open question/answer text being continued
    a: str | None = None
    for ln in lines:
        if not ln:
            cur = None
            continue
        ln = re.sub(r"^>\s*", "", ln)
        hm = _HAL_RE.match(ln)
        if hm:
            in_hal, cur = True, None
            if hm.group("t").strip():
                items.append(hm.group("t").strip())
            continue
        if _TOPIC_RE.match(ln):
            in_hal, cur = False, None
            continue
        qm, am = _Q_RE.match(ln), _A_RE.match(ln)
        if qm and not am:
            in_hal = False
            if q is not None and a is not None:
                pairs.append((q, a))
            q, a = qm.group("t").strip(), None
            cur = ["q"]
            continue
        if am:
            in_hal = False
            if q is not None:
                if a is not None:   # a second answer line prefixed again: continue it
                    a = a + " " + am.group("t").strip()
                else:
                    a = am.group("t").strip()
                cur = ["a"]
            continue
        if in_hal:
            items.append(_BULLET_RE.sub("", ln).strip())
            continue
        if cur == ["q"] and q is not None:
            q = f"{q} {ln}"
        elif cur == ["a"] and a is not None:
            a = f"{a} {ln}"
    if q is not None and a is not None:
        pairs.append((q, a))
    pairs = [(qq.strip(), aa.strip()) for qq, aa in pairs if qq.strip() and aa.strip()]
    items = [it for it in items if it and not _NONE_ITEM_RE.match(it)]
    if pairs:
        return ParsedReply(items, pairs)
    if items:
        raise LLMParseError("hallucinations listed but no question-answer pairs found")
    if _NO_HAL_RE.search(text):
        return ParsedReply([], [], no_hallucinations=True)
    raise LLMParseError("no 'Hallucinations:' list, no QA pairs and no 'no hallucinations' "
                        "statement")


def _item_error(item: str) -> Error:
    """An :class:`Error` from one hallucination line ("Object Identity: a dog -> a cat")."""
    cat = match_category(item)
    body = item
    head, sep, tail = item.partition(":")
    if sep and match_category(head) != UNSPECIFIED:
        body = tail.strip()
    wrong, right = body, None
    for arrow in ("->", "→", "=>"):
        if arrow in body:
            wrong, right = (s.strip() for s in body.split(arrow, 1))
            break
    return Error(cat, level_of(cat), text=item, wrong=wrong, right=right)


class LLMJudge:
    """Fig. 9 judge over an OpenAI-compatible endpoint (via :class:`JudgeClient`).

    The ground-truth text is the record's GT answer (the detailed description) followed by
    the image's reference captions when the ground truth has them. Short-answer records are
    judged by normalised comparison, like the paper's manually built OCRVQA pairs (Sec. B.1).
    Retries and the on-disk cache are the client's; parse failures raise
    :class:`LLMParseError` (the builder counts them as ``llm_unparsed``). :meth:`prefetch`
    sends all requests ``llm.workers`` at a time (the builder calls it first), so a large set
    is not judged one request after another.
    """

    name = "llm"
    checkable_categories = frozenset(CATEGORY_KEYS)

    def __init__(self, client: Any = None, *, cfg: NsftDataConfig | None = None,
                 api_key: str | None = None):
        self.cfg = cfg or NsftDataConfig()
        if client is None:
            from visalign.eval.judge import JudgeClient
            client = JudgeClient(self.cfg.llm, api_key=api_key)
        self.client = client
        self._replies: dict[str, str] = {}

    def notes(self, gt: GroundTruth | None) -> list[str]:
        return []

    @staticmethod
    def gt_text(record: Mapping, gt: GroundTruth | None) -> str:
        text = first_exchange(record)[1]
        if gt is not None:
            iid = gt.image_id_for(record)
            caps = gt.captions(iid) if iid is not None else []
            if caps:
                text += "\n\nReference captions:\n" + "\n".join(f"- {c}" for c in caps)
        return text

    @staticmethod
    def _key(messages: list[dict]) -> str:
        import json
        return json.dumps(messages, sort_keys=True, ensure_ascii=False)

    def messages(self, record: Mapping, answer: str, gt: GroundTruth | None) -> list[dict]:
        """The Fig. 9 request for one long-answer record."""
        return nsft_messages(self.gt_text(record, gt), answer)

    def prefetch(self, items: Sequence[tuple[dict, str]], gt: GroundTruth | None) -> None:
        """Ask the endpoint about every long-answer ``(record, answer)`` concurrently (the
        client's ``chat_many``); :meth:`review` then uses the replies held here."""
        if not hasattr(self.client, "chat_many"):
            return
        msgs = [self.messages(r, a, gt) for r, a in items if not is_short(r, self.cfg)]
        todo = list({self._key(m): m for m in msgs if self._key(m) not in self._replies}
                    .values())
        if todo:
            for m, reply in zip(todo, self.client.chat_many(todo)):
                self._replies[self._key(m)] = reply

    def review(self, record: dict, answer: str, gt: GroundTruth | None) -> Verdict:
        if is_short(record, self.cfg):
            return Verdict(short_answer_errors(record, answer))
        msgs = self.messages(record, answer, gt)
        reply = self._replies.pop(self._key(msgs), None)
        if reply is None:
            reply = self.client.chat(msgs)
        parsed = parse_llm_reply(reply)
        if parsed.no_hallucinations:
            return Verdict([])
        errors = [_item_error(it) for it in parsed.hallucinations] or \
            [Error(UNSPECIFIED, None, text="(conversation given, no hallucination listed)",
                   wrong="")]
        return Verdict(errors, parsed.qa_pairs)

    def __call__(self, record: dict, answer: str, gt: GroundTruth | None) -> list[Error]:
        return self.review(record, answer, gt).errors


# ---------------------------------------------------------------------------------------------
# Conversation templates (annotation judge)
# ---------------------------------------------------------------------------------------------

class _Scene:
    """What the templates may say about one image (only ground truth, never the answer)."""

    def __init__(self, gt: GroundTruth | None, image_id: Any):
        self.objects = gt.objects(image_id) if gt is not None and image_id is not None else []
        self.by_cat: dict[str, list[GTObject]] = defaultdict(list)
        for o in self.objects:
            self.by_cat[o.category].append(o)
        self.present = sorted(self.by_cat, key=lambda c: (-len(self.by_cat[c]), c))
        theme = gt.theme(image_id) if gt is not None and image_id is not None else None
        self.theme_word = (gt.theme_words.get(theme, [theme])[0] if theme else None)

    def count(self, cat: str) -> int:
        return len(self.by_cat.get(cat, []))

    def colors(self, cat: str) -> list[str]:
        return [c for c, _ in Counter(o.color for o in self.by_cat.get(cat, [])
                                      if o.color).most_common()]

    def regions(self, cat: str) -> list[str]:
        return [r for r, _ in Counter(o.region for o in self.by_cat.get(cat, [])
                                      if o.region).most_common()]

    def describe(self, cats: list[str], limit: int = 5,
                 objects: Sequence[GTObject] | None = None, max_words: int = 20) -> str:
        """ "A red cup, two dogs and a bench." (colour only when all instances share one).

        Counts and colours come from ``objects`` (default: all of the image's objects), so a
        description of one region names only the instances in it.
        """
        pool = self.objects if objects is None else objects
        parts = []
        for c in cats[:limit]:
            insts = [o for o in pool if o.category == c]
            n = len(insts)
            cols = sorted({o.color for o in insts if o.color})
            noun = f"{cols[0]} {c}" if len(cols) == 1 and all(o.color for o in insts) else c
            parts.append(_a(noun) if n <= 1 else f"{_num_word(n)} {_plural(noun)}")
        while len(parts) > 1 and len(_join(parts).split()) > max_words:
            parts.pop()  # fewer objects rather than a sentence cut mid-list
        return _cap(_join(parts)) + "." if parts else ""

    def at_region(self, region: str) -> list[GTObject]:
        """The instances that lie in ``region`` (:func:`region_contains`)."""
        return [o for o in self.objects if o.region and region_contains(region, o.region)]


def _exists_qa(cat: str, plural: bool, present_n: int = 0) -> QA:
    if present_n:
        if present_n == 1:
            return QA(f"Is there {_a(cat)} in the image?", f"Yes, there is {_a(cat)}.",
                      "exists_yes", cat)
        return QA(f"Are there any {_plural(cat)} in the image?",
                  f"Yes, there are {_num_word(present_n)} {_plural(cat)}.", "exists_yes", cat)
    if plural:
        return QA(f"Are there any {_plural(cat)} in the image?",
                  f"No, there are no {_plural(cat)}.", "exists_no", cat)
    return QA(f"Is there {_a(cat)} in the image?", f"No, there is no {cat}.", "exists_no", cat)


def _color_qa(cat: str, scene: _Scene) -> QA | None:
    cols = scene.colors(cat)
    if not cols:
        return None
    if scene.count(cat) > 1:
        return QA(f"What color are the {_plural(cat)}?", f"They are {_join(cols)}.", "color",
                  cat)
    return QA(f"What color is the {cat}?", f"It is {cols[0]}.", "color", cat)


def _size_qa(cat: str, scene: _Scene) -> QA | None:
    sizes = [s for s, _ in Counter(o.size for o in scene.by_cat.get(cat, [])
                                   if o.size).most_common()]
    if not sizes:
        return None
    if scene.count(cat) > 1:
        return QA(f"How big are the {_plural(cat)}?", f"They are {_join(sizes)}.", "size", cat)
    return QA(f"How big is the {cat}?", f"It is {sizes[0]}.", "size", cat)


def _count_qa(cat: str, scene: _Scene) -> QA | None:
    n = scene.count(cat)
    if n == 0:
        return None
    ans = f"There is one {cat}." if n == 1 else f"There are {_num_word(n)} {_plural(cat)}."
    return QA(f"How many {_plural(cat)} are there?", ans, "count", cat)


def _where_qa(cat: str, scene: _Scene) -> QA | None:
    regs = scene.regions(cat)
    if not regs:
        return None
    phrases = [region_phrase(r).rstrip(".") for r in regs[:2]]
    ans = phrases[0] + "." if len(phrases) == 1 else \
        phrases[0] + " and " + phrases[1][0].lower() + phrases[1][1:] + "."
    q = f"Where is the {cat}?" if scene.count(cat) == 1 else f"Where are the {_plural(cat)}?"
    return QA(q, ans, "where", cat)


def _error_topic(e: Error, scene: _Scene) -> tuple[QA, list[QA]] | None:
    """(primary QA, follow-ups) correcting one error, or None when nothing definite can be
    said from the ground truth."""
    if e.category == "object_identity" and e.object:
        primary = _exists_qa(e.object, bool(e.meta.get("plural")))
        # Follow-ups ask what *is* there: first an existence question answered "Yes" about a
        # present object (the one at the place the answer put the hallucination, else the most
        # frequent one), so each "No" comes with a "Yes" and the yes/no balancing (Sec. C.5)
        # need not erase the corrections themselves; then what that place / the image holds.
        follow: list[QA] = []
        near = scene.at_region(e.where) if e.where else []
        cats = list(dict.fromkeys(o.category for o in near))
        yes_cat = cats[0] if cats else (scene.present[0] if scene.present else None)
        if yes_cat is not None:
            follow.append(_exists_qa(yes_cat, False, scene.count(yes_cat)))
        if cats:
            follow.append(QA(region_question(e.where), scene.describe(cats, objects=near),
                             "region_what", cats[0]))
        elif scene.present:
            follow.append(QA("What objects can you see in the image?",
                             scene.describe(scene.present), "objects", scene.present[0]))
        return primary, follow
    if e.category == "object_attribute" and e.object:
        kind = e.meta.get("attribute")
        qa = {"color": _color_qa, "size": _size_qa, "count": _count_qa}.get(kind, _color_qa)(
            e.object, scene)
        return (qa, []) if qa else None
    if e.category == "object_locations" and e.object:
        qa = _where_qa(e.object, scene)
        return (qa, []) if qa else None
    if e.category == "relative_positions" and e.object and e.other:
        many = scene.count(e.object) > 1
        subj = f"the {_plural(e.object)}" if many else f"the {e.object}"
        other = f"the {_plural(e.other)}" if scene.count(e.other) > 1 else f"the {e.other}"
        pron, be = ("They", "are") if many else ("It", "is")
        ans = (f"{pron} {be} {e.right} {other}." if e.right
               else f"{pron} {be} not {e.wrong} {other}.")
        return QA(f"Where {be} {subj} relative to {other}?", ans, "relative", e.object), []
    if e.category == "background_knowledge" and e.right:
        return QA("What kind of place is shown in the image?", f"It is {_a(e.right)}.",
                  "background"), []
    return None


def _qa_key(q: QA) -> tuple[str, str | None]:
    """What a pair asks about: existence questions count once whatever their answer."""
    return ("exists" if q.kind.startswith("exists") else q.kind), q.object


def _filler_qas(cat: str, scene: _Scene) -> list[QA]:
    """Ground-truth questions about a present object, most informative first."""
    out = [_color_qa(cat, scene), _where_qa(cat, scene), _count_qa(cat, scene),
           _exists_qa(cat, False, scene.count(cat))]
    return [q for q in out if q is not None]


def template_conversation(errors: list[Error], scene: _Scene, n_pairs: int) -> list[QA]:
    """``n_pairs`` logically connected QA pairs correcting ``errors`` (annotation judge).

    One primary pair per error in answer order (up to ``n_pairs``), each error's follow-ups
    right after it while there is room, then ground-truth questions about the erroneous
    objects and the other present objects until the conversation has ``n_pairs`` pairs. No
    question is asked twice (two wrong colours of one cup make one colour question).
    """
    asked: set = set()
    questions: set[str] = set()

    def new(q: QA) -> bool:
        if _qa_key(q) in asked or q.question in questions:
            return False
        asked.add(_qa_key(q))
        questions.add(q.question)
        return True

    topics = []
    for t in (_error_topic(e, scene) for e in errors):
        if t is not None and len(topics) < n_pairs and new(t[0]):
            topics.append(t)
    room = n_pairs - len(topics)
    qas: list[QA] = []
    for p, fol in topics:
        qas.append(p)
        for f in fol:
            if room > 0 and new(f):
                qas.append(f)
                room -= 1
    focus: list[str] = []
    for e in errors:
        for c in (e.object, e.right, e.other):
            if c and c in scene.by_cat and c not in focus:
                focus.append(c)
    focus += [c for c in scene.present if c not in focus]
    for cat in focus:
        for q in _filler_qas(cat, scene):
            if len(qas) >= n_pairs:
                return qas
            if _qa_key(q) in asked or q.question in questions:
                continue
            asked.add(_qa_key(q))
            questions.add(q.question)
            qas.append(q)
    return qas


# ---------------------------------------------------------------------------------------------
# Conversation post-processing: Is/Are share, yes/no balance
# ---------------------------------------------------------------------------------------------

def _starts_is_are(q: str) -> bool:
    return re.match(r"^\W*(is|are)\b", q, re.I) is not None


def _rephrase_is_are(q: str) -> str:
    m = re.match(r"^\W*(?:is|are)\s+there\s+(.*)$", q, re.I | re.S)
    if m:
        return f"Can you see {m.group(1)}"
    s = q.strip()
    return f"Looking at the image, {s[:1].lower()}{s[1:]}"


def limit_is_are(qas: list[QA], max_share: float) -> int:
    """Rephrase trailing Is/Are questions until at most ``max_share`` of the constructed
    questions start with Is/Are (Fig. 9 guideline 6). Returns how many were rephrased.

    "Is there a X ...?" becomes "Can you see a X ...?"; other Is/Are questions get a
    "Looking at the image, ..." lead. Answers stay valid for both.
    """
    cons = [q for q in qas if not q.gt]
    allowed = math.floor(max_share * len(cons) + 1e-9)
    starts = [q for q in cons if _starts_is_are(q.question)]
    n = 0
    for q in reversed(starts):
        if len(starts) - n <= allowed:
            break
        q.question = _rephrase_is_are(q.question)
        n += 1
    return n


def _balanced(q: QA) -> bool:
    """Whether a pair takes part in yes/no balancing: constructed pairs of long-answer
    conversations. Kept GT turns are data, not construction; a doubled pair (Sec. B.1) is one
    unit whose "No." *is* the negative supervision of the mistake (erasing it would leave a
    copy of the GT answer), so both are neither counted nor erased."""
    return not q.gt and not q.kind.startswith("doubled")


def _yes_no_counts(convs: Iterable[list[QA]], which=_balanced) -> tuple[int, int]:
    yes = no = 0
    for qas in convs:
        for q in qas:
            if not which(q):
                continue
            yes += _is_yes(q.answer)
            no += _is_no(q.answer)
    return yes, no


def _is_doubled(q: QA) -> bool:
    return q.kind.startswith("doubled")


def _ratio(yes: int, no: int) -> float | None:
    return yes / (yes + no) if yes + no else None


def balance_yes_no(convs: list[list[QA]], target: float, rng: random.Random) -> dict:
    """Erase random constructed "No" pairs until yes / (yes + no) >= ``target`` (Sec. C.5).

    Erases the fewest pairs that reach the target, so one pair fewer would miss it. The last
    remaining constructed pair of a conversation is never erased; kept GT pairs and doubled
    pairs are neither counted nor erased (:func:`_balanced`). Works in place; returns
    ``{erased, reached, needed}`` (``needed`` None when no "Yes" exists to balance with).
    """
    yes, no = _yes_no_counts(convs)
    if target <= 0 or yes + no == 0 or _ratio(yes, no) >= target:
        return {"erased": 0, "reached": True, "needed": 0}
    if yes == 0:
        return {"erased": 0, "reached": False, "needed": None}
    # yes / (yes + no - k) >= target  <=>  k >= yes + no - yes / target
    need = max(0, math.ceil(yes + no - yes / target - 1e-9))
    cands = [(ci, id(q)) for ci, qas in enumerate(convs) for q in qas
             if _balanced(q) and _is_no(q.answer)]
    rng.shuffle(cands)
    erased = 0
    for ci, qid in cands:
        if erased >= need:
            break
        qas = convs[ci]
        if sum(not q.gt for q in qas) <= 1:
            continue
        for j, q in enumerate(qas):
            if id(q) == qid:
                del qas[j]
                erased += 1
                break
    return {"erased": erased, "reached": erased >= need, "needed": need}


def _add_yes_pairs(built: list["_Built"], target: float, rng: random.Random) -> int:
    """Append "Is there a X?" -> "Yes, ..." pairs about GT objects until the target is met."""
    yes, no = _yes_no_counts(b.qas for b in built)
    if target >= 1 or target <= 0 or _ratio(yes, no) is None or _ratio(yes, no) >= target:
        return 0
    need = math.ceil((target * (yes + no) - yes) / (1 - target) - 1e-9)
    order = [i for i, b in enumerate(built) if not b.short]
    rng.shuffle(order)
    added = 0
    progress = True
    while added < need and progress:
        progress = False
        for i in order:
            if added >= need:
                break
            b = built[i]
            asked = {q.object for q in b.qas if q.kind in ("exists_yes", "exists_no")}
            for cat in b.scene.present:
                if cat not in asked:
                    b.qas.append(_exists_qa(cat, False, b.scene.count(cat)))
                    added += 1
                    progress = True
                    break
    return added


# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Built:
    record: dict
    short: bool
    errors: list[Error]
    gt_qas: list[QA]
    qas: list[QA]
    scene: _Scene


def _answers_map(answers: Any) -> dict[str, str]:
    if isinstance(answers, Mapping):
        return {str(k): v for k, v in answers.items()}
    out: dict[str, str] = {}
    for i, a in enumerate(answers):
        if "id" not in a or not isinstance(a.get("answer"), str):
            raise DataError(None, "answer records need 'id' and a string 'answer'",
                            record=i, field="answer")
        out[str(a["id"])] = a["answer"]
    return out


def _gt_qas(record: Mapping) -> list[QA]:
    out, q = [], None
    for turn in record["conversations"]:
        if turn.get("from") == "human":
            q = strip_image(turn["value"])
        elif turn.get("from") == "gpt" and q is not None:
            out.append(QA(q, turn["value"], "gt", gt=True))
            q = None
    return out


def _render(b: _Built, judge_name: str) -> dict:
    turns: list[dict] = []
    for i, qa in enumerate(b.gt_qas + b.qas):
        q = f"<image>\n{qa.question}" if i == 0 else qa.question
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": qa.answer}]
    rec = {"id": f"{b.record['id']}_nsft", "image": b.record["image"]}
    for k in ("image_id", "task"):
        if k in b.record:
            rec[k] = b.record[k]
    rec["conversations"] = turns
    rec["nsft"] = {"source_id": b.record["id"], "judge": judge_name,
                   "errors": [dataclasses.asdict(e) for e in b.errors]}
    return rec


def build_nsft_data(records: Sequence[dict], answers: Any, gt: GroundTruth | None,
                    cfg: NsftDataConfig, judge: Any) -> tuple[list[dict], dict]:
    """Build nSFT conversations from ``records`` (LLaVA) and the model's ``answers``.

    ``answers``: ``{id: answer}`` or answer records (``id`` + ``answer``). ``judge``: a
    :class:`Judge`. Returns (LLaVA records, construction report); see the module docstring.
    """
    amap = _answers_map(answers)
    rng = random.Random(cfg.seed)
    if hasattr(judge, "prefetch"):
        for i, r in enumerate(records):
            first_exchange(r, i)  # bad records fail here, naming the record, before any request
        judge.prefetch([(r, amap[str(r["id"])]) for r in records
                        if str(r.get("id")) in amap], gt)
    built: list[_Built] = []
    skipped: list[dict] = []
    no_error: list[str] = []
    image_errors: dict[str, bool] = {}   # judged image -> any error found in its records
    unparsed: list[str] = []
    truncated = 0
    n_short = n_long = 0
    for i, rec in enumerate(records):
        if "id" not in rec or "image" not in rec:
            raise DataError(None, "LLaVA records need 'id' and 'image'", record=i,
                            field="id" if "id" not in rec else "image")
        rid = str(rec["id"])
        question, gt_answer = first_exchange(rec, i)
        if rid not in amap:
            skipped.append({"id": rid, "reason": "no answer for this id"})
            continue
        answer = amap[rid]
        try:
            if hasattr(judge, "review"):
                verdict = judge.review(rec, answer, gt)
            else:
                verdict = Verdict(judge(rec, answer, gt))
        except JudgeSkip as e:
            skipped.append({"id": rid, "reason": f"{e.reason}: {e}"})
            if isinstance(e, LLMParseError):
                unparsed.append(rid)
            continue
        if not verdict.errors:
            no_error.append(rid)
            image_errors.setdefault(str(rec["image"]), False)
            continue
        image_errors[str(rec["image"])] = True
        short = is_short(rec, cfg)
        image_id = gt.image_id_for(rec) if gt is not None else None
        scene = _Scene(gt, image_id)
        if short:
            e = verdict.errors[0]
            if not e.wrong.strip():
                skipped.append({"id": rid, "reason": "empty_answer: no wrong answer to ask "
                                                     "'Is the answer ...?' about"})
                continue
            n_short += 1
            qas = doubled_pairs(question, e.wrong, e.right if e.right is not None else gt_answer)
            gt_qas = _gt_qas(rec) if cfg.keep_gt_short else []
        else:
            n_long += 1
            if verdict.qa_pairs is not None:
                qas = [QA(q, a, "llm") for q, a in verdict.qa_pairs[: cfg.n_pairs]]
            else:
                qas = template_conversation(verdict.errors, scene, cfg.n_pairs)
            for qa in qas:
                clipped = clip_words(qa.answer, cfg.max_answer_tokens)
                truncated += clipped != qa.answer.strip()
                qa.answer = clipped
            gt_qas = _gt_qas(rec) if cfg.keep_gt_long else []
        if not qas:
            skipped.append({"id": rid, "reason": "errors found but no definite corrective "
                                                 "question could be built"})
            continue
        built.append(_Built(rec, short, verdict.errors, gt_qas, qas, scene))

    # Sec. C.5: balance yes/no over the constructed pairs, then the Is/Are share (guideline 6)
    # on what is left, so erasing cannot push a conversation back over the limit.
    yes0, no0 = _yes_no_counts(b.qas for b in built)
    dyes, dno = _yes_no_counts((b.qas for b in built), _is_doubled)
    bal = balance_yes_no([b.qas for b in built], cfg.yes_ratio_target, rng)
    added = _add_yes_pairs(built, cfg.yes_ratio_target, rng) if cfg.add_yes_pairs else 0
    yes1, no1 = _yes_no_counts(b.qas for b in built)
    rephrased = sum(limit_is_are(b.qas, cfg.max_is_are_share) for b in built if not b.short)

    out = [_render(b, getattr(judge, "name", type(judge).__name__)) for b in built]
    per_cat = {k: 0 for k in CATEGORY_KEYS}
    per_cat[UNSPECIFIED] = 0
    per_level = {"instance": 0, "image": 0}
    for b in built:
        for e in b.errors:
            per_cat[e.category] = per_cat.get(e.category, 0) + 1
            if e.level in per_level:
                per_level[e.level] += 1
    checkable = sorted(getattr(judge, "checkable_categories", CATEGORY_KEYS))
    reasons = Counter(s["reason"].split(":")[0] for s in skipped)
    notes = judge.notes(gt) if hasattr(judge, "notes") else []
    report = {
        "judge": getattr(judge, "name", type(judge).__name__),
        "checkable_categories": checkable,
        "unchecked_categories": [k for k in CATEGORY_KEYS if k not in checkable],
        "checks_skipped": notes,
        "n_records": len(records),
        "n_judged": len(records) - len(skipped),
        "n_with_errors": len(built),
        "n_no_error": len(no_error),
        # Images whose judged records all came back without an error.
        "n_images_judged": len(image_errors),
        "n_images_no_error": sum(not e for e in image_errors.values()),
        "no_error_ids": no_error,
        "n_output": len(out),
        "tasks": {"short": n_short, "long": n_long},
        "errors_per_category": per_cat,
        "errors_per_level": per_level,
        "skipped": {"count": len(skipped), "by_reason": dict(reasons), "records": skipped},
        "llm_unparsed": len(unparsed),
        "llm_unparsed_ids": unparsed,
        "yes_no": {
            "target": cfg.yes_ratio_target,
            "before": {"yes": yes0, "no": no0, "yes_ratio": _ratio(yes0, no0)},
            "after": {"yes": yes1, "no": no1, "yes_ratio": _ratio(yes1, no1)},
            "erased_no_pairs": bal["erased"], "added_yes_pairs": added,
            # Doubled pairs of short answers: outside the balancing (see _balanced).
            "doubled": {"yes": dyes, "no": dno},
            "reached": (_ratio(yes1, no1) is None or cfg.yes_ratio_target <= 0
                        or _ratio(yes1, no1) >= cfg.yes_ratio_target - 1e-12),
        },
        "is_are": {"max_share": cfg.max_is_are_share, "rephrased": rephrased},
        "answers_truncated": truncated,
        "conversations_under_n_pairs": sum(1 for b in built if not b.short
                                           and len(b.qas) < cfg.n_pairs),
        "keep_gt": {"short": cfg.keep_gt_short, "long": cfg.keep_gt_long},
    }
    return out, report


def report_markdown(report: Mapping) -> str:
    """The construction report as a short Markdown page."""
    yn = report["yes_no"]

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        "# nSFT construction report", "",
        f"- judge: `{report['judge']}`",
        f"- records: {report['n_records']} (judged {report['n_judged']}, with errors "
        f"{report['n_with_errors']}, without errors {report['n_no_error']}, skipped "
        f"{report['skipped']['count']})",
        f"- images: {report['n_images_judged']} judged, {report['n_images_no_error']} without "
        f"any error",
        f"- conversations written: {report['n_output']} (short {report['tasks']['short']}, "
        f"long {report['tasks']['long']})",
        f"- LLM replies unparsed: {report['llm_unparsed']}",
        f"- yes ratio: {pct(yn['before']['yes_ratio'])} -> {pct(yn['after']['yes_ratio'])} "
        f"(target {yn['target']}, erased {yn['erased_no_pairs']} 'No' pairs, added "
        f"{yn['added_yes_pairs']} 'Yes' pairs, reached: {yn['reached']})",
        f"- questions rephrased for the Is/Are limit: {report['is_are']['rephrased']}; answers "
        f"cut to the token limit: {report['answers_truncated']}", "",
        "## Errors per vision-error-codebook category (Fig. 9)", "",
        "| level | category | errors | checked by this judge |", "|---|---|---:|---|",
    ]
    checkable = set(report["checkable_categories"])
    for c in CODEBOOK:
        lines.append(f"| {c.level} | {c.name} | {report['errors_per_category'].get(c.key, 0)} "
                     f"| {'yes' if c.key in checkable else 'no (unchecked)'} |")
    if report["errors_per_category"].get(UNSPECIFIED):
        lines.append(f"| - | unspecified | {report['errors_per_category'][UNSPECIFIED]} | - |")
    if report["checks_skipped"]:
        lines += ["", "## Checks skipped on this ground truth", ""]
        lines += [f"- {n}" for n in report["checks_skipped"]]
    if report["skipped"]["records"]:
        lines += ["", "## Skipped records", "", "| id | reason |", "|---|---|"]
        lines += [f"| {s['id']} | {s['reason']} |" for s in report["skipped"]["records"]]
    return "\n".join(lines) + "\n"
