"""The grid's bookkeeping: wall time per stage, and one cell (train, then evaluate) that is
finished once its ``row.json`` exists, so a re-run only computes what is missing."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from visalign.io import atomic_write_text, read_json, write_json


class StageTimer:
    """Wall time per stage, kept in ``path`` (a ``timings.json``) across resumed runs.

    ``on_stage(name)`` is told when a stage starts (a worker reports to the parent's view)."""

    def __init__(self, path: Path, progress: bool,
                 on_stage: Callable[[str], None] | None = None):
        self.path = path
        self.times: dict[str, float] = read_json(self.path) if self.path.exists() else {}
        self.progress = progress
        self.on_stage = on_stage

    def run(self, name: str, fn: Callable[[], Any], done: bool = False) -> Any:
        """Run ``fn`` as stage ``name`` (skipped when ``done``) and record its time."""
        if done:
            self.say(f"[compare] {name}: done earlier, skipped")
            return None
        if self.on_stage is not None:
            self.on_stage(name)
        self.say(f"[compare] {name} ...")
        t = time.time()
        res = fn()
        self.times[name] = round(time.time() - t, 2)
        write_json(self.path, self.times)
        self.say(f"[compare] {name}: {self.times[name]:.1f}s")
        return res

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, file=sys.stderr, flush=True)


def run_cell(st: StageTimer, d: Path, method: str, size: int, train: Callable[[Path], str],
             evaluate: Callable[[str, Path], dict]) -> dict:
    """Train (unless done) and evaluate one (method, size); ``row.json`` marks it finished.

    ``train(d) -> model dir``; ``evaluate(model_dir, out_dir) -> result``. Without ``row.json``
    but with a finished model (``train/model``), only the evaluation runs: delete the rows (and
    ``eval/``) to re-evaluate a grid under new ``eval`` settings. A failed cell other than the
    base is returned as ``{"method", "data_size", "error"}`` with the traceback in
    ``error.txt``; a re-run retries it."""
    row_path = d / "row.json"
    name = f"{method}-{size}" if size else method
    if row_path.exists():
        st.say(f"[compare] {name}: done earlier, skipped")
        return read_json(row_path)
    d.mkdir(parents=True, exist_ok=True)
    # A finished trainer leaves train/model (written atomically, last): a grid cut off during
    # evaluation, or re-evaluated with new eval settings, does not train again.
    trained = d / "train" / "model"
    try:
        if method != "base" and (trained / "config.json").exists():
            st.say(f"[compare] {name}:train: done earlier, skipped (model in {trained})")
            model_dir = str(trained)
        else:
            model_dir = st.run(f"{name}:train", lambda: train(d)) if method != "base" \
                else train(d)
        ev = st.run(f"{name}:eval", lambda: evaluate(model_dir, d / "eval"))
    except Exception as e:  # noqa: BLE001 - one failed cell must not lose the whole grid
        if method == "base":
            raise
        import traceback

        atomic_write_text(d / "error.txt", traceback.format_exc())
        st.say(f"[compare] {name}: FAILED ({type(e).__name__}: {e}); see {d / 'error.txt'}")
        return {"method": method, "data_size": size, "error": f"{type(e).__name__}: {e}"}
    (d / "error.txt").unlink(missing_ok=True)
    row = {"method": method, "data_size": size, "metrics": ev["metrics"],
           "model": str(model_dir)}
    write_json(row_path, row)
    return row
