"""What kind of mistake each hallucinated object of a description is.

A hallucinated object (CHAIR: named, not annotated) of a micro-world description is put in one
of three kinds by the sentences that name it:

- ``misnamed``: a sentence places it in a region (``in the top left corner`` ...) where the
  image has an object the description never names right: the model saw something there and
  called it the wrong category (a perception error). ``same_glyph`` marks those whose glyph
  shares the shape of an object there (the look-alike case);
- ``empty_spot``: placed in a region with no object, or only with objects named elsewhere;
- ``no_region``: no sentence places it (relations, counts).

Each is crossed with whether the category belongs to the image's theme (a co-occurrence guess,
the defect the world's training descriptions carry). Comparing a base model's counts with a
trained model's shows which kind a method removes; :func:`verifier_by_kind` shows which kinds
FiSAO's verifier can tell from correct mentions. Needs a world whose annotations carry
``region`` and whose images carry ``theme`` (the micro-world's COCO files do).
"""

from __future__ import annotations

import collections
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from visalign.io import DataError

KINDS = ("misnamed", "empty_spot", "no_region")


class ImageFacts(NamedTuple):
    """What the classification needs to know about a split's images."""

    objects: dict[int, list[dict]]      # image id -> its annotations as {category, region}
    theme_of: dict[int, set[str]]       # image id -> the categories of its theme
    shape_of: dict[str, str]            # category -> glyph shape


