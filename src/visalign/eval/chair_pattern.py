"""CHAIR exactly as the reference chair.py computes it, with Pattern's singular forms.

The reference (LisaAnne/Hallucination ``utils/chair.py``; Maxlinn's Python 3 standalone copy,
which adds the "train track" double word) lower-cases a caption, splits it with
``nltk.word_tokenize``, singularises every token with ``pattern.en.singularize``, merges pairs of
tokens in one left-to-right pass with its hard-coded double words, drops "seat" when "toilet"
occurs, and counts every remaining token that is an entry of its synonym table, read with
``line.strip().split(', ')``. :class:`visalign.eval.chair.Chair` departs from it on purpose
(inflect's singular forms, table words never singularised, stripped entries, multi-word terms
merged longest first); this variant does not.

Pattern's quirks therefore hold here: "bus" becomes "bu" and is never an object ("buses" is a
bus), "ties" becomes "ty", "glass" becomes "glas" (hence the reference's "wine glas" rule), and the
table's double-spaced " motor bike" and " cheesecake" and capitalised "iPhone" never match.

Pattern is not a dependency: its singular forms come from a packaged table
(``resources/chair/pattern_singular.json``, written by ``scripts/make_pattern_singular_table.py``
from Pattern's own ``singularize``) of every token whose Pattern singular is, or which itself
is, a word the reference can match, out of those words' inflections and every WordNet noun with
its plurals. A token outside the table matches nothing, as under Pattern for that vocabulary.
Tokens are ``nltk.word_tokenize``'s (:func:`word_tokens` runs NLTK's own patterns, skipping those
that cannot match, about 4x faster); needs NLTK's ``punkt_tab``.

Ground truth, CHAIR_s, CHAIR_i and recall are :class:`~visalign.eval.chair.Chair`'s (COCO 2014
train + val instances and the objects their human captions mention, read the same way);
``avg_len`` counts tokens after merging, punctuation included.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from typing import Any

from visalign.eval.chair import (
    REFERENCE_UNMATCHABLE,
    Chair,
    Mention,
    load_synonyms,
    reference_double_words,
)
from visalign.eval.nltk_data import TOKENIZER, require_nltk

__all__ = ["ChairPattern", "matchable_words", "pattern_singular_table", "reference_synonyms",
           "word_tokens"]


def reference_synonyms() -> list[list[str]]:
    """The packaged COCO table as the reference matches it (its unmatchable entries left out)."""
    return [[w for w in line if w not in REFERENCE_UNMATCHABLE] for line in load_synonyms(None)]


def matchable_words() -> set[str]:
    """The single words the reference can match: single-word synonyms of its table (read as it
    reads it), the words of its double words, and the toilet-seat rule's words."""
    words = {w for line in reference_synonyms() for w in line if " " not in w}
    for key in reference_double_words():
        words.update(key.split())
    return words | {"toilet", "seat"}


# What each of NLTK's word-tokenizer patterns needs in a sentence to match at all (a character
# or string it cannot match without), by pattern: a step whose needs are absent is skipped, which
# changes nothing. Patterns not listed here (another NLTK version) always run.
_NEEDS: dict[str, tuple[str, ...]] = {
    "([«“‘„]|[`]+)": tuple("«“‘„`"),
    '^\\"': ('"',),
    "(``)": ("`", '"'),
    "([ \\(\\[{<])(\\\"|\\'{2})": ('"', "'"),
    "(?i)(?<!\\w)(\\')(?!(?:re|ve|ll|m|t|s|d|n)\\b)(?=\\w)": ("'",),
    "([^\\.])(\\.)([\\]\\)}>\"\\'»”’ ]*+)\\s*$": (".",),
    "([:,])([^\\d])": (":", ","),
    "([:,])$": (":", ","),
    "\\.{2,}": (".",),
    "[;@#$%&]": tuple(";@#$%&"),
    "[\\u2012-\\u2015]": tuple("\u2012\u2013\u2014\u2015"),
    "([^\\.])(\\.)([\\]\\)}>\"\\']*)\\s*$": (".",),
    "[?!]": ("?", "!"),
    "([^'])' ": ("'",),
    "[*]": ("*",),
    "[\\]\\[\\(\\)\\{\\}\\<\\>]": tuple("[](){}<>"),
    "--": ("--",),
    "([»”’])": tuple("»”’"),
    "''": ("''",),
    '"': ('"',),
    "([^' ])('[sS]|'[mM]|'[dD]|') ": ("'",),
    "([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ": ("'",),
}
# the contractions are case-insensitive: checked against the case-folded sentence
_NEEDS_FOLDED: dict[str, tuple[str, ...]] = {
    "(?i)\\b(can)(?#X)(not)\\b": ("cannot",),
    "(?i)\\b(d)(?#X)('ye)\\b": ("d'ye",),
    "(?i)\\b(gim)(?#X)(me)\\b": ("gimme",),
    "(?i)\\b(gon)(?#X)(na)\\b": ("gonna",),
    "(?i)\\b(got)(?#X)(ta)\\b": ("gotta",),
    "(?i)\\b(lem)(?#X)(me)\\b": ("lemme",),
    "(?i)\\b(more)(?#X)('n)\\b": ("more'n",),
    "(?i)\\b(wan)(?#X)(na)(?=\\s)": ("wanna",),
    "(?i) ('t)(?#X)(is)\\b": ("'tis",),
    "(?i) ('t)(?#X)(was)\\b": ("'twas",),
}


