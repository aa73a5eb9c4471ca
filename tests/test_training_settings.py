"""The memory and tracking settings every trainer shares (dtype, gradient checkpointing,
attention kernel, 4-bit, report_to) and the one-line errors for settings a machine, a launch or
a checkpoint cannot honour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visalign.config import ConfigError
from visalign.io import write_json
from visalign.methods.sft import SftConfig, train_sft
from visalign.training import TrainConfig, check_memory_settings, resolve_dtype


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from _tiny import solid_images

    root = tmp_path_factory.mktemp("settings")
    recs = []
    for i, im in enumerate(solid_images(2)):
        im.save(root / f"{i}.png")
        recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A red ball and a blue cube."}]})
    write_json(root / "data.json", recs)
    return root / "data.json"


def _cfg(model, data, out, **kw) -> SftConfig:
    cfg = SftConfig(model=str(model), data=str(data), out=str(out), max_steps=2, batch_size=2,
                    log_every=1, progress=False, lr=1e-2, warmup_ratio=0.0, save_merged=False)
    cfg.lora.r, cfg.lora.alpha = 4, 8
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_dtype_auto_is_the_default_and_float32_without_cuda():
    assert TrainConfig().dtype == "auto"
    assert TrainConfig().attn_implementation == "sdpa"
    expected = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
        else "float32"
    assert resolve_dtype("auto") == expected
    assert resolve_dtype("float16") == "float16"
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a CPU-only machine")
@pytest.mark.parametrize("settings, words", [
    ({"load_in_4bit": True, "save_merged": False}, ["load_in_4bit", "CUDA"]),
    ({"load_in_4bit": True, "trainable": "full"}, ["load_in_4bit", "trainable=lora"]),
    ({"attn_implementation": "flash_attention_2"}, ["flash_attention_2", "sdpa"]),
    ({"attn_implementation": "xformers"}, ["attn_implementation"]),
    ({"report_to": "mlflow"}, ["report_to"]),
])
def test_settings_this_machine_cannot_honour_are_one_line_errors_before_any_output(
        tiny_llava_dir, data, tmp_path, settings, words, capsys):
    from visalign.cli import main

    cfg = _cfg(tiny_llava_dir, data, tmp_path / "run", **settings)
    with pytest.raises(ConfigError) as ei:
        check_memory_settings(cfg)
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    # through the CLI: one line on stderr, exit 2, nothing written
    over = [f"{k}={v}" for k, v in settings.items()]
    rc = main(["train", "sft", "--model", str(tiny_llava_dir), "--data", str(data),
               "--out", str(tmp_path / "cli"), *over])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("visalign train: error:"), err
    assert not (tmp_path / "cli").exists()


def test_gradient_checkpointing_with_lora_trains_the_same_adapter(tiny_llava_dir, data,
                                                                   tmp_path):
    """Recomputing activations (use_reentrant=False, input grads on for LoRA) changes memory,
    not the update: the same losses and the same adapter as without it."""
    from safetensors.torch import load_file

    for name, gc in (("plain", False), ("ckpt", True)):
        train_sft(_cfg(tiny_llava_dir, data, tmp_path / name, gradient_checkpointing=gc))
    logs = {n: [json.loads(x) for x in (tmp_path / n / "log.jsonl").read_text().splitlines()]
            for n in ("plain", "ckpt")}
    assert [r["loss"] for r in logs["ckpt"]] == pytest.approx(
        [r["loss"] for r in logs["plain"]], rel=1e-5)
    a = load_file(tmp_path / "plain" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 0
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # tokens/s is logged with every row
    assert all(r["tokens_per_s"] > 0 for r in logs["ckpt"])


def test_tensorboard_tracking_writes_event_files_with_the_curves(tiny_llava_dir, data,
                                                                 tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed "
                                              "(pip install 'visalign[track]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_sft(_cfg(tiny_llava_dir, data, out, report_to="tensorboard"))
    events = list((out / "tracking").rglob("events.out.tfevents.*"))
    assert events, list(out.rglob("*"))
    scalars: dict = {}
    for f in events:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.value for e in acc.Scalars(tag)]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert scalars["loss"] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert {"lr", "tokens_per_s", "ce"} <= set(scalars)
    # the resolved config goes with the run (accelerate writes it next to the events)
    hparams = list((out / "tracking").rglob("hparams.yml"))
    assert hparams and "lora.r: 4" in hparams[0].read_text()


def test_wandb_offline_tracking_writes_a_run(tiny_llava_dir, data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'visalign[track]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train_sft(_cfg(tiny_llava_dir, data, out, report_to="wandb", max_steps=1))
    runs = list((out / "tracking").rglob("offline-run-*"))
    assert runs and list(runs[0].rglob("*.wandb")), list(out.rglob("*"))


def test_a_checkpoint_saved_under_another_world_size_is_refused(tiny_llava_dir, data,
                                                                 tmp_path):
    out = tmp_path / "run"
    train_sft(_cfg(tiny_llava_dir, data, out, max_steps=2, save_every=1))
    ck = out / "checkpoints" / "step-1"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["launch"] == {"engine": "single", "world_size": 1}
    state["launch"] = {"engine": "fsdp", "world_size": 2}
    write_json(ck / "trainer_state.json", state)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ConfigError, match="2 process.*fsdp.*1 under single") as ei:
        train_sft(_cfg(tiny_llava_dir, data, out, max_steps=3, save_every=1))
    assert "\n" not in str(ei.value)
    assert sorted(p.name for p in out.iterdir()) == before


def test_an_accelerate_config_that_does_not_fit_the_machine_is_refused(monkeypatch):
    from visalign.training.engine import check_launch

    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="mixed_precision.*cpu_2proc_fsdp"):
        check_launch()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("WORLD_SIZE", "2")                 # multi_gpu_ddp.yaml on a CPU
    with pytest.raises(ConfigError, match="ddp is a GPU config"):
        check_launch()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    check_launch()


@pytest.mark.parametrize("name", sorted(p.name for p in (
    Path(__file__).parents[1] / "configs" / "accelerate").glob("*.yaml")))
def test_shipped_accelerate_configs_fit_accelerates_schema(name):
    """Every shipped config loads as accelerate's ClusterConfig (an unknown or misspelt key
    fails there); the CPU forms run with no mixed precision, the GPU forms in bf16."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[1] / "configs" / "accelerate" / name
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1
    if name.startswith("cpu_"):
        assert cfg.use_cpu and cfg.mixed_precision == "no" and cfg.num_processes == 2
    else:
        assert not cfg.use_cpu and cfg.mixed_precision == "bf16"
    if "zero3" in name:
        assert cfg.deepspeed_config["zero_stage"] == 3
        assert cfg.deepspeed_config.get("zero3_save_16bit_model") is True
    if "fsdp" in name:
        assert str(cfg.fsdp_config["fsdp_version"]) == "2"


def test_fisao_ppo_without_dropout_keeps_train_mode_for_checkpointing(tiny_llava_dir):
    """transformers checkpoints only in train mode: with gradient checkpointing FiSAO's PPO
    forwards switch dropout off by probability (train mode kept), and give the same log-probs
    as eval mode."""
    from _tiny import solid_images

    from visalign.methods.fisao.ppo import dropout_off
    from visalign.models import load_vlm, sequence_logprobs
    from visalign.models.lora import add_lora

    vlm = load_vlm(tiny_llava_dir)
    model = add_lora(vlm.model, r=4, alpha=8, dropout=0.3)
    batch = vlm.encode(solid_images(2), [[{"from": "human", "value": "<image>\nWhat?"},
                                          {"from": "gpt", "value": "A ball."}]] * 2)
    with torch.no_grad(), dropout_off(model, True):
        assert not model.training
        ref = sequence_logprobs(model, batch)
    model.eval()
    with torch.no_grad(), dropout_off(model, True, keep_train_mode=True):
        assert model.training
        ps = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
        assert ps == {0.0}
        same = sequence_logprobs(model, batch)
    assert not model.training
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert torch.equal(ref, same)
