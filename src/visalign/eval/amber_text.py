"""The language tools AMBER's scorer runs on a description: NLTK's noun extraction and spaCy's
near-synonym test (junyangwang0410/AMBER ``inference.py``: ``extract_nouns``,
``check_synonyms_word``).

Nouns are what ``inference.py`` extracts, through the same NLTK calls: ``nltk.word_tokenize``
(punkt_tab sentences, then NLTK's Treebank-style words), ``nltk.pos_tag`` (the averaged-perceptron
tagger) and every token tagged ``NN*`` lemmatised with ``WordNetLemmatizer().lemmatize(word)``
(noun morphology, case kept: "Dogs" stays "Dogs" because WordNet's index is lower-case, so a
capitalised noun never matches AMBER's lower-case vocabulary — as in the reference).

Where the data comes from:

* the tokenizer and tagger from NLTK's data path (``nltk.download('punkt_tab')``,
  ``nltk.download('averaged_perceptron_tagger_eng')``; ``nltk_data=DIR`` puts a folder first);
* WordNet from NLTK's data path when installed there (``nltk.download('wordnet')``, what the
  reference reads), else from a plain WordNet 3.0 database dir (Debian's ``wordnet-base`` at
  ``/usr/share/wordnet`` or ``$VISALIGN_WORDNET``) read with nltk's own reader. Both are
  WordNet 3.0; lemmatisation only reads its noun index and exception lists.

A missing package is one line naming its download (:class:`AmberResourceError`); nothing is
downloaded at run time.

The near-synonym test is ``nlp(a).similarity(nlp(b)) > 0.8`` with spaCy's ``en_core_web_lg``
(``similarity="spacy"``, the reference). ``similarity="exact"`` replaces it with string
equality and needs no spaCy; results say which one ran. Similarities are cached per word pair
(the reference recomputes them; the values are the same).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

__all__ = ["AmberResourceError", "NounExtractor", "Similarity", "make_similarity",
           "SIMILARITY_MODES", "SPACY_MODEL", "SIMILARITY_THRESHOLD"]

SIMILARITY_MODES = ("spacy", "exact")
SPACY_MODEL = "en_core_web_lg"
SIMILARITY_THRESHOLD = 0.8  # inference.py --similarity_score default

_NLTK_PACKAGES = (
    # (resource nltk.data.find looks up, package name for nltk.download, what it is)
    ("tokenizers/punkt_tab/english/", "punkt_tab", "punkt_tab sentence tokenizer"),
    ("taggers/averaged_perceptron_tagger_eng/", "averaged_perceptron_tagger_eng",
     "averaged-perceptron POS tagger"),
)


class AmberResourceError(ValueError):
    """A language resource AMBER's scorer needs is not installed (one line, names the fix)."""


def _add_nltk_data(nltk_data: str | os.PathLike | None) -> None:
    import nltk.data

    if nltk_data is not None:
        d = str(nltk_data)
        if not os.path.isdir(d):
            raise AmberResourceError(f"NLTK data folder not found: {d}")
        if d not in nltk.data.path:
            nltk.data.path.insert(0, d)


def _nltk_wordnet():
    """NLTK's own ``wordnet`` corpus when installed under its data path, else None."""
    import nltk.data

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return None
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except Exception:  # noqa: BLE001 - a broken install: fall back to the local database
        return None
    return wordnet


def _load_wordnet(root: str | None):
    """(reader, description) of the WordNet used for lemmas, or raise AmberResourceError."""
    from visalign.verifier.entities import load_wordnet

    if root is None:
        wn = _nltk_wordnet()
        if wn is not None:
            return wn, f"nltk_data ({wn.root})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our own one-line error below says what to do
        wn = load_wordnet(root)
    if wn is None:
        where = root or "NLTK's data path, $VISALIGN_WORDNET or /usr/share/wordnet"
        raise AmberResourceError(
            f"AMBER needs WordNet and none was found in {where}: run "
            "python -m nltk.downloader wordnet (or install Debian's wordnet-base)")
    return wn, str(wn.root)


