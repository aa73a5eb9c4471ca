"""CHAIR as OPERA, less-is-more and PAI compute it: the lemmatising ``chair.py`` variant.

The reference is Maxlinn's standalone ``chair.py`` as changed by OPERA (shikiw/OPERA
``chair.py``) and copied by less-is-more (yuezih/less-is-more ``CHAIR-eval/chair.py``) and PAI:
instead of ``pattern``'s ``singularize`` every caption is

1. lower-cased and split with ``nltk.word_tokenize`` (punctuation tokens included),
2. tagged with ``nltk.pos_tag`` and each token lemmatised by WordNet with its part of speech
   (J -> adjective, V -> verb, R -> adverb, anything else -> noun): "glasses" -> "glass",
   "running" -> "run", "people" stays "people";
3. merged in one left-to-right pass over *pairs* of lemmas with the reference's hard-coded
   double words ("traffic light", "baby giraffe" -> giraffe, "toilet seat" -> toilet, "bow tie"
   -> tie, "wine glas" -> wine glass, ...);

then "seat" is dropped when "toilet" occurs and every remaining lemma that is a synonym of the
table is a mention of its category. Ground truth, CHAIR_s, CHAIR_i and recall are those of
:class:`visalign.eval.chair.Chair` (COCO 2014 train + val instances and the objects their human
captions mention, the captions read with the same lemmatiser). ``avg_len`` is the reference's
``Len`` as its ``print_metrics`` shows it: the mean number of tokens after merging, punctuation
included (the reference stores it multiplied by 0.01 and prints it multiplied by 100).

The synonym table is the packaged COCO table read the way the reference reads its copy
(``line.strip().split(', ')``): its double-spaced entries (" motor bike", " cheesecake") and
"iPhone" can never match there, so they are not synonyms here either ("motor bike" merges into
a word that is in no category). A custom table (``synonyms=``) is taken as it is, and its
two-word entries are merged like the reference's double words.

Departures: image ids may be ints or the strings the reference parses ("COCO_val2014_...jpg",
"000000002239.jpg"); ground-truth captions are lemmatised only for the evaluated images (the
reference lemmatises all 600k once and pickles the result: same numbers); an unknown image id is
an error, not an empty ground truth.
"""

from __future__ import annotations

import re
from typing import Any

from visalign.eval.chair import (REFERENCE_UNMATCHABLE, Chair, Mention,
                                  reference_double_words)
from visalign.eval.nltk_data import (TAGGER, TOKENIZER, Lemmatizer, pos_tag, require_nltk,
                                     word_tokenize, wordnet_pos)

__all__ = ["ChairLemma", "CHAIR_VARIANTS", "chair_evaluator", "coco_image_id"]

_UNMATCHABLE = REFERENCE_UNMATCHABLE

#: ``variant`` name -> what the result says about it.
CHAIR_VARIANTS = {
    "reference": "reference chair.py (LisaAnne/Hallucination; singular forms, visalign.eval.chair)",
    "lemma": "OPERA / less-is-more / PAI chair.py (NLTK POS tags + WordNet lemmas)",
    "pattern": "reference chair.py exactly (NLTK tokenizer, Pattern's singular forms, "
               "visalign.eval.chair_pattern)",
}

_IMAGE_ID_RE = re.compile(r"(\d+)(?:\.\w+)?$")


def coco_image_id(value: Any) -> Any:
    """A COCO image id from an int or a file name ("COCO_val2014_000000000042.jpg",
    "000000002239.jpg" -> 2239); anything else is returned unchanged."""
    if isinstance(value, str):
        m = _IMAGE_ID_RE.search(value.strip())
        if m:
            return int(m.group(1))
    return value


class ChairLemma(Chair):
    """CHAIR with the OPERA / less-is-more lemmatisation (module docstring)."""

    variant = "lemma"

    def __init__(self, synonyms: list[list[str]] | None = None, *,
                 wordnet_root: str | None = None):
        super().__init__(synonyms)
        if synonyms is None:
            for w in _UNMATCHABLE:
                self.word_to_category.pop(w, None)
        pairs = reference_double_words()
        if synonyms is not None:
            for w in self.word_to_category:
                if len(w.split()) == 2:
                    pairs.setdefault(w, w)
        self._pairs = pairs
        require_nltk(TOKENIZER, TAGGER)
        self._lemma = Lemmatizer(wordnet_root)

    def _mentions_and_len(self, caption: str) -> tuple[list[Mention], int]:
        low = caption.lower()
        tokens = word_tokenize(low)
        lemma = self._lemma
        lemmas = [lemma(w, wordnet_pos(t)) for w, t in pos_tag(tokens)]
        spans = _spans(low, tokens)
        words: list[tuple[str, int, int]] = []
        i, pairs = 0, self._pairs
        while i < len(lemmas):
            if i + 1 < len(lemmas):
                target = pairs.get(f"{lemmas[i]} {lemmas[i + 1]}")
                if target is not None:
                    words.append((target, spans[i][0], spans[i + 1][1]))
                    i += 2
                    continue
            words.append((lemmas[i], *spans[i]))
            i += 1
        if any(w == "toilet" for w, _, _ in words):
            words_kept = [t for t in words if t[0] != "seat"]
        else:
            words_kept = words
        w2c = self.word_to_category
        return ([Mention(w, w2c[w], s, e) for w, s, e in words_kept if w in w2c], len(words))

    def evaluate(self, records, *, path: Any = None) -> dict:
        recs = []
        for rec in records:
            if isinstance(rec, dict) and "image_id" in rec:
                rec = {**rec, "image_id": coco_image_id(rec["image_id"])}
            recs.append(rec)
        result = super().evaluate(recs, path=path)
        result["variant"] = self.variant
        return result


def _spans(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    """Character spans of the tokens in ``text`` (Treebank quotes ``` `` ``/``''`` and tokens
    it rewrites get an empty span where they would start)."""
    out, pos = [], 0
    for t in tokens:
        k = text.find(t, pos)
        if k < 0:
            out.append((pos, pos))
        else:
            out.append((k, k + len(t)))
            pos = k + len(t)
    return out


def chair_evaluator(variant: str, synonyms: list[list[str]] | None = None) -> Chair:
    """An empty evaluator of ``variant`` (:data:`CHAIR_VARIANTS`) to fill with ground truth."""
    if variant == "reference":
        return Chair(synonyms)
    if variant == "lemma":
        return ChairLemma(synonyms)
    if variant == "pattern":
        from visalign.eval.chair_pattern import ChairPattern

        return ChairPattern(synonyms)
    raise ValueError(f"unknown CHAIR variant {variant!r}; choose one of "
                     f"{', '.join(CHAIR_VARIANTS)}")
