"""Is a method's lower CHAIR more than writing less? Prints one JSON object.

CHAIR_s (a description with any hallucinated object) rises with the number of objects a
description names, so a method that shortens its descriptions lowers CHAIR without naming
objects more truthfully. Here each cell's descriptions are compared with the base's
descriptions of the same images *cut to the cell's length*: for each image the base's text is
cut after as many words (CHAIR's tokens) as the cell's description of that image has (a
longer cell description leaves the base's whole). The cut base is what the base would score if
it wrote as little; a paired bootstrap over images gives cell − cut base with a 95 % interval.

    python benchmarks/diag_length_matched.py --world W --split val --base EVAL/base \
        --cells nsft-1200=EVAL/nsft-1200 fisao-2400=EVAL/fisao-2400 [--n-boot 2000]

``--base`` and each cell are evaluation dirs holding ``chair.json`` (``visalign eval``, a grid's
``cells/<cell>/eval`` or a ``bench_grid_reeval.py`` output dir), on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def cut_to_words(text: str, n: int) -> str:
    """``text`` up to the end of its ``n``-th word (CHAIR's tokenisation); whole if shorter."""
    from visalign.eval.chair import _TOKEN_RE

    if n <= 0:
        return ""
    for i, m in enumerate(_TOKEN_RE.finditer(text), 1):
        if i == n:
            return text[:m.end()]
    return text


def length_matched(chair, base_caps: list[dict], cell_caps: list[dict]) -> list[dict]:
    """CHAIR details of the base's descriptions cut, image by image, to the cell's word count."""
    n_words = {c["image_id"]: c["n_words"] for c in cell_caps}
    recs = [{"image_id": c["image_id"], "caption": cut_to_words(c["caption"], n_words[c["image_id"]])}
            for c in base_caps if c["image_id"] in n_words]
    return chair.evaluate(recs)["captions"]


def _summary(caps: list[dict]) -> dict:
    n = len(caps)
    men = sum(len(c["mentions"]) for c in caps)
    hal = sum(sum(m["hallucinated"] for m in c["mentions"]) for c in caps)
    s = sum(c["chair_s"] for c in caps) / n
    i = hal / men if men else 0.0
    return {"chair": round((s + i) / 2, 4), "chair_s": round(s, 4), "chair_i": round(i, 4),
            "recall": round(sum(c["recall"] for c in caps) / n, 4),
            "words": round(sum(c["n_words"] for c in caps) / n, 2),
            "objects_named": round(men / n, 3), "n": n}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="the world the evaluations ran on")
    ap.add_argument("--split", default="val")
    ap.add_argument("--base", required=True, help="evaluation dir of the base model")
    ap.add_argument("--cells", nargs="+", required=True, metavar="NAME=EVAL_DIR")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)

    from visalign.eval.chair import Chair, load_synonyms
    from visalign.eval.significance import paired_chair_bootstrap
    from visalign.io import read_json
    from visalign.world import load_world

    world = load_world(args.world)
    chair = Chair.from_coco(world.instances_path(args.split),
                            synonyms=load_synonyms(world.synonyms_path))
    base_caps = read_json(Path(args.base) / "chair.json")["captions"]
    rows = []
    for spec in args.cells:
        name, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"{spec!r}: expected NAME=EVAL_DIR")
        cell = read_json(Path(d) / "chair.json")["captions"]
        cut = length_matched(chair, base_caps, cell)
        ids = {c["image_id"] for c in cut}
        cell = [c for c in cell if c["image_id"] in ids]
        full = [c for c in base_caps if c["image_id"] in ids]
        vs_cut = paired_chair_bootstrap(cut, cell, n_boot=args.n_boot)
        vs_full = paired_chair_bootstrap(full, cell, n_boot=args.n_boot)
        rows.append({
            "cell": name, "cell_metrics": _summary(cell), "base_cut": _summary(cut),
            "base_full": _summary(full),
            "delta_vs_cut": {k: round(v, 4) for k, v in vs_cut["delta"].items()},
            "ci95_vs_cut": {k: [round(x, 4) for x in v] for k, v in vs_cut["ci"].items()},
            "delta_vs_full": {k: round(v, 4) for k, v in vs_full["delta"].items()},
            "ci95_vs_full": {k: [round(x, 4) for x in v] for k, v in vs_full["ci"].items()},
            # how much of the change against the full base the length alone explains
            "length_share_of_chair_change": (
                round((_summary(cut)["chair"] - _summary(full)["chair"])
                      / vs_full["delta"]["chair"], 3) if vs_full["delta"]["chair"] else None),
        })
    table = ["| cell | words (base cut) | CHAIR | base cut to its length | Δ vs cut [95 % CI] | "
             "Δ vs full base [95 % CI] | CHAIR_i | base cut CHAIR_i |", "|---" * 8 + "|"]
    for r in rows:
        c, b = r["cell_metrics"], r["base_cut"]
        lo, hi = r["ci95_vs_cut"]["chair"]
        flo, fhi = r["ci95_vs_full"]["chair"]
        table.append(f"| {r['cell']} | {c['words']:.1f} ({b['words']:.1f}) | {100 * c['chair']:.1f} "
                     f"| {100 * b['chair']:.1f} | {100 * r['delta_vs_cut']['chair']:+.1f} "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{100 * r['delta_vs_full']['chair']:+.1f} [{100 * flo:+.1f}, {100 * fhi:+.1f}] "
                     f"| {100 * c['chair_i']:.1f} | {100 * b['chair_i']:.1f} |")
    report = {"world": str(args.world), "split": args.split, "base": args.base,
              "base_metrics": _summary(base_caps), "rows": rows, "table_md": "\n".join(table),
              "command": shlex.join(["python", "benchmarks/diag_length_matched.py",
                                     *(argv if argv is not None else sys.argv[1:])])}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
