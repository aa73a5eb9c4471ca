"""`visalign fisao calibrate|entities|shift` and `visalign train fisao` end to end on the tiny
micro-world with the tiny LLaVA and its own tiny CLIP as the verifier: output files, log
statistics, the sentence-level / margin ablation, and resume from a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from visalign.cli import main
from visalign.io import read_jsonl, write_jsonl
from visalign.verifier.reward import Calibration

LOG_KEYS = {"step", "loss", "mean_reward", "pos_share", "neg_share", "kl", "clip_fraction",
            "approx_kl", "grad_norm", "entities_per_response", "response_tokens", "finished",
            "lr", "xi", "tokens_per_s", "elapsed"}
TRAIN = ["rollout_batch=2", "max_new_tokens=10", "ppo_epochs=2", "max_steps=3", "save_every=2",
         "lr=1e-3", "warmup_ratio=0.0", "progress=false", "lora.r=4", "lora.alpha=8",
         "save_merged=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny micro-world and, as the model's answers, its detail descriptions (which carry
    injected hallucinations)."""
    from visalign.world import build_world, world_config

    root = tmp_path_factory.mktemp("fw")
    w = root / "world"
    build_world(world_config("tiny", seed=3), w, preset="tiny")
    recs = json.loads((w / "llava" / "train.json").read_text())
    answers = [{"id": r["id"], "image": r["image"], "image_id": r["image_id"],
                "answer": r["conversations"][1]["value"]} for r in recs if r["task"] == "detail"]
    write_jsonl(root / "answers.jsonl", answers)
    return w, root / "answers.jsonl"


def _calibrate_args(world, out, tiny_llava_dir, tiny_clip_dir, *extra):
    w, answers = world
    return ["fisao", "calibrate", "--model", str(tiny_llava_dir), "--verifier",
            str(tiny_clip_dir), "--answers", str(answers), "--image-root", str(w / "images"),
            "--instances", str(w / "annotations" / "instances_train.json"),
            "--captions", str(w / "annotations" / "captions_train.json"),
            "--synonyms", str(w / "synonyms.txt"), "--out", str(out), "n_images=60",
            "wordnet=false", *extra]


