"""``visalign nsft build`` on hand-made files and end to end on a tiny micro-world:
nsft build --model <tiny llava> (greedy answers, resumable), then train sft --preset nsft."""

from __future__ import annotations

import json

import pytest

from test_nsft_data import ANSWERS, GOOD_REPLY, RECORDS, ChatServer, instances
from visalign.cli import main
from visalign.io import read_jsonl, write_json, write_jsonl


@pytest.fixture
def files(tmp_path):
    write_json(tmp_path / "instances.json", instances())
    write_json(tmp_path / "data.json", RECORDS)
    write_jsonl(tmp_path / "answers.jsonl", ANSWERS)
    return tmp_path


def test_build_from_answers_writes_data_report_and_config(files, capsys):
    out = files / "out"
    rc = main(["nsft", "build", "--data", str(files / "data.json"), "--answers",
               str(files / "answers.jsonl"), "--instances", str(files / "instances.json"),
               "--out", str(out), "yes_ratio_target=0.75", "seed=3"])
    assert rc == 0
    data = json.loads((out / "nsft.json").read_text())
    rep = json.loads((out / "report.json").read_text())
    assert sorted(r["nsft"]["source_id"] for r in data) == ["d1", "d3", "s1", "s3"]
    assert rep["n_output"] == 4 and rep["yes_no"]["erased_no_pairs"] == 1
    assert rep["yes_no"]["already_above_target"] is False
    assert rep["inputs"]["answers"] == str(files / "answers.jsonl")
    assert "# nSFT construction report" in (out / "report.md").read_text()
    cfg = (out / "config.yaml").read_text()
    assert "yes_ratio_target: 0.75" in cfg and "seed: 3" in cfg
    stdout = capsys.readouterr().out
    assert "4 conversations from 7 records" in stdout and "--image-root" in stdout
    assert "already at or above" not in stdout
    # The same inputs and seed give the same file.
    rc = main(["nsft", "build", "--data", str(files / "data.json"), "--answers",
               str(files / "answers.jsonl"), "--instances", str(files / "instances.json"),
               "--out", str(files / "out2"), "yes_ratio_target=0.75", "seed=3"])
    assert rc == 0 and (files / "out2" / "nsft.json").read_text() == \
        (out / "nsft.json").read_text()


def test_build_reports_a_yes_share_left_above_the_minimum(files, capsys):
    """yes_ratio_target is a minimum: a 2/3 share with target 0.5 is left alone, and
    report.json, report.md and the summary line all say so."""
    write_jsonl(files / "above.jsonl", [{"id": "d1", "answer": "A cat sits near the chair."},
                                        {"id": "d3", "answer": "A white bench in a kitchen."}])
    out = files / "above"
    assert main(["nsft", "build", "--data", str(files / "data.json"), "--answers",
                 str(files / "above.jsonl"), "--instances", str(files / "instances.json"),
                 "--out", str(out), "yes_ratio_target=0.5"]) == 0
    yn = json.loads((out / "report.json").read_text())["yes_no"]
    assert yn["already_above_target"] is True and yn["erased_no_pairs"] == 0
    assert yn["after"]["yes_ratio"] == pytest.approx(2 / 3)
    assert "already at or above the target, left as is" in (out / "report.md").read_text()
    assert "yes ratio 0.67 (already at or above the minimum, left as is)" in \
        capsys.readouterr().out


def test_build_errors_are_one_clear_line(files, capsys, monkeypatch):
    monkeypatch.delenv("VISALIGN_JUDGE_MODEL", raising=False)
    args = ["nsft", "build", "--data", str(files / "data.json"), "--answers",
            str(files / "answers.jsonl"), "--out", str(files / "o")]
    assert main(args) == 2
    assert "--instances" in capsys.readouterr().err
    # LLM judge without a model name: a clear error, no traceback.
    assert main(args + ["--judge", "llm", "llm.base_url=http://127.0.0.1:9/v1"]) == 2
    assert "judge model" in capsys.readouterr().err
    # ... checked before any generation (the model dir does not even exist).
    assert main(["nsft", "build", "--data", str(files / "data.json"), "--model",
                 str(files / "no-model"), "--judge", "llm", "--out", str(files / "o")]) == 2
    assert "judge model" in capsys.readouterr().err
    assert not (files / "o" / "nsft.json").exists()


