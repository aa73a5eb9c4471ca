"""AMBER (Wang et al. 2023, "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination
Evaluation"), scored as its reference ``inference.py`` (junyangwang0410/AMBER) scores it.

Data: AMBER's ``data`` folder as it ships — ``annotations.json`` (one record per query id, in id
order: ``type``, ``truth``, and for descriptions ``hallu``), ``relation.json`` (each object word
-> its associated words), ``safe_words.txt`` and ``query/query_*.json``. Responses:
``[{"id": n, "response": "..."}]`` for one of AMBER's six query sets.

Generative task (``type == "generative"``, "Describe this image."): the nouns of the response
(NLTK, :mod:`visalign.eval.amber_text`) that AMBER knows (a key or an associated word of
``relation.json``), in order, with repeats. Each such noun is

1. a safe word (``safe_words.txt``): neither hallucinated nor covering anything;
2. one of the image's ``truth`` objects or their associated words: covers the first truth
   object it matches;
3. otherwise it marks the first ``hallu`` object (or associated word) it equals, then the first
   one it is a near-synonym of (spaCy similarity > 0.8); if it is a near-synonym of a truth
   object (or associated word) it covers the first such one, else it is hallucinated.

CHAIR = hallucinated nouns / nouns; Cover = covered truth objects / truth objects; Hal = share
of responses with a hallucinated noun; Cog = marked ``hallu`` objects / ``hallu`` objects.

Discriminative task (existence = ``discriminative-hallucination``; attribute = state, number,
action; relation = every other type, ``relation`` and ``discriminative-relation``): "No" is the
positive class. Accuracy = correct / questions, Precision = (answered "No" and truth "no") /
answered "No", Recall = answered "No" / truth "no"; an answer counts only when it is exactly
``Yes`` or ``No`` (``answers="first-word"`` maps a leading yes/no word first, reported).

Faithful to the reference down to its arithmetic: every denominator starts at 0.001 (its
``metrics.txt``) and grows by one per item in the responses' order; each percentage is rounded
to one decimal, F1 is computed from the *rounded* precision and recall with 0.0001 added to the
denominator (0.001 for existence, as there); the attribute block pools the three attribute
counters. The AMBER score is (100 - CHAIR + F1) / 2, rounded to one decimal.

Departures (none changes a number on valid input): a response file must be exactly one query
set (the reference scores whatever ids it is given and divides by 0.001 for absent tasks); ids,
duplicates, non-string responses and annotation words missing from ``relation.json`` are
one-line errors (the reference crashes or scores silently); similarities are cached.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from visalign.config import field
from visalign.eval.registry import SuiteData, register
from visalign.io import DataError, read_json, read_records, write_json

__all__ = ["AmberData", "AmberScorer", "AmberBenchmark", "score_amber", "QUERY_SETS",
           "ANSWER_MODES", "normalize_answer", "amber_metrics", "PUBLISHED"]

#: query set -> (query file, tasks it holds); the six sets of AMBER's README
QUERY_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "all": ("query_all.json", ("generative", "existence", "attribute", "relation")),
    "generative": ("query_generative.json", ("generative",)),
    "discriminative": ("query_discriminative.json", ("existence", "attribute", "relation")),
    "existence": ("query_discriminative-existence.json", ("existence",)),
    "attribute": ("query_discriminative-attribute.json", ("attribute",)),
    "relation": ("query_discriminative-relation.json", ("relation",)),
}
ANSWER_MODES = ("exact", "first-word")
#: LLaVA-1.5-7B in AMBER's results table (inference.py scale)
PUBLISHED = {"model": "LLaVA-1.5-7B", "CHAIR": 7.8, "Cover": 51.0, "Hal": 36.4, "Cog": 4.2,
             "F1": 74.7, "amber_score": 83.5}

_ATTRIBUTE = {"discriminative-attribute-state": "state",
              "discriminative-attribute-number": "number",
              "discriminative-attribute-action": "action"}
_START = 0.001  # every "_num" counter of inference.py's metrics.txt starts here


def _task(kind: str) -> str:
    if kind == "generative":
        return "generative"
    if kind == "discriminative-hallucination":
        return "existence"
    if kind in _ATTRIBUTE:
        return "attribute"
    return "relation"  # inference.py's else-branch: "relation" and "discriminative-relation"


def _category(kind: str) -> str:
    return _ATTRIBUTE.get(kind) or _task(kind)


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class AmberData:
    """AMBER's annotations and word lists, read from its ``data`` folder."""

    annotations: list[dict]
    association: dict[str, list[str]]
    safe_words: list[str]
    root: Path | None = None

    @classmethod
    def load(cls, amber_dir: str | os.PathLike) -> "AmberData":
        root = Path(amber_dir)
        if not root.is_dir():
            raise DataError(root, "AMBER data folder not found")
        ann_path, rel_path, safe_path = (root / "annotations.json", root / "relation.json",
                                         root / "safe_words.txt")
        annotations = read_json(ann_path)
        association = read_json(rel_path)
        if not isinstance(annotations, list):
            raise DataError(ann_path, "expected a JSON list of annotation records")
        if not isinstance(association, dict) or not all(
                isinstance(v, list) for v in association.values()):
            raise DataError(rel_path, "expected a JSON object of word -> list of words")
        if not safe_path.exists():
            raise DataError(safe_path, "file not found")
        with open(safe_path, encoding="utf-8") as f:
            safe = [line.split("\n")[0] for line in f]  # as inference.py reads it
        data = cls(annotations, association, safe, root)
        data.validate(ann_path, rel_path)
        return data

    def validate(self, ann_path: Any = "annotations.json",
                 rel_path: Any = "relation.json") -> None:
        """Every record well-formed and every object word known to ``relation.json``."""
        for i, a in enumerate(self.annotations):
            if not isinstance(a, dict) or not isinstance(a.get("type"), str):
                raise DataError(ann_path, "record needs a string 'type'", record=i + 1,
                                field="type")
            if a["type"] == "generative":
                for key in ("truth", "hallu"):
                    words = a.get(key)
                    if not isinstance(words, list):
                        raise DataError(ann_path, "expected a list of object words",
                                        record=i + 1, field=key)
                    for w in words:
                        if w not in self.association:
                            raise DataError(rel_path, f"object word {w!r} of annotations.json "
                                            f"record {i + 1} ({key}) is not a key")
            elif a.get("truth") not in ("yes", "no"):
                raise DataError(ann_path, "expected 'yes' or 'no'", record=i + 1, field="truth")

    def ids(self, query_set: str) -> list[int]:
        """The ids of a query set, from the annotation types (ids are 1-based positions)."""
        tasks = QUERY_SETS[query_set][1]
        return [i + 1 for i, a in enumerate(self.annotations) if _task(a["type"]) in tasks]

    @functools.cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every word AMBER scores: the keys of ``relation.json`` and their associated words."""
        return frozenset(self.association) | frozenset(
            w for ws in self.association.values() for w in ws)


def normalize_answer(response: str, mode: str = "exact") -> str:
    """``exact``: the response as is. ``first-word``: "Yes"/"No" when the first word is
    yes/no in any case ("Yes, there is a dog." -> "Yes"), else the response unchanged."""
    if mode == "exact":
        return response
    if mode != "first-word":
        raise ValueError(f"answers must be one of {', '.join(ANSWER_MODES)}, got {mode!r}")
    words = response.strip().split(maxsplit=1)
    first = "".join(ch for ch in words[0] if ch.isalpha()).lower() if words else ""
    return {"yes": "Yes", "no": "No"}.get(first, response)


def _check_responses(records: Sequence[Any], data: AmberData, path: Any,
                     query_set: str | None, origins: Sequence[tuple[Any, int]] | None = None
                     ) -> tuple[str, list[tuple[int, str]]]:
    """(query set, [(id, response)] in file order) or a one-line DataError. ``origins``: the
    (file, index) of each record when they come from several files."""
    rows: list[tuple[int, str]] = []
    seen: set[int] = set()
    n = len(data.annotations)
    for k, r in enumerate(records):
        where, i = origins[k] if origins else (path, k)
        if not isinstance(r, dict):
            raise DataError(where, "expected an object with 'id' and 'response'", record=i)
        # AMBER's "response", or the "answer" of a visalign generate record
        rid, resp = r.get("id"), r.get("response", r.get("answer"))
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise DataError(where, f"id must be an integer, got {rid!r}", record=i, field="id")
        if not 1 <= rid <= n:
            raise DataError(where, f"id {rid} is not an AMBER query (annotations.json has ids "
                            f"1..{n})", record=i, field="id")
        if rid in seen:
            raise DataError(where, f"id {rid} appears twice", record=i, field="id")
        if not isinstance(resp, str):
            raise DataError(where, "response must be a string", record=i, field="response")
        seen.add(rid)
        rows.append((rid, resp))
    if not rows:
        raise DataError(path, "no responses")
    if query_set is not None:
        if query_set not in QUERY_SETS:
            raise ValueError(f"query set must be one of {', '.join(QUERY_SETS)}, "
                             f"got {query_set!r}")
        candidates = [query_set]
    else:  # the smallest set holding every id
        candidates = sorted(QUERY_SETS, key=lambda q: len(data.ids(q)))
    for q in candidates:
        want = set(data.ids(q))
        if seen <= want or query_set is not None:
            missing, extra = sorted(want - seen), sorted(seen - want)
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"{len(missing)} ids missing (first: "
                                 f"{', '.join(map(str, missing[:5]))})")
                if extra:
                    parts.append(f"{len(extra)} ids not in it (first: "
                                 f"{', '.join(map(str, extra[:5]))})")
                raise DataError(path, f"responses do not match AMBER's {q} query set "
                                f"({QUERY_SETS[q][0]}): " + "; ".join(parts))
            return q, rows
    raise AssertionError("unreachable: 'all' holds every id")  # pragma: no cover


# ----------------------------------------------------------------------------- scoring


def _pct(score: float, num: float) -> float:
    return round(score / num * 100, 1)


def _f1(p: float, r: float, eps: float = 0.0001) -> float:
    return round(2 * (p / 100) * (r / 100) / ((p / 100) + (r / 100) + eps) * 100, 1)


class _Counts:
    """One set of inference.py's discriminative counters (denominators start at 0.001)."""

    def __init__(self) -> None:
        self.correct, self.correct_num = 0, _START
        self.no, self.no_num = 0, _START  # truth "no": answered "No" / asked
        self.ans_no, self.ans_no_num = 0, _START  # answered "No": truth "no" / answered

    def add(self, truth: str, answer: str) -> None:
        self.correct_num += 1
        if truth == "yes":
            self.correct += answer == "Yes"
        else:
            self.no_num += 1
            if answer == "No":
                self.correct += 1
                self.no += 1
        if answer == "No":
            self.ans_no_num += 1
            self.ans_no += truth == "no"

    def block(self, eps: float = 0.0001) -> dict[str, float]:
        p = _pct(self.ans_no, self.ans_no_num)
        r = _pct(self.no, self.no_num)
        return {"Accuracy": _pct(self.correct, self.correct_num), "Precision": p, "Recall": r,
                "F1": _f1(p, r, eps)}


