"""CHAIR: object hallucination in captions (Rohrbach et al. 2018, "Object Hallucination in
Image Captioning"), as used by both the nSFT and the FiSAO papers.

Semantics follow the reference implementation (LisaAnne/Hallucination ``utils/chair.py`` and
the widely used standalone variant that adds recall and the ``train track`` rule):

* ground-truth objects of an image = COCO categories of its instance annotations
  ∪ the objects mentioned in its human reference captions;
* a caption is lower-cased, tokenised and singularised; two-word terms are merged in one
  left-to-right pass ("traffic light", "hot dog", "teddy bear", ...); "baby/adult <animal>" →
  the animal, "passenger jet/train" → jet/train, "bow tie" → tie, "toilet seat" → toilet;
  "seat" is dropped when "toilet" also occurs;
* each remaining word that is in the synonym table is a *mention* of that table line's
  category; every mention counts (a caption saying "dog ... dogs" has two mentions);
* CHAIR_s = captions with >= 1 hallucinated mention / captions;
  CHAIR_i = hallucinated mentions / all mentions; recall = ground-truth categories mentioned /
  ground-truth categories (summed over captions); ``chair`` = (CHAIR_s + CHAIR_i) / 2 (nSFT).

Where this departs from the reference (on purpose, all documented):

* Tokenizer: a compiled regex (runs of letters/digits, hyphenated compounds kept as one token,
  apostrophes split off) instead of ``nltk.word_tokenize``; the two agree on ordinary captions
  ("dog's" → "dog" + "s", "hot-dog" stays one token) and no NLTK data is needed.
* Singular forms come from ``inflect`` (cached per word) instead of ``pattern.en.singularize``.
  Words that are themselves in the synonym table (or part of a multi-word term) are never
  singularised ("bus", "glass", "scissors", "people" stay as they are), nor are a few common
  non-nouns ending in "s" ("is", "was", "this", ...) that inflect would mangle. pattern's
  ``"glass" → "glas"`` bug, and the ``wine glas`` patch for it, therefore do not exist here.
* Synonym entries are stripped and lower-cased: the reference split on ``", "`` literally, so
  the table's double-spaced entries (" motor bike", " cheesecake") and "iPhone" never matched.
* Multi-word synonyms of the table are merged like the hard-coded double words, longest first,
  so a custom table (the micro-world's) with multi-word categories works, and the COCO table's
  "stove top oven" (never matched by the reference, which only merges pairs) is one mention.
* ``avg_len`` is the mean number of regex word tokens per caption (the reference reported a
  counter it never updated).
* An image id with no ground truth is an error, not a KeyError or a silent empty set.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from visalign.data.coco import coco_json, norm_image_id
from visalign.io import DataError

__all__ = ["Mention", "Chair", "load_synonyms", "caption_text", "reference_double_words",
           "REFERENCE_UNMATCHABLE"]

# Letters/digits runs; hyphenated compounds stay one token (as nltk.word_tokenize keeps them).
# ``[^\W_]`` = a word character that is not "_": Unicode letters and digits.
_TOKEN_RE = re.compile(r"[^\W_]+(?:-[^\W_]+)*")

# Hard-coded double words of the reference (two-word keys only: the reference merges pairs).
_REFERENCE_DOUBLE_WORDS = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "home plate", "train track",
]
# 'baby giraffe' is a giraffe, not a (human) baby.
_ANIMAL_WORDS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                 "giraffe", "animal", "cub"]
# 'passenger jet' is a jet, not a (human) passenger.
_VEHICLE_WORDS = ["jet", "train"]

#: Entries of the reference's synonym table that its ``line.strip().split(', ')`` parsing leaves
#: unmatchable (double-spaced " motor bike" and " cheesecake", capitalised "iPhone").
REFERENCE_UNMATCHABLE = ("motor bike", "cheesecake", "iphone")


def reference_double_words() -> dict[str, str]:
    """The reference's two-word merges, as it builds them: its double words (each to itself),
    "baby/adult <animal>" -> the animal, "passenger jet/train" -> jet/train, "bow tie" -> tie,
    "toilet seat" -> toilet and "wine glas" (Pattern's singular of "wine glass") -> wine glass."""
    pairs = {dw: dw for dw in _REFERENCE_DOUBLE_WORDS}
    for a in _ANIMAL_WORDS:
        pairs[f"baby {a}"] = a
        pairs[f"adult {a}"] = a
    for v in _VEHICLE_WORDS:
        pairs[f"passenger {v}"] = v
    pairs["bow tie"] = "tie"
    pairs["toilet seat"] = "toilet"
    pairs["wine glas"] = "wine glass"
    return pairs


# Common non-nouns ending in "s" that inflect would wrongly singularise ("this" -> "thi").
_NEVER_SINGULARISE = frozenset(
    "is was has does this his hers its as us yes thus always perhaps across towards afterwards "
    "besides less unless whereas sometimes plus news lens gas glass grass dress bus series "
    "species means various famous previous nervous delicious numerous".split())


class Mention(NamedTuple):
    """One object word of a caption: the (singular, merged) word, its category and the
    character span ``caption[start:end]`` it came from (covering both words when merged)."""

    word: str
    category: str
    start: int
    end: int


def load_synonyms(path: str | os.PathLike | None = None) -> list[list[str]]:
    """Read a CHAIR synonym table: one line per category, comma-separated, first = category.

    ``None`` loads the packaged 80-category COCO table. Entries are stripped and lower-cased,
    duplicates within a line dropped; a word listed under two categories is a :class:`DataError`.
    """
    if path is None:
        text = (resources.files("visalign") / "resources" / "coco_synonyms.txt").read_text(
            encoding="utf-8")
        where: Any = "<packaged coco_synonyms.txt>"
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(p, "synonym table not found")
        text, where = p.read_text(encoding="utf-8"), p
    table: list[list[str]] = []
    owner: dict[str, tuple[str, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words: list[str] = []
        for w in line.split(","):
            w = " ".join(w.strip().lower().split())
            if w and w not in words:
                words.append(w)
        if not words:
            continue
        for w in words:
            if w in owner and owner[w][0] != words[0]:
                raise DataError(where, f"synonym {w!r} is listed under both {owner[w][0]!r} "
                                       f"(line {owner[w][1]}) and {words[0]!r}",
                                record=f"line {lineno}")
            owner[w] = (words[0], lineno)
        table.append(words)
    if not table:
        raise DataError(where, "synonym table is empty")
    return table


def caption_text(record: Mapping, index: Any = None, path: Any = None) -> str:
    """The caption of a record: ``caption``, or ``answer`` as written by ``visalign generate``."""
    for key in ("caption", "answer"):
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise DataError(path, f"expected a string, got {type(value).__name__}",
                                record=index, field=key)
            return value
    raise DataError(path, "record has neither 'caption' nor 'answer'", record=index,
                    field="caption")


class Chair:
    """CHAIR evaluator over one synonym table (see the module docstring for the rules).

    Build the ground truth with :meth:`from_coco` or :meth:`from_annotations`; a bare
    ``Chair(synonyms)`` can still extract :meth:`mentions`.
    """

    def __init__(self, synonyms: list[list[str]] | None = None):
        self.synonyms = synonyms if synonyms is not None else load_synonyms(None)
        # One flat dict word -> category, built once.
        self.word_to_category: dict[str, str] = {}
        for line in self.synonyms:
            for w in line:
                self.word_to_category[w] = line[0]
        self.categories: list[str] = [line[0] for line in self.synonyms]

        # Multi-word terms -> the word they count as. Reference rules first, table terms add.
        merges: dict[tuple[str, ...], str] = {}
        for dw in _REFERENCE_DOUBLE_WORDS:
            merges[tuple(dw.split())] = dw
        for a in _ANIMAL_WORDS:
            merges[("baby", a)] = a
            merges[("adult", a)] = a
        for v in _VEHICLE_WORDS:
            merges[("passenger", v)] = v
        merges[("bow", "tie")] = "tie"
        merges[("toilet", "seat")] = "toilet"
        for w in self.word_to_category:
            parts = tuple(w.split())
            if len(parts) > 1:
                merges.setdefault(parts, w)
        # Index by first word, longest first: one dict lookup per token in the merge pass.
        by_first: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        for parts, target in merges.items():
            by_first[parts[0]].append((parts[1:], target))
        for cands in by_first.values():
            cands.sort(key=lambda c: -len(c[0]))
        self._merges_by_first = dict(by_first)

        # Words never singularised: every token of the table and of the merge rules.
        protected = set(_NEVER_SINGULARISE)
        for w in self.word_to_category:
            protected.update(w.split())
        for parts, target in merges.items():
            protected.update(parts)
            protected.update(target.split())
        self._protected = frozenset(protected)
        self._singular: dict[str, str] = {w: w for w in protected}

        self._gt_segments: dict[Any, set[str]] = {}
        self._gt_captions: dict[Any, list[str]] = {}
        self._gt_cache: dict[Any, frozenset[str]] = {}
        # From a cached index (visalign.eval.chair_index): image -> category numbers.
        self._gt_index: dict[Any, list[int]] = {}
        self._gt_source: Any = None
        self.index_path: Path | None = None  # the cache file used or written by from_coco

    # ------------------------------------------------------------------ ground truth
    @classmethod
    def from_annotations(cls, images_to_objects: Mapping[Any, Iterable[str]],
                         synonyms: list[list[str]] | None = None,
                         reference_captions: Mapping[Any, Iterable[str]] | None = None
                         ) -> "Chair":
        """Ground truth from memory: ``{image_id: {object, ...}}`` (category names or
        synonyms of the table), plus optional human reference captions per image."""
        chair = cls(synonyms)
        for image_id, objects in images_to_objects.items():
            cats = set()
            for o in objects:
                key = " ".join(str(o).lower().split())
                if key not in chair.word_to_category:
                    raise DataError(None, f"object {o!r} is not in the synonym table",
                                    record=f"image {image_id}")
                cats.add(chair.word_to_category[key])
            chair._gt_segments[norm_image_id(image_id)] = cats
        for image_id, caps in (reference_captions or {}).items():
            chair._gt_captions.setdefault(norm_image_id(image_id), []).extend(caps)
        return chair

    @classmethod
    def from_coco(cls, instances_path: Any, captions_path: Any = None,
                  synonyms: list[list[str]] | None = None, *,
                  cache: bool | str | os.PathLike = False) -> "Chair":
        """Ground truth from COCO ``instances`` (and optionally ``captions``) JSON files
        (paths, loaded dicts or pycocotools ``COCO`` objects).

        ``cache``: for file paths, reuse (or write) the parsed index of these files
        (:mod:`visalign.eval.chair_index`: keyed by their content, next to the instances file
        or in the user cache dir; ``True``) or in the given directory. Scores are the same
        either way; loaded dicts and ``COCO`` objects are always parsed.
        """
        chair = cls(synonyms)
        paths = isinstance(instances_path, (str, os.PathLike)) and (
            captions_path is None or isinstance(captions_path, (str, os.PathLike)))
        if not (cache and paths and chair._index_cacheable()):
            chair._read_coco(instances_path, captions_path)
            return chair
        from visalign.eval import chair_index

        for p in (instances_path, captions_path):
            if p is not None and not Path(p).exists():
                raise DataError(p, "file not found")
        dirs = chair_index.cache_dirs(instances_path, None if cache is True else cache)
        name, key = chair_index.index_key(chair._index_rules(), instances_path, captions_path)
        found = chair_index.load_index(dirs, name, key)
        if found is not None and chair._load_index(found[0]):
            chair.index_path = found[1]
        else:
            chair._read_coco(instances_path, captions_path)
            chair.index_path = chair_index.save_index(dirs, name, key, chair._index_payload())
        chair._gt_source = instances_path
        return chair

    def _read_coco(self, instances_path: Any, captions_path: Any) -> None:
        inst, ipath = coco_json(instances_path, "instances")
        self._gt_source = ipath
        id_to_cat: dict[Any, str] = {}
        for i, cat in enumerate(inst.get("categories") or []):
            name = " ".join(str(cat.get("name", "")).lower().split())
            if name not in self.word_to_category:
                raise DataError(ipath, f"category {cat.get('name')!r} (id {cat.get('id')}) is "
                                       "not in the synonym table", record=f"categories[{i}]",
                                field="name")
            id_to_cat[cat.get("id")] = self.word_to_category[name]
        for img in inst.get("images") or []:
            self._gt_segments.setdefault(norm_image_id(img.get("id")), set())
        segs = self._gt_segments
        for i, ann in enumerate(inst.get("annotations") or []):
            if "image_id" not in ann:
                raise DataError(ipath, "missing image id", record=f"annotations[{i}]",
                                field="image_id")
            cat = id_to_cat.get(ann.get("category_id"))
            if cat is None:
                raise DataError(ipath, f"unknown category_id {ann.get('category_id')!r}",
                                record=f"annotations[{i}]", field="category_id")
            image_id = norm_image_id(ann["image_id"])
            s = segs.get(image_id)
            if s is None:
                segs[image_id] = s = set()
            s.add(cat)
        if captions_path is not None:
            caps, cpath = coco_json(captions_path, "captions")
            per_image = self._gt_captions
            for i, ann in enumerate(caps.get("annotations") or []):
                text = ann.get("caption")
                if not isinstance(text, str) or "image_id" not in ann:
                    raise DataError(cpath, "expected 'image_id' and a string 'caption'",
                                    record=f"annotations[{i}]")
                per_image.setdefault(norm_image_id(ann["image_id"]), []).append(text)

    # ------------------------------------------------------------------ cached index
    def _index_rules(self) -> dict:
        """Everything besides the annotation files that the ground-truth index depends on
        (part of its cache key). A subclass that finds objects differently must extend it."""
        from importlib.metadata import version

        return {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                "synonyms": self.synonyms, "token_re": _TOKEN_RE.pattern,
                "merges": sorted([list(k), v] for k, v in self._index_merges()),
                "protected": sorted(self._protected), "inflect": version("inflect")}

    def _index_cacheable(self) -> bool:
        # A subclass that finds mentions its own way (another tokenizer, lemmas) has rules the
        # key does not describe unless it says so by extending _index_rules: no cache then.
        cls = type(self)
        return (cls._index_rules is not Chair._index_rules
                or all(getattr(cls, m) is getattr(Chair, m)
                       for m in ("_mentions_and_len", "mentions", "_words", "_sing")))

    def _index_merges(self) -> list[tuple[tuple[str, ...], str]]:
        return [((first, *rest), target) for first, cands in self._merges_by_first.items()
                for rest, target in cands]

    def _index_payload(self) -> dict:
        """The ground truth of every image as category numbers (computes the caption-derived
        part of all images, which evaluation otherwise does lazily)."""
        number = {c: i for i, c in enumerate(self.categories)}
        ids = list(dict.fromkeys([*self._gt_segments, *self._gt_captions]))
        return {"categories": self.categories,
                "images": [[i, sorted(number[c] for c in self.gt_objects(i))] for i in ids]}

    def _load_index(self, payload: dict) -> bool:
        """Take the ground truth from a cached index; False (nothing taken) if it does not fit
        this table."""
        n = len(self.categories)
        if payload["categories"] != self.categories:
            return False
        try:
            index = {i: idx for i, idx in payload["images"]}
            ok = all(isinstance(idx, list) and all(type(c) is int and 0 <= c < n for c in idx)
                     for idx in index.values())
        except (TypeError, ValueError):
            return False
        if ok:
            self._gt_index = index
        return ok

    def has_image(self, image_id: Any) -> bool:
        """Whether ``image_id`` has ground truth (instances or reference captions)."""
        key = norm_image_id(image_id)
        return key in self._gt_segments or key in self._gt_captions or key in self._gt_index

    def gt_objects(self, image_id: Any) -> set[str]:
        """Ground-truth categories of an image: instance categories ∪ objects mentioned in
        its reference captions. Unknown image ids raise :class:`DataError`."""
        key = norm_image_id(image_id)
        cached = self._gt_cache.get(key)
        if cached is None and key in self._gt_index:
            cats = self.categories
            self._gt_cache[key] = cached = frozenset(cats[i] for i in self._gt_index[key])
        if cached is None:
            if not self.has_image(key):
                raise DataError(self._gt_source, f"image_id {image_id!r} has no ground truth "
                                                 "(not in the annotations)")
            cats = set(self._gt_segments.get(key, ()))
            # Caption-derived ground truth is computed lazily: only evaluated images pay.
            for text in self._gt_captions.get(key, ()):
                cats.update(m.category for m in self.mentions(text))
            self._gt_cache[key] = cached = frozenset(cats)
        return set(cached)

    # ------------------------------------------------------------------ captions
    def _sing(self, w: str) -> str:
        s = self._singular.get(w)
        if s is None:
            s = w
            if w.isalpha():
                r = _inflect_singular(w)
                if r:
                    s = r
            self._singular[w] = s
        return s

    def _words(self, caption: str) -> tuple[list[tuple[str, int, int]], int]:
        """(merged words with spans, number of raw tokens)."""
        sing = self._singular
        toks = []
        for m in _TOKEN_RE.finditer(caption):
            w = m.group().lower()
            s = sing.get(w)
            toks.append((s if s is not None else self._sing(w), m.start(), m.end()))
        n = len(toks)
        merges = self._merges_by_first
        out: list[tuple[str, int, int]] = []
        i = 0
        while i < n:
            w, s, e = toks[i]
            cands = merges.get(w)
            if cands is not None:
                for rest, target in cands:
                    k = len(rest)
                    if i + k < n and all(toks[i + 1 + j][0] == rest[j] for j in range(k)):
                        out.append((target, s, toks[i + k][2]))
                        i += k + 1
                        break
                else:
                    out.append((w, s, e))
                    i += 1
            else:
                out.append((w, s, e))
                i += 1
        return out, n

    def _mentions_and_len(self, caption: str) -> tuple[list[Mention], int]:
        words, n = self._words(caption)
        w2c = self.word_to_category
        found = [(w, s, e) for (w, s, e) in words if w in w2c]
        # Toilet seat is not a chair: "the seat of the toilet" must not fire for chair.
        if any(w == "seat" for w, _, _ in found) and any(w == "toilet" for w, _, _ in words):
            found = [t for t in found if t[0] != "seat"]
        return [Mention(w, w2c[w], s, e) for (w, s, e) in found], n

    def mentions(self, caption: str) -> list[Mention]:
        """Object mentions of a caption, in order, with character spans into ``caption``."""
        return self._mentions_and_len(caption)[0]

    # ------------------------------------------------------------------ metrics
    def evaluate(self, records: Iterable[Mapping], *, path: Any = None) -> dict:
        """CHAIR over caption records (``image_id`` + ``caption`` or ``answer``).

        Returns ``{"metrics": {chair_s, chair_i, chair, recall, n_captions, avg_len},
        "counts": {...}, "captions": [per-caption details]}``.
        """
        details = []
        n_caps = n_hal_caps = n_mentions = n_hal = n_gt = n_recalled = n_words = 0
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise DataError(path, "expected a JSON object", record=i)
            if "image_id" not in rec:
                raise DataError(path, "missing image id", record=i, field="image_id")
            text = caption_text(rec, i, path)
            if not self.has_image(rec["image_id"]):
                where = f" of {self._gt_source}" if self._gt_source is not None else ""
                raise DataError(path, f"image_id {rec['image_id']!r} is not in the ground "
                                      f"truth{where}", record=i, field="image_id")
            gt = self.gt_objects(rec["image_id"])
            ments, ntok = self._mentions_and_len(text)
            hal_flags = [m.category not in gt for m in ments]
            k_hal = sum(hal_flags)
            recalled = {m.category for m in ments} & gt
            n_caps += 1
            n_words += ntok
            n_mentions += len(ments)
            n_hal += k_hal
            n_hal_caps += k_hal > 0
            n_gt += len(gt)
            n_recalled += len(recalled)
            d: dict[str, Any] = {}
            for key in ("id", "question_id"):
                if key in rec:
                    d[key] = rec[key]
            d.update({
                "image_id": rec["image_id"],
                "caption": text,
                "mentions": [{"word": m.word, "category": m.category, "start": m.start,
                              "end": m.end, "hallucinated": h}
                             for m, h in zip(ments, hal_flags)],
                "words": [m.word for m in ments],
                "categories": sorted({m.category for m in ments}),
                "hallucinated": sorted({m.category for m, h in zip(ments, hal_flags) if h}),
                "gt_objects": sorted(gt),
                "chair_s": int(k_hal > 0),
                "chair_i": k_hal / len(ments) if ments else 0.0,
                "recall": len(recalled) / len(gt) if gt else 0.0,
                "n_words": ntok,
            })
            details.append(d)
        if n_caps == 0:
            raise DataError(path, "no captions to evaluate")
        chair_s = n_hal_caps / n_caps
        chair_i = n_hal / n_mentions if n_mentions else 0.0
        return {
            "metrics": {
                "chair_s": chair_s,
                "chair_i": chair_i,
                "chair": (chair_s + chair_i) / 2,
                "recall": n_recalled / n_gt if n_gt else 0.0,
                "n_captions": n_caps,
                "avg_len": n_words / n_caps,
            },
            "counts": {"captions": n_caps, "hallucinated_captions": n_hal_caps,
                       "mentions": n_mentions, "hallucinated_mentions": n_hal,
                       "gt_objects": n_gt, "recalled_objects": n_recalled, "words": n_words},
            "captions": details,
        }


_INFLECT = None
_INFLECT_CACHE: dict[str, str | bool] = {}


def _inflect_singular(word: str) -> str | bool:
    """``inflect`` singular of ``word`` (False when it is not a plural), cached: inflect
    costs ~50 µs a call and captions repeat words constantly."""
    r = _INFLECT_CACHE.get(word)
    if r is None:
        global _INFLECT
        if _INFLECT is None:
            _INFLECT = _inflect_engine()
        try:
            r = _INFLECT.singular_noun(word)
        except Exception:  # inflect rejects some odd strings; they stay as they are
            r = False
        _INFLECT_CACHE[word] = r
    return r


def _inflect_engine() -> Any:
    """An ``inflect`` engine, imported lazily (only captions need it) and, when this is the
    first import of inflect, without typeguard's instrumentation.

    inflect wraps its methods in typeguard's ``@typechecked``, which re-parses and recompiles
    each of them at import: ~1.5 s of CPU, the largest part of scoring a caption file once the
    annotation index is cached. Those checks only reject arguments that are not non-empty
    strings; only non-empty alphabetic words reach inflect here, so its answers are the same.
    """
    import sys

    if "inflect" not in sys.modules:
        try:
            import typeguard
        except ImportError:  # an inflect without typeguard: nothing to skip
            typeguard = None
        if typeguard is not None:
            checked = typeguard.typechecked

            def unchecked(target: Any = None, **_: Any) -> Any:
                return target if target is not None else (lambda t: t)

            typeguard.typechecked = unchecked
            try:
                import inflect  # noqa: F401
            finally:
                typeguard.typechecked = checked
    import inflect

    return inflect.engine()

