"""The entity set C of FiSAO (Sec. 3.3.3, App. A.1.1): which words of a response get a reward.

FiSAO builds C from the Detic (LVIS) and COCO label vocabularies and expands it "by including
similar words and plural forms using the inflect library and the wordnet module from the nltk
library" (1,204 words -> 5,678). visalign builds it from

1. ``extra`` vocabulary (the micro-world's own categories and synonyms), highest precedence;
2. the COCO categories with their CHAIR synonyms (``resources/coco_synonyms.txt``; an internal
   list of the 80 COCO category names when that file is absent);
3. a broad hand-written list of concrete object nouns (``resources/entity_nouns.txt``, the
   Detic/LVIS analogue);

then adds plural/singular forms (``inflect``) and WordNet synonyms. Every surface form maps to
one *canonical* entity name: a synonym from a table maps to its category (``"bikes"`` ->
``"bicycle"``), an inflection maps to the canonical of the word it came from, and a WordNet
synonym maps to the canonical of the word whose synset it was found in. On a conflict the first
assignment wins, in the order: sources 1, 2, 3 (each source's own words before its
inflections), then WordNet synonyms (and their inflections) in the same source order.

Departures from the paper (documented here because the paper gives no further detail):

* Words naming the picture itself (``picture``, ``photo``, ``image``, ``scene``, ...,
  :data:`META_WORDS`) are left out unless ``extra`` lists them: "This picture shows" is not an
  object claim, yet WordNet makes "picture" a synonym of "painting".

* WordNet expansion is restricted to keep C precise: only the first ``wordnet_senses`` noun
  senses of a word, only concrete lexicographer files (artifact, animal, food, plant, object,
  person, body, substance, Tops), only lower-case lemmas of at most three words without digits
  (skips proper nouns such as ``Canis_familiaris``), and only lemmas for which that synset is
  itself one of *their* first ``wordnet_senses`` senses ("reciprocal" filter: ``car`` gives
  ``automobile`` but not ``machine``; ``bicycle`` gives ``bike`` but not ``wheel``).
* WordNet is read with nltk's ``WordNetCorpusReader`` from a local directory (Debian's
  ``wordnet-base`` at ``/usr/share/wordnet`` by default, or ``$VISALIGN_WORDNET``), never
  downloaded. Debian's files lack ``lexnames`` and ``index.sense``, which nltk's reader opens at
  construction; :class:`_LocalWordNetReader` supplies the standard (fixed since WordNet 1.5)
  lexicographer-file table and skips the WordNet-3.0 sense-key remapping that only the
  multilingual functions use. When no WordNet is found the expansion skips it with a warning and
  ``stats()["wordnet"]`` is False.
* inflect's singular of a word ending in "s" is often junk (``bus`` -> ``bu``); a singular is
  kept only when it round-trips through ``plural_noun`` and, with WordNet available, is a WordNet
  noun. Plurals of words that already look plural (``jeans`` -> ``jeanss``) are dropped.

Matching (:meth:`EntitySet.find`) is case-insensitive on whole words; hyphens, spaces and
apostrophes between words are interchangeable (``t-shirt`` == ``t shirt``), and the longest
entity wins (``traffic light`` before ``light``, ``hot dog`` before ``dog``).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from visalign.io import DataError, atomic_write_text

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
COCO_SYNONYMS_PATH = RESOURCES / "coco_synonyms.txt"
ENTITY_NOUNS_PATH = RESOURCES / "entity_nouns.txt"
DEFAULT_WORDNET_DIRS = ("/usr/share/wordnet",)

#: The 80 COCO detection category names (used when ``coco_synonyms.txt`` is absent).
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: Words that name the picture itself rather than something in it ("This photo shows ...");
#: never entities unless the ``extra`` vocabulary lists them (WordNet would otherwise make
#: "picture" a synonym of "painting" and reward or punish every "This picture shows").
META_WORDS = frozenset({"picture", "pictures", "photo", "photos", "photograph", "photographs",
                        "image", "images", "snapshot", "snapshots", "scene", "scenes"})

#: WordNet lexicographer files whose synsets name picturable things.
CONCRETE_LEXNAMES = frozenset({
    "noun.artifact", "noun.animal", "noun.food", "noun.plant", "noun.object", "noun.person",
    "noun.body", "noun.substance", "noun.Tops",
})

# The standard WordNet lexicographer-file table (lexnames(5WN)); unchanged since WordNet 1.5.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

# A word = a run of letters/digits. Everything else separates words; only whitespace, hyphens
# and apostrophes may separate the words *inside* a multi-word entity.
_WORD = re.compile(r"[^\W_]+")
_JOINABLE_GAP = re.compile(r"[\s\-'\u2019]+")


@dataclass(frozen=True)
class EntityMention:
    """One entity occurrence: ``text[start:end] == surface`` (character offsets)."""

    surface: str
    canonical: str
    start: int
    end: int


def normalize_entity(text: str) -> str:
    """Matching key of a surface form: lower-case words joined by single spaces.

    ``"T-Shirt"`` -> ``"t shirt"``, ``"hot  dog"`` -> ``"hot dog"``.
    """
    return " ".join(w.lower() for w in _WORD.findall(text))


# ----------------------------------------------------------------------------- resources


def read_synonyms_table(path: str | os.PathLike) -> list[list[str]]:
    """Read a CHAIR-form synonyms table: one line per category, comma-separated, first = name.

    Blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = [w.strip() for w in line.split(",") if w.strip()]
        if not words:
            raise DataError(path, "no words on line", record=f"line {i + 1}")
        rows.append(words)
    return rows