def _pooled(parts: Sequence[_Counts]) -> _Counts:
    out = _Counts()
    for name in ("correct", "correct_num", "no", "no_num", "ans_no", "ans_no_num"):
        # inference.py adds the three counters, each with its own 0.001 start, in this order
        a, b, c = (getattr(p, name) for p in parts)
        setattr(out, name, a + b + c)
    return out


class AmberScorer:
    """Score responses against :class:`AmberData` with a noun extractor and a similarity test.

    ``nouns``: text -> nouns (:class:`visalign.eval.amber_text.NounExtractor`);
    ``similar``: (noun, word) -> bool (:func:`visalign.eval.amber_text.make_similarity`).
    """

    def __init__(self, data: AmberData, nouns: Callable[[str], list[str]],
                 similar: Callable[[str, str], bool], answers: str = "exact"):
        if answers not in ANSWER_MODES:
            raise ValueError(f"answers must be one of {', '.join(ANSWER_MODES)}, "
                             f"got {answers!r}")
        self.data, self.nouns, self.similar, self.answers = data, nouns, similar, answers
        self._safe = set(data.safe_words)
        self._vocab = data.vocabulary

    def describe(self, rid: int, response: str) -> dict:
        """One description's nouns and what each was counted as (the generative task)."""
        ann = self.data.annotations[rid - 1]
        assoc = self.data.association
        # (word, index of the object it stands for): associated words first, then the objects
        # themselves, the order inference.py searches them in
        truth = [(w, i) for i, t in enumerate(ann["truth"]) for w in assoc[t]]
        truth += [(t, i) for i, t in enumerate(ann["truth"])]
        hallu = [(w, i) for i, h in enumerate(ann["hallu"]) for w in assoc[h]]
        hallu += [(h, i) for i, h in enumerate(ann["hallu"])]
        covered = [0] * len(ann["truth"])
        cog = [0] * len(ann["hallu"])
        truth_words = {w for w, _ in truth}
        hallu_words = {w for w, _ in hallu}
        nouns = [n for n in self.nouns(response) if n in self._vocab]
        hallucinated: list[str] = []
        for noun in nouns:
            if noun in self._safe:
                continue
            if noun in truth_words:
                covered[next(i for w, i in truth if w == noun)] = 1
                continue
            if noun in hallu_words:
                cog[next(i for w, i in hallu if w == noun)] = 1
            j = next((i for w, i in hallu if self.similar(noun, w)), None)
            if j is not None:
                cog[j] = 1
            j = next((i for w, i in truth if self.similar(noun, w)), None)
            if j is not None:
                covered[j] = 1
                continue
            hallucinated.append(noun)
        return {"id": rid, "nouns": nouns, "hallucinated": hallucinated,
                "covered": [t for t, c in zip(ann["truth"], covered) if c],
                "hallu_mentioned": [h for h, c in zip(ann["hallu"], cog) if c],
                "n_truth": len(covered), "n_hallu": len(cog)}

    def score(self, responses: Sequence[Any], *, query_set: str | None = None,
              path: Any = None, origins: Sequence[tuple[Any, int]] | None = None) -> dict:
        """The result: inference.py's blocks (its percent scale), ``amber_score``, details and
        ``metrics`` in visalign's shared format (fractions)."""
        qset, rows = _check_responses(responses, self.data, path, query_set, origins)
        tasks = QUERY_SETS[qset][1]
        g = {"chair": 0, "chair_num": _START, "cover": 0, "cover_num": _START,
             "cog": 0, "cog_num": _START, "clean": 0, "clean_num": _START}
        counts = {c: _Counts() for c in ("state", "number", "action", "existence", "relation")}
        overall = _Counts()
        details: list[dict] = []
        not_yes_no: list[int] = []
        n_gen = n_dis = 0
        for rid, response in rows:
            kind = self.data.annotations[rid - 1]["type"]
            if kind == "generative":
                n_gen += 1
                d = self.describe(rid, response)
                details.append(d)
                g["chair"] += len(d["hallucinated"])
                g["chair_num"] += len(d["nouns"])
                g["cover"] += len(d["covered"])
                g["cover_num"] += d["n_truth"]
                g["cog"] += len(d["hallu_mentioned"])
                g["cog_num"] += d["n_hallu"]
                g["clean"] += not d["hallucinated"]
                g["clean_num"] += 1
                continue
            n_dis += 1
            answer = normalize_answer(response, self.answers)
            if answer not in ("Yes", "No"):
                not_yes_no.append(rid)
            truth = self.data.annotations[rid - 1]["truth"]
            overall.add(truth, answer)
            counts[_category(kind)].add(truth, answer)

        result: dict[str, Any] = {}
        if "generative" in tasks:
            result["generative"] = {
                "CHAIR": _pct(g["chair"], g["chair_num"]),
                "Cover": _pct(g["cover"], g["cover_num"]),
                "Hal": round(100 - g["clean"] / g["clean_num"] * 100, 1),
                "Cog": _pct(g["cog"], g["cog_num"])}
        if {"existence", "attribute", "relation"} <= set(tasks):
            result["discriminative"] = overall.block()
        if "existence" in tasks:
            result["existence"] = counts["existence"].block(eps=0.001)  # sic, inference.py
        if "attribute" in tasks:
            result["attribute"] = _pooled([counts[c] for c in ("state", "number", "action")]
                                          ).block()
            for c in ("state", "number", "action"):
                result[c] = counts[c].block()
        if "relation" in tasks:
            result["relation"] = counts["relation"].block()
        score = None
        if "generative" in result and "discriminative" in result:
            score = round((100 - result["generative"]["CHAIR"]
                           + result["discriminative"]["F1"]) / 2, 1)
        result["amber_score"] = score
        result["metrics"] = amber_metrics(result)
        result["query_set"] = qset
        result["answers"] = self.answers
        result["similarity"] = getattr(self.similar, "description", "custom")
        result["counts"] = {
            "generative": n_gen, "discriminative": n_dis,
            "nouns": int(g["chair_num"]), "hallucinated_nouns": g["chair"],
            "not_yes_no": len(not_yes_no), "not_yes_no_ids": not_yes_no[:20]}
        result["descriptions"] = details
        return result


