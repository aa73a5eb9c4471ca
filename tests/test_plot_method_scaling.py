"""benchmarks/research/plot_method_scaling.py: cells are grouped by method, size and seed; the figure is
written from a results JSON of that shape."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def plot(load_benchmark):
    return load_benchmark("plot_method_scaling")


def _row(cell: str, rel: float, words: float = 40.0) -> dict:
    return {"cell": cell, "rel_change_chair": rel, "avg_len": words}


def test_series_groups_by_method_size_and_seed(plot):
    rows = [_row("fisao-600-seed2", -0.04), _row("fisao-600", -0.08),
            _row("fisao-600-seed1", -0.01), _row("cont-sft-300", 0.01),
            _row("nsft-1200-keep_gt_long", -0.14), _row("nsft-2400", 0.09, 16.0)]
    s = plot.series(rows)
    assert [r["seed"] for r in s["fisao"][600]] == [0, 1, 2]
    assert s["fisao"][600][0]["rel_change_chair"] == -0.08
    assert set(s["nsft"]) == {2400}          # the keep_gt_long variant is not a plain cell
    assert set(s["cont-sft"]) == {300}


def test_figure_written(tmp_path, plot):
    data = {"base_val": {"avg_len": 41.0},
            "val": [_row("nsft-300", -0.02), _row("nsft-600", -0.11, 38.0),
                    _row("nsft-600-seed1", -0.10), _row("fisao-600", -0.09)]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    out = tmp_path / "s.png"
    rep = plot.main(["--json", str(tmp_path / "s.json"), "--out", str(out)])
    assert rep["png"] == str(out) and out.read_bytes()[:4] == b"\x89PNG"
