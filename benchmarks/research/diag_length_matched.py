"""Is a method's lower CHAIR more than writing less? Prints one JSON object.

Each cell's descriptions against the base's descriptions of the same images cut to the cell's
length (:mod:`visalign.eval.length_matched`; ``visalign compare`` reports the same analysis for
its own cells), and against the full base, with paired 95 % bootstrap intervals over images.

    python benchmarks/research/diag_length_matched.py --world W --split val --base EVAL/base \
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", required=True, help="the world the evaluations ran on")
    ap.add_argument("--split", default="val")
    ap.add_argument("--base", required=True, help="evaluation dir of the base model")
    ap.add_argument("--cells", nargs="+", required=True, metavar="NAME=EVAL_DIR")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args(argv)

    from visalign.eval.length_matched import caption_summary, chair_vs_length_matched_base
    from visalign.eval.significance import paired_chair_bootstrap
    from visalign.eval.suite import world_chair
    from visalign.io import read_json
    from visalign.world import load_world

    def rounded(d: dict) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

    # the evaluation suite's ground truth (reference captions included), as in chair.json
    chair = world_chair(load_world(args.world), args.split)
    base_caps = read_json(Path(args.base) / "chair.json")["captions"]
    rows = []
    for spec in args.cells:
        name, _, d = spec.partition("=")
        if not d:
            raise SystemExit(f"{spec!r}: expected NAME=EVAL_DIR")
        cell = read_json(Path(d) / "chair.json")["captions"]
        vs_cut = chair_vs_length_matched_base(chair, base_caps, cell, n_boot=args.n_boot)
        ids = {c["image_id"] for c in cell}
        full = [c for c in base_caps if c["image_id"] in ids]
        vs_full = paired_chair_bootstrap(full, cell, n_boot=args.n_boot)
        full_summary = caption_summary(full)
        cut_chair, full_chair = vs_cut["base_cut"]["chair"], full_summary["chair"]
        rows.append({
            "cell": name, "cell_metrics": rounded(vs_cut["other"]),
            "base_cut": rounded(vs_cut["base_cut"]), "base_full": rounded(full_summary),
            "delta_vs_cut": {k: round(v, 4) for k, v in vs_cut["delta"].items()},
            "ci95_vs_cut": {k: [round(x, 4) for x in v] for k, v in vs_cut["ci"].items()},
            "delta_vs_full": {k: round(v, 4) for k, v in vs_full["delta"].items()},
            "ci95_vs_full": {k: [round(x, 4) for x in v] for k, v in vs_full["ci"].items()},
            # how much of the change against the full base the length alone explains
            "length_share_of_chair_change": (
                round((cut_chair - full_chair) / vs_full["delta"]["chair"], 3)
                if vs_full["delta"]["chair"] else None),
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
              "base_metrics": rounded(caption_summary(base_caps)), "rows": rows, "table_md": "\n".join(table),
              "command": shlex.join(["python", "benchmarks/research/diag_length_matched.py",
                                     *(argv if argv is not None else sys.argv[1:])])}
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
