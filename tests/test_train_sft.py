"""Continual SFT / nSFT trainer on the tiny LLaVA: LoRA and full, the KL option, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visalign.io import write_json
from visalign.methods import sft as sft_mod
from visalign.methods.sft import SftConfig, sft_loss_fn, train_sft

COLORS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """4 solid-colour images + LLaVA records with two exchanges each (relative image paths)."""
    from _tiny import solid_images

    root = tmp_path_factory.mktemp("sft_data")
    recs = []
    for i, (im, c) in enumerate(zip(solid_images(4), COLORS)):
        im.save(root / f"{i}.png")
        recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the image?"},
            {"from": "gpt", "value": f"It is {c}."},
            {"from": "human", "value": "Is there a dog?"}, {"from": "gpt", "value": "No."}]})
    write_json(root / "data.json", recs)
    write_json(root / "one.json", recs[:1])
    return root


def _cfg(model: Path, data: Path, out: Path, **kw) -> SftConfig:
    cfg = SftConfig(model=str(model), data=str(data), out=str(out), max_steps=2, batch_size=2,
                    log_every=1, progress=False, lr=1e-3, warmup_ratio=0.0)
    cfg.lora.r, cfg.lora.alpha = 4, 8
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no safetensors in {model_dir}"
    return out


def test_lora_trains_adapter_and_saves_a_loadable_merged_model(tiny_llava_dir, data_dir,
                                                                tmp_path):
    from visalign.models import load_vlm

    # image_root left empty: relative images resolve against the data file's directory.
    res = train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", tmp_path / "run",
                         preset="nsft"))
    assert res.steps == 2 and res.model_dir == tmp_path / "run" / "model"
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["name"] == "nsft" and summary["steps"] == 2
    base, merged = _weights(tiny_llava_dir), _weights(res.model_dir)
    assert base.keys() == merged.keys()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    # LoRA touches only the language model's projections; the vision tower never changes.
    assert changed and all("language_model" in k and "proj" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
    vlm = load_vlm(res.model_dir)
    assert vlm.generate(_images(data_dir, 1), ["What color is the image?"], max_new_tokens=3)


def _images(data_dir: Path, n: int):
    from PIL import Image

    return [Image.open(data_dir / f"{i}.png").convert("RGB") for i in range(n)]


def test_full_finetune_changes_lm_and_projector_not_vision(tiny_llava_dir, data_dir, tmp_path):
    res = train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", tmp_path / "run",
                         trainable="full", image_root=str(data_dir)))
    assert not (tmp_path / "run" / "adapter").exists()
    base, new = _weights(tiny_llava_dir), _weights(res.model_dir)
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert any("multi_modal_projector" in k for k in changed)
    assert any("language_model" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)


def test_kl_term_is_masked_mean_of_full_kl_on_answer_tokens(tiny_llava_dir):
    """loss = CE + coef · mean over answer tokens of KL(ref ‖ θ), computed here by hand."""
    import copy

    import torch.nn.functional as F
    from _tiny import solid_images

    from visalign.models import load_vlm

    vlm = load_vlm(tiny_llava_dir)
    ref = copy.deepcopy(vlm.model).eval()
    with torch.no_grad():  # make the policy differ from the reference
        for n, p in vlm.model.named_parameters():
            if "lm_head" in n:
                p.add_(0.05 * torch.randn_like(p))
    convs = [[{"from": "human", "value": "<image>\nWhat color?"},
              {"from": "gpt", "value": "It is red."}],
             [{"from": "human", "value": "<image>\nIs there a dog?"},
              {"from": "gpt", "value": "No, there is no dog in the image."}]]
    batch = vlm.encode(solid_images(2), convs)
    loss, stats = sft_loss_fn(0.5, ref)(vlm.model, batch)
    assert loss.ndim == 0
    with torch.no_grad():
        lp = F.log_softmax(vlm.model(**batch).logits[:, :-1].float(), -1)
        lq = F.log_softmax(ref(**batch).logits[:, :-1].float(), -1)
        kl_tok = (lq.exp() * (lq - lp)).sum(-1)
        mask = batch["labels"][:, 1:] != -100
        kl = kl_tok[mask].mean()
    assert float(kl) > 1e-4
    assert float(stats["kl"]) == pytest.approx(float(kl), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(stats["ce"]) + 0.5 * float(kl), rel=1e-5)
    # coef 0: plain CE, no KL stat.
    loss0, stats0 = sft_loss_fn(0.0)(vlm.model, batch)
    assert "kl" not in stats0 and float(loss0) == pytest.approx(float(stats["ce"]), rel=1e-6)


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_kl_option_trains_and_logs_kl(tiny_llava_dir, data_dir, tmp_path, trainable):
    res = train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", tmp_path / "run",
                         trainable=trainable, kl_coef=0.1, max_steps=3, lr=1e-3,
                         schedule="constant"))
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3]
    # Step 1 starts from the reference itself (LoRA B = 0 / an exact copy): KL 0, then > 0.
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert log[-1]["kl"] > 0
    assert log[-1]["loss"] == pytest.approx(log[-1]["ce"] + 0.1 * log[-1]["kl"], rel=1e-5)
    assert res.steps == 3


def test_loss_decreases_on_a_repeated_tiny_batch(tiny_llava_dir, data_dir, tmp_path):
    train_sft(_cfg(tiny_llava_dir, data_dir / "one.json", tmp_path / "run", batch_size=1,
                   max_steps=8, lr=2e-3, schedule="constant", trainable="full"))
    losses = [r["loss"] for r in _log(tmp_path / "run")]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0] and min(losses[:2]) > max(losses[-2:])


@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_continues_from_checkpoint(tiny_llava_dir, data_dir, tmp_path, monkeypatch,
                                          group_by_length):
    """A run killed at step 3 resumes from the step-2 checkpoint and ends where an
    uninterrupted run ends (same weights), logging only steps 3-4 the second time."""
    kw = dict(batch_size=1, max_steps=4, save_every=2, trainable="full", lr=1e-3,
              image_root=str(data_dir), group_by_length=group_by_length)
    full = train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", tmp_path / "a", **kw))

    real = sft_mod.sft_loss_fn
    calls = {"n": 0}

    def crashing(*a, **k):
        inner = real(*a, **k)

        def fn(model, batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("killed")
            return inner(model, batch)
        return fn

    monkeypatch.setattr(sft_mod, "sft_loss_fn", crashing)
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="killed"):
        train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", out, **kw))
    assert (out / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (out / "model").exists()
    assert [r["step"] for r in _log(out)] == [1, 2]
    monkeypatch.setattr(sft_mod, "sft_loss_fn", real)

    calls["n"] = 0
    res = train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", out, **kw))
    assert res.steps == 4
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]
    a, b = _weights(full.model_dir), _weights(res.model_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in _log(tmp_path / "a")][2:] == pytest.approx(
        [r["loss"] for r in _log(out)][2:], rel=1e-5)


def test_length_grouping_reshuffles_every_epoch(tiny_llava_dir, data_dir, tmp_path,
                                                monkeypatch):
    """accelerate's loader passes each epoch to the length-grouped sampler and serves its
    batches in its order, each epoch covering the data once."""
    from visalign import training

    seen: list[list[str]] = []
    real = sft_mod.make_collate

    def recording(*a, **k):
        inner = real(*a, **k)

        def collate(items):
            seen.append([it["id"] for it in items])
            return inner(items)
        return collate

    monkeypatch.setattr(sft_mod, "make_collate", recording)
    epochs: list[int] = []
    real_set = training.LengthGroupedSampler.set_epoch
    monkeypatch.setattr(training.LengthGroupedSampler, "set_epoch",
                        lambda self, e: (epochs.append(e), real_set(self, e))[1])
    train_sft(_cfg(tiny_llava_dir, data_dir / "data.json", tmp_path / "run", batch_size=2,
                   max_steps=6, image_root=str(data_dir), group_by_length=True))
    assert sorted(set(epochs)) == [0, 1, 2]  # accelerate may repeat a call; the values count
    per_epoch = [sum(seen[i:i + 2], []) for i in range(0, 6, 2)]
    assert all(sorted(ep) == ["r0", "r1", "r2", "r3"] for ep in per_epoch)
    # the loader serves exactly the sampler's batches of each epoch
    recs = json.loads((data_dir / "data.json").read_text())
    sampler = training.LengthGroupedSampler([training.item_length(r) for r in recs], 2, seed=0)
    for e, got in enumerate(per_epoch):
        real_set(sampler, e)
        assert got == [recs[i]["id"] for b in sampler.batches() for i in b]


def test_cli_presets_resolve(tiny_llava_dir, data_dir, tmp_path):
    import argparse

    from visalign.commands.train import resolve

    def ns(preset, overrides):
        return argparse.Namespace(preset=preset, config=None, model=str(tiny_llava_dir),
                                  data=str(data_dir / "data.json"), out=str(tmp_path / "o"),
                                  image_root=None, overrides=overrides)
    n = resolve("sft", ns("nsft", ["kl_coef=0.2", "lora.r=4"]))
    assert (n.preset, n.trainable, n.kl_coef, n.lora.r, n.lora.alpha) == ("nsft", "lora", 0.2, 4,
                                                                          256)
    c = resolve("sft", ns("cont-sft", []))
    assert (c.preset, c.trainable, c.kl_coef, c.lr) == ("cont-sft", "lora", 0.0, 2e-4)
    # cont-SFT and nSFT differ only in their data: every training setting is the same.
    from visalign.config import config_to_dict
    dn, dc = config_to_dict(resolve("sft", ns("nsft", []))), config_to_dict(c)
    assert {k: v for k, v in dn.items() if k != "preset"} == \
        {k: v for k, v in dc.items() if k != "preset"}
    with pytest.raises(ValueError, match="not a sft preset"):
        resolve("sft", ns("gt-dpo", []))


def test_empty_data_is_a_clear_error(tiny_llava_dir, tmp_path):
    write_json(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match="no training records"):
        train_sft(_cfg(tiny_llava_dir, tmp_path / "empty.json", tmp_path / "run"))


def test_missing_image_names_the_record_before_loading_the_model(data_dir, tmp_path):
    from visalign.io import DataError

    recs = json.loads((data_dir / "data.json").read_text())
    recs[1]["image"] = "nope.png"
    write_json(tmp_path / "bad.json", recs)
    with pytest.raises(DataError, match="r1") as ei:
        train_sft(_cfg(tmp_path / "no-such-model", tmp_path / "bad.json", tmp_path / "run",
                       image_root=str(data_dir)))
    assert "nope.png" in str(ei.value) and "image" in str(ei.value)


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_llava_dir, tmp_path):
    """`accelerate launch` on 2 CPU processes (gloo) with batch 1 each follows the 1-process
    run with batch 2: same losses, the same LR at every step (the scheduler steps once per
    synchronised step, not once per process) and the same weights."""
    from _launch import launch_2proc
    from _tiny import solid_images

    root = tmp_path / "data"
    root.mkdir()
    recs = []
    for i, im in enumerate(solid_images(4)):
        im.save(root / f"{i}.png")
        # one answer text: equal token counts, so per-process means equal the global mean
        recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A ball."}]})
    write_json(root / "data.json", recs)
    kw = dict(max_steps=4, lr=1e-2, warmup_ratio=0.25, schedule="cosine", trainable="full",
              image_root=str(root), save_merged=True)
    one = train_sft(_cfg(tiny_llava_dir, root / "data.json", tmp_path / "one", batch_size=2,
                         **kw))

    two = tmp_path / "two"
    over = [f"{k}={v}" for k, v in {**kw, "batch_size": 1, "log_every": 1, "progress": False,
                                     "lora.r": 4, "lora.alpha": 8}.items()
            if k != "image_root"]
    res = launch_2proc(["-m", "visalign.cli", "train", "sft", "--model", str(tiny_llava_dir),
                        "--data", str(root / "data.json"), "--image-root", str(root),
                        "--out", str(two), *over], timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]

    log1, log2 = _log(tmp_path / "one"), _log(two)
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == [1, 2, 3, 4]
    # 4 steps, 1 of warm-up, cosine: the LR logged after step k is the peak times
    # (1 + cos(π (k-1) / 3)) / 2, i.e. 1, .75, .25, 0 of it
    assert [r["lr"] for r in log1] == pytest.approx([1e-2, 7.5e-3, 2.5e-3, 0.0], abs=1e-9)
    assert [r["lr"] for r in log2] == pytest.approx([r["lr"] for r in log1], abs=1e-12)
    assert [r["loss"] for r in log2] == pytest.approx([r["loss"] for r in log1], rel=1e-4)
    w1, w2 = _weights(one.model_dir), _weights(two / "model")
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1)


def test_bf16_mixed_precision_autocasts_and_keeps_fp32_weights(tiny_llava_dir, data_dir,
                                                                tmp_path):
    """mixed_precision=bf16 runs the forward in bf16 on the CPU (the step-1 loss moves off the
    fp32 one by bf16 rounding, but stays close), still learns, and saves float32 weights."""
    kw = dict(batch_size=1, max_steps=6, lr=2e-3, schedule="constant", trainable="full")
    train_sft(_cfg(tiny_llava_dir, data_dir / "one.json", tmp_path / "fp32", **kw))
    train_sft(_cfg(tiny_llava_dir, data_dir / "one.json", tmp_path / "bf16",
                   mixed_precision="bf16", **kw))
    fp32, bf16 = _log(tmp_path / "fp32"), _log(tmp_path / "bf16")
    assert bf16[0]["loss"] != fp32[0]["loss"]
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=5e-2)
    assert bf16[-1]["loss"] < 0.8 * bf16[0]["loss"]
    assert all(t.dtype == torch.float32 for t in _weights(tmp_path / "bf16" / "model").values())
