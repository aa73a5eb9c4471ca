"""Which CHAIR changes in a finished grid are more than resampling noise? Prints one JSON object.

For every cell of a ``visalign compare``/``demo`` dir: CHAIR_s, CHAIR_i and CHAIR minus the base
model's on the same held-out prompts, with a paired bootstrap 95 % interval over images
(``visalign.eval.significance``) and the relative change of CHAIR the papers report.

    python benchmarks/bench_significance.py --grid demo_out [--n-boot 2000]
    python benchmarks/bench_significance.py --grid demo_out --pairs cont-sft-600:nsft-600

``--pairs REF:OTHER`` also compares two cells with each other (OTHER − REF) on the same
prompts, e.g. nSFT against continual SFT on the same images. ``--grid`` may also be the
``--out`` dir of ``bench_grid_reeval.py`` (``<cell>/chair.json``); there only the pairs are
computed (that script reports the changes against the base itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="demo_out", help="finished compare/demo dir")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--pairs", nargs="*", default=[], metavar="REF:OTHER",
                    help="also compare these cells with each other (OTHER - REF)")
    args = ap.parse_args(argv)

    from visalign.compare import chair_vs_base

    grid = Path(args.grid)
    cells = grid / "cells"
    reeval = not cells.is_dir() and (grid / "base" / "chair.json").exists()
    if not reeval and not (cells / "base" / "eval" / "chair.json").exists():
        raise SystemExit(f"{cells / 'base' / 'eval' / 'chair.json'} not found: is {args.grid} "
                         "a finished grid (or a bench_grid_reeval.py output)?")
    pairs = [_pair(grid, spec, reeval, args.n_boot) for spec in args.pairs]
    if reeval:
        report = {"grid": str(args.grid), "n_boot": args.n_boot, "pairs": pairs}
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return report
    names = sorted(p.name for p in cells.iterdir() if p.is_dir() and p.name != "base")
    results = chair_vs_base(cells, names, n_boot=args.n_boot)
    rows = [{"cell": r["cell"], "n": r["n"],
             "chair": round(r["other"]["chair"], 4),
             "rel_change_chair": round(r["delta"]["chair"] / r["base"]["chair"], 4)
             if r["base"]["chair"] else None,
             **{f"delta_{k}": round(v, 4) for k, v in r["delta"].items()},
             **{f"ci95_{k}": [round(x, 4) for x in v] for k, v in r["ci"].items()},
             "p_lower_chair": round(r["p_lower"]["chair"], 4)} for r in results]
    table = ["| cell | CHAIR | Δ CHAIR (95 % CI) | rel. | Δ CHAIR_s (95 % CI) | P(lower) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        c, s = r["ci95_chair"], r["ci95_chair_s"]
        table.append(f"| {r['cell']} | {100 * r['chair']:.1f} | {100 * r['delta_chair']:+.1f} "
                     f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}] | "
                     f"{100 * (r['rel_change_chair'] or 0):+.0f} % | "
                     f"{100 * r['delta_chair_s']:+.1f} [{100 * s[0]:+.1f}, {100 * s[1]:+.1f}] | "
                     f"{r['p_lower_chair']:.2f} |")
    base = results[0]["base"] if results else {}
    report = {"grid": str(args.grid), "base": {k: round(v, 4) for k, v in base.items()},
              "n_boot": args.n_boot, "rows": rows, "table_md": "\n".join(table)}
    if pairs:
        report["pairs"] = pairs
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _pair(grid: Path, spec: str, reeval: bool, n_boot: int) -> dict:
    """CHAIR of cell OTHER minus cell REF (``spec`` = 'REF:OTHER'), paired over prompts."""
    from visalign.eval.significance import paired_chair_bootstrap
    from visalign.io import read_json

    ref, sep, other = spec.partition(":")
    if not sep or not ref or not other:
        raise SystemExit(f"--pairs {spec!r}: expected REF:OTHER, e.g. cont-sft-600:nsft-600")
    caps = []
    for cell in (ref, other):
        f = grid / cell / "chair.json" if reeval else grid / "cells" / cell / "eval" / "chair.json"
        if not f.exists():
            raise SystemExit(f"--pairs {spec!r}: {f} not found")
        caps.append(read_json(f)["captions"])
    b = paired_chair_bootstrap(caps[0], caps[1], n_boot=n_boot)
    return {"ref": ref, "other": other, "n": b["n"],
            "delta_chair": round(b["delta"]["chair"], 4),
            "ci95_chair": [round(x, 4) for x in b["ci"]["chair"]],
            "p_lower_chair": round(b["p_lower"]["chair"], 4)}


if __name__ == "__main__":
    main()
