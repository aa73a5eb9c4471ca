"""POPE: polling-based object probing (Li et al. 2023, "Evaluating Object Hallucination in Large
Vision-Language Models"), built from COCO-format instance annotations.

Protocol of the reference (AoiDragon/POPE ``main.py`` + ``utils.py``):

* keep the images with at least ``n_negatives`` distinct annotated objects (an error if fewer
  than ``n_images`` remain) and sample ``n_images`` of them;
* per image, take its first ``n_negatives`` objects as positives ("yes"); after each positive
  ask one negative ("no"): an object absent from the image and not yet asked about it, chosen
  - ``random``: uniformly among the objects seen in the sampled images;
  - ``popular``: the most frequent object of the sampled images first;
  - ``adversarial``: the object co-occurring most often with that positive first
  (popular/adversarial fall back to ``random`` when their ranked list is used up);
* "Is there a/an {object} in the image?" ("an" before a vowel letter, as the reference does);
* answers map to yes/no by the reference rule: keep the first sentence (up to the first "."),
  drop commas, and answer "no" when a word is "No", "no" or "not"; everything else is "yes".

Choices the reference leaves open, pinned here so the same seed gives the same file:

* an image's objects are its distinct categories in the order of their first annotation in the
  file (the reference used the order of its pre-extracted object list);
* images are sampled with ``random.Random(seed)``, so all three splits of one seed use the same
  images; negatives use ``random.Random(f"{seed}:{split}")``;
* ties in the popular / co-occurrence rankings are broken by category name;
* a negative that cannot be found (every object of the sampled images is in the image or already
  asked) is an error: the reference looped forever;
* answers are split on any whitespace, not only on " " (a newline after "No" still counts).
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping

from visalign.data.coco import coco_json
from visalign.io import DataError

__all__ = ["SPLITS", "build_pope", "score_pope", "parse_yes_no", "pope_question"]

SPLITS = ("random", "popular", "adversarial")
_TEMPLATE = "Is there {article} {obj} in the image?"


def pope_question(obj: str) -> str:
    """The POPE question for one object ("an" before a vowel letter, as the reference)."""
    article = "an" if obj[:1].lower() in "aeiou" and obj else "a"
    return _TEMPLATE.format(article=article, obj=obj)


def _image_objects(data: Mapping, path: Any) -> tuple[list[dict], dict[Any, list[str]]]:
    cats: dict[Any, str] = {}
    for i, c in enumerate(data.get("categories") or []):
        if "id" not in c or not isinstance(c.get("name"), str):
            raise DataError(path, "category needs 'id' and a string 'name'",
                            record=f"categories[{i}]")
        cats[c["id"]] = c["name"]
    objects: dict[Any, list[str]] = defaultdict(list)
    seen: dict[Any, set[str]] = defaultdict(set)
    for i, ann in enumerate(data.get("annotations") or []):
        if ann.get("category_id") not in cats:
            raise DataError(path, f"unknown category_id {ann.get('category_id')!r}",
                            record=f"annotations[{i}]", field="category_id")
        if "image_id" not in ann:
            raise DataError(path, "missing image id", record=f"annotations[{i}]",
                            field="image_id")
        name, img = cats[ann["category_id"]], ann["image_id"]
        if name not in seen[img]:
            seen[img].add(name)
            objects[img].append(name)
    images = list(data.get("images") or [])
    for i, img in enumerate(images):
        if "id" not in img:
            raise DataError(path, "image without id", record=f"images[{i}]", field="id")
    return images, objects


def build_pope(instances_path_or_coco: Any, split: str, n_images: int = 500,
               n_negatives: int = 3, seed: int = 0, image_root: str | os.PathLike | None = None
               ) -> list[dict]:
    """Build one POPE split (see the module docstring) and return its question records.

    Each record: ``question_id`` (``"<split>-<n>"``), ``image_id``, ``object``, ``question``,
    ``label`` ("yes"/"no"), ``split``; with ``image_root`` also ``image`` (root joined with the
    COCO ``file_name``) and ``prompt`` (= question) so ``visalign generate`` can answer it.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; choose one of {', '.join(SPLITS)}")
    if n_images < 1 or n_negatives < 1:
        raise ValueError("n_images and n_negatives must be >= 1")
    data, path = coco_json(instances_path_or_coco, "instances")
    images, objects = _image_objects(data, path)
    eligible = [img for img in images if len(objects.get(img["id"], ())) >= n_negatives]
    if len(eligible) < n_images:
        raise DataError(path, f"only {len(eligible)} images have at least {n_negatives} "
                              f"annotated objects; cannot sample {n_images} (ask for fewer "
                              "images, or fewer negatives per image)")
    sampled = random.Random(seed).sample(eligible, n_images)
    rng = random.Random(f"{seed}:{split}")

    # Statistics over the sampled images only, as the reference computes them.
    freq: Counter[str] = Counter()
    co: dict[str, Counter[str]] = defaultdict(Counter)
    for img in sampled:
        objs = objects[img["id"]]
        freq.update(objs)
        for o in objs:
            for other in objs:
                if other != o:
                    co[o][other] += 1
    universe = sorted(freq)  # the objects seen in the sampled images (sorted: determinism)
    popular = sorted(freq, key=lambda o: (-freq[o], o))
    co_ranked = {o: sorted(c, key=lambda x: (-c[x], x)) for o, c in co.items()}

    out: list[dict] = []
    for img in sampled:
        present = set(objects[img["id"]])
        asked: set[str] = set()
        extra: dict[str, Any] = {}
        if image_root is not None:
            fname = img.get("file_name")
            if not isinstance(fname, str):
                raise DataError(path, "image has no 'file_name' to join to --image-root",
                                record=f"image {img['id']}", field="file_name")
            extra["image"] = os.path.join(os.fspath(image_root), fname)
        for pos in objects[img["id"]][:n_negatives]:
            asked.add(pos)
            neg = None
            if split == "popular":
                neg = next((o for o in popular if o not in present and o not in asked), None)
            elif split == "adversarial":
                neg = next((o for o in co_ranked.get(pos, ())
                            if o not in present and o not in asked), None)
            if neg is None:
                cands = [o for o in universe if o not in present and o not in asked]
                if not cands:
                    raise DataError(path, f"cannot find a negative object for image "
                                          f"{img['id']}: all {len(universe)} objects of the "
                                          "sampled images are in it or already asked")
                neg = rng.choice(cands)
            asked.add(neg)
            for obj, label in ((pos, "yes"), (neg, "no")):
                q = pope_question(obj)
                rec = {"question_id": f"{split}-{len(out)}", "image_id": img["id"],
                       "object": obj, "question": q, "label": label, "split": split}
                if extra:
                    rec.update(extra)
                    rec["prompt"] = q
                out.append(rec)
    return out


