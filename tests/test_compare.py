"""The comparison grid: table writer (hand-computed totals), config plumbing, tiny grid + resume."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_degenerate_rows_are_flagged_and_count_against_comprehension():
    from visalign.report import degeneration_notes

    rows = _rows()
    rows[0]["metrics"]["degenerate_share"] = 0.0
    rows[1]["metrics"]["degenerate_share"] = 0.005           # within the 1-point tolerance
    assert degeneration_notes(rows) == []
    rows[1]["metrics"]["degenerate_share"] = 0.33
    (note,) = degeneration_notes(rows)
    assert note.startswith("WARNING nsft-300: 33.0 %") and "base 0.0 %" in note
    header, body = table_rows(rows)
    # lower is better: 33 points of broken descriptions cost 33 points of Comprehension
    assert body[1][header.index("Degen.")] == "33.0"
    assert body[1][header.index("Comprehension total")] == "(-33.0)"
    assert degeneration_notes(_rows()) == []                 # rows without the metric


def test_compare_config_rejects_unknown_method(tmp_path):
    from visalign.compare import CompareConfig, run_compare

    with pytest.raises(ValueError, match="unknown method"):
        run_compare(CompareConfig(out=str(tmp_path), methods=["nsft", "rlhf-v"]))


def test_demo_config_is_sized_and_overridable():
    from visalign.compare import METHODS, check_config, demo_config

    cfg = demo_config("somewhere", ["methods=[nsft,fisao]", "eval.n_images=10"])
    assert cfg.out == "somewhere" and cfg.methods == ["nsft", "fisao"]
    assert cfg.eval.n_images == 10 and cfg.world_preset == "small"
    full = demo_config("x")
    assert full.methods == list(METHODS)                  # all seven, plus the base
    # the one method run smaller than in the full grid says so in the report
    assert set(full.method_notes) == {"sima"} and full.pairs["num_samples"] == 2
    with pytest.raises(ValueError, match="unknown method"):
        check_config(demo_config("x", ["method_notes={rlhf-v: x}"]))



def test_alignment_sizes_must_leave_room_for_fisao_calibration(tmp_path):
    from visalign.compare import CompareConfig, check_alignment_sizes, run_compare

    cfg = CompareConfig(data_sizes=[1200, 2400], calibration_images=300)
    check_alignment_sizes(cfg, 2700)                        # exactly fits
    with pytest.raises(ValueError, match="calibration images"):
        check_alignment_sizes(cfg, 2699)
    check_alignment_sizes(CompareConfig(data_sizes=[2400], methods=["nsft"]), 2400)
    with pytest.raises(ValueError, match="> 2399 train"):
        check_alignment_sizes(CompareConfig(data_sizes=[2400], methods=["nsft"]), 2399)
    with pytest.raises(ValueError, match="positive"):
        check_alignment_sizes(CompareConfig(data_sizes=[0, 300]), 3000)
    # the grid refuses before building a world: a tiny world has 120 train images
    with pytest.raises(ValueError, match="train images"):
        run_compare(CompareConfig(out=str(tmp_path / "g"), world_preset="tiny",
                                  data_sizes=[200]))
    assert not (tmp_path / "g" / "world").exists()


@pytest.mark.parametrize("name", ["microworld.yaml", "tiny.yaml", "demo.yaml"])
def test_shipped_grid_configs_fit_their_worlds_train_split(name):
    from importlib import resources

    from visalign.compare import CompareConfig, check_alignment_sizes
    from visalign.config import load_config
    from visalign.world import world_config

    root = Path(__file__).resolve().parents[1]
    path = (Path(str(resources.files("visalign") / "resources" / "compare" / name))
            if name == "demo.yaml" else root / "configs" / "compare" / name)
    cfg = load_config(CompareConfig, path)
    check_alignment_sizes(cfg, world_config(cfg.world_preset, seed=cfg.seed).n_train)

def test_trainer_seed_is_the_grids_unless_an_override_names_one():
    from visalign.compare import CompareConfig, trainer_config

    cfg = CompareConfig(seed=3, fisao={"lr": 1e-3}, sft={"seed": 7},
                        method_overrides={"seva": {"seed": 11}})
    assert trainer_config("fisao", cfg, {}).seed == 3
    assert trainer_config("fisao", cfg, {}).lr == 1e-3
    assert trainer_config("nsft", cfg, {}).seed == 7
    assert trainer_config("seva", cfg, {}).seed == 11
    assert trainer_config("gt-dpo", cfg, {}).seed == 3


def test_cli_help_lists_compare_and_demo(capsys):
    from visalign.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("world", "generate", "eval", "pope", "nsft", "pairs", "train", "fisao",
                "compare", "demo"):
        assert f"    {cmd} " in out, cmd


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_grid(tiny_world_dir, tiny_base_dir, tmp_path_factory):
    from _tiny import write_calibration

    from visalign.compare import CompareConfig, run_compare
    from visalign.config import load_config
    from visalign.verifier.reward import Calibration

    out = tmp_path_factory.mktemp("grid") / "grid"
    # The tiny base names too few objects to calibrate its verifier on (the small preset does:
    # see benchmarks); FiSAO here runs on a given calibration, as `fisao_calibration=` allows.
    calib = out.parent / "calibration.json"
    scale = write_calibration(tiny_base_dir / "verifier", calib)
    # a sentence-level sibling, which a reward_level=sentence run looks for next to it
    Calibration(mu_gt=0.2 * scale, mu_hal=0.0, s_min=-scale, s_max=scale, scale=scale,
                level="sentence").to_json(out.parent / "calibration_sentence.json")
    # and the report `visalign fisao calibrate` writes beside them, for the results' analysis
    (out.parent / "calibration_report.json").write_text(json.dumps(
        {"mu_gt": 0.3 * scale, "mu_hal": 0.1 * scale, "auroc_token": 0.9,
         "auroc_sentence": 0.6}))
    cfg = load_config(CompareConfig, ROOT / "configs" / "compare" / "tiny.yaml",
                      {"out": str(out), "world": str(tiny_world_dir),
                       "base_model": str(tiny_base_dir), "data_sizes": [8],
                       "fisao_calibration": str(calib), "progress": False,
                       "method_notes": {"sima": "two samples per image"}})
    return cfg, run_compare(cfg)


def test_tiny_grid_runs_every_method(tiny_grid):
    from visalign.compare import METHODS

    cfg, res = tiny_grid
    out = __import__("pathlib").Path(cfg.out)
    assert res["failures"] == []
    assert [(r["method"], r["data_size"]) for r in res["rows"]] == \
        [("base", 0)] + [(m, 8) for m in METHODS]
    for r in res["rows"]:
        assert {"chair", "chair_s", "chair_i", "pope_f1", "qa_accuracy"} <= set(r["metrics"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == res["rows"] and "config" in saved and "timings" in saved
    md = (out / "results.md").read_text()
    for m in METHODS:
        assert f"| {m} |" in md
    assert (out / "results.csv").exists() and (out / "figures" / "methods.png").exists()
    report = (out / "report.md").read_text()
    assert "figures/methods.png" in report
    assert "NOTE sima: two samples per image" in report
    # every cell's CHAIR change against the base, with its interval, matches the rows
    deltas = {d["cell"]: d for d in saved["analysis"]["chair_vs_base"]}
    assert set(deltas) == {f"{m}-8" for m in METHODS}
    base_m = res["rows"][0]["metrics"]
    for r in res["rows"][1:]:
        d = deltas[f"{r['method']}-8"]
        assert d["delta"]["chair_s"] == pytest.approx(r["metrics"]["chair_s"] - base_m["chair_s"])
        assert d["ci"]["chair"][0] <= d["delta"]["chair"] + 1e-9 <= d["ci"]["chair"][1] + 2e-9
    assert (out / "figures" / "chair_vs_base.png").exists()
    assert "figures/chair_vs_base.png" in report
    # and against the base cut to each cell's length: never longer than the cell, and a cell
    # whose descriptions are the base's cut would sit at 0
    matched = {d["cell"]: d for d in saved["analysis"]["chair_vs_length_matched_base"]}
    assert set(matched) == set(deltas)
    for r in res["rows"][1:]:
        m = matched[f"{r['method']}-8"]
        assert m["other"]["chair"] == pytest.approx(r["metrics"]["chair"])
        assert m["base_cut"]["words"] <= m["other"]["words"] + 1e-9
        assert m["base_cut"]["words"] <= base_m["avg_len"] + 1e-9
        assert m["delta"]["chair"] == pytest.approx(m["other"]["chair"] - m["base_cut"]["chair"])
    assert "figures/chair_vs_length_matched_base.png" in report
    assert (out / "fisao_calibration" / "calibration.json").read_text() == calib_text(cfg)
    sent = Path(cfg.fisao_calibration).parent / "calibration_sentence.json"
    assert (out / "fisao_calibration" / "calibration_sentence.json").read_text() == \
        sent.read_text()
    assert (out / "config.yaml").exists()
    # a given calibration still gives the calibration summary and Fig. 4 (stop 26: both were
    # skipped unless the grid had calibrated the verifier itself)
    assert saved["analysis"]["calibration"]["auroc_token"] == 0.9
    assert saved["analysis"]["calibration"]["mu_gt"] == pytest.approx(
        json.loads(calib_text(cfg))["mu_gt"])
    shift = json.loads((out / "fisao_shift" / "8" / "reward_shift.json").read_text())
    assert "reward_shift_8" in saved["analysis"]
    assert {k for k in shift if k.startswith(("neg_share", "pos_share"))} == \
        set(saved["analysis"]["reward_shift_8"]) - {"score_mean_before", "score_mean_after",
                                                    "reward_mean_before", "reward_mean_after"}


def calib_text(cfg) -> str:
    return open(cfg.fisao_calibration).read()


def test_grid_resumes_only_unfinished_cells(tiny_grid):
    from visalign.compare import run_compare

    cfg, first = tiny_grid
    out = __import__("pathlib").Path(cfg.out)
    rows = sorted((out / "cells").glob("*/row.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in rows}
    # a grid cut off inside one cell: its row is missing, its trained model is there
    lost = out / "cells" / "gt-dpo-8" / "row.json"
    model = out / "cells" / "gt-dpo-8" / "train" / "model" / "model.safetensors"
    model_mtime = model.stat().st_mtime_ns
    lost.unlink()
    res = run_compare(cfg)
    assert lost.exists()
    for p, t in mtimes.items():
        if p != lost:
            assert p.stat().st_mtime_ns == t, p
    assert [r["method"] for r in res["rows"]] == [r["method"] for r in first["rows"]]
    timings = json.loads((out / "timings.json").read_text())
    assert "gt-dpo-8:eval" in timings
    # its finished model was kept and only evaluated again: no second training
    assert model.stat().st_mtime_ns == model_mtime
    # with no finished model the cell trains again
    import shutil
    shutil.rmtree(out / "cells" / "cont-sft-8" / "train" / "model")
    (out / "cells" / "cont-sft-8" / "row.json").unlink()
    again = run_compare(cfg)
    assert (out / "cells" / "cont-sft-8" / "train" / "model" / "config.json").exists()
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in first["rows"]]


def test_bench_significance_pairs_two_cells(tiny_grid, load_benchmark):
    """`bench_significance.py --pairs REF:OTHER` compares two cells on the same prompts: a
    cell against itself is a zero change; a malformed pair is refused."""
    bench = load_benchmark("bench_significance")
    cfg, _ = tiny_grid
    rep = bench.main(["--grid", cfg.out, "--n-boot", "50",
                      "--pairs", "cont-sft-8:nsft-8", "nsft-8:nsft-8"])
    ab, same = rep["pairs"]
    assert (ab["ref"], ab["other"]) == ("cont-sft-8", "nsft-8") and ab["n"] > 0
    lo, hi = ab["ci95_chair"]
    assert lo <= ab["delta_chair"] <= hi
    assert same["delta_chair"] == 0 and same["ci95_chair"] == [0.0, 0.0]
    with pytest.raises(SystemExit, match="REF:OTHER"):
        bench.main(["--grid", cfg.out, "--pairs", "nsft-8"])


def test_bench_nsft_ablations_only_settings(tiny_grid, tmp_path, load_benchmark):
    """`bench_nsft_ablations.py --only NAME:sft.seed=S` retrains the grid's nSFT cell with one
    override: with the grid's own seed it reproduces the cell; a key outside sft./nsft_data. is
    refused."""
    bench = load_benchmark("bench_nsft_ablations")
    cfg, res = tiny_grid
    rep = bench.main(["--demo", cfg.out, "--out", str(tmp_path / "abl"), "--size", "8",
                      "--only", "same:sft.seed=0"])
    grid_cell = next(r["metrics"] for r in res["rows"]
                     if (r["method"], r["data_size"]) == ("nsft", 8))
    (row,) = rep["rows"]
    assert row["setting"] == "same" and Path(row["model"]).is_dir()
    for k in ("chair_s", "chair_i", "recall", "pope_f1"):
        assert row[k] == round(grid_cell[k], 4)
    assert bench._parse_setting("s:sft.lora.r=4,nsft_data.keep_gt_long=true") == (
        "s", {"keep_gt_long": True}, {"lora": {"r": 4}})
    with pytest.raises(SystemExit, match="sft.FIELD"):
        bench._parse_setting("bad:lr=1e-4")


def test_parallel_cells_give_the_sequential_rows(tiny_world_dir, tiny_base_dir, tmp_path):
    """workers=2 runs cells in two pinned single-threaded processes; every row equals the one the
    sequential grid (workers=1, this process) writes."""
    from visalign.compare import CompareConfig, run_compare
    from visalign.config import load_config

    rows = {}
    for workers in (1, 2):
        cfg = load_config(CompareConfig, ROOT / "configs" / "compare" / "tiny.yaml",
                          {"out": str(tmp_path / f"w{workers}"), "world": str(tiny_world_dir),
                           "base_model": str(tiny_base_dir), "data_sizes": [8],
                           "methods": ["cont-sft", "gt-dpo"], "workers": workers,
                           "progress": False})
        res = run_compare(cfg)
        assert res["failures"] == []
        assert res["workers"]["workers"] == workers
        rows[workers] = [(r["method"], r["data_size"], r["metrics"]) for r in res["rows"]]
    assert rows[2] == rows[1]


def test_sequential_cells_run_on_the_threads_asked_for():
    import torch

    from visalign.compare.grid import _torch_threads

    before = torch.get_num_threads()
    with _torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with _torch_threads(0):                  # 0: this process's own setting
        assert torch.get_num_threads() == before


def test_worker_plan_fits_the_machine():
    from visalign.compare.workers import cell_order, plan_workers

    p = plan_workers(0, 7, n_gpus=0, cores=[0, 1])
    assert (p.workers, p.threads, p.cores, p.gpus) == (2, 1, ((0,), (1,)), ())
    assert plan_workers(0, 1, n_gpus=0, cores=[0, 1]).workers == 1      # one cell: one worker
    p = plan_workers(4, 7, n_gpus=0, cores=list(range(8)))
    assert p.threads == 2 and p.cores[3] == (6, 7)
    g = plan_workers(0, 7, n_gpus=8, cores=list(range(16)))
    assert (g.workers, g.gpus, g.threads) == (7, tuple(range(7)), 2)
    with pytest.raises(ValueError):
        plan_workers(-1, 3, n_gpus=0, cores=[0])
    # a fixed thread count per cell, e.g. to reproduce a parallel run one cell at a time
    assert plan_workers(0, 7, n_gpus=0, cores=[0, 1, 2, 3], threads=1).threads == 1
    with pytest.raises(ValueError, match="threads"):
        plan_workers(1, 3, n_gpus=0, cores=[0], threads=-1)
    assert cell_order([("cont-sft", 8), ("fisao", 8), ("nsft", 16)]) == \
        [("nsft", 16), ("fisao", 8), ("cont-sft", 8)]
