"""Which kinds of hallucinated object the methods of a grid remove; prints one JSON object.

Per grid cell (or per evaluation dir): hallucinated objects per description by kind
(``misnamed``, ``empty_spot``, ``no_region``) and the shares that are theme guesses or
look-alikes, so the base → method change shows which kind a method removes; with
``--calibration`` also the verifier's token scores by kind on the calibration captions (what
FiSAO's reward can tell apart). The kinds are defined in
:mod:`visalign.analysis.hallucination_kinds`.

    python benchmarks/research/diag_hallucination_kinds.py --grid GRID [--cells base nsft-600 ...] \
        [--calibration GRID/fisao_calibration]
    python benchmarks/research/diag_hallucination_kinds.py --evals REEVAL --world W --split val
        (REEVAL = a bench_grid_reeval.py --out dir: one <cell>/chair.json per model)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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

    from visalign.analysis.hallucination_kinds import image_facts, kinds_per_description, \
        verifier_by_kind
    from visalign.compare import CompareConfig, grid_dirs
    from visalign.config import load_config
    from visalign.io import read_json
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
    facts = image_facts(world, split)
    for c in cells:
        rep["cells"][c] = kinds_per_description(
            read_json(root / c / sub / "chair.json")["captions"], facts)
    if args.calibration:
        rep["verifier_by_kind"] = verifier_by_kind(args.calibration, world)
    print(json.dumps(rep, indent=2))
    return rep


if __name__ == "__main__":
    main()