@pytest.fixture(scope="module")
def calibrated(world, tiny_llava_dir, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "cal"
    assert main(_calibrate_args(world, out, tiny_llava_dir, tiny_clip_dir, "lam=0.25")) == 0
    return out


def test_calibrate_writes_the_calibration_the_report_and_the_figures(calibrated,
                                                                     tiny_clip_dir):
    out = calibrated
    cal = json.loads((out / "calibration.json").read_text())
    assert set(cal) == {f.name for f in dataclasses.fields(Calibration)}
    c = Calibration.from_json(out / "calibration.json")
    assert c.level == "token" and c.lam == 0.25 and c.template == "a photo of a {}."
    assert c.n_gt > 0 and c.n_hal > 0 and c.s_min <= min(c.mu_gt, c.mu_hal)
    assert max(c.mu_gt, c.mu_hal) <= c.s_max
    # Eq. 7 is re-derivable from scores.jsonl: pooled means of labelled mentions
    rows = read_jsonl(out / "scores.jsonl")
    gt = [r["token_score"] for r in rows if r["hallucinated"] is False]
    hal = [r["token_score"] for r in rows if r["hallucinated"] is True]
    assert (len(gt), len(hal)) == (c.n_gt, c.n_hal)
    assert c.mu_gt == pytest.approx(sum(gt) / len(gt)) and c.mu_hal == pytest.approx(
        sum(hal) / len(hal))
    # the range covers every scored mention, unlabelled ones included
    assert c.s_min == pytest.approx(min(r["token_score"] for r in rows))
    assert c.s_max == pytest.approx(max(r["token_score"] for r in rows))
    # scores are CLIP logits of this verifier (the trainer refuses another scale)
    from visalign.verifier.scorer import ClipScorer
    assert c.scale == pytest.approx(ClipScorer.from_pretrained(tiny_clip_dir).scale)
    rep = json.loads((out / "calibration_report.json").read_text())
    for k in ("auroc_token", "auroc_sentence", "auroc_response", "n_responses", "n_mentions",
              "sentence_calibration", "figures", "entities"):
        assert k in rep, k
    assert rep["n_responses"] == 60 and 0.0 <= rep["auroc_token"] <= 1.0
    sent = Calibration.from_json(out / "calibration_sentence.json")
    assert sent.level == "sentence" and sent.template == "{}"
    for name in ("fig1a_token_scores", "fig1b_sentence_scores", "fig2a_sentence_vs_bleu",
                 "fig2b_sentence_vs_rouge"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(rep["figures"]) == {"token", "sentence", "bleu", "rouge"}
    assert -1.0 <= rep["figures"]["bleu"]["pearson_r"] <= 1.0
    assert json.loads((out / "entities.json").read_text())["forms"]["mug"] == "cup"


def test_train_fisao_cli_outputs_log_stats_and_resume(calibrated, world, tiny_llava_dir,
                                                      tiny_clip_dir, tmp_path, monkeypatch,
                                                      capsys):
    import visalign.methods.fisao.train as fisao_mod

    w, _ = world

    def train(out, *extra):
        return main(["train", "fisao", "--model", str(tiny_llava_dir), "--verifier",
                     str(tiny_clip_dir), "--data", str(w / "llava" / "train.json"),
                     "--image-root", str(w / "images"), "--calibration",
                     str(calibrated / "calibration.json"), "--out", str(out), *TRAIN, *extra])

    full = tmp_path / "full"
    assert train(full, "log_samples=1") == 0
    summary = json.loads((full / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"] == 6 and summary["processes"] == 1
    assert 0.0 < summary["verifier_share_of_rollout"] < 1.0
    assert set(summary["timings"]) == {"rollout", "verifier", "ppo"}
    # the calibration's entity set (world synonyms, no WordNet) was used, and its margin
    assert summary["entities"]["wordnet"] is False and summary["calibration"]["lam"] == 0.25
    log = read_jsonl(full / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert set(r) == LOG_KEYS
        assert r["xi"] == log[0]["xi"]          # fixed ξ unless kl_target is set
        assert all(math.isfinite(v) for v in r.values())
        assert 0.0 <= r["pos_share"] and 0.0 <= r["neg_share"]
        assert r["pos_share"] + r["neg_share"] <= 1.0 and 0.0 <= r["clip_fraction"] <= 1.0
        assert -1.0 <= r["mean_reward"] <= 1.0 and 0 < r["response_tokens"] <= 10
    assert log[0]["kl"] == 0.0          # the first rollout comes from π_θ = π_ref
    samples = read_jsonl(full / "samples.jsonl")
    assert [s["step"] for s in samples] == [1, 2, 3] and all("response" in s for s in samples)
    assert (full / "adapter" / "adapter_model.safetensors").exists()
    assert (full / "checkpoints" / "step-2" / "trainer_state.json").exists()

    # The same run, killed during its third rollout, then resumed from step-2.
    part = tmp_path / "part"
    real = fisao_mod.score_rollout
    calls = []

    def dying(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **kw)

    monkeypatch.setattr(fisao_mod, "score_rollout", dying)
    with pytest.raises(RuntimeError, match="killed"):
        train(part)
    monkeypatch.setattr(fisao_mod, "score_rollout", real)
    assert [r["step"] for r in read_jsonl(part / "log.jsonl")] == [1, 2]
    capsys.readouterr()
    assert train(part) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = read_jsonl(part / "log.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for a, b in zip(log, resumed):
        for k in LOG_KEYS - {"elapsed", "tokens_per_s"}:   # timings
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-8), (a["step"], k)
    from safetensors.torch import load_file
    wa = load_file(full / "adapter" / "adapter_model.safetensors")
    wb = load_file(part / "adapter" / "adapter_model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-7), k


def test_sentence_level_and_margin_ablations_run(calibrated, world, tiny_llava_dir,
                                                 tiny_clip_dir, tmp_path, capsys):
    w, _ = world
    out = tmp_path / "sent"
    rc = main(["train", "fisao", "--model", str(tiny_llava_dir), "--verifier",
               str(tiny_clip_dir), "--data", str(w / "llava" / "train.json"),
               "--image-root", str(w / "images"), "--calibration",
               str(calibrated / "calibration.json"), "--out", str(out), *TRAIN,
               "max_steps=1", "reward_level=sentence", "lam=0.5", "log_samples=2"])
    assert rc == 0
    (row,) = read_jsonl(out / "log.jsonl")
    # sentence level: exactly one reward per response (on its last token)
    assert row["entities_per_response"] == 1.0
    sc = Calibration.from_json(calibrated / "calibration_sentence.json")
    for s in read_jsonl(out / "samples.jsonl"):
        (m,) = s["mentions"]
        assert m["surface"] is None
        # reward recomputed by hand from the sentence calibration and the margin .5
        S = min(max(m["score"], sc.s_min), sc.s_max)
        if S > sc.mu_gt + 0.5:
            want = (S - sc.mu_gt - 0.5) / (sc.s_max - sc.mu_gt - 0.5)
        elif S < sc.mu_hal - 0.5:
            want = (S - sc.mu_hal + 0.5) / (sc.mu_hal - 0.5 - sc.s_min)
        else:
            want = 0.0
        assert m["reward"] == pytest.approx(want, abs=1e-6)
    # a token-level calibration cannot drive the sentence ablation by itself
    rc = main(["train", "fisao", "--model", str(tiny_llava_dir), "--verifier",
               str(tiny_clip_dir), "--data", str(w / "llava" / "train.json"),
               "--image-root", str(w / "images"), "--calibration",
               str(calibrated / "calibration.json"), "--out", str(tmp_path / "bad"), *TRAIN,
               "reward_level=sentence", f"sentence_calibration={tmp_path / 'none.json'}"])
    assert rc == 2 and "sentence-level calibration" in capsys.readouterr().err
    # images are checked before any work: a wrong root names the record
    rc = main(["train", "fisao", "--model", str(tiny_llava_dir), "--verifier",
               str(tiny_clip_dir), "--data", str(w / "llava" / "train.json"), "--calibration",
               str(calibrated / "calibration.json"), "--out", str(tmp_path / "bad2"), *TRAIN])
    assert rc == 2 and "image file not found" in capsys.readouterr().err


def test_patch_pooled_calibration_drives_training_and_the_annotation_oracle_runs(
        world, tiny_llava_dir, tiny_clip_dir, tmp_path, capsys):
    from visalign.eval.chair import load_synonyms

    w, _ = world
    out = tmp_path / "patch"
    assert main(_calibrate_args(world, out, tiny_llava_dir, tiny_clip_dir,
                                "pooling=patch")) == 0
    c = Calibration.from_json(out / "calibration.json")
    # probabilities against the CHAIR categories, recorded for the trainer
    assert c.pooling == "patch"
    assert c.patch_labels == [row[0] for row in load_synonyms(w / "synonyms.txt")]
    assert 0.0 < c.s_min <= c.s_max <= 1.0
    rows = read_jsonl(out / "scores.jsonl")
    assert all(0.0 < r["token_score"] <= 1.0 for r in rows)

    def train(name, *extra):
        return main(["train", "fisao", "--model", str(tiny_llava_dir), "--verifier",
                     str(tiny_clip_dir), "--data", str(w / "llava" / "train.json"),
                     "--image-root", str(w / "images"), "--calibration",
                     str(out / "calibration.json"), "--out", str(tmp_path / name), *TRAIN,
                     "max_steps=1", "log_samples=2", *extra])

    assert train("patch_run") == 0
    # the trainer scored with the calibration's pooling: every logged score is a probability
    for smp in read_jsonl(tmp_path / "patch_run" / "samples.jsonl"):
        assert all(0.0 < m["score"] <= 1.0 for m in smp["mentions"])
    # the ground-truth oracle: rewards are exactly +1 / -1 / 0
    assert train("oracle_run", "reward_source=annotations",
                 f"oracle_instances={w / 'annotations' / 'instances_train.json'}",
                 f"oracle_synonyms={w / 'synonyms.txt'}") == 0
    for smp in read_jsonl(tmp_path / "oracle_run" / "samples.jsonl"):
        assert all(m["reward"] in (-1.0, 0.0, 1.0) for m in smp["mentions"])
    capsys.readouterr()
    assert train("oracle_bad", "reward_source=annotations") == 2
    assert "oracle_instances" in capsys.readouterr().err


def test_calibrate_generates_answers_and_fails_clearly_without_labels(world, tiny_llava_dir,
                                                                      tiny_clip_dir, tmp_path,
                                                                      capsys):
    w, _ = world
    out = tmp_path / "gen"
    rc = main(["fisao", "calibrate", "--model", str(tiny_llava_dir), "--verifier",
               str(tiny_clip_dir), "--prompts", str(w / "prompts" / "train_detail.jsonl"),
               "--image-root", str(w / "images"),
               "--instances", str(w / "annotations" / "instances_train.json"),
               "--synonyms", str(w / "synonyms.txt"), "--out", str(out), "n_images=3",
               "max_new_tokens=6", "wordnet=false"])
    answers = read_jsonl(out / "answers.jsonl")
    assert [a["id"] for a in answers] == ["train-000001", "train-000002", "train-000003"]
    assert all(a["model"] == str(tiny_llava_dir) for a in answers)
    if rc != 0:   # the untrained tiny model rarely names a world object: a clear error then
        assert rc == 2
        assert "correct and hallucinated" in capsys.readouterr().err
        assert not (out / "calibration.json").exists()
    else:
        assert (out / "calibration.json").exists()


def test_entities_cli_prints_sizes_before_and_after_expansion(tmp_path, capsys):
    from visalign.verifier.entities import EntitySet

    out = tmp_path / "entities.json"
    assert main(["fisao", "entities", "--out", str(out), "--find",
                 "Two bikes near the traffic lights."]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("entity set C: ")
    base, expanded = (int(x) for x in
                      first.split(": ", 1)[1].split(" after")[0].split(" words -> "))
    assert 1000 < base < expanded    # COCO + noun list, grown by inflect (+ WordNet)
    es = EntitySet.load(out)
    assert len(es) == expanded
    assert "'bikes'->bicycle" in text and "'traffic lights'->traffic light" in text
    assert main(["fisao", "entities", "--no-nouns", "--no-wordnet", "--no-inflect",
                 "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["base"] == st["expanded"] and st["wordnet"] is False


def test_shift_cli_plots_before_vs_after(world, calibrated, tiny_clip_dir, tmp_path, capsys):
    w, answers = world
    rows = read_jsonl(answers)[:20]
    write_jsonl(tmp_path / "before.jsonl", rows)
    # "after": the first two sentences of each description (fewer objects)
    write_jsonl(tmp_path / "after.jsonl",
                [{**r, "answer": ". ".join(r["answer"].split(". ")[:2])} for r in rows])
    out = tmp_path / "shift"
    assert main(["fisao", "shift", "--before", str(tmp_path / "before.jsonl"), "--after",
                 str(tmp_path / "after.jsonl"), "--verifier", str(tiny_clip_dir),
                 "--calibration", str(calibrated / "calibration.json"),
                 "--image-root", str(w / "images"), "--out", str(out)]) == 0
    res = json.loads((out / "reward_shift.json").read_text())
    assert res["scores"]["n_after"] < res["scores"]["n_before"]
    lo, hi = res["scores"]["shift_ci95"]
    assert lo <= hi and "paired 95 % CI" in capsys.readouterr().out
    assert 0.0 <= res["neg_share_before"] <= 1.0
    for f in ("fig4_score_shift.png", "fig4_reward_shift.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert main(["fisao"]) == 2


def test_score_mentions_accepts_embeddings_or_images_by_id(world, calibrated, tiny_clip_dir):
    from PIL import Image

    from visalign.eval.chair import Chair, load_synonyms
    from visalign.methods.fisao.calibrate import image_embeddings, score_mentions
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.scorer import ClipScorer

    w, answers = world
    answers = read_jsonl(answers)[:6]
    chair = Chair.from_coco(w / "annotations" / "instances_train.json", None,
                            load_synonyms(w / "synonyms.txt"))
    scorer = ClipScorer.from_pretrained(tiny_clip_dir)
    ents = EntitySet.load(calibrated / "entities.json")
    paths = [str(w / "images" / a["image"]) for a in answers]
    embs = image_embeddings(paths, scorer)
    rows = score_mentions(answers, chair, scorer, ents, [embs[p] for p in paths])
    by_id = {a["image_id"]: Image.open(p).convert("RGB") for a, p in zip(answers, paths)}
    again = score_mentions(answers, chair, scorer, ents, by_id)
    assert len(rows) == len(again) > 0
    for r, s in zip(rows, again):
        assert r["token_score"] == pytest.approx(s["token_score"], abs=1e-5)
        assert {k: v for k, v in r.items() if "score" not in k} == \
            {k: v for k, v in s.items() if "score" not in k}
    # every CHAIR-labelled row agrees with the image's ground truth
    for r in rows:
        if r["hallucinated"] is not None:
            assert r["hallucinated"] == (r["category"] not in chair.gt_objects(r["image_id"]))


def test_mean_shift_ci_resamples_answers_paired():
    from visalign.methods.fisao.calibrate import mean_shift_ci

    def rows(spec):
        return [{"id": i, "score": x} for i, xs in spec.items() for x in xs]

    # every answer's mentions move by +1: every resample gives exactly +1
    before = rows({"a": [1.0, 1.0], "b": [3.0], "c": [5.0]})
    after = rows({"a": [2.0, 2.0], "b": [4.0], "c": [6.0]})
    assert mean_shift_ci(before, after) == pytest.approx([1.0, 1.0])
    # half the answers move up, half down: the interval straddles 0
    before = rows({str(i): [5.0] for i in range(40)})
    after = rows({str(i): [6.0 if i % 2 else 4.0] for i in range(40)})
    lo, hi = mean_shift_ci(before, after)
    assert lo < 0 < hi and hi - lo > 0.3
    # an answer with no mention after training still counts (as none), and is resampled
    lo, hi = mean_shift_ci(rows({"a": [1.0], "b": [9.0]}), rows({"a": [1.0]}))
    assert lo <= -4.0 and hi == 0.0
    with pytest.raises(ValueError):
        mean_shift_ci([], [])
