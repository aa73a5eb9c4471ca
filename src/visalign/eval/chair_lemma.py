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

__all__ = ["ChairLemma", "CHAIR_VARIANTS", "chair_class", "coco_image_id", "reference_mentions"]

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
        self._pair_firsts = {k.split()[0] for k in pairs}
        require_nltk(TOKENIZER, TAGGER)
        self._lemma = Lemmatizer(wordnet_root)

    def _mentions_and_len(self, caption: str) -> tuple[list[Mention], int]:
        low = caption.lower()
        tokens = word_tokenize(low)
        lemma = self._lemma
        lemmas = [lemma(w, wordnet_pos(t)) for w, t in pos_tag(tokens)]
        return reference_mentions(lemmas, _spans(low, tokens), self._pairs, self._pair_firsts,
                                  self.word_to_category)

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


def reference_mentions(words: list[str], spans: list[tuple[int, int]], pairs: dict[str, str],
                       firsts: set[str], w2c: dict[str, str]) -> tuple[list[Mention], int]:
    """The reference's last steps over a caption's normalised tokens (lemmas or singular forms)
    and their spans: one left-to-right pass merging ``pairs`` (``firsts``: their first words),
    "seat" dropped when "toilet" occurs, then every word of the table (``w2c``) a mention.
    Also returns the number of words after merging (the reference's ``Len``)."""
    merged: list[tuple[str, int, int]] = []
    i, n = 0, len(words)
    while i < n:
        target = (pairs.get(f"{words[i]} {words[i + 1]}")
                  if i + 1 < n and words[i] in firsts else None)
        if target is not None:
            merged.append((target, spans[i][0], spans[i + 1][1]))
            i += 2
        else:
            merged.append((words[i], *spans[i]))
            i += 1
    kept = merged
    if any(w == "toilet" for w, _, _ in merged):
        kept = [t for t in merged if t[0] != "seat"]
    return [Mention(w, w2c[w], s, e) for w, s, e in kept if w in w2c], len(merged)


def chair_class(variant: str) -> type[Chair]:
    """The evaluator class of ``variant`` (:data:`CHAIR_VARIANTS`); fill it with ground truth
    through its ``from_coco`` / ``from_annotations``."""
    if variant == "reference":
        return Chair
    if variant == "lemma":
        return ChairLemma
    if variant == "pattern":
        from visalign.eval.chair_pattern import ChairPattern

        return ChairPattern
    raise ValueError(f"unknown CHAIR variant {variant!r}; choose one of "
                     f"{', '.join(CHAIR_VARIANTS)}")