@functools.lru_cache(maxsize=1)
def _treebank_steps() -> tuple:
    """NLTK's word-tokenizer substitutions, taken from NLTK itself, each as its underlying
    compiled pattern (NLTK 3.9+ wraps every one in a per-call timeout guard that costs about as
    much as the matching) with what it needs to match (``_NEEDS``); the patterns, their order
    and the engine are NLTK's."""
    from nltk.tokenize import _treebank_word_tokenizer as tb

    def step(p: Any, sub: str) -> tuple:
        rx = getattr(p, "_rx", p)
        if rx.pattern in _NEEDS:
            return rx, sub, _NEEDS[rx.pattern], False
        if rx.pattern in _NEEDS_FOLDED:
            return rx, sub, _NEEDS_FOLDED[rx.pattern], True
        return rx, sub, None, False

    first = ([step(r, s) for r, s in tb.STARTING_QUOTES]
             + [step(r, s) for r, s in tb.PUNCTUATION]
             + [step(*tb.PARENS_BRACKETS), step(*tb.DOUBLE_DASHES)])
    second = ([step(r, s) for r, s in tb.ENDING_QUOTES]
              + [step(r, r" \1 \2 ") for r in [*tb.CONTRACTIONS2, *tb.CONTRACTIONS3]])
    return first, second


def _apply(steps: tuple, sent: str) -> str:
    folded = None
    for rx, sub, needs, fold in steps:
        if needs is not None:
            if fold:
                folded = sent.casefold() if folded is None else folded
                if not any(n in folded for n in needs):
                    continue
            elif not any(n in sent for n in needs):
                continue
        sent = rx.sub(sub, sent)
        folded = None            # the sentence may have changed
    return sent


def word_tokens(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``, token for token (punkt sentences, then NLTK's Treebank
    substitutions in ``NLTKWordTokenizer.tokenize``'s order, without parentheses conversion;
    steps that cannot match are skipped)."""
    from nltk.tokenize import sent_tokenize

    first, second = _treebank_steps()
    out: list[str] = []
    for sent in sent_tokenize(text, "english"):
        sent = " " + _apply(first, sent) + " "
        out += _apply(second, sent).split()
    return out


@functools.lru_cache(maxsize=1)
def pattern_singular_table() -> tuple[dict[str, str], str]:
    """(token -> Pattern's singular, sha256 of the table file)."""
    raw = (resources.files("visalign") / "resources" / "chair" /
           "pattern_singular.json").read_bytes()
    return json.loads(raw)["singular"], hashlib.sha256(raw).hexdigest()


class ChairPattern(Chair):
    """CHAIR with the reference's tokenizer, Pattern's singular forms and its table reading
    (module docstring). Only the packaged COCO table: Pattern's table covers its words."""

    variant = "pattern"

    def __init__(self, synonyms: list[list[str]] | None = None):
        if synonyms is not None:
            raise ValueError("the pattern CHAIR variant matches the packaged COCO table only "
                             "(its singular forms are tabled for those words)")
        super().__init__(None)
        for w in REFERENCE_UNMATCHABLE:
            self.word_to_category.pop(w, None)
        self._pairs = reference_double_words()
        self._pair_firsts = {k.split()[0] for k in self._pairs}
        self._pattern, self._table_sha = pattern_singular_table()
        require_nltk(TOKENIZER)

    def _index_rules(self) -> dict:
        # cacheable: the ground truth depends on the table and the tokenizer, both named here
        return {**super()._index_rules(), "variant": self.variant,
                "pattern_table": self._table_sha}

    def _mentions_and_len(self, caption: str) -> tuple[list[Mention], int]:
        from visalign.eval.chair_lemma import _spans, reference_mentions

        low = caption.lower()
        tokens = word_tokens(low)
        table = self._pattern
        # a token outside the table is nothing the reference could match
        words = [table.get(t, t) for t in tokens]
        return reference_mentions(words, _spans(low, tokens), self._pairs, self._pair_firsts,
                                  self.word_to_category)

    def evaluate(self, records, *, path: Any = None) -> dict:
        result = super().evaluate(records, path=path)
        result["variant"] = self.variant
        return result
