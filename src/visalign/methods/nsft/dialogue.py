"""nSFT's corrective conversations for long answers (Sec. B.1, Fig. 11): what an image's ground
truth lets the templates say (:class:`Scene`), one topic per error (a hallucinated object, a
wrong colour, place, relation or scene), ground-truth filler questions, and the two Fig. 9
guidelines every long-answer conversation is held to: answers within 20 tokens (guideline 4,
:func:`clip_words`) and not always "Is"/"Are" questions (guideline 6, :func:`limit_is_are`).

The template conversations serve the offline annotation judge; the paper has GPT-4 write them
(Fig. 9). An LLM judge's own conversation gets the same two limits."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Any, Sequence

from visalign.data.words import plural as plural_of
from visalign.data.words import with_article
from visalign.methods.nsft.ground_truth import (GroundTruth, GTObject, region_contains,
                                                region_phrase, region_question)
from visalign.methods.nsft.records import QA, Error
from visalign.methods.nsft.words import number_word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------
# Templates (annotation judge)
# ---------------------------------------------------------------------------------------------

class Scene:
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
        """Instances of ``cat`` in the image."""
        return len(self.by_cat.get(cat, []))

    def colors(self, cat: str) -> list[str]:
        """Annotated colours of ``cat``'s instances, most frequent first."""
        return [c for c, _ in Counter(o.color for o in self.by_cat.get(cat, [])
                                      if o.color).most_common()]

    def regions(self, cat: str) -> list[str]:
        """Annotated regions of ``cat``'s instances, most frequent first."""
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
            parts.append(with_article(noun) if n <= 1 else f"{number_word(n)} {plural_of(noun)}")
        while len(parts) > 1 and len(_join(parts).split()) > max_words:
            parts.pop()  # fewer objects rather than a sentence cut mid-list
        return _cap(_join(parts)) + "." if parts else ""

    def at_region(self, region: str) -> list[GTObject]:
        """The instances that lie in ``region`` (:func:`region_contains`)."""
        return [o for o in self.objects if o.region and region_contains(region, o.region)]


def exists_qa(cat: str, plural: bool, present_n: int = 0) -> QA:
    """The existence question about ``cat``: answered "Yes" with the count when ``present_n``
    > 0, else "No" (asked in the plural when the answer named the object in the plural)."""
    if present_n:
        if present_n == 1:
            return QA(f"Is there {with_article(cat)} in the image?",
                      f"Yes, there is {with_article(cat)}.", "exists_yes", cat)
        return QA(f"Are there any {plural_of(cat)} in the image?",
                  f"Yes, there are {number_word(present_n)} {plural_of(cat)}.", "exists_yes", cat)
    if plural:
        return QA(f"Are there any {plural_of(cat)} in the image?",
                  f"No, there are no {plural_of(cat)}.", "exists_no", cat)
    return QA(f"Is there {with_article(cat)} in the image?", f"No, there is no {cat}.",
              "exists_no", cat)


def _color_qa(cat: str, scene: Scene) -> QA | None:
    cols = scene.colors(cat)
    if not cols:
        return None
    if scene.count(cat) > 1:
        return QA(f"What color are the {plural_of(cat)}?", f"They are {_join(cols)}.", "color",
                  cat)
    return QA(f"What color is the {cat}?", f"It is {cols[0]}.", "color", cat)


def _size_qa(cat: str, scene: Scene) -> QA | None:
    sizes = [s for s, _ in Counter(o.size for o in scene.by_cat.get(cat, [])
                                   if o.size).most_common()]
    if not sizes:
        return None
    if scene.count(cat) > 1:
        return QA(f"How big are the {plural_of(cat)}?", f"They are {_join(sizes)}.", "size", cat)
    return QA(f"How big is the {cat}?", f"It is {sizes[0]}.", "size", cat)


def _count_qa(cat: str, scene: Scene) -> QA | None:
    n = scene.count(cat)
    if n == 0:
        return None
    ans = f"There is one {cat}." if n == 1 else f"There are {number_word(n)} {plural_of(cat)}."
    return QA(f"How many {plural_of(cat)} are there?", ans, "count", cat)


def _where_qa(cat: str, scene: Scene) -> QA | None:
    regs = scene.regions(cat)
    if not regs:
        return None
    phrases = [region_phrase(r).rstrip(".") for r in regs[:2]]
    ans = phrases[0] + "." if len(phrases) == 1 else \
        phrases[0] + " and " + phrases[1][0].lower() + phrases[1][1:] + "."
    q = f"Where is the {cat}?" if scene.count(cat) == 1 else f"Where are the {plural_of(cat)}?"
    return QA(q, ans, "where", cat)


