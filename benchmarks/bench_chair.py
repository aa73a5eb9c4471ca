"""CHAIR speed on a synthetic COCO-sized input; prints one JSON object.

Generates COCO-val2014-sized annotations (40,504 images, ~280k instance annotations, 5 human
captions per image) and 5,000 generated captions of ~100 words on distinct images, writes the
COCO files to a temp dir, then measures:

- in process: ``Chair.from_coco`` (JSON load + index) and ``Chair.evaluate`` separately
  (``eval_s`` is a first pass: it includes the one-time ``import inflect`` and the ground truth
  derived from the human captions; ``eval_warm_s`` repeats it with those caches warm);
- the command a user runs, ``visalign eval chair``, as a fresh process each time (process start,
  imports, reading the files, scoring and writing the result included): ``cold`` builds the
  annotation index cache, ``warm`` runs reuse it (``--repeats`` times: min and spread), ``new``
  scores another caption file of the same images (words never seen before) with the cache warm,
  ``no_cache`` runs with ``--no-cache``; the numbers of every run must be identical;
- with ``--reference PATH`` (a Python 3 port of LisaAnne/Hallucination ``utils/chair.py``,
  which is not shipped), the reference run the same way on the same input in its own layout
  (``captions_/instances_{val,train}2014.json`` + an ``imgToEval`` caption file), and its CHAIR_s
  / CHAIR_i next to ours. ``--reference-env K=V`` sets its environment (e.g. ``PYTHONPATH`` for
  pattern, ``NLTK_DATA`` for punkt).

Without ``--reference``, a loop in the reference's style (uncached singularisation, synonym set
rebuilt per word) on a small subset gives the scale.

    python benchmarks/bench_chair.py [--captions 5000] [--words 100] [--seed 0] [--repeats 3]
        [--reference /tmp/chair.py --reference-env PYTHONPATH=... NLTK_DATA=...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visalign.eval.chair import load_synonyms
from visalign.eval.chair_lemma import chair_class

FILLER = ("a an the of on in at with and near next to is are sitting standing while its his "
          "her their some two three several large small red blue green white black wooden "
          "old young street table room field grass water sky background front side top left "
          "right middle sunny cloudy bright dark image picture scene shows appears looks "
          "there this that holding wearing playing looking walking riding eating").split()

METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr", "SPICE", "ROUGE_L")


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
    """``n`` generated captions on distinct images (the reference keys captions by image)."""
    # Pseudo-words widen the vocabulary the way real long captions do (cache misses).
    rare = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
            for _ in range(5000)]
    out = []
    for im in rng.sample(range(len(objs_of)), n):
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


def write_reference_layout(d: Path, inst: dict, caps: dict, records: list[dict]) -> Path:
    """The reference's inputs: COCO files split val/train as it reads them, and an
    ``imgToEval`` caption file (caption-metric fields zero: the reference copies them)."""
    ann = d / "annotations"
    ann.mkdir()
    head = {"info": {}, "licenses": []}
    (ann / "instances_val2014.json").write_text(json.dumps({**head, **inst}))
    (ann / "instances_train2014.json").write_text(json.dumps(
        {**head, "categories": inst["categories"], "images": [], "annotations": []}))
    (ann / "captions_val2014.json").write_text(json.dumps({**head, **caps}))
    (ann / "captions_train2014.json").write_text(json.dumps({**head, "images": [],
                                                             "annotations": []}))
    img_to_eval = {str(r["image_id"]): {"image_id": r["image_id"], "caption": r["caption"],
                                        **{k: 0.0 for k in METRIC_KEYS}} for r in records}
    cap_file = d / "generated.json"
    cap_file.write_text(json.dumps({"overall": {k: 0.0 for k in METRIC_KEYS},
                                    "imgToEval": img_to_eval}))
    return cap_file


def _timed(cmd: list[str], env: dict, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return dt


def _spread(times: list[float]) -> dict:
    return {"runs_s": [round(t, 3) for t in times], "min_s": round(min(times), 3),
            "max_s": round(max(times), 3)}


def cli_runs(d: Path, gen: Path, other: Path, repeats: int, variant: str = "reference") -> dict:
    """``visalign eval chair`` as a user runs it, each a fresh process."""
    env = dict(os.environ)
    cache = d / "user-cache"
    env["VISALIGN_CACHE_DIR"] = str(cache)
    base = [sys.executable, "-m", "visalign.cli", "eval", "chair", "--variant", variant,
            "--instances", str(d / "instances.json"), "--coco-captions", str(d / "captions.json")]

    def run(captions: Path, out: str, *extra: str) -> tuple[float, dict]:
        dt = _timed(base + ["--captions", str(captions), "--out", str(d / out), *extra], env)
        return dt, json.loads((d / out).read_text())["metrics"]

    cold, m_cold = run(gen, "cold.json")
    warm, metrics = [], []
    for i in range(repeats):
        dt, m = run(gen, f"warm{i}.json")
        warm.append(dt)
        metrics.append(m)
    new, m_new = run(other, "new.json")
    no_cache, m_none = run(gen, "nocache.json", "--no-cache")
    m_new_none = run(other, "new_nocache.json", "--no-cache")[1]
    if any(m != m_cold for m in metrics + [m_none]) or m_new != m_new_none:
        raise AssertionError("CHAIR numbers differ between cached and uncached runs")
    return {"cold_s": round(cold, 3), "warm": _spread(warm), "new_captions_s": round(new, 3),
            "no_cache_s": round(no_cache, 3), "chair_s": m_cold["chair_s"],
            "chair_i": m_cold["chair_i"], "identical_with_and_without_cache": True}


def reference_runs(script: Path, d: Path, cap_file: Path, repeats: int,
                   env_pairs: list[str]) -> dict:
    env = dict(os.environ)
    for kv in env_pairs:
        k, _, v = kv.partition("=")
        env[k] = v
    times = []
    for i in range(repeats):
        env["REF_OUT"] = str(d / f"reference{i}.json")
        times.append(_timed([sys.executable, str(script), "--cap_file", str(cap_file),
                             "--annotation_path", str(d / "annotations")], env, cwd=d))
    overall = json.loads((d / "reference0.json").read_text())["overall_metrics"]
    return {**_spread(times), "chair_s": overall["CHAIRs"], "chair_i": overall["CHAIRi"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="warm command runs to time")
    ap.add_argument("--variant", choices=["reference", "pattern"], default="reference",
                    help="visalign's CHAIR variant to time (pattern: chair.py exactly)")
    ap.add_argument("--reference-subset", type=int, default=50)
    ap.add_argument("--reference", type=Path, default=None,
                    help="a Python 3 port of the reference chair.py to time side by side")
    ap.add_argument("--reference-env", nargs="*", default=[], metavar="K=V")
    ap.add_argument("--reference-repeats", type=int, default=2)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    t = time.perf_counter()
    table, inst, caps, objs_of = make_world(rng)
    records = make_captions(rng, table, objs_of, args.captions, args.words)
    other = make_captions(random.Random(args.seed + 1), table, objs_of, args.captions,
                          args.words)
    gen_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ipath, cpath = d / "instances.json", d / "captions.json"
        ipath.write_text(json.dumps(inst))
        cpath.write_text(json.dumps(caps))
        gen, gen_other = d / "generated.jsonl", d / "other.jsonl"
        gen.write_text("".join(json.dumps(r) + "\n" for r in records))
        gen_other.write_text("".join(json.dumps(r) + "\n" for r in other))
        t = time.perf_counter()
        chair = chair_class(args.variant).from_coco(ipath, cpath)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        res = chair.evaluate(records)
        eval_s = time.perf_counter() - t
        # Second pass: singular forms and caption-derived ground truth are cached by now (and
        # the one-time `import inflect` of the first pass is gone).
        t = time.perf_counter()
        chair.evaluate(records)
        warm_s = time.perf_counter() - t
        cli = cli_runs(d, gen, gen_other, args.repeats, args.variant)
        if cli["chair_s"] != res["metrics"]["chair_s"] or \
                cli["chair_i"] != res["metrics"]["chair_i"]:
            raise AssertionError("the command's numbers differ from the library's")
        reference = None
        if args.reference is not None:
            cap_file = write_reference_layout(d, inst, caps, records)
            reference = reference_runs(args.reference.resolve(), d, cap_file,
                                       args.reference_repeats, args.reference_env)
    out = {
        "benchmark": "chair",
        "variant": args.variant,
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
        "command": cli,
        "chair_s": round(res["metrics"]["chair_s"], 4),
        "chair_i": round(res["metrics"]["chair_i"], 4),
    }
    if reference is not None:
        out["reference"] = reference
        out["speedup_vs_reference"] = {
            "warm": round(reference["min_s"] / cli["warm"]["min_s"], 1),
            "new_captions": round(reference["min_s"] / cli["new_captions_s"], 1),
            "cold": round(reference["min_s"] / cli["cold_s"], 1),
            "no_cache": round(reference["min_s"] / cli["no_cache_s"], 1)}
        out["same_numbers_as_reference"] = (reference["chair_s"] == cli["chair_s"]
                                            and reference["chair_i"] == cli["chair_i"])
    else:
        ref_rate = reference_style_rate(table, records[:args.reference_subset])
        out["reference_style_captions_per_s"] = round(ref_rate, 1)
        out["speedup_vs_reference_style"] = round(args.captions / eval_s / ref_rate, 1)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
