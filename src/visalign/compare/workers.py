"""Grid cells in parallel: independent (method, size) cells run in worker processes, each pinned
to its share of the CPU cores (or to one GPU each on a GPU node), with one combined progress view.

Once the base model, the data source and FiSAO's calibration exist, the cells share nothing but
read-only inputs (and the alignment files, written atomically with identical content by whichever
cell comes first), so they can run in any order. Each cell keeps its own seeds, so its row is the
one the sequential grid writes. On a 2-core CPU two single-threaded processes do more work per
second than one process with two threads: the tiny models' operations are too small to keep two
threads busy.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_mod
import time
from pathlib import Path
from typing import Any

# Expected cost per cell, heaviest first: the pool starts the longest cells first so that the
# last one to finish starts early (measured on the micro-world; only the order matters).
CELL_COST = {"fisao": 7, "sima": 6, "seva": 5, "nsft": 4, "povid": 3, "gt-dpo": 2, "cont-sft": 1}


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the workers run: ``threads`` per worker and their cores (CPU) or one GPU each."""

    workers: int
    threads: int
    cores: tuple[tuple[int, ...], ...] = ()
    gpus: tuple[int, ...] = ()


def available_cores() -> list[int]:
    """The CPU cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def plan_workers(requested: int, n_cells: int, n_gpus: int | None = None,
                 cores: list[int] | None = None, threads: int = 0) -> Placement:
    """How many workers to run and where. ``requested`` 0 = automatic: one per GPU on a GPU
    node, else one per core (single-threaded workers); never more workers than cells.
    ``threads`` > 0 fixes the torch threads per worker on a CPU (else its share of the cores)."""
    if n_gpus is None:
        n_gpus = _cuda_devices()
    cores = cores if cores is not None else available_cores()
    if requested < 0:
        raise ValueError(f"workers must be >= 0, got {requested}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if n_gpus:
        n = min(requested or n_gpus, n_gpus, max(1, n_cells))
        per = max(1, len(cores) // n)
        return Placement(n, per, tuple(tuple(cores[i * per:(i + 1) * per]) for i in range(n)),
                         tuple(range(n)))
    n = min(requested or len(cores), max(1, n_cells))
    n = max(1, n)
    per = threads or max(1, len(cores) // n)
    shares = tuple(tuple(cores[(i * per) % len(cores):(i * per) % len(cores) + per])
                   for i in range(n))
    return Placement(n, per, shares)


def _cuda_devices() -> int:
    """Visible CUDA devices, without initialising CUDA in this process."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([v for v in vis.split(",") if v.strip() and v.strip() != "-1"])
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA build: a CPU machine
        return 0


def cell_order(cells: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The cells, heaviest first (larger data first, then the costlier method)."""
    return sorted(cells, key=lambda c: (-c[1], -CELL_COST.get(c[0], 0)))


# --------------------------------------------------------------------- inside a worker process

_QUEUE: Any = None


def _init_worker(slots: Any, placement: Placement, messages: Any) -> None:
    """Pin this worker to one share of the cores (or one GPU) taken from ``slots``."""
    global _QUEUE
    _QUEUE = messages
    slot = slots.get()
    if placement.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(placement.gpus[slot])
    if placement.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, placement.cores[slot])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(placement.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(placement.threads)


def _send(cell: str, stage: str) -> None:
    if _QUEUE is not None:
        _QUEUE.put((cell, stage, time.time()))


def _run_cell_job(cfg_dict: dict, method: str, size: int) -> dict:
    """One cell of the grid in a worker: the same call the sequential grid makes."""
    from visalign.compare.cells import StageTimer
    from visalign.compare.config import CompareConfig
    from visalign.compare.grid import cell_runner, open_grid
    from visalign.config import load_config

    cfg = load_config(CompareConfig, None, {**cfg_dict, "progress": False})
    grid = open_grid(cfg)
    cell = f"{method}-{size}"
    timer = StageTimer(Path(cfg.out) / "cells" / cell / "timings.json", False,
                       on_stage=lambda name: _send(cell, name.split(":")[-1]))
    row = cell_runner(grid, timer)(method, size)
    _send(cell, "failed" if "error" in row else "done")
    return {"row": row, "times": timer.times}


# --------------------------------------------------------------------- in the parent process

def run_cells_parallel(cfg: Any, cells: list[tuple[str, int]], placement: Placement,
                       progress: bool = True) -> tuple[dict[tuple[str, int], dict], dict]:
    """Run ``cells`` in ``placement.workers`` processes; returns ({(method, size): row},
    {stage: seconds}). A cell that raises outside its own error handling fails the grid."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from visalign.config import config_to_dict

    ctx = mp.get_context("spawn")   # never fork a process that may hold torch threads / CUDA
    manager = ctx.Manager()
    messages, slots = manager.Queue(), manager.Queue()
    for i in range(placement.workers):
        slots.put(i)
    cfg_dict = config_to_dict(cfg)
    order = cell_order(cells)
    rows: dict[tuple[str, int], dict] = {}
    times: dict[str, float] = {}
    view = _ProgressView([f"{m}-{s}" for m, s in order], placement, progress)
    with view, ProcessPoolExecutor(placement.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(slots, placement, messages)) as pool:
        futures = {pool.submit(_run_cell_job, cfg_dict, m, s): (m, s) for m, s in order}
        pending = set(futures)
        while pending:
            _drain(messages, view)
            finished = {f for f in pending if f.done()}
            for f in finished:
                res = f.result()
                rows[futures[f]] = res["row"]
                times.update(res["times"])
            pending -= finished
            time.sleep(0.2)
        _drain(messages, view)
    manager.shutdown()
    return rows, times


def _drain(messages: Any, view: "_ProgressView") -> None:
    while True:
        try:
            cell, stage, t = messages.get_nowait()
        except queue_mod.Empty:
            return
        view.update(cell, stage, t)


class _ProgressView:
    """One live table of every cell's stage and elapsed time (rich), or a line per change."""

    def __init__(self, cells: list[str], placement: Placement, enabled: bool):
        self.cells = cells
        self.state = {c: ("queued", None) for c in cells}
        self.enabled = enabled
        where = (f"{placement.workers} GPU workers" if placement.gpus else
                 f"{placement.workers} workers x {placement.threads} thread(s)")
        self.title = f"visalign compare: {len(cells)} cells on {where}"
        self.live = None

    def __enter__(self) -> "_ProgressView":
        if self.enabled:
            import sys

            from rich.console import Console
            from rich.live import Live

            console = Console(file=sys.stderr)
            if console.is_terminal:
                self.live = Live(self._table(), console=console, refresh_per_second=2,
                                 transient=False)
                self.live.__enter__()
            else:
                console.print(self.title)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def update(self, cell: str, stage: str, t: float) -> None:
        prev, start = self.state.get(cell, ("queued", None))
        self.state[cell] = (stage, start if start is not None else t)
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self._table())
        elif stage != prev:
            import sys

            print(f"[compare] {cell}: {stage}", file=sys.stderr, flush=True)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title)
        for col in ("cell", "stage", "elapsed"):
            table.add_column(col)
        now = time.time()
        for c in self.cells:
            stage, start = self.state[c]
            el = "" if start is None else f"{now - start:.0f}s"
            table.add_row(c, stage, el)
        return table