def parse_yes_no(answer: str) -> str:
    """Map a free-form answer to "yes"/"no" by the POPE reference rule (module docstring)."""
    text = answer if isinstance(answer, str) else ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split()
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def _binary_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": (tp + fp) / n if n else 0.0}


def score_pope(questions: Iterable[Mapping], answers: Iterable[Mapping],
               split: str | None = None, *, questions_path: Any = None,
               answers_path: Any = None) -> dict:
    """Score POPE answers against question labels.

    ``split`` names the split in the metric keys (``pope_<split>_accuracy`` ...); without it
    each question's ``split`` field decides (several splits in one file are scored apart).
    Every question needs an answer: missing ones are an error that says how many and which.
    Returns ``{"metrics": {...}, "splits": {split: {n, tp, fp, tn, fn}}, "n_extra_answers"}``.
    """
    by_id: dict[str, str] = {}
    for i, a in enumerate(answers):
        if "question_id" not in a:
            raise DataError(answers_path, "missing question id", record=i, field="question_id")
        if not isinstance(a.get("answer"), str):
            raise DataError(answers_path, "missing or non-string answer", record=i,
                            field="answer")
        qid = str(a["question_id"])
        if qid in by_id and by_id[qid] != a["answer"]:
            raise DataError(answers_path, f"two different answers for question {qid!r}",
                            record=i, field="answer")
        by_id[qid] = a["answer"]

    counts: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    used: set[str] = set()
    n_q = 0
    for i, q in enumerate(questions):
        n_q += 1
        for field in ("question_id", "label"):
            if field not in q:
                raise DataError(questions_path, f"missing {field!r}", record=i, field=field)
        label = str(q["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(questions_path, f"label must be 'yes' or 'no', got {q['label']!r}",
                            record=i, field="label")
        name = split
        if name is None:
            name = q.get("split")
            if not isinstance(name, str) or not name:
                raise DataError(questions_path, "no split name: the question has no 'split' "
                                                "field; pass --split NAME", record=i,
                                field="split")
        qid = str(q["question_id"])
        if qid not in by_id:
            missing.append(qid)
            continue
        used.add(qid)
        pred = parse_yes_no(by_id[qid])
        c = counts.setdefault(name, {"n": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0})
        c["n"] += 1
        key = ("t" if pred == label else "f") + ("p" if pred == "yes" else "n")
        c[key] += 1
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(answers_path, f"{len(missing)} of {n_q} questions have no answer "
                                      f"(question_id {shown}); finish generation first")
    if n_q == 0:
        raise DataError(questions_path, "no questions")
    metrics: dict[str, float] = {}
    for name, c in counts.items():
        for k, v in _binary_metrics(c["tp"], c["fp"], c["tn"], c["fn"]).items():
            metrics[f"pope_{name}_{k}"] = v
    return {"metrics": metrics, "splits": counts, "n_extra_answers": len(set(by_id) - used)}
