"""``visalign generate`` end to end on the tiny models: a run killed half-way and re-run answers
every id once with the answers of a clean run; seeded sampling is reproducible across runs,
batch sizes and interruptions; a 2-process ``accelerate launch`` (CPU, gloo) splits the records
without duplicates or loss; leftover rank files are merged; ``visalign --help`` lists every
command."""

from __future__ import annotations

import dataclasses
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _launch import launch_2proc
from _tiny import solid_images
from visalign.io import DataError, read_jsonl
from visalign.models.generation import GenerationConfig, generate_answers, generation_hash

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["What is in the image?", "Describe the image.", "Is there a dog?"]
N = 12
MAX_NEW = 4
TIMEOUT = 240  # generous: a safety net against hangs on a loaded machine, not a speed check


def _write_data(root: Path, n: int = N) -> Path:
    """``n`` prompt records (8 image colours x 3 prompts) with their images under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    images = solid_images(8)
    recs = []
    for i in range(n):
        images[i % 8].save(root / f"img{i}.png")
        recs.append({"id": f"r{i}", "image": f"img{i}.png", "prompt": PROMPTS[i % 3],
                     "image_id": i})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return data


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "visalign.cli", *args]


def _env() -> dict:
    # One torch thread per process: two processes share the 2 cores without oversubscription.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _answers(path: Path) -> dict[str, str]:
    rows = read_jsonl(path)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ids in {path}: {ids}"
    return {r["id"]: r["answer"] for r in rows}


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    from visalign.models import load_vlm

    return load_vlm(tiny_llava_dir, device="cpu")


@pytest.fixture(scope="module")
def clean(llava, tiny_llava_dir, tmp_path_factory):
    """An uninterrupted greedy single-process run: {id: answer}."""
    root = tmp_path_factory.mktemp("clean")
    data = _write_data(root)
    cfg = GenerationConfig(batch_size=4, max_new_tokens=MAX_NEW, device="cpu", progress=False)
    out = generate_answers(llava, data, root / "answers.jsonl", cfg=cfg,
                           model_name=str(tiny_llava_dir))
    answers = _answers(out)
    assert list(answers) == [f"r{i}" for i in range(N)]
    assert len(set(answers.values())) > 1  # answers depend on the input (comparisons mean sth)
    return answers


def test_killed_generate_rerun_answers_every_id_once(tiny_llava_dir, llava, clean, tmp_path):
    data = _write_data(tmp_path)
    # The image of r5 is a FIFO: opening it blocks, so the first run deterministically stops
    # after writing r0..r4, wherever the machine's speed; it is then SIGKILLed.
    blocked = tmp_path / "img5.png"
    blocked.unlink()
    os.mkfifo(blocked)
    out = tmp_path / "out" / "answers.jsonl"
    args = _cli("generate", "--model", str(tiny_llava_dir), "--data", str(data), "--out",
                str(out), "--batch-size", "1", "--max-new-tokens", str(MAX_NEW),
                "--device", "cpu", "--no-progress")
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out.exists() and out.read_text().count("\n") >= 5):
            if proc.poll() is not None:
                pytest.fail(f"generate exited early ({proc.returncode}): "
                            f"{proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("generate wrote no 5 answers (hung?)")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    first = _answers(out)
    assert list(first) == ["r0", "r1", "r2", "r3", "r4"]
    assert not (out.parent / f"{out.name}.config.yaml").exists()  # written only on success
    # A kill in the middle of a write leaves a partial last line; the re-run drops it.
    with open(out, "a") as f:
        f.write('{"id": "r5", "answer": "half a li')
    blocked.unlink()
    solid_images(8)[5].save(blocked)

    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(out)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(N)]  # every id once, in order
    answers = {r["id"]: r["answer"] for r in rows}
    assert {k: answers[k] for k in first} == first  # the first run's answers kept as they were
    assert answers == clean  # and everything equals a clean greedy run (batch 4 there)
    for r in rows:
        assert r["model"] == str(tiny_llava_dir)
        assert r["gen"] == generation_hash(GenerationConfig(max_new_tokens=MAX_NEW))
        assert r["image_id"] == int(r["id"][1:]) and r["prompt"] == PROMPTS[r["image_id"] % 3]
    saved = yaml.safe_load((out.parent / f"{out.name}.config.yaml").read_text())
    assert saved["batch_size"] == 1 and saved["max_new_tokens"] == MAX_NEW
    assert saved["visalign_version"]

    # A third run has nothing left to do and leaves the file as it is.
    before = out.read_bytes()
    generate_answers(llava, data, out, cfg=GenerationConfig(
        batch_size=1, max_new_tokens=MAX_NEW, device="cpu", progress=False))
    assert out.read_bytes() == before


def test_seeded_sampling_is_reproducible(llava, tmp_path):
    data = _write_data(tmp_path, n=8)

    def cfg(**kw):
        base = dict(do_sample=True, temperature=1.5, top_p=1.0, seed=7, max_new_tokens=MAX_NEW,
                    device="cpu", progress=False)
        return GenerationConfig(**{**base, **kw})

    a = _answers(generate_answers(llava, data, tmp_path / "a.jsonl", cfg=cfg(batch_size=4)))
    # Another run, another batch size, interrupted after 5 records and resumed: same answers.
    generate_answers(llava, data, tmp_path / "b.jsonl", cfg=cfg(batch_size=1, limit=5))
    assert list(_answers(tmp_path / "b.jsonl")) == ["r0", "r1", "r2", "r3", "r4"]
    b = _answers(generate_answers(llava, data, tmp_path / "b.jsonl", cfg=cfg(batch_size=3)))
    assert b == a
    # The seed matters: another seed gives other samples.
    c = _answers(generate_answers(llava, data, tmp_path / "c.jsonl", cfg=cfg(seed=8)))
    assert c != a and list(c) == list(a)
    # Appending samples of another seed to a file of seed 7 is refused, naming the file.
    with pytest.raises(DataError, match="other settings") as e:
        generate_answers(llava, data, tmp_path / "a.jsonl", cfg=cfg(seed=8))
    assert "a.jsonl" in str(e.value)


def test_two_process_accelerate_launch_splits_without_duplicates_or_loss(
        tiny_llava_dir, clean, tmp_path):
    data = _write_data(tmp_path)
    out = tmp_path / "answers.jsonl"
    # Three ids answered by an earlier run: the two ranks share the other nine.
    first3 = [r for r in read_jsonl(data)[:3]]
    gen = generation_hash(GenerationConfig(max_new_tokens=MAX_NEW))
    out.write_text("".join(json.dumps({**r, "answer": clean[r["id"]], "model": "earlier",
                                       "gen": gen}) + "\n" for r in first3))
    res = launch_2proc(["-m", "visalign.cli", "generate", "--model", str(tiny_llava_dir),
                        "--data", str(data), "--out", str(out), "--batch-size", "2",
                        "--max-new-tokens", str(MAX_NEW), "--no-progress"], timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-4000:]
    # Both ranks ran, on disjoint halves of what was left.
    assert "rank 0/2: 5 of 9 records to answer (3 already done)" in res.stderr, res.stderr[-2000:]
    assert "rank 1/2: 4 of 9 records to answer (3 already done)" in res.stderr, res.stderr[-2000:]
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(N)]  # each id once, input order
    assert {r["id"]: r["answer"] for r in rows} == clean  # same answers as one process
    assert [r["model"] for r in rows[:3]] == ["earlier"] * 3  # earlier rows kept, not redone
    assert {r["model"] for r in rows[3:]} == {str(tiny_llava_dir)}
    assert not list(tmp_path.glob("answers.jsonl.rank*"))  # rank files merged and removed
    assert (tmp_path / "answers.jsonl.config.yaml").exists()


def test_rank_files_of_a_killed_distributed_run_are_merged(llava, tmp_path):
    data = _write_data(tmp_path, n=8)
    cfg = GenerationConfig(batch_size=4, max_new_tokens=MAX_NEW, device="cpu", progress=False)
    gen = generation_hash(cfg)
    recs = read_jsonl(data)
    out = tmp_path / "answers.jsonl"

    def row(i):
        return json.dumps({**recs[i], "answer": f"kept {i}", "model": "old", "gen": gen}) + "\n"

    # A 3-process run was killed: OUT has r0, rank files hold r3 (also in rank 1: a duplicate),
    # r4, r6, and each rank file ends in a partial line.
    out.write_text(row(0))
    (tmp_path / "answers.jsonl.rank0.jsonl").write_text(row(3) + row(6) + '{"id": "r')
    (tmp_path / "answers.jsonl.rank1.jsonl").write_text(row(4) + row(3) + '{"id"')
    (tmp_path / "answers.jsonl.rank2.jsonl").write_text("")
    generate_answers(llava, data, out, cfg=cfg)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(8)]
    assert [r["answer"] for r in rows if r["model"] == "old"] == [
        "kept 0", "kept 3", "kept 4", "kept 6"]
    assert all(r["model"] != "old" for r in rows if r["id"] in {"r1", "r2", "r5", "r7"})
    assert not list(tmp_path.glob("answers.jsonl.rank*"))


def test_generate_on_tiny_qwen2vl_resumes(tiny_qwen2vl_dir, tmp_path):
    from visalign.models import load_vlm

    data = _write_data(tmp_path, n=4)
    vlm = load_vlm(tiny_qwen2vl_dir, device="cpu")
    assert vlm.family == "qwen2_vl"
    cfg = GenerationConfig(batch_size=2, max_new_tokens=MAX_NEW, device="cpu", progress=False)
    part = tmp_path / "part.jsonl"
    generate_answers(vlm, data, part, cfg=dataclasses.replace(cfg, limit=1))
    generate_answers(vlm, data, part, cfg=cfg)
    full = generate_answers(vlm, data, tmp_path / "full.jsonl", cfg=cfg)
    assert _answers(part) == _answers(full)
    assert list(_answers(full)) == ["r0", "r1", "r2", "r3"]


def test_help_lists_every_command(capsys):
    import visalign.commands
    from visalign.cli import COMMAND_MODULES, build_parser, main

    modules = {m.name for m in pkgutil.iter_modules(visalign.commands.__path__)
               if not m.name.startswith("_")}
    assert modules <= set(COMMAND_MODULES), "a command module is not registered in the CLI"
    assert {"world", "generate", "eval", "pope", "nsft", "pairs", "train"} <= modules
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    listed = {line.split()[0] for line in text.splitlines()
              if line.startswith("    ") and line.split() and not line.startswith("     ")}
    assert modules <= listed, (modules - listed, text)
    # Every command answers --help (no heavy import or error at parse time).
    for name in sorted(modules):
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
    assert build_parser().parse_args(["generate", "--model", "m", "--data", "d", "--out", "o",
                                      "lr=1"]).overrides == ["lr=1"]
    # So does a fresh interpreter (what the console script runs).
    res = subprocess.run([sys.executable, "-m", "visalign.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and all(f"    {m}" in res.stdout for m in modules)
