"""CHAIR speed on a synthetic COCO-sized input; prints one JSON object.

Generates COCO-val2014-sized annotations (40,504 images, ~292k instance annotations, 5 human
captions per image) and 5,000 generated captions of ~100 words, writes the COCO files to a temp
dir, then times ``Chair.from_coco`` (JSON load + index) and ``Chair.evaluate`` separately
(``eval_s`` is a first pass: it includes the one-time ``import inflect`` and the ground truth
derived from the human captions; ``eval_warm_s`` repeats it with those caches warm). For scale it also times a reference-style loop (as in LisaAnne/Hallucination: singularise every
word without a cache, rebuild the synonym set for every word) on a small subset.

    python benchmarks/bench_chair.py [--captions 5000] [--words 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from visalign.eval.chair import Chair, load_synonyms

FILLER = ("a an the of on in at with and near next to is are sitting standing while its his "
          "her their some two three several large small red blue green white black wooden "
          "old young street table room field grass water sky background front side top left "
          "right middle sunny cloudy bright dark image picture scene shows appears looks "
          "there this that holding wearing playing looking walking riding eating").split()


def make_world(rng: random.Random, n_images: int = 40504, anns_per_image: float = 7.2,
               caps_per_image: int = 5):
    table = load_synonyms(None)
    cats = [{"id": i + 1, "name": line[0]} for i, line in enumerate(table)]
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(n_images)]
    anns, caps = [], []
    objs_of: list[list[int]] = []
    for im in range(n_images):
        k = max(1, int(rng.expovariate(1 / anns_per_image)))
        objs = [rng.randrange(len(cats)) for _ in range(k)]
        objs_of.append(objs)
        for c in objs:
            anns.append({"id": len(anns), "image_id": im, "category_id": c + 1,
                         "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0})
        for _ in range(caps_per_image):
            words = [rng.choice(FILLER) for _ in range(8)]
            words.insert(rng.randrange(9), rng.choice(table[rng.choice(objs)]))
            caps.append({"id": len(caps), "image_id": im, "caption": " ".join(words) + "."})
    return table, {"images": images, "categories": cats, "annotations": anns}, \
        {"images": images, "annotations": caps}, objs_of


def make_captions(rng: random.Random, table, objs_of, n: int, n_words: int) -> list[dict]:
    # Pseudo-words widen the vocabulary the way real long captions do (cache misses).
    rare = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
            for _ in range(5000)]
    out = []
    for i in range(n):
        im = rng.randrange(len(objs_of))
        words = []
        while len(words) < n_words:
            r = rng.random()
            if r < 0.10:  # an object of the image (maybe plural)
                w = rng.choice(table[rng.choice(objs_of[im])])
                words.append(w + "s" if rng.random() < 0.3 else w)
            elif r < 0.14:  # any COCO object: often a hallucination
                words.append(rng.choice(rng.choice(table)))
            elif r < 0.30:
                words.append(rng.choice(rare))
            else:
                words.append(rng.choice(FILLER))
            if rng.random() < 0.08:
                words[-1] += "."
        out.append({"image_id": im, "caption": " ".join(words)})
    return out


def reference_style_rate(table, captions: list[dict]) -> float:
    """Captions/s of a loop in the reference's style (uncached inflect, set rebuilt per word)."""
    import re

    import inflect

    eng = inflect.engine()
    objects = [w for line in table for w in line]
    inverse = {w: line[0] for line in table for w in line}
    t = time.perf_counter()
    for rec in captions:
        words = re.findall(r"[a-z]+", rec["caption"].lower())
        words = [eng.singular_noun(w) or w for w in words]
        words = [w for w in words if w in set(objects)]
        [inverse[w] for w in words]
    return len(captions) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-subset", type=int, default=50)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t = time.perf_counter()
    table, inst, caps, objs_of = make_world(rng)
    records = make_captions(rng, table, objs_of, args.captions, args.words)
    gen_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        ipath, cpath = Path(d) / "instances.json", Path(d) / "captions.json"
        ipath.write_text(json.dumps(inst))
        cpath.write_text(json.dumps(caps))
        t = time.perf_counter()
        chair = Chair.from_coco(ipath, cpath)
        load_s = time.perf_counter() - t
    t = time.perf_counter()
    res = chair.evaluate(records)
    eval_s = time.perf_counter() - t
    # Second pass: singular forms and caption-derived ground truth are cached by now (and the
    # one-time ~1 s `import inflect` of the first pass is gone).
    t = time.perf_counter()
    chair.evaluate(records)
    warm_s = time.perf_counter() - t
    ref_rate = reference_style_rate(table, records[:args.reference_subset])
    out = {
        "benchmark": "chair",
        "n_captions": args.captions,
        "avg_words_per_caption": round(res["metrics"]["avg_len"], 1),
        "gt_images": len(inst["images"]),
        "gt_instance_annotations": len(inst["annotations"]),
        "gt_reference_captions": len(caps["annotations"]),
        "generate_s": round(gen_s, 2),
        "load_s": round(load_s, 2),
        "eval_s": round(eval_s, 2),
        "captions_per_s": round(args.captions / eval_s, 1),
        "captions_per_s_incl_load": round(args.captions / (eval_s + load_s), 1),
        "eval_warm_s": round(warm_s, 2),
        "captions_per_s_warm": round(args.captions / warm_s, 1),
        "reference_style_captions_per_s": round(ref_rate, 1),
        "speedup_vs_reference_style": round(args.captions / eval_s / ref_rate, 1),
        "chair_s": round(res["metrics"]["chair_s"], 4),
        "chair_i": round(res["metrics"]["chair_i"], 4),
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