@lru_cache(maxsize=1)
def _region_phrases() -> tuple[tuple[str, str], ...]:
    """(phrase, region), longest phrase first, so 'in the top left corner' wins over 'top'."""
    from visalign.world.vocab import REGION_PHRASES

    out = [(p, r) for r, ps in REGION_PHRASES.items() for p in ps]
    return tuple(sorted(out, key=lambda x: -len(x[0])))


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in re.finditer(r"[.!?](\s+|$)", text):
        spans.append((start, m.end()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def classify(caption: dict, objects: list[dict], theme_members: set[str],
             shape_of: dict[str, str]) -> dict[str, dict]:
    """Hallucinated category -> ``{kind, in_theme, same_glyph}`` for one CHAIR caption record.

    ``caption``: a record of ``Chair.evaluate(...)["captions"]`` (its ``caption`` and its
    ``mentions`` with character offsets and ``hallucinated``); ``objects``: the image's
    annotations as ``{category, region}``. A category named several times takes its most
    perceptual reading (misnamed before empty spot before no region)."""
    phrases = _region_phrases()
    text = caption["caption"]
    spans = _sentence_spans(text)
    named_right = {m["category"] for m in caption["mentions"] if not m["hallucinated"]}
    by_region: dict[str, list[str]] = collections.defaultdict(list)
    for o in objects:
        by_region[o["region"]].append(o["category"])
    out: dict[str, dict] = {}
    for m in caption["mentions"]:
        if not m["hallucinated"]:
            continue
        cat = m["category"]
        sent = next((text[a:b] for a, b in spans if a <= m["start"] < b), "")
        region = next((r for p, r in phrases if p in sent), None)
        unnamed_here = [c for c in (by_region.get(region, []) if region else [])
                        if c not in named_right]
        if region is None:
            kind = "no_region"
        elif unnamed_here:
            kind = "misnamed"
        else:
            kind = "empty_spot"
        prev = out.get(cat)
        if prev is None or KINDS.index(kind) < KINDS.index(prev["kind"]):
            out[cat] = {"kind": kind, "in_theme": cat in theme_members,
                        "same_glyph": kind == "misnamed" and any(
                            shape_of.get(c) == shape_of.get(cat) for c in unnamed_here)}
    return out


def image_facts(world: Any, split: str) -> ImageFacts:
    """The objects (category, region) and theme members of every image of a micro-world split,
    and each category's glyph shape."""
    from visalign.io import read_json

    path = world.instances_path(split)
    inst = read_json(path)
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[dict]] = collections.defaultdict(list)
    for i, a in enumerate(inst["annotations"]):
        if a["category_id"] not in names:
            raise DataError(path, f"unknown category id {a['category_id']}", record=i,
                            field="category_id")
        objects[a["image_id"]].append({"category": names[a["category_id"]],
                                       "region": a.get("region")})
    members = {t.name: {m for m, _ in t.members} for t in world.vocab.themes}
    theme_of = {im["id"]: members.get(im.get("theme"), set()) for im in inst["images"]}
    shape_of = {c.name: c.shape for c in world.vocab.categories}
    return ImageFacts(dict(objects), theme_of, shape_of)


def kinds_per_description(captions: Iterable[dict], facts: ImageFacts) -> dict:
    """Hallucinated objects per description by kind, and the shares that are theme guesses or
    look-alikes, over CHAIR caption records of the split ``facts`` describes."""
    counts: collections.Counter = collections.Counter()
    n = 0
    for i, cap in enumerate(captions):
        iid = cap["image_id"]
        if iid not in facts.theme_of:
            raise DataError(None, f"image {iid} is not in the split's annotations", record=i,
                            field="image_id")
        n += 1
        for c in classify(cap, facts.objects.get(iid, []), facts.theme_of[iid],
                          facts.shape_of).values():
            counts[c["kind"]] += 1
            counts["in_theme"] += c["in_theme"]
            counts["same_glyph"] += c["same_glyph"]
            counts[f"{c['kind']}_in_theme"] += c["in_theme"]
    if not n:
        raise ValueError("no descriptions to classify")
    total = sum(counts[k] for k in KINDS)
    return {"n_descriptions": n, "hallucinated_per_description": round(total / n, 4),
            **{f"{k}_per_description": round(counts[k] / n, 4) for k in KINDS},
            **{f"{k}_share": round(counts[k] / max(total, 1), 4) for k in KINDS},
            "in_theme_share": round(counts["in_theme"] / max(total, 1), 4),
            "misnamed_same_glyph_share": round(counts["same_glyph"] / max(counts["misnamed"], 1),
                                               4),
            **{f"{k}_in_theme_share": round(counts[f"{k}_in_theme"] / max(counts[k], 1), 4)
               for k in KINDS}}


def verifier_by_kind(calib_dir: str | Path, world: Any) -> dict:
    """Mean verifier token score and AUROC against correct mentions, per hallucination kind, on
    the captions of a FiSAO calibration dir (``scores.jsonl`` + ``answers.jsonl`` of
    ``visalign fisao calibrate``, train images of ``world``)."""
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.io import read_jsonl
    from visalign.verifier.calibration import auroc

    calib_dir = Path(calib_dir)
    split = world.train_split
    facts = image_facts(world, split)
    chair = Chair.from_coco(world.instances_path(split),
                            synonyms=load_synonyms(world.synonyms_path))
    scores: dict[tuple, list[float]] = collections.defaultdict(list)
    correct: list[float] = []
    for r in read_jsonl(calib_dir / "scores.jsonl"):
        if r["hallucinated"]:
            scores[(r["id"], r["answer_index"], r["category"])].append(r["token_score"])
        else:
            correct.append(r["token_score"])
    if not correct:
        raise DataError(calib_dir / "scores.jsonl", "no correct mentions to compare with")
    answers = read_jsonl(calib_dir / "answers.jsonl")
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    # a score's answer_index is the line of answers.jsonl it was computed on
    for index, (a, cap) in enumerate(zip(answers, chair.evaluate(answers)["captions"])):
        iid = a["image_id"]
        for cat, c in classify(cap, facts.objects.get(iid, []), facts.theme_of.get(iid, set()),
                               facts.shape_of).items():
            by_kind[c["kind"]] += scores.get((a["id"], index, cat), [])
    out: dict = {"correct": {"n": len(correct), "mean": round(sum(correct) / len(correct), 4)}}
    for k in KINDS:
        s = by_kind[k]
        out[k] = {"n": len(s), "mean": round(sum(s) / max(len(s), 1), 4),
                  "auroc_vs_correct": round(float(auroc(correct, s)), 4) if s else None}
    return out