def read_word_list(path: str | os.PathLike) -> list[str]:
    """Read one word or phrase per line (``#`` comments and blank lines skipped)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def coco_synonyms() -> list[list[str]]:
    """The packaged COCO synonyms table, or the 80 bare COCO names when it is not there."""
    if COCO_SYNONYMS_PATH.exists():
        return read_synonyms_table(COCO_SYNONYMS_PATH)
    return [[c] for c in COCO_CATEGORIES]


# ----------------------------------------------------------------------------- WordNet


def _local_wordnet_reader_cls():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _LocalWordNetReader(WordNetCorpusReader):
        """nltk's reader on a plain WordNet database dir (e.g. Debian ``wordnet-base``)."""

        def open(self, fileid):  # noqa: A003 - nltk's name
            if fileid == "lexnames" and not os.path.exists(os.path.join(str(self.root),
                                                                        "lexnames")):
                return io.StringIO("".join(f"{i:02d}\t{n}\t{3 if n.startswith('adj') else 1}\n"
                                           for i, n in enumerate(_LEXNAMES)))
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            # The WordNet-3.0 remapping reads index.sense (absent in Debian's files) and is only
            # used by the multilingual (OMW) functions, which we never call.
            return None

    return _LocalWordNetReader


def _wordnet_candidates(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    cands = []
    if os.environ.get("VISALIGN_WORDNET"):
        cands.append(Path(os.environ["VISALIGN_WORDNET"]))
    cands += [Path(d) for d in DEFAULT_WORDNET_DIRS]
    try:  # an nltk_data install the user already has (never downloads)
        import nltk.data

        cands.append(Path(str(nltk.data.find("corpora/wordnet"))))
    except (LookupError, ImportError, OSError, ValueError):
        pass
    return cands


@functools.lru_cache(maxsize=4)
def load_wordnet(root: str | None = None):
    """nltk ``WordNetCorpusReader`` over a local WordNet dir, or None (with a warning).

    ``root`` None tries ``$VISALIGN_WORDNET``, ``/usr/share/wordnet`` and an existing nltk_data
    install, in that order. The reader is cached per root (loading takes about a second).
    """
    tried = []
    for cand in _wordnet_candidates(root):
        if not (cand / "index.noun").exists() or not (cand / "data.noun").exists():
            tried.append(str(cand))
            continue
        try:
            import nltk.data

            # nltk >= 3.9 only opens corpus files under its data path; register this dir.
            if str(cand) not in [str(p) for p in nltk.data.path]:
                nltk.data.path.append(str(cand))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multilingual functions are not available"
                return _local_wordnet_reader_cls()(str(cand), None)
        except Exception as e:  # noqa: BLE001 - any failure means "no WordNet", reported
            tried.append(f"{cand} ({type(e).__name__}: {e})")
    warnings.warn("WordNet not found (tried: " + "; ".join(tried) + "); entity-set expansion "
                  "skips WordNet synonyms (set $VISALIGN_WORDNET to a WordNet database dir)",
                  stacklevel=2)
    return None


def _tag_count(wn, lemma: str, pos: str) -> int:
    """How often ``lemma`` was sense-tagged with part of speech ``pos`` (WordNet cntlist)."""
    total = 0
    for ss in wn.synsets(lemma, pos=pos):
        for lm in ss.lemmas():
            if lm.name().lower() == lemma.lower():
                try:
                    total += lm.count()
                except Exception:  # noqa: BLE001 - no cntlist in this WordNet
                    return 0
    return total


def wordnet_synonyms(wn, word: str, senses: int = 2,
                     lexnames: frozenset[str] = CONCRETE_LEXNAMES) -> list[str]:
    """Synonyms of ``word`` from WordNet, lower-case, underscores replaced by spaces.

    Filters (module docstring): the first ``senses`` noun senses of ``word`` that are concrete
    and in the same lexicographer file as its first concrete sense (``dog`` -> not the
    ``frump`` sense); lower-case lemmas of at most three words without digits; the synset must be
    one of the lemma's own first ``senses`` senses (reciprocal); and the lemma must be tagged
    more often as a noun than as a verb/adjective in WordNet's sense counts (``shake``,
    ``tough``, ``minor`` are dropped).
    """
    out: list[str] = []
    try:
        synsets = [ss for ss in wn.synsets(word.replace(" ", "_"), pos="n")[:senses]
                   if ss.lexname() in lexnames]
    except Exception:  # noqa: BLE001 - odd input (e.g. characters WordNet cannot look up)
        return out
    if not synsets:
        return out
    first_lexname = synsets[0].lexname()
    for ss in synsets:
        if ss.lexname() != first_lexname:
            continue
        for lemma in ss.lemma_names():
            if lemma != lemma.lower() or any(c.isdigit() for c in lemma):
                continue  # proper nouns (Canis_familiaris, TV) and codes
            phrase = lemma.replace("_", " ")
            if len(phrase) < 2 or len(phrase.split()) > 3 or normalize_entity(phrase) == \
                    normalize_entity(word):
                continue
            # Reciprocal filter: keep the lemma only if this synset is one of its main senses.
            if ss not in wn.synsets(lemma, pos="n")[:senses]:
                continue
            if _tag_count(wn, lemma, "v") + _tag_count(wn, lemma, "a") + \
                    _tag_count(wn, lemma, "s") > _tag_count(wn, lemma, "n"):
                continue
            if phrase not in out:
                out.append(phrase)
    return out


# ----------------------------------------------------------------------------- inflection


class _Inflector:
    """Plural/singular forms with guards against inflect's junk on words ending in "s"."""

    def __init__(self, wn=None):
        import inflect

        self.p = inflect.engine()
        self.wn = wn

    def _is_noun(self, phrase: str) -> bool:
        if self.wn is None:
            return True
        last = phrase.split()[-1]
        try:
            return bool(self.wn.synsets(last, pos="n"))
        except Exception:  # noqa: BLE001
            return False

    def singular(self, word: str) -> str | None:
        s = self.p.singular_noun(word)
        if not s or s == word or self.p.plural_noun(s) != word:
            return None
        if self.wn is None and word.endswith(("ss", "us", "is", "as")):
            return None
        if self.wn is not None and not self._is_noun(s):
            return None
        return s

    def forms(self, word: str) -> list[str]:
        """Other number forms of ``word`` (its singular if it is plural, else its plural)."""
        sing = self.singular(word)
        if sing is not None:
            return [sing]
        plural = self.p.plural_noun(word)
        if not plural or plural == word:
            return []
        if plural == word + "s" and word.endswith("s"):
            return []  # jeans -> jeanss, tennis -> tenniss
        return [plural]


# ----------------------------------------------------------------------------- entity set

VocabLike = Mapping[str, Sequence[str]] | Sequence[Sequence[str] | str] | str | os.PathLike


def _as_rows(vocab: VocabLike | None) -> list[list[str]]:
    """Accept a synonyms table (path, list of rows, {canonical: [synonyms]}) or plain words."""
    if vocab is None:
        return []
    if isinstance(vocab, (str, os.PathLike)):
        return read_synonyms_table(vocab)
    if isinstance(vocab, Mapping):
        return [[k, *v] for k, v in vocab.items()]
    rows = []
    for r in vocab:
        rows.append([r] if isinstance(r, str) else list(r))
    return rows


class EntitySet:
    """Surface form -> canonical entity name, with a fast longest-match finder.

    Build with :meth:`build`; look words up with :meth:`canonical`, find mentions in text with
    :meth:`find`.
    """

    def __init__(self, forms: Mapping[str, str], stats: Mapping | None = None,
                 cache_size: int = 4096):
        self.forms: dict[str, str] = {normalize_entity(k): v for k, v in forms.items()
                                      if normalize_entity(k)}
        self._stats = dict(stats or {"base": len(self.forms), "expanded": len(self.forms),
                                     "wordnet": False})
        self.max_words = max((k.count(" ") + 1 for k in self.forms), default=1)
        self._find_cached = functools.lru_cache(maxsize=cache_size)(self._find)

    # -- construction
    @classmethod
    def build(cls, *, extra: VocabLike | None = None, synonyms: VocabLike | None | str = "coco",
              nouns: bool | VocabLike = True, inflect: bool = True, wordnet: bool = True,
              wordnet_root: str | os.PathLike | None = None, wordnet_senses: int = 2
              ) -> "EntitySet":
        """Build C (module docstring).

        Args:
            extra: micro-world (or user) vocabulary: a CHAIR-form synonyms table path, a list of
                rows ``[canonical, synonym, ...]`` or words, or ``{canonical: [synonyms]}``.
            synonyms: ``"coco"`` = the packaged COCO table (or the 80 names); None = none; or a
                table like ``extra``.
            nouns: True = the packaged broad noun list; False = none; or a path / list of words.
            inflect: add plural/singular forms.
            wordnet: add WordNet synonyms (skipped with a warning if WordNet is not found).
            wordnet_root: WordNet database dir (default: see :func:`load_wordnet`).
            wordnet_senses: how many leading noun senses of a word to take synonyms from.
        """
        sources: list[list[list[str]]] = [_as_rows(extra)]
        sources.append(coco_synonyms() if synonyms == "coco" else _as_rows(synonyms))
        if nouns is True:
            sources.append([[w] for w in read_word_list(ENTITY_NOUNS_PATH)])
        elif nouns is False or nouns is None:
            sources.append([])
        elif isinstance(nouns, (str, os.PathLike)):
            sources.append([[w] for w in read_word_list(nouns)])
        else:
            sources.append(_as_rows(nouns))

        wn = None
        if wordnet:
            wn = load_wordnet(None if wordnet_root is None else str(wordnet_root))
        infl = _Inflector(wn) if inflect else None

        forms: dict[str, str] = {}

        user_keys = {normalize_entity(w) for row in sources[0] for w in row}

        def add(surface: str, canonical: str) -> bool:
            key = normalize_entity(surface)
            if key in META_WORDS and key not in user_keys:
                return False
            if key and key not in forms:
                forms[key] = canonical
                return True
            return False

        n_inflect = n_wordnet = 0
        base_keys: set[str] = set()
        for rows in sources:
            # The source's own words first, then their inflections (so a listed "glasses"
            # keeps its meaning rather than becoming the plural of "glass").
            for row in rows:
                canon = " ".join(row[0].lower().split())
                for w in row:
                    base_keys.add(normalize_entity(w))
                    add(w, forms.get(normalize_entity(row[0]), canon))
            if infl is not None:
                for row in rows:
                    canon = forms.get(normalize_entity(row[0]))
                    for w in row:
                        for f in infl.forms(normalize_entity(w)):
                            n_inflect += add(f, forms.get(normalize_entity(w), canon))
        if wn is not None:
            for rows in sources:
                for row in rows:
                    for w in row:
                        key = normalize_entity(w)
                        canon = forms.get(key)
                        if canon is None:
                            continue
                        for syn in wordnet_synonyms(wn, key, wordnet_senses):
                            if add(syn, canon):
                                n_wordnet += 1
                                if infl is not None:
                                    for f in infl.forms(normalize_entity(syn)):
                                        n_wordnet += add(f, canon)
        base_keys.discard("")
        base_keys -= META_WORDS - user_keys
        stats = {"base": len(base_keys), "expanded": len(forms),
                 "canonical": len(set(forms.values())), "inflect_added": n_inflect,
                 "wordnet_added": n_wordnet, "wordnet": wn is not None}
        return cls(forms, stats)

    # -- persistence (so a run records exactly which C it used)
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``{"stats": ..., "forms": {surface: canonical}}`` as JSON (atomically)."""
        return atomic_write_text(path, json.dumps({"stats": self._stats, "forms": self.forms},
                                                  indent=1, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EntitySet":
        from visalign.io import read_json

        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("forms"), dict):
            raise DataError(path, "expected an object with a 'forms' mapping", field="forms")
        return cls(data["forms"], data.get("stats"))

    # -- queries
    def stats(self) -> dict:
        """``{"base", "expanded", "canonical", "inflect_added", "wordnet_added", "wordnet"}``."""
        return dict(self._stats)

    def __len__(self) -> int:
        return len(self.forms)

    def __contains__(self, surface: str) -> bool:
        return normalize_entity(surface) in self.forms

    def canonical(self, surface: str) -> str | None:
        """Canonical entity name of a surface form, or None when it is not in C."""
        return self.forms.get(normalize_entity(surface))

    @property
    def canonicals(self) -> set[str]:
        return set(self.forms.values())

    def find(self, text: str) -> list[EntityMention]:
        """All entity mentions in ``text``, left to right, longest match first, no overlaps."""
        return list(self._find_cached(text))

    def _find(self, text: str) -> tuple[EntityMention, ...]:
        toks = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
        n = len(toks)
        # joinable[j]: tokens j and j+1 may belong to one multi-word entity.
        joinable = [bool(_JOINABLE_GAP.fullmatch(text, toks[j][1], toks[j + 1][0]))
                    for j in range(n - 1)]
        out: list[EntityMention] = []
        i = 0
        while i < n:
            span = 1
            while span < self.max_words and i + span < n and joinable[i + span - 1]:
                span += 1
            for length in range(span, 0, -1):
                key = " ".join(t[2] for t in toks[i:i + length])
                canon = self.forms.get(key)
                if canon is not None:
                    s, e = toks[i][0], toks[i + length - 1][1]
                    out.append(EntityMention(text[s:e], canon, s, e))
                    i += length
                    break
            else:
                i += 1
        return tuple(out)