def _error_topic(e: Error, scene: Scene,
                 named: set[str] | None = None) -> tuple[QA, list[QA]] | None:
    """(primary QA, follow-ups) correcting one error, or None when nothing definite can be
    said from the ground truth. With ``named`` (categories the answer named;
    ``yes_about=unnamed``) the "Yes" follow-up prefers a present object not in it."""
    if e.category == "object_identity" and e.object:
        primary = exists_qa(e.object, bool(e.meta.get("plural")))
        # Follow-ups ask what *is* there: first an existence question answered "Yes" about a
        # present object (the one at the place the answer put the hallucination, else the most
        # frequent one), so each "No" comes with a "Yes" and the yes/no balancing (Sec. C.5)
        # need not erase the corrections themselves; then what that place / the image holds.
        follow: list[QA] = []
        near = scene.at_region(e.where) if e.where else []
        cats = list(dict.fromkeys(o.category for o in near))
        yes_cat = cats[0] if cats else (scene.present[0] if scene.present else None)
        if named is not None:
            unnamed = [c for c in cats + scene.present if c not in named]
            yes_cat = unnamed[0] if unnamed else yes_cat
        if yes_cat is not None:
            follow.append(exists_qa(yes_cat, False, scene.count(yes_cat)))
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
        subj = f"the {plural_of(e.object)}" if many else f"the {e.object}"
        other = f"the {plural_of(e.other)}" if scene.count(e.other) > 1 else f"the {e.other}"
        pron, be = ("They", "are") if many else ("It", "is")
        ans = (f"{pron} {be} {e.right} {other}." if e.right
               else f"{pron} {be} not {e.wrong} {other}.")
        return QA(f"Where {be} {subj} relative to {other}?", ans, "relative", e.object), []
    if e.category == "background_knowledge" and e.right:
        return QA("What kind of place is shown in the image?", f"It is {with_article(e.right)}.",
                  "background"), []
    return None


def _qa_key(q: QA) -> tuple[str, str | None]:
    """What a pair asks about: existence questions count once whatever their answer."""
    return ("exists" if q.kind.startswith("exists") else q.kind), q.object


def _filler_qas(cat: str, scene: Scene) -> list[QA]:
    """Ground-truth questions about a present object, most informative first."""
    out = [_color_qa(cat, scene), _where_qa(cat, scene), _count_qa(cat, scene),
           exists_qa(cat, False, scene.count(cat))]
    return [q for q in out if q is not None]


def template_conversation(errors: list[Error], scene: Scene, n_pairs: int,
                          named: set[str] | None = None) -> list[QA]:
    """``n_pairs`` logically connected QA pairs correcting ``errors`` (annotation judge).

    One primary pair per error in answer order (up to ``n_pairs``), each error's follow-ups
    right after it while there is room, then ground-truth questions about the erroneous
    objects and the other present objects until the conversation has ``n_pairs`` pairs. No
    question is asked twice (two wrong colours of one cup make one colour question). With
    ``named`` (``yes_about=unnamed``) every "Yes" existence question asks about a present
    object the answer did not name while one is left (same number of "Yes" pairs, other
    objects), and the other present objects are visited unnamed first.
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
    for t in (_error_topic(e, scene, named) for e in errors):
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
    rest = [c for c in scene.present if c not in focus]
    unnamed = [c for c in scene.present if c not in named] if named is not None else []
    if named is not None:
        rest.sort(key=lambda c: c in named)     # stable: unnamed first, each in frequency order
    focus += rest
    for cat in focus:
        for q in _filler_qas(cat, scene):
            if len(qas) >= n_pairs:
                return qas
            if q.kind == "exists_yes" and named is not None and q.object in named:
                left = [c for c in unnamed if ("exists", c) not in asked]
                if left:
                    q = exists_qa(left[0], False, scene.count(left[0]))
            if _qa_key(q) in asked or q.question in questions:
                continue
            asked.add(_qa_key(q))
            questions.add(q.question)
            qas.append(q)
    return qas


# ---------------------------------------------------------------------------------------------
# Fig. 9 guidelines 4 and 6: answer length, Is/Are share
# ---------------------------------------------------------------------------------------------

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
