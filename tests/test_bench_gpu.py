"""The GPU benchmark (benchmarks/gpu/bench_llava7b.py) runs end to end on a tiny config on the
CPU, and its computed memory plan says what fits where."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PATH = Path(__file__).parents[1] / "benchmarks" / "gpu" / "bench_llava7b.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llava7b", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_reports_every_method(bench, tmp_path):
    res = bench.main(["--tiny", "--steps", "2", "--batch", "2", "--rollout-batch", "2",
                      "--max-new-tokens", "6", "--answer-words", "10", "--lora-r", "4",
                      "--out", str(tmp_path)])
    assert json.loads((tmp_path / "bench_llava7b.json").read_text()) == res
    for m in ("sft", "dpo", "fisao"):
        assert res[m]["tokens_per_s"] > 0 and res[m]["seconds_per_step"] > 0, m
    f = res["fisao"]
    assert f["seconds_per_rollout"] > 0 and f["seconds_per_ppo_update"] > 0
    # 8,000 prompts in rollouts of 2, each a rollout + a 4-epoch PPO update
    assert f["projected_hours_paper_run"] == pytest.approx(
        4000 * (f["seconds_per_rollout"] + f["seconds_per_ppo_update"]) / 3600, rel=1e-2)


def test_memory_plan_is_computed_and_orders_the_settings(bench):
    plan = bench.memory_plan()
    assert plan["computed"] is True
    rows = plan["models"]["7B"]
    g = {k: v["gib_at_micro_batch_1"] for k, v in rows.items()}
    # 7B bf16 weights alone are ~13 GiB; checkpointing, 4-bit and sharding each lower the need
    assert 13 < g["sft | bf16 LoRA + checkpointing"] < g["sft | bf16 LoRA"]
    assert g["sft | QLoRA 4-bit + checkpointing"] < g["sft | bf16 LoRA + checkpointing"]
    assert g["sft | ZeRO-3/FSDP x8 + checkpointing"] < g["sft | bf16 LoRA + checkpointing"]
    assert g["dpo | bf16 LoRA"] > g["sft | bf16 LoRA"]            # two sequences per pair
    # FiSAO gathers the full weights to generate, so sharding helps it less than SFT
    assert g["fisao | ZeRO-3/FSDP x8 + checkpointing"] > g["sft | ZeRO-3/FSDP x8 + checkpointing"]
    assert rows["sft | QLoRA 4-bit + checkpointing"]["max_micro_batch"]["24"] >= 1
    assert rows["sft | bf16 LoRA"]["max_micro_batch"]["24"] == 0
