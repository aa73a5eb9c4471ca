"""nSFT's offline error judge (:class:`AnnotationJudge`): finds the mistakes of a long answer
from object annotations and CHAIR's object matching, each tagged with a vision-error-codebook
category (Fig. 9). The paper identifies errors with GPT-4 only (Sec. C.2); this judge is ours, so
the method runs without an endpoint (the micro-world, COCO with instance annotations). Actions,
events, event planning and reasoning cannot be checked in long answers from annotations: they
are left out of ``checkable_categories``."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

from visalign.data.words import COLOR_WORDS, is_plural
from visalign.methods.nsft.answers import SHORT_ANSWER_CATEGORIES, is_short, short_answer_errors
from visalign.methods.nsft.config import NsftDataConfig
from visalign.methods.nsft.ground_truth import (GroundTruth, GTObject, norm_region,
                                                region_compatible, region_contains)
from visalign.methods.nsft.records import Error, JudgeSkip
from visalign.methods.nsft.words import COLOR_NORM, number_value

# ---------------------------------------------------------------------------------------------
# Reading an answer: words, clauses, region and relation phrases
# ---------------------------------------------------------------------------------------------

# Size words an answer may use -> the annotated size they mean.
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


# Absolute region phrases ("in the top left corner of the image") and relations between two
# objects ("to the left of", "above").
_REGION_RE = re.compile(
    r"\b(?:on|at|in|near|to|toward|towards)\s+the\s+(?:far\s+|very\s+)?"
    r"(?P<region>(?:top|bottom|upper|lower)(?:[\s-]+(?:left|right))?|left|right|center|centre|"
    r"middle)\b"
    r"(?:\s+(?:hand\s+)?(?:side|part|half|edge|corner|area|portion))?"
    r"(?:\s+of\s+the\s+(?:image|picture|photo|photograph|scene|frame))?", re.I)
_REL_RE = re.compile(r"\b(?:(?:to|on)\s+the\s+)?(?P<lr>left|right)(?:\s+side)?\s+of\b|"
                     r"\b(?P<v>above|below)\b", re.I)

_REL_NAMES = {"left": "to the left of", "right": "to the right of", "above": "above",
              "below": "below"}


def _rel_delta(a: GTObject, b: GTObject, rel: str) -> float:
    """Signed evidence that "a <rel> b" (positive = true), from bbox centres (y grows down)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {"left": bx - ax, "right": ax - bx, "above": by - ay, "below": ay - by}[rel]


# ---------------------------------------------------------------------------------------------
# Annotation judge
# ---------------------------------------------------------------------------------------------

class AnnotationJudge:
    """Offline judge: CHAIR mentions + object annotations.

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

    Short answers are compared with the record's GT answer (:func:`short_answer_errors`); their
    categories (:data:`SHORT_ANSWER_CATEGORIES`) include ``object_actions``, which is checked
    for short answers only.
    """

    name = "annotation"
    checkable_categories = frozenset({"object_identity", "object_attribute", "object_locations",
                                      "relative_positions", "background_knowledge"})
    # Short answers are compared with the GT answer: this adds object_actions ("What is the dog
    # doing?"), which annotations cannot check in a long answer.
    short_answer_categories = SHORT_ANSWER_CATEGORIES

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
                                span=(m.start, m.end), meta={"plural": is_plural(surface)}))

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
                value = COLOR_NORM.get(word, word)
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
            n = number_value(wm.group())
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
            region = norm_region(rm.group("region"))
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
