"""The comparison grid: table writer (hand-computed totals), config plumbing, tiny grid + resume."""

from __future__ import annotations

import json

import pytest

from visalign.report import results_csv, results_markdown, table_rows


def _rows():
    base = {"method": "base", "data_size": 0,
            "metrics": {"qa_count_accuracy": 0.50, "pope_f1": 0.80, "chair_s": 0.40,
                        "chair_i": 0.10, "chair": 0.25}}
    nsft = {"method": "nsft", "data_size": 300,
            "metrics": {"qa_count_accuracy": 0.52, "pope_f1": 0.83, "chair_s": 0.30,
                        "chair_i": 0.08, "chair": 0.19}}
    return [base, nsft]


def test_table_totals_flip_chair_and_count_it_once():
    header, body = table_rows(_rows())
    assert header[:2] == ["Align. data", "Method"]
    assert "Align. tax total" in header and "Hallucinations total" in header
    base, nsft = body
    assert base[1] == "base" and base[header.index("Hallucinations total")] == "(+0.0)"
    # Hallucinations: POPE-F1 +3.0, CHAIR 25 -> 19 counts as +6.0; CHAIR_s/CHAIR_i not again.
    assert nsft[header.index("Hallucinations total")] == "(+9.0)"
    assert nsft[header.index("Align. tax total")] == "(+2.0)"
    assert nsft[header.index("CHAIR_s")] == "30.0"
    assert nsft[0] == "300"


def test_markdown_and_csv_have_every_row():
    md = results_markdown(_rows(), "T")
    assert md.startswith("# T") and md.count("\n| ") == 3  # header + 2 rows
    csv = results_csv(_rows()).splitlines()
    assert csv[0].split(",")[:2] == ["method", "data_size"]
    assert csv[2].startswith("nsft,300,")


def test_compare_config_rejects_unknown_method(tmp_path):
    from visalign.compare import CompareConfig, run_compare

    with pytest.raises(ValueError, match="unknown method"):
        run_compare(CompareConfig(out=str(tmp_path), methods=["nsft", "rlhf-v"]))


def test_demo_config_is_sized_and_overridable():
    from visalign.compare import demo_config

    cfg = demo_config("somewhere", ["methods=[nsft,fisao]", "eval.n_images=10"])
    assert cfg.out == "somewhere" and cfg.methods == ["nsft", "fisao"]
    assert cfg.eval.n_images == 10 and cfg.world_preset == "small"
    full = demo_config("x")
    assert {"nsft", "fisao"} <= set(full.methods) and len(full.methods) >= 4


def test_cli_help_lists_compare_and_demo(capsys):
    from visalign.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("world", "generate", "eval", "pope", "nsft", "pairs", "train", "fisao",
                "compare", "demo"):
        assert f"    {cmd} " in out, cmd
