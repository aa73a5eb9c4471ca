"""The comparison grid on real files: a tiny model in llava-hf/llava-1.5-7b-hf's file format, its
CLIP verifier in openai-CLIP's, a COCO root and a LLaVA-Instruct file as they ship, driven by
configs/compare/llava-1.5-7b.yaml with the overrides that make the whole grid run in minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare" / "llava-1.5-7b.yaml"
SMALL = ["data_sizes=[16]", "calibration_images=8", "eval.n_images=8", "eval.pope_images=8",
         "eval.max_new_tokens=16"]


@pytest.fixture(scope="module")
def real_grid(tmp_path_factory, llava15_hf_dir, openai_clip_dir):
    from _tiny import build_real_grid_data, write_calibration

    from visalign.cli import main

    tmp = tmp_path_factory.mktemp("real_grid")
    coco, instruct = build_real_grid_data(tmp)
    calib = tmp / "calibration.json"
    # a random tiny model names too few COCO objects to calibrate on: the grid takes a given one
    write_calibration(openai_clip_dir, calib)
    out = tmp / "out"
    argv = ["compare", "--config", str(CONFIG), f"base_model={llava15_hf_dir}",
            f"verifier={openai_clip_dir}", f"coco={coco}", f"instruct={instruct}",
            f"out={out}", *SMALL, f"fisao_calibration={calib}",
            # the recipes' response lengths, shortened like eval's for a tiny random model
            "fisao={max_new_tokens: 16}", "nsft_data.max_new_tokens=16",
            "pairs.max_new_tokens=16", "pairs.num_samples=2", "progress=false"]
    assert main(argv) == 0
    return out, argv, coco, instruct


def test_real_grid_trains_and_evaluates_every_method(real_grid):
    from visalign.compare import METHODS

    out, _, coco, _ = real_grid
    res = json.loads((out / "results.json").read_text())
    assert res["failures"] == [] and res["skipped"] == []
    assert [(r["method"], r["data_size"]) for r in res["rows"]] == \
        [("base", 0)] + [(m, 16) for m in METHODS]
    for r in res["rows"]:
        assert {"chair_s", "chair_i", "recall", "pope_f1", "pope_adversarial_f1",
                "bleu_4", "cider"} <= set(r["metrics"])
        assert r["metrics"]["n_captions"] == 8
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS)
    # the alignment data are the instruction file's COCO records, read as they ship
    records = json.loads((out / "source" / "llava_train2017.json").read_text())
    assert {r["task"] for r in records} >= {"detail", "conversation", "vqa"}
    assert all(isinstance(r["image_id"], int) and Path(r["image"]).is_absolute()
               for r in records)
    assert any("#" in r["id"] for r in records)           # shared ids kept under unique keys
    # every model answered the CHAIR protocol's prompt on val2014 images (visalign eval suite),
    # and POPE's questions with LLaVA's suffix, built from val2014's annotations
    answers = [json.loads(x) for x in
               (out / "cells" / "fisao-16" / "eval" / "answers_chair.jsonl").read_text()
               .splitlines()]
    assert len(answers) == 8 and all("val2014" in a["image"] for a in answers)
    assert {a["prompt"] for a in answers} == {"Please describe this image in detail."}
    pope = [json.loads(x) for x in
            (out / "cells" / "base" / "eval" / "answers_pope.jsonl").read_text().splitlines()]
    assert len(pope) == 3 * 8 * 6
    assert all(p["prompt"].endswith("\nAnswer the question using a single word or phrase.")
               for p in pope)
    suite = json.loads((out / "cells" / "base" / "eval" / "results.json").read_text())
    assert suite["config"]["protocols"]["chair"]["max_new_tokens"] == 16
    assert "built from val2014" in suite["config"]["protocols"]["pope"]["files"]
    # the trainers ran with the recipes (FiSAO's from configs/recipes/llava-1.5-7b/fisao.yaml)
    import yaml

    fisao_cfg = yaml.safe_load((out / "cells" / "fisao-16" / "train" / "config.yaml")
                               .read_text())
    assert fisao_cfg["lora"]["r"] == 128 and fisao_cfg["lr"] == 1.0e-6
    assert fisao_cfg["verifier"].endswith("openai_clip")
    seva_cfg = yaml.safe_load((out / "cells" / "seva-16" / "train" / "config.yaml").read_text())
    assert seva_cfg["lora"]["r"] == 1024 and seva_cfg["beta"] == 0.1


def test_a_resumed_real_grid_recomputes_nothing(real_grid):
    from visalign.cli import main

    out, argv, _, _ = real_grid
    rows = sorted((out / "cells").glob("*/row.json")) + [out / "source" / "source.json"]
    before = {p: p.stat().st_mtime_ns for p in rows}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in rows} == before


def test_other_alignment_sources_skip_methods_that_need_coco_objects(tmp_path, llava15_hf_dir,
                                                                     openai_clip_dir):
    """OCR-VQA records of mix665k (no COCO objects): cont-SFT runs, POVID's rule edits and
    FiSAO's calibration cannot, and the grid says so."""
    from _tiny import add_train2014_annotations, build_coco_root, build_instruct_file

    from visalign.cli import main

    coco_root = build_coco_root(tmp_path)
    add_train2014_annotations(coco_root)
    instruct = build_instruct_file(tmp_path, coco_root)
    out = tmp_path / "out"
    assert main(["compare", "--config", str(CONFIG), f"base_model={llava15_hf_dir}",
                 f"verifier={openai_clip_dir}", f"coco={coco_root}", f"instruct={instruct}",
                 f"image_folder={instruct.parent}", "alignment_source=ocrvqa", f"out={out}",
                 "methods=[cont-sft,povid,fisao]", "data_sizes=[1]", "eval.n_images=2",
                 "benchmarks=[chair]", "eval.max_new_tokens=8", "eval.caption_metrics=false",
                 "workers=1", "progress=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["data_size"]) for r in res["rows"]] == [("base", 0),
                                                                     ("cont-sft", 1)]
    skipped = {s["method"]: s["reason"] for s in res["skipped"]}
    assert set(skipped) == {"povid", "fisao"}
    assert "no COCO objects" in skipped["povid"] and "fisao_calibration" in skipped["fisao"]
    assert "SKIPPED povid-1" in (out / "report.md").read_text()
    align = json.loads((out / "source" / "llava_train2017.json").read_text())
    assert [Path(r["image"]).parts[-3:-1] for r in align] == [("ocr_vqa", "images")]


def test_an_incomplete_real_grid_is_one_line_naming_what_is_missing(tmp_path, capsys,
                                                                    coco_root):
    from visalign.cli import main

    rc = main(["compare", "--config", str(CONFIG), f"coco={coco_root}", f"out={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "instruct=" in err[0] and "base_model=" in err[0]
    assert not (tmp_path / "cells").exists()


def test_a_coco_root_without_its_annotations_is_named(tmp_path, capsys, llava15_hf_dir):
    import shutil

    from _tiny import build_real_grid_data

    from visalign.cli import main

    coco, instruct = build_real_grid_data(tmp_path, n_train=4, n_val=2)
    (coco / "annotations" / "instances_train2017.json").unlink()
    rc = main(["compare", "--config", str(CONFIG), f"base_model={llava15_hf_dir}",
               f"coco={coco}", f"instruct={instruct}", f"out={tmp_path / 'out'}",
               "data_sizes=[2]", "methods=[cont-sft]", "progress=false"])
    # the instruction file's loading note may come first; the error is one line
    err = [x for x in capsys.readouterr().err.strip().splitlines()
           if not x.startswith("[visalign]")]
    assert rc == 2 and len(err) == 1 and "instances_train2017.json" in err[0]
    assert not (tmp_path / "out" / "cells").exists()
    shutil.rmtree(coco)
