"""NLTK tokenizer, tagger and WordNet for the scorers that reproduce NLTK-based references
(the lemmatising CHAIR of OPERA / less-is-more / PAI, Object HalBench's word matching).

Nothing is downloaded here: a missing resource is a one-line error that names the
``nltk.download`` call (or the Debian package) that provides it. WordNet is read with
:func:`visalign.verifier.entities.load_wordnet` (Debian's ``wordnet-base`` at
``/usr/share/wordnet``, ``$VISALIGN_WORDNET``, or an nltk_data install).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["MissingResource", "TOKENIZER", "TAGGER", "require_nltk", "word_tokenize", "pos_tag",
           "Lemmatizer", "wordnet_pos"]

#: nltk_data resource -> the package name ``nltk.download`` takes.
TOKENIZER = ("tokenizers/punkt_tab/english/", "punkt_tab")
TAGGER = ("taggers/averaged_perceptron_tagger_eng/", "averaged_perceptron_tagger_eng")


class MissingResource(ValueError):
    """A language resource (NLTK data, WordNet, a spaCy model) is not installed."""


def require_nltk(*resources: tuple[str, str]) -> None:
    """Raise :class:`MissingResource` naming the download for the first missing resource."""
    try:
        import nltk.data
    except ImportError:
        raise MissingResource("nltk is not installed (pip install nltk)") from None
    for path, package in resources:
        try:
            nltk.data.find(path)
        except LookupError:
            raise MissingResource(
                f"NLTK data {package!r} not found: run python -c \"import nltk; "
                f"nltk.download('{package}')\" (or point $NLTK_DATA at a folder holding "
                f"{path})") from None


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize`` (punkt sentences, then the Treebank word tokenizer)."""
    import nltk

    require_nltk(TOKENIZER)
    return nltk.word_tokenize(text)


def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """``nltk.pos_tag``: Penn Treebank tags from NLTK's averaged-perceptron tagger."""
    import nltk

    require_nltk(TAGGER)
    return nltk.pos_tag(tokens)


def wordnet_pos(tag: str) -> str:
    """Penn tag -> WordNet part of speech, nouns for everything else (as the references do)."""
    if tag.startswith("J"):
        return "a"
    if tag.startswith("V"):
        return "v"
    if tag.startswith("R"):
        return "r"
    return "n"


class Lemmatizer:
    """``WordNetLemmatizer.lemmatize`` on a local WordNet: the shortest of WordNet's
    ``_morphy`` lemmas, or the word unchanged; cached per (word, pos)."""

    def __init__(self, wordnet_root: str | None = None):
        self.wn = _wordnet(wordnet_root)
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, word: str, pos: str = "n") -> str:
        key = (word, pos)
        out = self._cache.get(key)
        if out is None:
            lemmas = self.wn._morphy(word, pos)
            out = min(lemmas, key=len) if lemmas else word
            self._cache[key] = out
        return out


@functools.lru_cache(maxsize=4)
def _wordnet(root: str | None) -> Any:
    import warnings

    from visalign.verifier.entities import load_wordnet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wn = load_wordnet(root)
    if wn is None:
        raise MissingResource(
            "WordNet not found: install Debian's wordnet-base (apt-get install wordnet-base), "
            "set $VISALIGN_WORDNET to a WordNet database folder, or run python -c \"import "
            "nltk; nltk.download('wordnet')\"")
    return wn
