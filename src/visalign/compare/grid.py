"""The comparison grid: every method on the same footing, end to end, resumable.

A base model, then each method trained from it on alignment subsets of a data source's own
instruction data (nested subsets: the smaller set's images are a prefix of the larger's, the
paper's 5k/10k analogue), each result evaluated by the same suite with the same generation
settings (:func:`visalign.eval.suite.evaluate_model`). Every cell lives in its own directory,
``OUT/cells/<method>-<size>/``, and is finished once its ``row.json`` exists.

Outputs: ``OUT/results.json`` (rows of ``{"method", "data_size", "metrics"}``, the config, the
timings and the analyses), ``results.md`` / ``results.csv`` (Table-9 style with (+x) totals),
``figures/*.png`` (the method bars, CHAIR against the base, FiSAO's Fig. 1/2 calibration plots
and Fig. 4 reward shift) and ``report.md`` embedding them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from visalign.compare.analysis import grid_analysis
from visalign.compare.cells import StageTimer, run_cell
from visalign.compare.config import (PACKAGED, CompareConfig, check_alignment_sizes,
                                     check_config, grid_dirs)
from visalign.compare.methods import (alignment_image_ids, calibrate, copy_calibration,
                                      train_method)
from visalign.config import config_to_dict, save_run_config
from visalign.io import atomic_write_text, write_json


def prepare_world(cfg: CompareConfig, out: Path, st: StageTimer) -> Any:
    """The grid's micro-world: the config's, or one built into ``out/world``."""
    from visalign.world import build_world, load_world, world_config

    world_dir, _ = grid_dirs(cfg, out)
    if not cfg.world:
        # fail before minutes of world building, not after them
        wcfg = world_config(cfg.world_preset, seed=cfg.seed)
        check_alignment_sizes(cfg, wcfg.n_train)
        st.run("world", lambda: build_world(wcfg, world_dir, overwrite=True,
                                            preset=cfg.world_preset, progress=cfg.progress),
               done=(world_dir / "world.json").exists())
    return load_world(world_dir)


def prepare_base(cfg: CompareConfig, out: Path, source: Any, st: StageTimer) -> Path:
    """The grid's base model: the config's, the packaged one, or one trained into ``out/base``."""
    _, base = grid_dirs(cfg, out)
    if cfg.base_model == PACKAGED:
        from visalign.methods.base_model.packaged import install_packaged_base

        st.run("base (packaged)", lambda: install_packaged_base(source.root, base),
               done=(base / "config.json").exists())
    elif not cfg.base_model:
        def train_base() -> None:
            from visalign.methods.base_model import base_config, build_base_model

            bc = base_config(cfg.base_preset, {**cfg.base_overrides, "world": str(source.root),
                                               "out": str(base), "seed": cfg.seed,
                                               "progress": cfg.progress, "skip_eval": True})
            build_base_model(bc)
        st.run("base", train_base, done=(base / "config.json").exists()
               and (base / "verifier").exists())
    return base


def run_compare(cfg: CompareConfig) -> dict:
    """Run (or resume) the grid; returns the ``results.json`` content."""
    from visalign.eval.suite import evaluate_model
    from visalign.report import degeneration_notes, plot_methods, report_markdown, write_results

    check_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    st = StageTimer(out, cfg.progress)
    t_all = time.time()

    source = prepare_world(cfg, out, st)
    base = prepare_base(cfg, out, source, st)

    def evaluate(model_dir: str, eval_dir: Path) -> dict:
        return evaluate_model(model_dir, source, eval_dir, cfg.eval)

    cells = out / "cells"
    rows: list[dict] = [run_cell(st, cells / "base", "base", 0, lambda d: str(base), evaluate)]

    order = alignment_image_ids(source, cfg.seed)
    sizes = sorted(set(cfg.data_sizes))
    try:
        check_alignment_sizes(cfg, len(order))
    except ValueError as e:
        raise ValueError(f"{source.root}: {e}") from None
    data = out / "data"
    data.mkdir(exist_ok=True)

    # FiSAO's verifier calibration, once: it depends on the base model only
    calib_dir = out / "fisao_calibration"
    calib_ids = order[len(order) - cfg.calibration_images:]
    if "fisao" in cfg.methods and cfg.fisao_calibration:
        copy_calibration(cfg.fisao_calibration, calib_dir)
    elif "fisao" in cfg.methods:
        st.run("fisao-calibrate", lambda: calibrate(source, base, calib_ids, calib_dir, cfg),
               done=(calib_dir / "calibration.json").exists())

    for size in sizes:
        ids = order[:size]
        for method in cfg.methods:
            def train(d: Path, method=method, ids=ids) -> str:
                return train_method(method, source, base, ids, d, data, calib_dir, cfg)
            rows.append(run_cell(st, cells / f"{method}-{size}", method, size, train, evaluate))

    # table, figures, report (failed cells are listed, not tabled; a re-run retries them)
    failures = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    (out / "figures").mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    plot_methods(rows, out / "figures" / "methods.png")
    figures["Hallucination metrics per method"] = "figures/methods.png"
    analysis = grid_analysis(out, rows, source, cfg.eval.split, base / "verifier", calib_dir,
                             sizes, "fisao" in cfg.methods, figures)
    timings = dict(st.times)
    timings["total_this_run"] = round(time.time() - t_all, 2)
    results = {"rows": rows, "config": config_to_dict(cfg), "timings": timings,
               "analysis": analysis, "failures": failures}
    write_json(out / "results.json", results)
    write_results(rows, out, title="visalign comparison")
    notes = [f"FAILED {f['method']}-{f['data_size']}: {f['error']}" for f in failures]
    warnings = degeneration_notes(rows)
    for n in warnings:
        print(n, file=sys.stderr)
    notes += warnings
    notes += [f"{k}: {v}" for k, v in analysis.get("calibration", {}).items() if v is not None]
    atomic_write_text(out / "report.md", report_markdown(rows, figures, st.times, notes))
    return results
