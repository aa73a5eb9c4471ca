"""The grid's analyses beside its table: CHAIR against the base (paired bootstrap), against the
base's own descriptions cut to each cell's length, FiSAO's calibration (Fig. 1/2) and the
reward shift of the objects each model names (Fig. 4)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from visalign.compare.methods import CALIBRATION_FIGURES
from visalign.io import DataError, read_json


def chair_vs_base(cells: Path, names: list[str], n_boot: int = 1000) -> list[dict]:
    """CHAIR change of each cell in ``names`` (``<method>-<size>`` dirs under ``cells``) against
    the base on the same held-out descriptions, with a paired bootstrap interval (CHAIR on
    ~150 captions moves by a few points by chance). Cells without a CHAIR result are left out;
    no base result gives ``[]``. Each entry: ``cell`` plus ``paired_chair_bootstrap``'s
    ``n``, ``base``, ``other``, ``delta``, ``ci``, ``p_lower``."""
    from visalign.eval.significance import paired_chair_bootstrap

    base = cells / "base" / "eval" / "chair.json"
    if not base.exists():
        return []
    base_caps = read_json(base)["captions"]
    out = []
    for name in names:
        f = cells / name / "eval" / "chair.json"
        if not f.exists():
            continue
        b = paired_chair_bootstrap(base_caps, read_json(f)["captions"], n_boot=n_boot)
        out.append({"cell": name, **{k: b[k] for k in
                                     ("n", "base", "other", "delta", "ci", "p_lower")}})
    return out


def chair_vs_length_matched(cells: Path, names: list[str], source: Any, split: str,
                            n_boot: int = 1000) -> list[dict]:
    """CHAIR of each cell in ``names`` against the base's descriptions cut, image by image, to
    the cell's length (:mod:`visalign.eval.length_matched`): a lower CHAIR that is only shorter
    descriptions shows up here as a change near 0. Cells without a CHAIR result are left out;
    no base result gives ``[]``. Each entry: ``cell`` plus
    :func:`~visalign.eval.length_matched.chair_vs_length_matched_base`'s fields."""
    from visalign.eval.length_matched import chair_vs_length_matched_base
    from visalign.eval.suite import world_chair

    base = cells / "base" / "eval" / "chair.json"
    if not base.exists() or not names:
        return []
    chair = world_chair(source, split)   # the suite's ground truth, reference captions included
    base_caps = read_json(base)["captions"]
    out = []
    for name in names:
        f = cells / name / "eval" / "chair.json"
        if f.exists():
            out.append({"cell": name, **chair_vs_length_matched_base(
                chair, base_caps, read_json(f)["captions"], n_boot=n_boot)})
    return out


def reward_shift(source: Any, verifier: Path, before_dir: Path, after_dir: Path,
                 calib_dir: Path, out: Path) -> dict | None:
    """Fig. 4: verifier scores and rewards of the objects each model names on held-out images
    (None when an answer file is missing or a model names no object)."""
    from visalign.methods.fisao.calibrate import reward_shift as shift

    # the micro-world suite's descriptions, or `visalign eval suite`'s CHAIR answers
    name = next((n for n in ("answers_detail.jsonl", "answers_chair.jsonl")
                 if (before_dir / n).exists()), "answers_detail.jsonl")
    fb, fa = before_dir / name, after_dir / name
    if not (fa.exists() and fb.exists()):
        return None
    try:
        return shift(fb, fa, out, verifier=verifier, calibration=calib_dir / "calibration.json",
                     image_root=str(source.image_root))
    except DataError as e:  # e.g. a model that names no object: no Fig. 4, the grid goes on
        print(f"[compare] Fig. 4 skipped: {e}", file=sys.stderr)
        return None


def grid_analysis(out: Path, rows: list[dict], source: Any, split: str, verifier: Path,
                  calib_dir: Path, sizes: list[int], with_fisao: bool,
                  figures: dict[str, str]) -> dict:
    """Every analysis of a finished grid, its figures written to ``out/figures`` and listed in
    ``figures`` (caption -> path relative to ``out``); returns ``results.json``'s
    ``analysis``."""
    from visalign.report import plot_chair_deltas

    cells, figs_dir = out / "cells", out / "figures"
    analysis: dict[str, Any] = {}
    deltas = chair_vs_base(cells, [f"{r['method']}-{r['data_size']}" for r in rows
                                   if r["method"] != "base"])
    if deltas:
        analysis["chair_vs_base"] = deltas
        plot_chair_deltas(deltas, figs_dir / "chair_vs_base.png")
        figures["CHAIR change against the base (95 % paired bootstrap interval over images)"] = \
            "figures/chair_vs_base.png"
    matched = chair_vs_length_matched(cells, [d["cell"] for d in deltas], source, split)
    if matched:
        analysis["chair_vs_length_matched_base"] = matched
        plot_chair_deltas(matched, figs_dir / "chair_vs_length_matched_base.png",
                          versus="the base cut to the cell's length")
        figures["CHAIR against the base's own descriptions cut to each cell's length, image by "
                "image (< 0: fewer hallucinations than the base writing as little; 95 % paired "
                "bootstrap interval)"] = "figures/chair_vs_length_matched_base.png"
    if with_fisao and (calib_dir / "calibration_report.json").exists():
        rep = read_json(calib_dir / "calibration_report.json")
        analysis["calibration"] = {k: rep.get(k) for k in (
            "mu_gt", "mu_hal", "s_min", "s_max", "auroc_token", "auroc_sentence",
            "auroc_response", "n_gt", "n_hal")}
        for fname, caption in CALIBRATION_FIGURES.items():
            if (calib_dir / fname).exists():
                shutil.copyfile(calib_dir / fname, figs_dir / fname)
                figures[caption] = f"figures/{fname}"
    # Fig. 4 needs only calibration.json (a grid given fisao_calibration= may lack the report)
    if with_fisao and (calib_dir / "calibration.json").exists():
        for size in sizes:
            sdir = out / "fisao_shift" / str(size)
            shift = reward_shift(source, verifier, cells / "base" / "eval",
                                 cells / f"fisao-{size}" / "eval", calib_dir, sdir)
            if not shift:
                continue
            entry = {k: v for k, v in shift.items() if k.startswith(("neg_share", "pos_share"))}
            analysis[f"reward_shift_{size}"] = entry
            for kind in ("score", "reward"):
                src = sdir / f"fig4_{kind}_shift.png"
                if src.exists():
                    shutil.copyfile(src, figs_dir / f"fig4_{kind}_shift_{size}.png")
                    figures[f"Fig. 4: generated-object {kind}s before/after FiSAO "
                            f"({size} images)"] = f"figures/fig4_{kind}_shift_{size}.png"
                    stats = shift.get("scores" if kind == "score" else "rewards", {})
                    entry[f"{kind}_mean_before"] = stats.get("mean_before")
                    entry[f"{kind}_mean_after"] = stats.get("mean_after")
    return analysis