def amber_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``amber_*`` keys of visalign's shared result format (fractions in [0, 1]) from a result
    on inference.py's percent scale; keys of absent blocks are left out."""
    out: dict[str, float] = {}
    gen, dis = result.get("generative"), result.get("discriminative")
    if gen:
        for k in ("CHAIR", "Cover", "Hal", "Cog"):
            out[f"amber_{k.lower()}"] = round(gen[k] / 100, 4)
    if dis:
        for k in ("Accuracy", "Precision", "Recall", "F1"):
            out[f"amber_{k.lower()}"] = round(dis[k] / 100, 4)
    if result.get("amber_score") is not None:
        out["amber_score"] = round(result["amber_score"] / 100, 4)
    return out


def score_amber(responses: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[dict],
                amber_dir: str | os.PathLike, *,
                similarity: str = "spacy", answers: str = "exact", query_set: str | None = None,
                nltk_data: str | os.PathLike | None = None,
                wordnet: str | os.PathLike | None = None, nlp: Any = None) -> dict:
    """Score AMBER responses against the data folder ``amber_dir``.

    ``responses``: records ``{"id": n, "response": "..."}`` (or visalign generate's answer
    records, whose ``answer`` is used), or one or more JSON/JSONL files of them, read together
    (e.g. the answers to the generative and to the discriminative queries).

    ``similarity``: "spacy" (en_core_web_lg, the reference) or "exact"; ``answers``: "exact"
    (the reference) or "first-word"; ``query_set``: the expected set (default: inferred from the
    ids); ``nltk_data`` / ``wordnet``: where NLTK's data and WordNet are (default: NLTK's data
    path, then the system WordNet); ``nlp``: a spaCy pipeline to use instead of loading one.
    """
    from visalign.eval.amber_text import NounExtractor, make_similarity

    path: Any = None
    origins: list[tuple[Any, int]] | None = None
    if isinstance(responses, (str, os.PathLike)):
        responses = [responses]
    if responses and all(isinstance(r, (str, os.PathLike)) for r in responses):
        paths = list(responses)
        path = paths[0] if len(paths) == 1 else " + ".join(map(str, paths))
        per_file = [(p, read_records(p)) for p in paths]
        responses = [rec for _, recs in per_file for rec in recs]
        origins = [(p, i) for p, recs in per_file for i in range(len(recs))]
    data = AmberData.load(amber_dir)
    qset, _ = _check_responses(responses, data, path, query_set, origins)
    if "generative" in QUERY_SETS[qset][1]:
        similar = make_similarity(similarity, nlp=nlp)
        extractor = NounExtractor(nltk_data=nltk_data, wordnet=wordnet)
        nouns, wn = extractor, extractor.wordnet
    else:  # the yes/no questions need neither NLTK nor spaCy
        similar, nouns, wn = make_similarity("exact"), (lambda text: []), None
    result = AmberScorer(data, nouns, similar, answers).score(responses, query_set=qset,
                                                              path=path, origins=origins)
    if wn is None:
        result["similarity"] = "not used (no descriptions)"
    result["wordnet"] = wn
    return result