class NounExtractor:
    """``inference.py``'s ``extract_nouns``: NN* tokens of ``text``, WordNet noun lemmas.

    ``nltk_data``: a folder searched first for NLTK's tokenizer and tagger; ``wordnet``: a
    WordNet database dir to use instead of NLTK's corpus / the system one. All resources are
    checked here, so a missing one fails before any scoring.
    """

    def __init__(self, nltk_data: str | os.PathLike | None = None,
                 wordnet: str | os.PathLike | None = None):
        import nltk.data
        from nltk.stem import WordNetLemmatizer

        _add_nltk_data(nltk_data)
        for resource, package, what in _NLTK_PACKAGES:
            try:
                nltk.data.find(resource)
            except LookupError:
                raise AmberResourceError(
                    f"AMBER needs NLTK's {what}: run python -m nltk.downloader {package} "
                    "(or point $NLTK_DATA at a folder that has it)") from None
        self._wn, self.wordnet = _load_wordnet(None if wordnet is None else str(wordnet))
        wn = self._wn

        class _Lemmatizer(WordNetLemmatizer):
            # nltk's lemmatize() reads the global ``nltk.corpus.wordnet``; route its morphology
            # to the reader found above (the same WordNet 3.0 database)
            def _morphy(self, form, pos, check_exceptions=True):
                return wn._morphy(form, pos, check_exceptions)

        self._lemmatizer = _Lemmatizer()
        self._lemmas: dict[str, str] = {}

    def lemma(self, word: str) -> str:
        """``WordNetLemmatizer().lemmatize(word)`` (noun), cached."""
        got = self._lemmas.get(word)
        if got is None:
            got = self._lemmas[word] = self._lemmatizer.lemmatize(word)
        return got

    def __call__(self, text: str) -> list[str]:
        import nltk

        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        return [self.lemma(word) for word, pos in tagged if pos.startswith("NN")]


class Similarity:
    """Near-synonym test ``(noun, word) -> bool`` with a ``mode`` name for the result."""

    def __init__(self, mode: str, test: Callable[[str, str], bool], description: str):
        self.mode, self._test, self.description = mode, test, description
        self._cache: dict[tuple[str, str], bool] = {}

    def __call__(self, a: str, b: str) -> bool:
        key = (a, b)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = bool(self._test(a, b))
        return hit


def _spacy_test(nlp, threshold: float) -> Callable[[str, str], bool]:
    docs: dict[str, object] = {}

    def doc(w: str):
        d = docs.get(w)
        if d is None:
            d = docs[w] = nlp(w)
        return d

    def test(a: str, b: str) -> bool:
        with warnings.catch_warnings():
            # spaCy warns when a word has no vector and returns 0.0; inference.py
            # silences UserWarning too
            warnings.simplefilter("ignore", UserWarning)
            return doc(a).similarity(doc(b)) > threshold

    return test


def make_similarity(mode: str = "spacy", *, nlp=None, model: str = SPACY_MODEL,
                    threshold: float = SIMILARITY_THRESHOLD) -> Similarity:
    """The near-synonym test of ``mode``: "spacy" (``nlp`` or ``spacy.load(model)``) or "exact".

    A missing spaCy or model is an :class:`AmberResourceError` naming both ways out.
    """
    if mode == "exact":
        return Similarity("exact", lambda a, b: a == b, "exact (word equality, no spaCy)")
    if mode != "spacy":
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITY_MODES)}, got {mode!r}")
    if nlp is None:
        fix = (f"install it (pip install spacy && python -m spacy download {model}) or score "
               "with --similarity exact (word equality only; the result says so)")
        try:
            import spacy
        except ImportError:
            raise AmberResourceError(f"AMBER's near-synonym step needs spaCy with {model}: "
                                     f"{fix}") from None
        try:
            nlp = spacy.load(model)
        except OSError:
            raise AmberResourceError(f"spaCy model {model} is not installed: {fix}") from None
        name = model
    else:
        name = "given pipeline"
    return Similarity("spacy", _spacy_test(nlp, threshold),
                      f"spacy ({name}, similarity > {threshold})")
