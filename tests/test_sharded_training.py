"""SFT, DPO and FiSAO under sharded engines: 2 CPU processes (gloo) under FSDP2 and DeepSpeed
ZeRO-3 save the same adapter and merged model as one process with the same global batch.

One ``accelerate launch`` per engine runs all three trainers through the CLI
(``_sharded_driver.py``), with the shipped ``configs/accelerate/cpu_2proc_fsdp.yaml`` /
``cpu_2proc_zero3.yaml``; the 1-process references are trained once for both engines.
FiSAO's rollouts under sharding generate on gathered weights (training.engine.generation_model),
so the 2-process samples equal the 1-process ones token for token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from _launch import launch_2proc
from visalign.io import write_json

TIMEOUT = 600   # a safety net against hangs on a loaded machine, not a speed check
LR = 1e-2
COMMON = {"lr": LR, "warmup_ratio": 0.0, "schedule": "constant", "max_steps": 2,
          "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no safetensors in {d}"
    return out


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llava_dir, tiny_clip_dir):
    """Data for the three trainers, the FiSAO calibration and an entity set of the words the
    policy samples (a short probe run), and the 1-process reference runs."""
    from _tiny import solid_images

    from visalign.methods.dpo import DpoConfig, train_dpo
    from visalign.methods.fisao import FisaoConfig, train_fisao
    from visalign.methods.pairs import write_pairs
    from visalign.methods.sft import SftConfig, train_sft
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.reward import Calibration
    from visalign.verifier.scorer import ClipScorer

    root = tmp_path_factory.mktemp("sharded")
    sft_recs, fisao_recs, pairs = [], [], []
    for i, im in enumerate(solid_images(4)):
        im.save(root / f"{i}.png")
        # one answer text: equal token counts, so per-process means equal the global mean
        sft_recs.append({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A ball."}]})
        fisao_recs.append({"id": f"f{i}", "image": f"{i}.png", "task": "detail",
                           "conversations": [
                               {"from": "human", "value": "<image>\nDescribe the image."},
                               {"from": "gpt", "value": "A ball."}]})
        pairs.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "What is in the image?",
                      "chosen": ["A red ball.", "A blue cube.", "A green tree.", "A car."][i],
                      "rejected": ["A dog.", "A yellow car.", "A cat on a chair.", "A cup."][i]})
    write_json(root / "sft.json", sft_recs)
    write_json(root / "fisao.json", fisao_recs)
    write_pairs(root / "pairs.json", pairs)
    scale = ClipScorer.from_pretrained(tiny_clip_dir).scale
    Calibration(mu_gt=0.0, mu_hal=0.0, s_min=-scale, s_max=scale, scale=scale,
                template="{}").to_json(root / "calibration.json")
    EntitySet({"zzz": "zzz"}).save(root / "entities.json")
    fisao_args = {"verifier": str(tiny_clip_dir), "calibration": str(root / "calibration.json"),
                  "entities": str(root / "entities.json"), "max_new_tokens": 8,
                  "ppo_epochs": 2, "clip_eps": 0.1, "xi": 0.5, "save_merged": True}

    def fisao_cfg(out: Path, **kw) -> FisaoConfig:
        cfg = FisaoConfig(model=str(tiny_llava_dir), data=str(root / "fisao.json"),
                          image_root=str(root), out=str(out), **fisao_args, **kw)
        for k, v in COMMON.items():
            if k.startswith("lora."):
                setattr(cfg.lora, k[5:], v)
            else:
                setattr(cfg, k, v)
        return cfg

    probe = root / "probe"
    train_fisao(fisao_cfg(probe, rollout_batch=4, log_samples=4))
    texts = [json.loads(x)["response"] for x in (probe / "samples.jsonl").open()]
    words = sorted({w.lower() for t in texts for w in re.findall(r"[^\W_]+", t)})
    assert words, texts
    EntitySet({w: w for w in words}).save(root / "entities.json")

    def plain(cls, **kw):
        cfg = cls(model=str(tiny_llava_dir))
        for k, v in {**COMMON, "log_every": 1, **kw}.items():
            if k.startswith("lora."):
                setattr(cfg.lora, k[5:], v)
            else:
                setattr(cfg, k, v)
        return cfg

    one = root / "one"
    train_sft(plain(SftConfig, data=str(root / "sft.json"), image_root=str(root),
                    out=str(one / "sft"), batch_size=2))
    train_dpo(plain(DpoConfig, pairs=str(root / "pairs.json"), out=str(one / "dpo"),
                    batch_size=2))
    train_fisao(fisao_cfg(one / "fisao", rollout_batch=4))
    train_sft(plain(SftConfig, data=str(root / "sft.json"), image_root=str(root),
                    out=str(one / "sft3"), batch_size=2, max_steps=3))
    common = [f"{k}={v}" for k, v in COMMON.items()]
    fis = [f"{k}={v}" for k, v in fisao_args.items()]
    def sft(out: Path, *extra: str) -> list[str]:
        return ["train", "sft", "--model", str(tiny_llava_dir), "--data", str(root / "sft.json"),
                "--image-root", str(root), "--out", str(out), *common, "batch_size=1",
                "log_every=1", *extra]

    spec = lambda out: [  # noqa: E731
        sft(out / "sft"),
        # a sharded checkpoint at step 1, then a longer run that resumes from it
        sft(out / "resume", "save_every=1"),
        sft(out / "resume", "save_every=1", "max_steps=3"),
        ["train", "dpo", "--model", str(tiny_llava_dir), "--pairs", str(root / "pairs.json"),
         "--out", str(out / "dpo"), *common, "batch_size=1", "log_every=1"],
        ["train", "fisao", "--model", str(tiny_llava_dir), "--data", str(root / "fisao.json"),
         "--image-root", str(root), "--out", str(out / "fisao"), *common, *fis,
         # 2 slices of 1 row accumulated into each PPO step: under DeepSpeed the engine must
         # step once per epoch, not once per slice, for the adapter to match
         "rollout_batch=2", "grad_accum=2"],
    ]
    return root, one, spec


def _run_engine(setup, config: str, name: str) -> Path:
    root, _, spec = setup
    out = root / name
    write_json(root / f"{name}.json", spec(out))
    res = launch_2proc([str(Path(__file__).parent / "_sharded_driver.py"),
                        str(root / f"{name}.json")], timeout=TIMEOUT, config=config)
    errors = [ln for ln in res.stderr.splitlines() if "Error" in ln or "error:" in ln]
    assert res.returncode == 0, "\n".join(errors[-20:]) or res.stderr[-3000:]
    return out


def _check_equal(one: Path, two: Path, base_dir: Path) -> None:
    from visalign.models import load_vlm

    # Adam moves an element with a near-zero gradient by ~lr whatever its size, so summation
    # order shows at ~1e-4 of lr (2-process DDP gives 2.4e-6 on this SFT run too)
    for method in ("sft", "dpo", "fisao"):
        summary = json.loads((two / method / "train_summary.json").read_text())
        assert summary["processes"] == 2, method
        l1, l2 = _log(one / method), _log(two / method)
        assert [r["step"] for r in l1] == [r["step"] for r in l2]
        assert [r["loss"] for r in l2] == pytest.approx([r["loss"] for r in l1], rel=1e-4,
                                                        abs=1e-7), method
        a1, a2 = _weights(one / method / "adapter"), _weights(two / method / "adapter")
        assert a1.keys() == a2.keys() and any("lora_B" in k for k in a1)
        assert max(float(v.abs().max()) for k, v in a1.items() if "lora_B" in k) > 0, method
        for k in a1:
            assert torch.allclose(a1[k], a2[k], atol=1e-3 * LR, rtol=0), (method, k)
        m1, m2 = _weights(one / method / "model"), _weights(two / method / "model")
        assert m1.keys() == m2.keys() == _weights(base_dir).keys()
        for k in m1:
            assert m1[k].dtype == m2[k].dtype and torch.allclose(m1[k], m2[k], atol=1e-6,
                                                                 rtol=0), (method, k)
    # resumed from the step-1 sharded checkpoint, it ends where 3 uninterrupted steps end
    assert (two / "resume" / "checkpoints" / "step-1" / "trainer_state.json").is_file()
    r1, r2 = _weights(one / "sft3" / "adapter"), _weights(two / "resume" / "adapter")
    for k in r1:
        assert torch.allclose(r1[k], r2[k], atol=1e-3 * LR, rtol=0), k
    # the saved adapter loads with peft on the base
    vlm = load_vlm(two / "sft" / "adapter")
    assert type(vlm.model).__name__ == "PeftModel"


def test_fsdp_two_processes_save_what_one_process_saves(setup, tiny_llava_dir):
    two = _run_engine(setup, "cpu_2proc_fsdp.yaml", "fsdp")
    assert json.loads((two / "sft" / "train_summary.json").read_text())["engine"] == "fsdp"
    _check_equal(setup[1], two, tiny_llava_dir)


def test_zero3_two_processes_save_what_one_process_saves(setup, tiny_llava_dir):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install "
                                            "'visalign[gpu]'); the ZeRO-3 runs need it")
    two = _run_engine(setup, "cpu_2proc_zero3.yaml", "zero3")
    assert json.loads((two / "sft" / "train_summary.json").read_text())["engine"] == "deepspeed"
    _check_equal(setup[1], two, tiny_llava_dir)
