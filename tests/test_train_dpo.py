"""DPO training (``visalign train dpo``) on a tiny LLaVA: the loss starts at log 2 with the
reference = the initial policy, one step raises the chosen-minus-rejected margin, the LoRA
reference is the model with its adapters disabled, POVID's stages run in order, and a run
resumes from its checkpoint."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from visalign.io import DataError
from visalign.methods import dpo as D
from visalign.methods.pairs import load_pairs, write_pairs

TINY = ["max_steps=1", "lora.r=4", "lora.alpha=8", "lora.dropout=0.0", "batch_size=8",
        "log_every=1", "progress=false", "save_merged=false"]


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    """Four hand-made pairs (two per POVID stage) on two 64x64 PNGs, relative paths."""
    root = tmp_path_factory.mktemp("dpo_data")
    (root / "images").mkdir()
    Image.new("RGB", (64, 64), (220, 30, 30)).save(root / "images" / "a.png")
    Image.new("RGB", (64, 64), (30, 30, 220)).save(root / "images" / "b.png")
    pairs = [
        {"id": "a_s1", "image": "images/a.png", "prompt": "What is in the image?",
         "chosen": "There is a red ball.", "rejected": "There is a blue cube.",
         "meta": {"stage": 1}},
        {"id": "b_s1", "image": "images/b.png", "prompt": "<image>\nDescribe the image.",
         "chosen": "A blue cube.", "rejected": "A yellow car on the left.",
         "meta": {"stage": 1}},
        {"id": "a_s2", "image": "images/a.png", "prompt": "Is there a dog in the image?",
         "chosen": "No, there is no dog.", "rejected": "Yes, there is a dog.",
         "meta": {"stage": 2}},
        {"id": "b_s2", "image": "images/b.png", "prompt": "What color is the car?",
         "chosen": "There is no car.", "rejected": "The car is yellow.", "meta": {"stage": 2}},
    ]
    return write_pairs(root / "pairs.json", pairs)


def _cfg(tiny_llava_dir, pairs, out, *overrides, preset=None):
    from visalign.config import load_config, parse_overrides
    from visalign.methods.presets import preset_path

    base = load_config(D.DpoConfig, preset_path(preset)) if preset else D.DpoConfig()
    flags = {"model": str(tiny_llava_dir), "pairs": str(pairs), "out": str(out)}
    flags.update(parse_overrides([*TINY, *overrides]))
    return load_config(D.DpoConfig, None, flags, base=base)


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _logps(model_dir, items, adapter=None):
    """Summed log-probs (chosen, rejected) of each pair under a saved model."""
    from visalign.models import load_vlm, sequence_logprobs

    vlm = load_vlm(model_dir, adapter=adapter)
    with torch.no_grad():
        lp = sequence_logprobs(vlm.model, D.make_pair_collate(vlm)(items)).sum(-1)
    b = len(items)
    return lp[:b], lp[b:]


@pytest.mark.parametrize("preset", ["gt-dpo", "seva", "sima", "povid"])
def test_cli_train_dpo_preset_starts_at_log2(preset, tiny_llava_dir, pair_file, tmp_path):
    from visalign.cli import main

    out = tmp_path / "run"
    rc = main(["train", "dpo", "--preset", preset, "--model", str(tiny_llava_dir), "--pairs",
               str(pair_file), "--out", str(out), "--debug", *TINY])
    assert rc == 0
    saved = (out / "config.yaml").read_text()
    lr = {"gt-dpo": "2.0e-06", "seva": "2.0e-06", "sima": "1.0e-07", "povid": "1.0e-07"}
    assert f"preset: {preset}" in saved and "beta: 0.1" in saved
    assert f"lr: {lr[preset]}" in saved and "r: 4" in saved     # preset, then overrides
    runs = [out / "stage1", out / "stage2"] if preset == "povid" else [out]
    for run in runs:
        (first,) = _log(run)
        # LoRA B starts at 0: policy == reference, z = 0, loss = -log σ(0) = log 2
        assert first["step"] == 1
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert (run / "adapter" / "adapter_config.json").is_file()
    assert (out / "model").exists() == (preset == "povid")   # sequential: last stage copied


def test_povid_sequential_stages_train_their_own_pairs_from_previous_model(
        tiny_llava_dir, pair_file, tmp_path, monkeypatch):
    calls = []

    def fake_run_training(cfg, vlm, dataset, collate, loss_fn, *, name, config_obj):
        calls.append({"out": cfg.out, "ids": sorted(p["id"] for p in dataset), "name": name,
                      "model": vlm.name})
        return D.TrainResult(D.Path(cfg.out), tiny_llava_dir, 1, 0.0, 1, {})

    monkeypatch.setattr(D, "run_training", fake_run_training)
    out = tmp_path / "povid"
    res = D.train_dpo(_cfg(tiny_llava_dir, pair_file, out, preset="povid"))
    assert [c["ids"] for c in calls] == [["a_s1", "b_s1"], ["a_s2", "b_s2"]]
    assert [c["name"] for c in calls] == ["povid-s1", "povid-s2"]
    assert calls[0]["out"].endswith("stage1") and calls[1]["out"].endswith("stage2")
    assert res.model_dir == out / "model" and (out / "model" / "config.json").is_file()
    calls.clear()
    D.train_dpo(_cfg(tiny_llava_dir, pair_file, out, "stages=all"))
    assert [c["ids"] for c in calls] == [["a_s1", "a_s2", "b_s1", "b_s2"]]


def test_full_finetune_starts_at_log2_and_one_step_raises_margin(tiny_llava_dir, pair_file,
                                                                  tmp_path):
    """Generic pair file, no preset, full fine-tune: reference = a frozen copy of the start."""
    from visalign.cli import main

    out = tmp_path / "full"
    rc = main(["train", "dpo", "--model", str(tiny_llava_dir), "--pairs", str(pair_file),
               "--out", str(out), "--debug", *TINY, "trainable=full", "lr=1e-4",
               "max_grad_norm=0"])
    assert rc == 0
    (first,) = _log(out)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    items = D.pair_items(_cfg(tiny_llava_dir, pair_file, out))
    c0, r0 = _logps(tiny_llava_dir, items)
    c1, r1 = _logps(out / "model", items)
    before, after = (c0 - r0).mean().item(), (c1 - r1).mean().item()
    assert after > before + 1e-3, (before, after)


def test_one_lora_step_raises_margin(tiny_llava_dir, pair_file, tmp_path):
    out = tmp_path / "lora"
    cfg = _cfg(tiny_llava_dir, pair_file, out, "lr=1e-3", preset="gt-dpo")
    D.train_dpo(cfg)
    items = D.pair_items(cfg)
    c0, r0 = _logps(tiny_llava_dir, items)
    c1, r1 = _logps(tiny_llava_dir, items, adapter=out / "adapter")
    before, after = (c0 - r0).mean().item(), (c1 - r1).mean().item()
    assert after > before + 1e-3, (before, after)


def test_lora_reference_is_the_model_with_adapters_disabled(tiny_llava_dir, pair_file):
    from visalign.models import add_lora, load_vlm, sequence_logprobs

    items = D.pair_items(_cfg(tiny_llava_dir, pair_file, "unused"))[:2]
    base = load_vlm(tiny_llava_dir)
    batch = D.make_pair_collate(base)(items)
    with torch.no_grad():
        ref = sequence_logprobs(base.model, batch).sum(-1)
    vlm = load_vlm(tiny_llava_dir)
    model = add_lora(vlm.model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)          # adapters now change the outputs
        policy = sequence_logprobs(model, batch).sum(-1)
    assert not torch.allclose(policy, ref, atol=1e-3)
    beta = 0.5
    loss, stats = D.dpo_loss_fn(beta)(model, batch)
    exp_c = beta * (policy[:2] - ref[:2])
    exp_r = beta * (policy[2:] - ref[2:])
    assert stats["reward_chosen"].item() == pytest.approx(exp_c.mean().item(), abs=1e-4)
    assert stats["reward_rejected"].item() == pytest.approx(exp_r.mean().item(), abs=1e-4)
    z = exp_c - exp_r
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(z).mean().item(),
                                        abs=1e-5)
    loss.backward()                         # the policy side carries gradients to LoRA only
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if "lora_" in n)
    with torch.no_grad():                   # adapters are enabled again afterwards
        assert torch.allclose(sequence_logprobs(model, batch).sum(-1), policy, atol=1e-5)
    with pytest.raises(TypeError, match="LoRA"):
        D.dpo_loss_fn(beta)(base.model, batch)


def test_resume_from_checkpoint_continues_and_matches(tiny_llava_dir, pair_file, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "resume"
    cfg = _cfg(tiny_llava_dir, pair_file, out, "max_steps=2", "save_every=1", "lr=1e-3",
               "batch_size=2", preset="gt-dpo")
    D.train_dpo(cfg)
    assert [r["step"] for r in _log(out)] == [1, 2]
    assert (out / "checkpoints" / "step-1" / "trainer_state.json").is_file()
    full = load_file(out / "adapter" / "adapter_model.safetensors")
    # "crash" after the step-1 checkpoint: the final outputs are gone
    shutil.rmtree(out / "adapter")
    (out / "train_summary.json").unlink()
    D.train_dpo(cfg)
    assert [r["step"] for r in _log(out)] == [1, 2, 2]      # only step 2 was run again
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert full.keys() == again.keys()
    for k in full:
        assert torch.allclose(full[k], again[k], atol=1e-6), k
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 2


def test_bad_inputs_fail_before_training(tiny_llava_dir, pair_file, tmp_path):
    pairs = load_pairs(pair_file)
    moved = tmp_path / "elsewhere.json"
    write_pairs(moved, pairs)                                 # images not next to it
    with pytest.raises(DataError) as e:
        D.train_dpo(_cfg(tiny_llava_dir, moved, tmp_path / "x"))
    msg = str(e.value)
    assert str(moved) in msg and "record 0 (id 'a_s1')" in msg and "field 'image'" in msg
    ok = _cfg(tiny_llava_dir, moved, tmp_path / "x", f"image_root={pair_file.parent}")
    assert len(D.pair_items(ok)) == 4
    with pytest.raises(ValueError, match="stages"):
        D.train_dpo(_cfg(tiny_llava_dir, pair_file, tmp_path / "x", "stages=twice"))
    assert not (tmp_path / "x").exists()
