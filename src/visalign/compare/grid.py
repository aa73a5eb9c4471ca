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

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from visalign.compare.analysis import grid_analysis
from visalign.compare.cells import StageTimer, run_cell
from visalign.compare.config import (PACKAGED, CompareConfig, check_alignment_sizes,
                                     check_config, grid_dirs, is_real, open_source,
                                     skipped_cells, suite_data, verifier_dir)
from visalign.compare.methods import (alignment_image_ids, calibrate, copy_calibration,
                                      train_method)
from visalign.config import config_to_dict, save_run_config
from visalign.io import atomic_write_text, write_json


def prepare_source(cfg: CompareConfig, out: Path, st: StageTimer) -> Any:
    """The grid's data source: a real one's files written once, or the micro-world (the
    config's, or one built into ``out/world``)."""
    from visalign.world import build_world, world_config

    if is_real(cfg):
        source = open_source(cfg, out)
        st.run("source", source.prepare, done=(source.root / "source.json").exists())
        return source
    world_dir, _ = grid_dirs(cfg, out)
    if not cfg.world:
        # fail before minutes of world building, not after them
        wcfg = world_config(cfg.world_preset, seed=cfg.seed)
        check_alignment_sizes(cfg, wcfg.n_train)
        st.run("world", lambda: build_world(wcfg, world_dir, overwrite=True,
                                            preset=cfg.world_preset, progress=cfg.progress),
               done=(world_dir / "world.json").exists())
    return open_source(cfg, out)


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


@dataclasses.dataclass
class Grid:
    """An opened grid: its config, data source, base model and the alignment image order."""

    cfg: CompareConfig
    out: Path
    source: Any
    base: Path
    order: list[int]

    @property
    def sizes(self) -> list[int]:
        return sorted(set(self.cfg.data_sizes))

    @property
    def verifier(self) -> Path:
        return verifier_dir(self.cfg, self.base)

    @property
    def calib_dir(self) -> Path:
        return self.out / "fisao_calibration"

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def cells(self) -> list[tuple[str, int]]:
        """Every (method, size) cell the grid runs, in the table's order (methods the data
        cannot serve are left out: :func:`~visalign.compare.config.skipped_cells`)."""
        skip = skipped_cells(self.cfg)
        return [(m, s) for s in self.sizes for m in self.cfg.methods if m not in skip]


def open_grid(cfg: CompareConfig, st: StageTimer | None = None) -> Grid:
    """The grid of ``cfg``: with ``st``, its world and base model are built (or installed) first
    when missing; without, they must exist (a worker process opening a prepared grid)."""
    out = Path(cfg.out)
    if st is not None:
        source = prepare_source(cfg, out, st)
        base = prepare_base(cfg, out, source, st)
    else:
        source = open_source(cfg, out)
        base = grid_dirs(cfg, out)[1]
    order = alignment_image_ids(source, cfg.seed)
    try:
        check_alignment_sizes(cfg, len(order))
    except ValueError as e:
        raise ValueError(f"{source.root}: {e}") from None
    return Grid(cfg, out, source, base, order)


def evaluator(grid: Grid) -> Callable[[str, Path], dict]:
    """``evaluate(model_dir, out_dir) -> {"metrics": ...}``: the grid's one evaluation for every
    model. The micro-world's suite (:func:`visalign.eval.suite.evaluate_model`); on real data
    ``visalign eval suite``'s benchmarks with their papers' protocols."""
    cfg = grid.cfg
    if is_real(cfg):
        from visalign.eval.protocol_suite import SuiteSettings, run_suite

        data = suite_data(cfg, grid.out)
        lengths = {"chair": cfg.eval.max_new_tokens} if "chair" in cfg.benchmarks else {}

        def evaluate_real(model_dir: str, eval_dir: Path) -> dict:
            settings = SuiteSettings(batch_size=cfg.eval.batch_size, max_new_tokens=lengths,
                                     method=eval_dir.parent.name, progress=cfg.progress)
            res = run_suite(model_dir, data, cfg.benchmarks, eval_dir, settings)
            return {"metrics": res["rows"][0]["metrics"], "timings": res["timings"]}
        return evaluate_real

    from visalign.eval.suite import evaluate_model

    def evaluate(model_dir: str, eval_dir: Path) -> dict:
        return evaluate_model(model_dir, grid.source, eval_dir, cfg.eval)
    return evaluate


