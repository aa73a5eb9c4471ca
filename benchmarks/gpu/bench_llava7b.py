"""GPU benchmark: SFT, DPO and FiSAO iterations on a randomly initialised LLaVA-1.5-7B-shaped
model, with the 7B settings (bfloat16, gradient checkpointing, LoRA r128, sdpa), printing JSON.

No hub: the model is built from a config written out by hand from llava-hf/llava-1.5-7b-hf's
config.json (Llama-2-7B text model: hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary
32064; projector: 2-layer GELU MLP) and CLIP ViT-L/14-336's vision config (hidden 1024, 24
layers, 16 heads, MLP 4096, 336 px images in 14 px patches = 576 image tokens, feature layer
-2). The tokenizer is visalign's small locally trained one (its ids fit the 32064-row
embedding); the FiSAO verifier is a CLIP with ViT-L/14-336's vision tower. Random weights
sample random text, so every rollout runs to ``max_new_tokens``: the timings are the worst case
of a real run's lengths.

Printed (and written to ``--out``/bench_llava7b.json): per method peak GPU memory (GiB),
tokens/s and seconds per optimiser step; for FiSAO the seconds per rollout (sampling +
verifier) and per PPO update (``ppo_epochs`` optimiser steps), and the projected GPU-hours of
the paper's run (8,000 prompts, 4 PPO epochs) at the measured speed. Goal: <= 3 H100-hours
(the paper reports about 24 A100-hours; a FLOP count puts the floor near 0.7 H100-hours).

``--tiny`` runs the same code on a tiny config (CPU, seconds): what the tests run. ``--plan``
prints the computed memory plan of docs/gpu-memory-and-scaling.md (no model is built).

    python benchmarks/gpu/bench_llava7b.py --out benchmarks/results    # on one GPU
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

# llava-hf/llava-1.5-7b-hf (text_config) and openai/clip-vit-large-patch14-336 (vision_config)
LLAVA_7B = {"text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                         max_position_embeddings=4096, rms_norm_eps=1e-5),
            "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
            "clip_text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77)}
TINY = {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                     max_position_embeddings=1024, rms_norm_eps=1e-5),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=56, patch_size=14, projection_dim=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5),
        "clip_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77)}
PAPER_PROMPTS, PAPER_PPO_EPOCHS = 8000, 4
CORPUS = ["USER: What is in the image? ASSISTANT: There is a red ball and a blue cube.",
          "A small green tree stands next to a yellow car on the left of the picture.",
          "A person is sitting on a chair near the table with a cup and a book.",
          "Describe the image in detail. The large red ball is on the right of the blue cube."]
GOAL_H100_HOURS = 3.0


def build(shape: dict, work: Path, device: str):
    """(VLM in the compute dtype on ``device``, verifier dir, policy dir for FiSAO's input
    checks): random weights, a locally trained tokenizer."""
    import torch
    from transformers import (CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionConfig,
                              LlamaConfig, LlavaConfig, LlavaForConditionalGeneration)

    from visalign.models import VLM, load_processor
    from visalign.models.tiny import _clip_tokenizer, _pil_clip_image_processor, build_tiny_llava
    from visalign.models.tokenizer import train_tokenizer
    from visalign.training import resolve_dtype

    tok = train_tokenizer(CORPUS * 20, 400)
    v = shape["vision"]
    # the processor of a tiny LLaVA with the real image geometry (576 image tokens at 336/14)
    proc_dir = build_tiny_llava(work / "processor", tok, image_size=v["image_size"],
                                patch_size=v["patch_size"], vision_hidden=32,
                                vision_layers=1, text_hidden=32, text_layers=1)
    processor = load_processor(proc_dir)
    small = LlavaForConditionalGeneration.from_pretrained(proc_dir)
    dtype = getattr(torch, resolve_dtype("auto"))
    text = LlamaConfig(**shape["text"], bos_token_id=small.config.text_config.bos_token_id,
                       eos_token_id=small.config.text_config.eos_token_id,
                       pad_token_id=small.config.text_config.pad_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**v), text_config=text,
                         image_token_index=small.config.image_token_index,
                         image_seq_length=small.config.image_seq_length,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)     # initialised in the compute dtype: no fp32 copy
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config = small.generation_config
    model.eval()
    clip_cfg = CLIPConfig(text_config=dict(shape["clip_text"], vocab_size=len(tok),
                                           bos_token_id=text.bos_token_id,
                                           eos_token_id=text.eos_token_id,
                                           pad_token_id=text.pad_token_id),
                          vision_config=v, projection_dim=v["projection_dim"])
    clip = CLIPModel(clip_cfg)
    # the verifier's vision side is the policy's own tower (FiSAO checks that it is)
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    ver = work / "verifier"
    clip.save_pretrained(ver)
    CLIPProcessor(image_processor=_pil_clip_image_processor(v["image_size"]),
                  tokenizer=_clip_tokenizer(tok, 77)).save_pretrained(ver)
    # a policy dir for FiSAO's input checks: the config, the processor and the vision tower's
    # weights (the language model stays in memory: 14 GB would only be written and re-read)
    from safetensors.torch import save_file

    policy = work / "policy"
    model.config.save_pretrained(policy)
    processor.save_pretrained(policy)
    save_file({k: t.detach().to("cpu").contiguous() for k, t in model.state_dict().items()
               if "vision_tower" in k}, str(policy / "model.safetensors"))
    vlm = VLM(model, processor, family="llava", name="llava-1.5-7b-shaped")
    return vlm, ver, policy


def write_data(work: Path, n: int, image_size: int, answer_words: int) -> dict:
    """n images and the three data files: SFT conversations, DPO pairs, FiSAO prompts."""
    from PIL import Image

    from visalign.io import write_json
    from visalign.methods.pairs import write_pairs

    words = " ".join(CORPUS).split()
    answer = " ".join(words[i % len(words)] for i in range(answer_words))
    sft, pairs, prompts = [], [], []
    for i in range(n):
        Image.new("RGB", (image_size, image_size), ((37 * i) % 256, 90, 160)).save(
            work / f"{i}.png")
        sft.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": answer}]})
        prompts.append({"id": f"f{i}", "image": f"{i}.png", "task": "detail", "conversations":
                        sft[-1]["conversations"]})
        pairs.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "Describe the image.",
                      "chosen": answer, "rejected": " ".join(reversed(answer.split()))})
    write_json(work / "sft.json", sft)
    write_json(work / "fisao.json", prompts)
    write_pairs(work / "pairs.json", pairs)
    return {"sft": work / "sft.json", "pairs": work / "pairs.json", "fisao": work / "fisao.json"}


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() \
        else None


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _speed(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    steady = rows[1:] or rows      # the first step includes warm-up (allocations, kernels)
    t = [b["elapsed"] - a["elapsed"] for a, b in zip(rows, rows[1:])] or [rows[0]["elapsed"]]
    return {"tokens_per_s": round(sum(r["tokens_per_s"] for r in steady) / len(steady), 1),
            "seconds_per_step": round(sum(t) / len(t), 3)}


def run(shape: dict, work: Path, *, steps: int, batch: int, rollout_batch: int,
        max_new_tokens: int, answer_words: int, lora_r: int) -> dict:
    import torch

    from visalign.methods.dpo import DpoConfig, train_dpo
    from visalign.methods.fisao import FisaoConfig, train_fisao
    from visalign.methods.sft import SftConfig, train_sft
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.reward import Calibration
    from visalign.verifier.scorer import ClipScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vlm, verifier, policy = build(shape, work, device)
    files = write_data(work, max(batch, rollout_batch) * steps, shape["vision"]["image_size"],
                       answer_words)
    common = dict(model="unused", dtype="auto", gradient_checkpointing=True,
                  attn_implementation="sdpa", max_steps=steps, progress=False, log_every=1,
                  save_merged=False, lr=1e-5, warmup_ratio=0.0)

    def lora(cfg):
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = lora_r, 2 * lora_r, 0.05
        return cfg

    def fresh_base():
        if hasattr(vlm.model, "unload"):     # drop the previous run's adapters, keep the base
            vlm.model = vlm.model.unload()

    result: dict = {}
    _reset_peak()
    train_sft(lora(SftConfig(**common, data=str(files["sft"]), out=str(work / "sft"),
                             batch_size=batch)), vlm=vlm)
    result["sft"] = {"batch": batch, "peak_gpu_mem_gib": _peak_gib(), **_speed(work / "sft")}
    fresh_base()
    _reset_peak()
    train_dpo(lora(DpoConfig(**common, pairs=str(files["pairs"]), out=str(work / "dpo"),
                             batch_size=batch)), vlm=vlm)
    result["dpo"] = {"batch_pairs": batch, "peak_gpu_mem_gib": _peak_gib(),
                     **_speed(work / "dpo")}
    fresh_base()
    scale = ClipScorer.from_pretrained(verifier).scale
    Calibration(mu_gt=0.0, mu_hal=0.0, s_min=-scale, s_max=scale, scale=scale,
                template="a photo of a {}.").to_json(work / "calibration.json")
    EntitySet({w: w for w in ("ball", "cube", "tree", "car", "dog", "cat", "person", "chair",
                              "table", "cup", "book")}).save(work / "entities.json")
    _reset_peak()
    fcfg = dict(common)
    fcfg.pop("log_every")
    fcfg["model"] = str(policy)
    res = train_fisao(lora(FisaoConfig(
        **fcfg, data=str(files["fisao"]), image_root=str(work), out=str(work / "fisao"),
        verifier=str(verifier), calibration=str(work / "calibration.json"),
        entities=str(work / "entities.json"), rollout_batch=rollout_batch,
        ppo_epochs=PAPER_PPO_EPOCHS, max_new_tokens=max_new_tokens, ppo_minibatch=batch)),
        vlm=vlm)
    summ = json.loads((work / "fisao" / "train_summary.json").read_text())
    tm = summ["timings"]
    per_rollout = (tm["rollout"] + tm["verifier"]) / res.steps
    per_update = tm["ppo"] / res.steps
    iters = math.ceil(PAPER_PROMPTS / rollout_batch)
    result["fisao"] = {
        "rollout_batch": rollout_batch, "ppo_minibatch": batch, "ppo_epochs": PAPER_PPO_EPOCHS,
        "max_new_tokens": max_new_tokens, "peak_gpu_mem_gib": _peak_gib(),
        "seconds_per_rollout": round(per_rollout, 3),
        "seconds_per_ppo_update": round(per_update, 3),
        "projected_hours_paper_run": round(iters * (per_rollout + per_update) / 3600, 3),
        "paper_run": f"{PAPER_PROMPTS} prompts, {PAPER_PPO_EPOCHS} PPO epochs, 1 GPU",
        "goal_h100_hours": GOAL_H100_HOURS,
        **_speed(work / "fisao")}
    return result


# ------------------------------------------------------------------ computed memory plan

GIB = 2**30


def memory_gib(method: str, *, params_b: float, hidden: int, layers: int, vocab: int,
               seq: int, micro_batch: int, four_bit: bool, checkpointing: bool,
               lora_params_m: float, shards: int = 1, verifier_params_m: float = 428,
               new_tokens: int = 256) -> float:
    """Computed peak memory per GPU (GiB) of one training step, from parameter and activation
    counts (not measured): weights (bf16, or NF4 with double quantisation: ~0.52 bytes a
    parameter; ZeRO-3/FSDP divide them by ``shards``), LoRA weights + fp32 gradients + Adam's
    two fp32 moments + fp32 master copy (16 bytes a LoRA parameter), activations per sequence
    (Korthikanti et al. 2022 with a fused attention kernel: 34·h bytes per token per layer in
    bf16, or only each layer's input, 2·h, plus one layer recomputed, with checkpointing), the
    logits (bf16 + the float32 upcast of the loss) and, per method: DPO's chosen + rejected rows
    (2 sequences per pair); FiSAO's rollout (the full bf16 weights gathered on every GPU under
    sharding, the KV cache of ``new_tokens`` per sequence, the CLIP verifier in float32) next
    to its PPO minibatch."""
    n = params_b * 1e9
    weights = n * (0.52 if four_bit else 2.0) / (1 if four_bit else shards)
    lora = lora_params_m * 1e6 * 16
    rows = micro_batch * (2 if method == "dpo" else 1)
    tokens = rows * seq
    per_layer = 34 * hidden * tokens
    act = (2 * hidden * tokens * layers + per_layer) if checkpointing else per_layer * layers
    logits = tokens * vocab * (2 + 4)
    train = weights + lora + act + logits
    if method != "fisao":
        return train / GIB
    full = n * (0.52 if four_bit else 2.0)
    kv = 2 * layers * micro_batch * (seq) * hidden * 2
    rollout = full + lora + kv + verifier_params_m * 1e6 * 4 + micro_batch * vocab * 4 * 2
    return max(train, rollout) / GIB


def memory_plan() -> dict:
    """Largest micro-batch (per GPU) that each setting fits into 24, 40 and 80 GB, per method,
    for 7B and 13B LLaVA-1.5 (computed; LoRA r128 on every LM projection; 1,024-token SFT/DPO
    sequences = 576 image + prompt + answer; FiSAO: 576 + prompt + 256 new tokens)."""
    models = {"7B": dict(params_b=7.06, hidden=4096, layers=32, vocab=32064,
                         lora_params_m=320),
              "13B": dict(params_b=13.35, hidden=5120, layers=40, vocab=32064,
                          lora_params_m=500)}
    settings = {"bf16 LoRA": dict(four_bit=False, checkpointing=False),
                "bf16 LoRA + checkpointing": dict(four_bit=False, checkpointing=True),
                "QLoRA 4-bit + checkpointing": dict(four_bit=True, checkpointing=True),
                "ZeRO-3/FSDP x8 + checkpointing": dict(four_bit=False, checkpointing=True,
                                                       shards=8)}
    out: dict = {"computed": True, "note": "computed from parameter and activation counts, "
                 "not measured", "sizes_gb": [24, 40, 80], "models": {}}
    for mname, m in models.items():
        rows = {}
        for method, seq in (("sft", 1024), ("dpo", 1024), ("fisao", 900)):
            for sname, s in settings.items():
                fits = {}
                for gb in (24, 40, 80):
                    cap = gb * 1e9 / GIB * 0.92     # ~8 % to the allocator and CUDA context
                    best = 0
                    for mb in (1, 2, 4, 8, 16, 32):
                        if memory_gib(method, seq=seq, micro_batch=mb, **m, **s) <= cap:
                            best = mb
                    fits[str(gb)] = best
                rows[f"{method} | {sname}"] = {
                    "max_micro_batch": fits,
                    "gib_at_micro_batch_1": round(memory_gib(method, seq=seq, micro_batch=1,
                                                             **m, **s), 1)}
        out["models"][mname] = rows
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config on CPU (the test)")
    ap.add_argument("--plan", action="store_true", help="print the computed memory plan only")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="SFT/DPO micro-batch, PPO minibatch")
    ap.add_argument("--rollout-batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--answer-words", type=int, default=150)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--out", default="", help="also write bench_llava7b.json here")
    args = ap.parse_args(argv)
    if args.plan:
        res = memory_plan()
    else:
        import torch

        shape = TINY if args.tiny else LLAVA_7B
        if not args.tiny and not torch.cuda.is_available():
            ap.error("the 7B benchmark needs a CUDA GPU; --tiny runs it on a tiny config")
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="bench-llava7b-") as d:
            res = {"config": "tiny" if args.tiny else "llava-1.5-7b-shaped (random weights)",
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                   else "cpu", "torch": torch.__version__,
                   **run(shape, Path(d), steps=args.steps, batch=args.batch,
                         rollout_batch=args.rollout_batch,
                         max_new_tokens=args.max_new_tokens,
                         answer_words=args.answer_words, lora_r=args.lora_r)}
        res["seconds"] = round(time.time() - t0, 1)
        res["memory_plan"] = memory_plan()
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / ("gpu_memory_plan_computed.json" if args.plan
                          else "bench_llava7b.json")) \
            .write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
