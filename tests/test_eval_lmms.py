"""The alignment tax through lmms-eval: lmms-eval's results files become lmms_* metrics and
join a comparison row (Table 9's columns); with lmms-eval installed, a local task on a tiny
dataset runs offline on a tiny LLaVA through lmms-eval's Python API."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from visalign.eval.lmms import (LmmsConfig, LmmsUnavailable, lmms_metrics, merge_into_results,
                                read_lmms_results, run_lmms)
from visalign.io import DataError
from visalign.report import results_markdown

# written by lmms-eval 0.7.3 (`python -m lmms_eval --model dummy --tasks visalign_tiny_vqa
# --output_path ...`, the local task of tests/_lmms.py), paths shortened
REAL = Path(__file__).parent / "data" / "lmms_eval_results.json"

# LLaVA-1.5-7B's Table-9 baseline, in the shapes lmms-eval reports the six tasks
TABLE9 = {
    "scienceqa_img": {"alias": "scienceqa_img", "exact_match,none": 0.668,
                      "exact_match_stderr,none": 0.0105},
    "gqa": {"alias": "gqa", "exact_match,none": 0.62, "exact_match_stderr,none": 0.0043},
    "textvqa_val": {"alias": "textvqa_val", "exact_match,none": 0.58,
                    "exact_match_stderr,none": 0.0068, "submission,none": None},
    "mme": {"alias": "mme", "mme_perception_score,none": 1510.7,
            "mme_perception_score_stderr,none": "N/A", "mme_cognition_score,none": 355.7,
            "mme_cognition_score_stderr,none": "N/A"},
    "mmbench_en_dev": {"alias": "mmbench_en_dev", "gpt_eval_score,none": 64.3,
                       "gpt_eval_score_stderr,none": "N/A", "submission,none": None},
    "mmvet": {"alias": "mmvet", "gpt_eval_score,none": 30.5,
              "gpt_eval_score_stderr,none": "N/A"},
}


def _table9_file(tmp_path: Path) -> Path:
    raw = json.loads(REAL.read_text())
    raw["results"] = copy.deepcopy(TABLE9)
    p = tmp_path / "20250101_000000_results.json"
    p.write_text(json.dumps(raw))
    return p


def test_real_results_file():
    res = read_lmms_results(REAL)
    # exact_match of the dummy model's constant answer; stderr entries and "N/A" dropped
    assert res["metrics"] == {"lmms_visalign_tiny_vqa_exact_match": 0.333333}
    assert res["lmms"]["n-samples"]["visalign_tiny_vqa"]["effective"] == 3


def test_table9_metrics(tmp_path):
    res = read_lmms_results(_table9_file(tmp_path))
    assert res["metrics"] == {
        "lmms_sqa_img": 0.668, "lmms_gqa": 0.62, "lmms_textvqa": 0.58,
        "lmms_mme_perception": 1510.7, "lmms_mme_cognition": 355.7,
        "lmms_mmbench": 0.643, "lmms_mmvet": 0.305}
    assert lmms_metrics({"gqa": {"exact_match,strict": 0.5}}) == {"lmms_gqa_strict": 0.5}


def test_merge_into_comparison_row_and_table(tmp_path):
    results = tmp_path / "results.json"
    rows = [{"method": "base", "data_size": 0, "metrics": {"pope_f1": 0.859}},
            {"method": "nsft", "data_size": 5000, "metrics": {"pope_f1": 0.867}},
            {"method": "nsft", "data_size": 10000, "metrics": {"pope_f1": 0.871}}]
    results.write_text(json.dumps({"rows": rows, "config": {}, "timings": {}}))
    base = read_lmms_results(_table9_file(tmp_path))["metrics"]
    merge_into_results(results, base, method="base")
    nsft = dict(base, lmms_sqa_img=0.680, lmms_textvqa=0.581, lmms_mme_perception=1512.0,
                lmms_mmvet=0.326, lmms_mmbench=0.648)
    row = merge_into_results(results, nsft, method="nsft", data_size=5000)
    assert row["metrics"]["pope_f1"] == 0.867 and row["metrics"]["lmms_mmvet"] == 0.326
    data = json.loads(results.read_text())
    assert "lmms_gqa" not in data["rows"][2]["metrics"]  # the other nsft row is untouched
    md = results_markdown(data["rows"][:2])
    header = md.splitlines()[2]
    for col in ("SQA", "GQA", "VQA^T", "MMVet", "MME", "MMB"):
        assert f"| {col} |" in header
    nsft_line = next(line for line in md.splitlines() if "| nsft |" in line)
    # Table 9's totals: align. tax +1.2 +0.0 +0.1; comprehension MMVet +2.1, MMB +0.5 (MME out)
    assert "| 68.0 | 62.0 | 58.1 | (+1.3) |" in nsft_line
    assert "| 32.6 | 1512.00 | 64.8 | (+2.6) |" in nsft_line

    with pytest.raises(DataError, match="2 rows with method 'nsft'"):
        merge_into_results(results, base, method="nsft")
    with pytest.raises(DataError, match="no row with method 'sima'"):
        merge_into_results(results, base, method="sima")


def test_not_an_lmms_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match=r"x.json: field 'results': not an lmms-eval results"):
        read_lmms_results(p)


def test_cli_from_results(tmp_path, capsys):
    from visalign.cli import main

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": [{"method": "base", "data_size": 0,
                                             "metrics": {}}]}))
    out = tmp_path / "tax.json"
    assert main(["eval", "lmms", "--from-results", str(_table9_file(tmp_path)), "--out",
                 str(out), "--merge-into", str(results), "--method", "base"]) == 0
    assert json.loads(out.read_text())["metrics"]["lmms_mmbench"] == 0.643
    assert json.loads(results.read_text())["rows"][0]["metrics"]["lmms_gqa"] == 0.62
    assert "merged 7 metrics" in capsys.readouterr().out
    assert main(["eval", "lmms", "--from-results", str(tmp_path / "missing.json"), "--out",
                 str(out)]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err


def test_missing_lmms_eval_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    with pytest.raises(LmmsUnavailable, match=r"pip install 'visalign\[lmms\]'") as e:
        run_lmms("some/model", LmmsConfig(tasks=["gqa"]))
    assert "\n" not in str(e.value)


def test_local_task_through_lmms_eval(tiny_llava_dir, tmp_path, monkeypatch):
    pytest.importorskip("lmms_eval", reason="lmms-eval not installed (pip install "
                                            "'visalign[lmms]')")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from _lmms import POST_PROMPT, TASK, build_task
    from _tiny import solid_images
    from visalign.models import load_vlm

    vlm = load_vlm(str(tiny_llava_dir))
    images = solid_images(3)
    questions = ["What color is it?", "Is there a dog?", "What is shown?"]
    own = vlm.generate(images, [q + POST_PROMPT for q in questions], max_new_tokens=4)
    # the model's own greedy answers are right for two documents, a wrong one for the third
    docs = [{"question": q, "answer": a if i < 2 else "zzz-not-an-answer", "image": im}
            for i, (q, a, im) in enumerate(zip(questions, own, images))]
    task_dir = build_task(tmp_path / "task", docs)
    res = run_lmms(vlm, LmmsConfig(tasks=[TASK], include_path=str(task_dir), batch_size=2))
    assert res["metrics"][f"lmms_{TASK}_exact_match"] == pytest.approx(2 / 3, abs=1e-6)
    assert res["lmms"]["n-samples"][TASK]["effective"] == 3
