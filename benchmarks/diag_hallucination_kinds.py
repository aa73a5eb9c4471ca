"""What kind of mistake each hallucinated object is, and which kinds the methods remove; prints
one JSON object.

A hallucinated object of a micro-world description (CHAIR: named, not annotated) is put in one
of three kinds by the sentences that name it:

- ``misnamed``: a sentence places it in a region (``in the top left corner`` ...) where the image
  has an object the description never names right: the model saw something there and called
  it the wrong category (a perception error); ``same_glyph`` counts those whose glyph shares the
  shape of an object there (the look-alike case);
- ``empty_spot``: placed in a region with no object, or only with objects named elsewhere;
- ``no_region``: no sentence places it (relations, counts).

Each is crossed with whether the category belongs to the image's theme (a co-occurrence guess,
the defect the world's training descriptions carry). Per grid cell it reports hallucinated
objects per description by kind, so the base → method change shows which kind a method removes;
with ``--calibration`` it also reports the verifier's token scores by kind on the calibration
captions (what FiSAO's reward can tell apart).

    python benchmarks/diag_hallucination_kinds.py --grid GRID [--cells base nsft-600 ...] \
        [--calibration GRID/fisao_calibration]
    python benchmarks/diag_hallucination_kinds.py --evals REEVAL --world W --split val
        (REEVAL = a bench_grid_reeval.py --out dir: one <cell>/chair.json per model)
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

KINDS = ("misnamed", "empty_spot", "no_region")


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
    """Hallucinated category -> {kind, in_theme, same_glyph} for one CHAIR caption record.

    ``objects``: the image's annotations as {category, region}; ``caption``: a record of
    ``chair.json`` (its ``caption`` and ``mentions`` with character offsets)."""
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
        here = by_region.get(region, []) if region else []
        unnamed_here = [c for c in here if c not in named_right]
        if region is None:
            kind = "no_region"
        elif unnamed_here:
            kind = "misnamed"
        else:
            kind = "empty_spot"
        rank = KINDS.index(kind)
        prev = out.get(cat)
        # a category named several times takes its most perceptual reading
        if prev is None or rank < KINDS.index(prev["kind"]):
            out[cat] = {"kind": kind, "in_theme": cat in theme_members,
                        "same_glyph": kind == "misnamed" and any(
                            shape_of.get(c) == shape_of.get(cat) for c in unnamed_here)}
    return out


def _image_facts(world: Any, split: str) -> tuple[dict, dict, dict]:
    """Per image its objects ({category, region}) and its theme's members; per category its
    glyph shape."""
    from visalign.io import read_json

    inst = read_json(world.instances_path(split))
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[dict]] = collections.defaultdict(list)
    for a in inst["annotations"]:
        objects[a["image_id"]].append({"category": names[a["category_id"]],
                                       "region": a.get("region")})
    vocab = world.vocab
    members = {t.name: {m for m, _ in t.members} for t in vocab.themes}
    theme_of = {im["id"]: members.get(im.get("theme"), set()) for im in inst["images"]}
    shape_of = {c.name: c.shape for c in vocab.categories}
    return objects, theme_of, shape_of


def kinds_of_cell(chair_json: Path, facts: tuple[dict, dict, dict]) -> dict:
    """Hallucinated objects per description by kind (and theme/glyph shares) for one eval;
    ``facts`` = ``_image_facts`` of the split it evaluated."""
    objects, theme_of, shape_of = facts
    caps = json.loads(chair_json.read_text())["captions"]
    counts: collections.Counter = collections.Counter()
    for cap in caps:
        iid = cap["image_id"]
        for c in classify(cap, objects[iid], theme_of[iid], shape_of).values():
            counts[c["kind"]] += 1
            counts["in_theme"] += c["in_theme"]
            counts["same_glyph"] += c["same_glyph"]
            counts[f"{c['kind']}_in_theme"] += c["in_theme"]
    n = len(caps)
    total = sum(counts[k] for k in KINDS)
    return {"n_descriptions": n, "hallucinated_per_description": round(total / n, 4),
            **{f"{k}_per_description": round(counts[k] / n, 4) for k in KINDS},
            **{f"{k}_share": round(counts[k] / max(total, 1), 4) for k in KINDS},
            "in_theme_share": round(counts["in_theme"] / max(total, 1), 4),
            "misnamed_same_glyph_share": round(counts["same_glyph"] / max(counts["misnamed"], 1),
                                               4),
            **{f"{k}_in_theme_share": round(counts[f"{k}_in_theme"] / max(counts[k], 1), 4)
               for k in KINDS}}


def verifier_by_kind(calib_dir: Path, world: Any) -> dict:
    """Mean token score and AUROC against correct mentions, per hallucination kind, on the
    calibration captions (train images)."""
    from visalign.eval.chair import Chair, load_synonyms
    from visalign.verifier.calibration import auroc

    split = world.train_split
    objects, theme_of, shape_of = _image_facts(world, split)
    chair = Chair.from_coco(world.instances_path(split), synonyms=load_synonyms(
        world.synonyms_path))
    scores: dict[tuple, list[float]] = collections.defaultdict(list)
    correct: list[float] = []
    for line in (calib_dir / "scores.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["hallucinated"]:
            scores[(r["id"], r["answer_index"], r["category"])].append(r["token_score"])
        else:
            correct.append(r["token_score"])
    answers = [json.loads(ln) for ln in
               (calib_dir / "answers.jsonl").read_text().splitlines() if ln.strip()]
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    # a score's answer_index is the line of answers.jsonl it was computed on
    for index, (a, cap) in enumerate(zip(answers, chair.evaluate(answers)["captions"])):
        iid = a["image_id"]
        for cat, c in classify(cap, objects[iid], theme_of[iid], shape_of).items():
            by_kind[c["kind"]] += scores.get((a["id"], index, cat), [])
    out = {"correct": {"n": len(correct), "mean": round(sum(correct) / len(correct), 4)}}
    for k in KINDS:
        s = by_kind[k]
        out[k] = {"n": len(s), "mean": round(sum(s) / max(len(s), 1), 4),
                  "auroc_vs_correct": round(float(auroc(correct, s)), 4) if s else None}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="", help="finished compare/demo dir")
    ap.add_argument("--evals", default="", help="instead of --grid: a bench_grid_reeval.py "
                    "output dir (<cell>/chair.json), with --world and --split")
    ap.add_argument("--world", default="", help="world of --evals")
    ap.add_argument("--split", default="val", help="split of --evals")
    ap.add_argument("--cells", nargs="*", default=None, help="cells ('' = every cell)")
    ap.add_argument("--calibration", default="", help="a fisao_calibration dir (scores.jsonl)")
    args = ap.parse_args(argv)

    from visalign.compare import CompareConfig, grid_dirs
    from visalign.config import load_config
    from visalign.world import load_world

    if bool(args.grid) == bool(args.evals) or (args.evals and not args.world):
        raise SystemExit("give --grid, or --evals with --world")
    if args.calibration and not args.grid:
        raise SystemExit("--calibration goes with --grid (its captions are of the grid's world)")
    if args.grid:
        grid = Path(args.grid)
        cfg = load_config(CompareConfig, grid / "config.yaml")
        world = load_world(grid_dirs(cfg, grid)[0])
        split, root, sub = cfg.eval.split, grid / "cells", Path("eval")
    else:
        world, split, root, sub = load_world(args.world), args.split, Path(args.evals), Path()
    cells = args.cells or sorted(p.name for p in root.iterdir()
                                 if (p / sub / "chair.json").exists())
    rep: dict = {"source": str(args.grid or args.evals), "world": str(world.root),
                 "split": split, "cells": {}}
    facts = _image_facts(world, split)
    for c in cells:
        rep["cells"][c] = kinds_of_cell(root / c / sub / "chair.json", facts)
    if args.calibration:
        rep["verifier_by_kind"] = verifier_by_kind(Path(args.calibration), world)
    print(json.dumps(rep, indent=2))
    return rep


if __name__ == "__main__":
    main()