def cell_runner(grid: Grid, st: StageTimer) -> Callable[[str, int], dict]:
    """``run(method, size) -> row``: train and evaluate one cell (resumable)."""
    evaluate = evaluator(grid)

    def run(method: str, size: int) -> dict:
        ids = grid.order[:size]

        def train(d: Path) -> str:
            return train_method(method, grid.source, grid.base, ids, d, grid.data_dir,
                                grid.calib_dir, grid.cfg, verifier=grid.verifier)
        return run_cell(st, grid.out / "cells" / f"{method}-{size}", method, size, train,
                        evaluate)
    return run


@contextlib.contextmanager
def _torch_threads(n: int):
    """``n`` > 0: torch runs this process's cells on ``n`` threads (as a worker would)."""
    if n <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_compare(cfg: CompareConfig) -> dict:
    """Run (or resume) the grid; returns the ``results.json`` content."""
    from visalign.compare.workers import plan_workers, run_cells_parallel
    from visalign.report import degeneration_notes, plot_methods, report_markdown, write_results

    check_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, out)
    st = StageTimer(out / "timings.json", cfg.progress)
    t_all = time.time()

    grid = open_grid(cfg, st)
    source = grid.source
    rows: list[dict] = [run_cell(st, out / "cells" / "base", "base", 0,
                                 lambda d: str(grid.base), evaluator(grid))]
    grid.data_dir.mkdir(exist_ok=True)

    # FiSAO's verifier calibration, once: it depends on the base model only
    calib_ids = grid.order[len(grid.order) - cfg.calibration_images:]
    if "fisao" in cfg.methods and cfg.fisao_calibration:
        copy_calibration(cfg.fisao_calibration, grid.calib_dir)
    elif "fisao" in [m for m, _ in grid.cells()]:
        st.run("fisao-calibrate",
               lambda: calibrate(source, grid.base, calib_ids, grid.calib_dir, cfg,
                                 verifier=grid.verifier),
               done=(grid.calib_dir / "calibration.json").exists())

    cells = grid.cells()
    todo = [c for c in cells
            if not (out / "cells" / f"{c[0]}-{c[1]}" / "row.json").exists()]
    placement = plan_workers(cfg.workers, len(todo), threads=cfg.threads)
    by_cell: dict[tuple[str, int], dict] = {}
    if placement.workers > 1:
        by_cell, times = run_cells_parallel(cfg, todo, placement, cfg.progress)
        st.times.update(times)
        write_json(st.path, st.times)
    run = cell_runner(grid, st)
    with _torch_threads(cfg.threads):
        rows += [by_cell[c] if c in by_cell else run(*c) for c in cells]

    # table, figures, report (failed cells are listed, not tabled; a re-run retries them)
    failures = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    (out / "figures").mkdir(exist_ok=True)
    figures: dict[str, str] = {}
    plot_methods(rows, out / "figures" / "methods.png")
    figures["Hallucination metrics per method"] = "figures/methods.png"
    analysis = grid_analysis(out, rows, source, cfg.eval.split, grid.verifier,
                             grid.calib_dir, grid.sizes, "fisao" in cfg.methods, figures)
    timings = dict(st.times)
    timings["total_this_run"] = round(time.time() - t_all, 2)
    skipped = [{"method": m, "data_size": size, "reason": why}
               for size in grid.sizes for m, why in skipped_cells(cfg).items()]
    results = {"rows": rows, "config": config_to_dict(cfg), "timings": timings,
               "analysis": analysis, "failures": failures, "skipped": skipped,
               "workers": dataclasses.asdict(placement)}
    write_json(out / "results.json", results)
    write_results(rows, out, title="visalign comparison")
    notes = [f"FAILED {f['method']}-{f['data_size']}: {f['error']}" for f in failures]
    notes += [f"SKIPPED {k['method']}-{k['data_size']}: {k['reason']}" for k in skipped]
    notes += [f"NOTE {m}: {text}" for m, text in cfg.method_notes.items() if m in cfg.methods]
    warnings = degeneration_notes(rows)
    for n in warnings:
        print(n, file=sys.stderr)
    notes += warnings
    notes += [f"{k}: {v}" for k, v in analysis.get("calibration", {}).items() if v is not None]
    atomic_write_text(out / "report.md", report_markdown(rows, figures, st.times, notes))
    return results