# ----------------------------------------------------------------------------- benchmark entry


def read_queries(path: str | os.PathLike) -> list[dict]:
    """An AMBER query file: ``[{"id": n, "image": "AMBER_1.jpg", "query": "..."}]``."""
    queries = read_json(path)
    if not isinstance(queries, list):
        raise DataError(path, "expected a JSON list of queries")
    for i, q in enumerate(queries):
        if not isinstance(q, dict):
            raise DataError(path, "expected an object", record=i)
        for key, typ in (("id", int), ("image", str), ("query", str)):
            if not isinstance(q.get(key), typ) or isinstance(q.get(key), bool):
                raise DataError(path, f"missing or not a {typ.__name__}", record=i, field=key)
    return queries


@dataclasses.dataclass
class AmberBenchmark:
    """AMBER for ``visalign eval suite``: prompts from a query file, scored by :func:`score_amber`.

    Prompts are AMBER's queries verbatim ("Describe this image.", "Is there a cloud in this
    image?"). Yes/no answers are scored as the reference does (exactly "Yes" or "No") unless
    ``answers`` is "first-word"; ``yes_no_suffix`` (e.g. LLaVA's "\\nAnswer the question using a
    single word or phrase.") is appended to the yes/no questions when set — both are printed
    with the result.
    """

    name: str = "amber"
    max_new_tokens: int = field(512, help="new tokens for the descriptions")
    yes_no_max_new_tokens: int = field(16, help="new tokens for the yes/no questions (each "
                                                "prompt's max_new_tokens)")
    query_set: str = field("all", help="all | generative | discriminative | existence | "
                                       "attribute | relation")
    similarity: str = field("spacy", help="near-synonym test: spacy (en_core_web_lg > 0.8, the "
                                          "reference) | exact (no spaCy)")
    answers: str = field("exact", help="exact: only 'Yes'/'No' count (the reference) | "
                                       "first-word: a leading yes/no word counts")
    yes_no_suffix: str = field("", help="text appended to each yes/no question")
    image_dir: str | None = field(None, help="AMBER's images (default: image/ or images/ in "
                                             "the AMBER data folder or beside it)")
    nltk_data: str | None = field(None, help="folder with NLTK's punkt_tab and tagger")
    wordnet: str | None = field(None, help="WordNet database dir (default: NLTK's, then the "
                                           "system one)")

    def _root(self, data: SuiteData) -> Path:
        if not getattr(data, "amber_dir", None):
            raise ValueError("AMBER needs its data folder (amber_dir: annotations.json, "
                             "relation.json, safe_words.txt, query/, image/)")
        return Path(data.amber_dir)

    def _images(self, root: Path) -> Path:
        cands = [Path(self.image_dir)] if self.image_dir else [
            root / "image", root / "images", root.parent / "image", root.parent / "images"]
        for c in cands:
            if c.is_dir():
                return c.resolve()
        raise DataError(cands[0], "AMBER image folder not found (tried "
                        + ", ".join(map(str, cands)) + "); set image_dir")

    def prompts(self, data: SuiteData) -> list[dict]:
        """One prompt per query of ``query_set``: id (str), absolute image path, prompt, task."""
        root = self._root(data)
        if self.query_set not in QUERY_SETS:
            raise ValueError(f"query_set must be one of {', '.join(QUERY_SETS)}, "
                             f"got {self.query_set!r}")
        qpath = root / "query" / QUERY_SETS[self.query_set][0]
        queries = read_queries(qpath)
        amber = AmberData.load(root)
        images = self._images(root)
        out = []
        for i, q in enumerate(queries):
            if not 1 <= q["id"] <= len(amber.annotations):
                raise DataError(qpath, f"id {q['id']} is not in annotations.json", record=i,
                                field="id")
            image = images / q["image"]
            if not image.is_file():
                raise DataError(qpath, f"image not found: {image}", record=i, field="image")
            task = _task(amber.annotations[q["id"] - 1]["type"])
            gen = task == "generative"
            rec = {"id": str(q["id"]), "image": str(image),
                   "prompt": q["query"] if gen else q["query"] + self.yes_no_suffix,
                   "task": task}
            if not gen:   # descriptions take the suite's length for the benchmark
                rec["max_new_tokens"] = self.yes_no_max_new_tokens
            out.append(rec)
        return out

    def score(self, prompts: list[dict], answers: Mapping[str, str], data: SuiteData,
              out: str | os.PathLike) -> dict:
        """Score the answers; writes ``out/amber_responses.json`` (AMBER's response format, for
        its own inference.py) and ``out/amber.json``; returns the result (``metrics``: the
        ``amber_*`` fractions)."""
        missing = [p["id"] for p in prompts if p["id"] not in answers]
        if missing:
            raise DataError(out, f"{len(missing)} AMBER prompts have no answer (first: "
                            f"{', '.join(missing[:5])})")
        responses = [{"id": int(p["id"]), "response": answers[p["id"]]} for p in prompts]
        out = Path(out)
        write_json(out / "amber_responses.json", responses)
        result = score_amber(responses, self._root(data), similarity=self.similarity,
                             answers=self.answers, query_set=self.query_set,
                             nltk_data=self.nltk_data, wordnet=self.wordnet)
        result["protocol"] = {"max_new_tokens": self.max_new_tokens,
                              "yes_no_max_new_tokens": self.yes_no_max_new_tokens,
                              "yes_no_suffix": self.yes_no_suffix}
        write_json(out / "amber.json", result)
        return result


register(AmberBenchmark())