def test_build_with_llm_judge_over_local_endpoint(files, monkeypatch):
    for name in ("VISALIGN_JUDGE_API_KEY", "OPENAI_API_KEY", "VISALIGN_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    srv = ChatServer({ANSWERS[0]["answer"]: GOOD_REPLY})
    try:
        args = ["nsft", "build", "--data", str(files / "data.json"), "--answers",
                str(files / "answers.jsonl"), "--judge", "llm", "--out", str(files / "o"),
                f"llm.base_url={srv.url}", "llm.model=judge-x",
                f"llm.cache_dir={files / 'cache'}", "yes_ratio_target=0"]
        assert main(args) == 0
        rep = json.loads((files / "o" / "report.json").read_text())
        assert len(srv.requests) == 3          # d1, d2, d3 (long); short ones are compared
        assert rep["llm_unparsed"] == 2 and sorted(rep["llm_unparsed_ids"]) == ["d2", "d3"]
        assert rep["judge_client"]["requests"] == 3
        assert main(args) == 0                 # re-run: all from the cache
        assert len(srv.requests) == 3
        rep = json.loads((files / "o" / "report.json").read_text())
        assert rep["judge_client"] == {"requests": 0, "cache_hits": 3, "retries": 0}
    finally:
        srv.close()


def test_library_model_answers_then_build_matches_cli(files, tiny_llava_dir):
    from PIL import Image

    from visalign.methods.nsft import (AnnotationJudge, GroundTruth, NsftDataConfig,
                                       build_nsft_data, model_answers)

    for i, rgb in ((1, (200, 40, 40)), (2, (240, 240, 240))):
        Image.new("RGB", (32, 32), rgb).save(files / f"img{i}.png")
    out = files / "cli"
    assert main(["nsft", "build", "--data", str(files / "data.json"), "--model",
                 str(tiny_llava_dir), "--instances", str(files / "instances.json"),
                 "--out", str(out), "max_new_tokens=4", "batch_size=4", "device=cpu"]) == 0
    cfg = NsftDataConfig(max_new_tokens=4, batch_size=4, device="cpu")
    answers = model_answers(str(tiny_llava_dir), RECORDS, files / "lib_answers.jsonl", cfg,
                            image_root=files)
    assert [(a["id"], a["answer"]) for a in answers] == \
        [(a["id"], a["answer"]) for a in read_jsonl(out / "answers.jsonl")]
    data, _ = build_nsft_data(RECORDS, answers,
                              GroundTruth.from_files(files / "instances.json"), cfg,
                              AnnotationJudge(cfg))
    # compared as JSON: the errors' tuples are lists in the file
    assert json.loads(json.dumps(data)) == json.loads((out / "nsft.json").read_text())


# ---------------------------------------------------------------------------------------------
# End to end on a tiny micro-world with the tiny LLaVA
# ---------------------------------------------------------------------------------------------

TASKS = ("detail", "caption", "existence", "count", "color", "position")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from visalign.world import build_world, load_world, world_config

    root = tmp_path_factory.mktemp("nsft_world") / "world"
    build_world(world_config("tiny", overrides={"n_train": 8, "n_val": 2}, seed=3), root,
                preset="tiny")
    return load_world(root)


@pytest.mark.slow
def test_end_to_end_build_then_train(world, tiny_llava_dir, tmp_path):
    from visalign.data.llava import load_llava_records

    split = world.train_split
    recs = json.loads(world.llava_path(split).read_text())
    sub = [next(r for r in recs if r["task"] == t) for t in TASKS]
    write_json(tmp_path / "align.json", sub)
    out = tmp_path / "nsft"
    build = ["nsft", "build", "--data", str(tmp_path / "align.json"), "--image-root",
             str(world.image_root), "--model", str(tiny_llava_dir), "--instances",
             str(world.instances_path(split)), "--coco-captions",
             str(world.captions_path(split)), "--synonyms", str(world.synonyms_path),
             "--out", str(out), "max_new_tokens=6", "batch_size=6"]
    assert main(build) == 0
    answers = read_jsonl(out / "answers.jsonl")
    assert [a["id"] for a in answers] == [r["id"] for r in sub]
    assert all(isinstance(a["answer"], str) for a in answers)
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_records"] == len(TASKS) and rep["skipped"]["count"] == 0
    assert rep["n_output"] + rep["n_no_error"] == len(TASKS)
    assert rep["n_output"] >= 1     # an untrained model gets some short answer wrong
    data = load_llava_records(out / "nsft.json", image_root=world.image_root,
                              check_images=True)
    for r in data:
        if r.get("task") in ("detail", "caption"):
            answers_ = [t["value"] for t in r["conversations"][1::2]]
            assert len(answers_) <= 5 and all(len(a.split()) <= 20 for a in answers_)

    # Resumable generation: drop the last answer; a re-run answers only that one.
    lines = (out / "answers.jsonl").read_text().splitlines(keepends=True)
    (out / "answers.jsonl").write_text("".join(lines[:-1]))
    assert main(build) == 0
    again = (out / "answers.jsonl").read_text().splitlines(keepends=True)
    assert again[:-1] == lines[:-1] and len(again) == len(lines)
    assert json.loads(again[-1])["id"] == sub[-1]["id"]

    run = tmp_path / "run"
    assert main(["train", "sft", "--preset", "nsft", "--model", str(tiny_llava_dir), "--data",
                 str(out / "nsft.json"), "--image-root", str(world.image_root), "--out",
                 str(run), "max_steps=2", "batch_size=2", "lora.r=4", "lora.alpha=8",
                 "progress=false"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["name"] == "nsft" and summary["steps"] == 2
    assert (run / "model" / "config.json").is_file()
    assert "preset: nsft" in (run / "config.yaml").read_text()


def test_world_theme_words_come_from_world_json(world):
    from visalign.methods.nsft import GroundTruth

    gt = GroundTruth.from_files(world.instances_path(world.train_split),
                                synonyms=world.synonyms_path)
    # Images carry the theme name ("living"); text names it by its short form.
    assert gt.theme_words["living"] == ["living room"]
    assert set(gt.theme_words) == {"kitchen", "street", "park", "living", "beach"}
