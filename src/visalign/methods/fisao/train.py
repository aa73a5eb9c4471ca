"""FiSAO's training loop (Algorithm 1): rollout, rewards, PPO epochs, logging and checkpoints."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

from visalign.config import save_run_config
from visalign.io import DataError, JsonlAppender, write_json
from visalign.methods.fisao.config import FisaoConfig, effective_minibatch
from visalign.methods.fisao.ppo import (adapters_off, anchor_kl, batch_logprobs, dropout_off,
                                            first_answer_logprobs, ppo_epoch,
                                            whitespace_token_ids)
from visalign.methods.fisao.prompts import (load_anchor_items, load_prompts, rollout_seed,
                                                sample_index)
from visalign.methods.fisao.rollout import (load_calibrations, load_entities, score_rollout,
                                                shaped_rewards, shuffled_rewards)
from visalign.training import (TrainResult, check_memory_settings, check_resume,
                               generation_model, is_sharded, latest_checkpoint, launched_engine,
                               load_for_training, lr_lambda, make_accelerator, plain_init,
                               prepare_model,
                               save_checkpoint, save_model, seed_everything)
from visalign.training.tracking import (Throughput, end_tracking, start_tracking, track,
                                        tracking_dir)


def truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a resumed run redoes them)."""
    from visalign.io import atomic_write_text, read_jsonl

    if not path.exists():
        return
    rows = read_jsonl(path, tolerate_partial_last_line=True)
    keep = [r for r in rows if int(r.get("step", 0)) <= step]
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def train_fisao(cfg: FisaoConfig, vlm: Any = None) -> TrainResult:
    """Algorithm 1 of FiSAO on ``cfg.data``; resumable from ``cfg.out/checkpoints``.

    Writes ``OUT/config.yaml``, ``OUT/log.jsonl`` (one line per rollout, module docstring),
    ``OUT/samples.jsonl`` (``log_samples``), ``OUT/checkpoints/step-N`` (``save_every``),
    ``OUT/adapter`` + ``OUT/model`` (merged HF dir) and ``OUT/train_summary.json``
    (``steps``, ``samples``, ``seconds``, ``timings`` {rollout, verifier, ppo},
    ``verifier_share_of_rollout``, ``entities``, ``last``).
    """
    import torch
    from PIL import Image

    from visalign.verifier.reward import adaptive_kl_coef
    from visalign.verifier.scorer import ClipScorer
    from visalign.verifier.tower import check_fisao_inputs, check_vision_tower

    if cfg.ppo_epochs < 1 or cfg.rollout_batch < 1:
        raise ValueError("ppo_epochs and rollout_batch must be >= 1")
    minibatch = effective_minibatch(cfg)
    check_memory_settings(cfg)
    if cfg.trainable != "lora" and is_sharded():
        raise ValueError(f"FiSAO with trainable={cfg.trainable!r} keeps a full reference copy "
                         f"of the policy, which {launched_engine()} would not shard: use "
                         "trainable=lora (the reference is then the adapters switched off)")
    if cfg.kl_target > 0 and (cfg.xi <= 0 or cfg.kl_on == "none" or cfg.kl_horizon <= 0):
        raise ValueError("kl_target > 0 adapts ξ multiplicatively: it needs xi > 0, "
                         "kl_on other than 'none' and kl_horizon > 0")
    if cfg.existence_reward and cfg.reward_level != "token":
        raise ValueError("existence_reward puts token rewards on yes/no answers: it needs "
                         "reward_level=token")
    # every missing input in one line, and the verifier checked against the policy's vision
    # tower, before anything is written or loaded
    verifier = check_fisao_inputs(cfg.model, cfg.verifier, cfg.calibration, data=cfg.data)
    with plain_init():   # read whole, even after an earlier ZeRO-3 trainer in this process
        check_vision_tower(verifier, cfg.model, allow_mismatch=cfg.allow_verifier_mismatch)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    calib, sent_calib = load_calibrations(cfg)
    entities = load_entities(cfg)
    items = load_prompts(cfg, entities)
    anchor_items = load_anchor_items(cfg) if cfg.anchor_weight > 0 else None
    # One optimiser step per PPO epoch: its backward passes are the rollout's slices plus the
    # anchor term; DeepSpeed must know that count (it steps inside backward), the others step
    # when ppo_epoch says so.
    n_slices = math.ceil(cfg.rollout_batch / (minibatch or cfg.rollout_batch))
    n_micro = n_slices + (1 if anchor_items is not None else 0)
    acc = make_accelerator(grad_accum=n_micro if launched_engine() == "deepspeed" else 1,
                           micro_batch=minibatch or cfg.rollout_batch,
                           max_grad_norm=cfg.max_grad_norm, report_to=cfg.report_to,
                           project_dir=str(tracking_dir(out)))
    if acc.is_main_process:
        save_run_config(cfg, out)
    if vlm is None:
        # sharded engines place (and shard) the weights in prepare
        vlm = load_for_training(cfg, device="cpu" if is_sharded() else str(acc.device))
    # the calibration says how its scores were computed; the rewards must use the same score
    with plain_init():   # the verifier is no part of the engine: never partitioned
        scorer = ClipScorer.from_pretrained(verifier, template=cfg.template or calib.template,
                                            device=acc.device, pooling=calib.pooling,
                                            patch_labels=calib.patch_labels or None)
    for c in (calib, sent_calib):
        if c is not None and not math.isclose(c.scale, scorer.scale, rel_tol=1e-3):
            raise DataError(cfg.calibration, f"calibrated with score scale {c.scale:g} but the "
                                             f"verifier {verifier} has scale {scorer.scale:g}: "
                                             "recalibrate with this verifier", field="scale")
    oracle = None
    if cfg.reward_source == "annotations":
        if cfg.reward_level != "token":
            raise ValueError("reward_source=annotations is a token-level diagnostic")
        if not cfg.oracle_instances:
            raise ValueError("reward_source=annotations needs oracle_instances=PATH")
        from visalign.eval.chair import Chair, load_synonyms
        oracle = Chair.from_coco(cfg.oracle_instances, synonyms=load_synonyms(
            cfg.oracle_synonyms) if cfg.oracle_synonyms else None)
        missing = [it["id"] for it in items if it.get("image_id") is None
                   or not oracle.has_image(it["image_id"])]
        if missing:
            raise DataError(cfg.data, f"{len(missing)} prompt(s) have no image_id in "
                                      f"{cfg.oracle_instances}", record=missing[0],
                            field="image_id")
    model = prepare_model(vlm, cfg)
    ref_model = None
    if cfg.trainable != "lora":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    world, rank = acc.num_processes, acc.process_index
    per_rollout = cfg.rollout_batch * world
    n_rollouts = max(1, math.ceil(len(items) * cfg.epochs / per_rollout))
    if cfg.max_steps:
        n_rollouts = cfg.max_steps
    total_updates = n_rollouts * cfg.ppo_epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.schedule, int(cfg.warmup_ratio * total_updates), total_updates))
    # The scheduler is not prepared: accelerate's wrapper steps it once per *process* per
    # optimiser step (it assumes the data loader shrank), which would run the schedule N times
    # too fast here. It is registered so checkpoints still hold its state.
    model, opt = acc.prepare(model, opt)
    # FSDP2 replaces the parameters by sharded ones: clip the ones the optimiser now holds
    params = [p for p in model.parameters() if p.requires_grad]
    acc.register_for_checkpointing(sched)
    base = acc.unwrap_model(model)
    vlm.model = base

    state = {"step": 0, "samples": 0}
    ck = latest_checkpoint(out)
    if ck is not None:
        saved = check_resume(acc, ck)
        acc.load_state(str(ck))
        state.update(saved)
        acc.print(f"[fisao] resumed from {ck} at rollout {state['step']}")
    acc.print(f"[fisao] {launched_engine()}: {world} process(es) x rollout_batch "
              f"{cfg.rollout_batch} = {per_rollout} prompts per rollout (global batch), "
              f"{cfg.ppo_epochs} optimiser steps of {n_slices} accumulated slice(s) each; "
              f"{n_rollouts} rollouts")
    start_tracking(acc, cfg.report_to, "fisao", cfg)
    speed = Throughput()
    if acc.is_main_process:
        for name in ("log.jsonl", "samples.jsonl"):
            truncate_log(out / name, state["step"])
    acc.wait_for_everyone()
    perm_cache: dict = {}
    anchor_perm: dict = {}
    ws_ids = (whitespace_token_ids(vlm.processor.tokenizer) if anchor_items is not None
              else None)
    log = JsonlAppender(out / "log.jsonl") if acc.is_main_process else None
    samples_log = (JsonlAppender(out / "samples.jsonl")
                   if acc.is_main_process and cfg.log_samples else None)
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_rollouts, initial=state["step"], desc="fisao", dynamic_ncols=True)
    timings = {"rollout": 0.0, "verifier": 0.0, "ppo": 0.0}
    t_start = time.time()
    stats: dict = {}

    def ref_ctx():
        if ref_model is not None:
            return contextlib.nullcontext(ref_model)
        return adapters_off(base)

    while state["step"] < n_rollouts:
        k = state["step"]
        g_ids = list(range(k * per_rollout + rank, (k + 1) * per_rollout, world))
        mine = [items[sample_index(len(items), cfg.seed, g, perm_cache)] for g in g_ids]
        images = [Image.open(it["image"]).convert("RGB") for it in mine]
        prompts = [it["prompt"] for it in mine]
        t0 = time.time()
        # sharded weights are gathered once for the whole rollout (not per token), and no
        # rank waits on another however long its responses are
        with generation_model(acc, model) as gen_model:
            vlm.model = gen_model
            ro = vlm.rollout(images, prompts, max_new_tokens=cfg.max_new_tokens,
                             do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                             seeds=[rollout_seed(cfg.seed, g) for g in g_ids])
        vlm.model = base
        t1 = time.time()
        with torch.no_grad():
            sc = score_rollout(ro, images, scorer, entities, calib, cfg, sent_calib, oracle,
                               [it.get("image_id") for it in mine],
                               [it.get("asks") for it in mine] if cfg.existence_reward else None)
            if cfg.reward_shuffle != "none":
                sc.rewards = shuffled_rewards(sc.rewards, sc.is_entity, rollout_seed(cfg.seed, k),
                                              centered=cfg.reward_shuffle == "centered")
        t2 = time.time()
        batch = {kk: (v.to(acc.device) if torch.is_tensor(v) else v) for kk, v in ro.batch.items()}
        mask = batch["labels"] != -100
        # sequence_logprobs is aligned with label positions, so mask/rewards index the same.
        with dropout_off(model, True):
            old = batch_logprobs(model, batch, minibatch)
            with ref_ctx() as ref_m:
                ref = batch_logprobs(ref_m, batch, minibatch)
        xi = float(state.get("xi", cfg.xi))
        adv, kl = shaped_rewards(sc.rewards.to(old.device), sc.is_entity.to(old.device), mask,
                                 old, ref, cfg, xi=xi)
        n_tok = float(mask.sum())
        local = torch.tensor([n_tok, float(len(mine)), float(sc.n_entities), float(sc.n_pos),
                              float(sc.n_neg), sc.reward_sum, float(kl.sum()),
                              float(sum(ro.finished)), float(batch["attention_mask"].sum())],
                             dtype=torch.float64, device=acc.device)
        glob = acc.reduce(local, reduction="sum") if world > 1 else local
        speed.add(float(glob[8]))   # sequence tokens of the rollout, all processes
        n_tok_global = float(glob[0])
        extra_loss = None
        if anchor_items is not None:
            picks = [anchor_items[sample_index(len(anchor_items), cfg.seed + 1, g, anchor_perm)]
                     for g in g_ids]
            a_batch = vlm.encode([Image.open(it["image"]).convert("RGB") for it in picks],
                                 [it["conversation"] for it in picks])
            a_batch = {kk: (v.to(acc.device) if torch.is_tensor(v) else v)
                       for kk, v in a_batch.items()}
            with torch.no_grad(), dropout_off(model, True), ref_ctx() as ref_m:
                a_ref = first_answer_logprobs(ref_m, a_batch, ws_ids)

            def extra_loss():
                return cfg.anchor_weight * anchor_kl(model, a_batch, a_ref, ws_ids)
        ep = {"loss": 0.0, "clipped": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "extra": 0.0}
        lr = sched.get_last_lr()[0]
        with dropout_off(model, cfg.disable_dropout,
                         keep_train_mode=cfg.gradient_checkpointing or cfg.load_in_4bit):
            for _ in range(cfg.ppo_epochs):
                st = ppo_epoch(model, batch, old, adv, mask, opt, clip_eps=cfg.clip_eps,
                               n_tokens_global=n_tok_global, world_size=world,
                               minibatch=minibatch, accelerator=acc, params=params,
                               max_grad_norm=cfg.max_grad_norm, scheduler=sched,
                               extra_loss=extra_loss)
                for kk in ep:
                    ep[kk] += st[kk] / cfg.ppo_epochs
            last_approx_kl = st["approx_kl"]
        red = torch.tensor([ep["loss"], ep["clipped"], last_approx_kl], dtype=torch.float64,
                           device=acc.device)
        red = acc.reduce(red, reduction="sum") if world > 1 else red
        t3 = time.time()
        timings["rollout"] += t1 - t0
        timings["verifier"] += t2 - t1
        timings["ppo"] += t3 - t2
        state["step"] += 1
        state["samples"] += per_rollout
        n_ent = max(float(glob[2]), 1.0)
        stats = {
            "loss": float(red[0]),
            "mean_reward": float(glob[5]) / n_ent,
            "pos_share": float(glob[3]) / n_ent,
            "neg_share": float(glob[4]) / n_ent,
            "kl": float(glob[6]) / max(n_tok_global, 1.0),
            "clip_fraction": float(red[1]) / max(n_tok_global, 1.0),
            "approx_kl": float(red[2]) / max(n_tok_global, 1.0),
            "grad_norm": ep["grad_norm"],
            "entities_per_response": float(glob[2]) / float(glob[1]),
            "response_tokens": n_tok_global / float(glob[1]),
            "finished": float(glob[7]) / float(glob[1]),
            "lr": lr,
            "xi": xi,
        }
        if anchor_items is not None:
            stats["anchor_kl"] = ep["extra"] / cfg.anchor_weight   # this process, PPO-epoch mean
        if cfg.kl_target > 0:
            # every process sees the same global KL, so ξ stays identical across processes
            state["xi"] = adaptive_kl_coef(xi, stats["kl"], cfg.kl_target, per_rollout,
                                           cfg.kl_horizon)
        if bar:
            bar.update(1)
            bar.set_postfix(r=f"{stats['mean_reward']:+.3f}", neg=f"{stats['neg_share']:.2f}")
        row = {"step": state["step"], **stats, **speed.row(acc.device),
               "elapsed": round(time.time() - t_start, 2)}
        if log:
            log.write(row)
        track(acc, cfg.report_to, row, state["step"])
        if samples_log:
            for it, text, det in list(zip(mine, ro.texts, sc.details))[: cfg.log_samples]:
                samples_log.write({"step": state["step"], "id": it["id"], "response": text,
                                   "mentions": det})
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < n_rollouts:
            save_checkpoint(acc, out, state)
    if bar:
        bar.close()
    if log:
        log.close()
    if samples_log:
        samples_log.close()
    acc.wait_for_everyone()
    model_dir = save_model(vlm, cfg, out, acc, model)
    if acc.is_main_process:
        seconds = time.time() - t_start
        gen_and_verify = timings["rollout"] + timings["verifier"]
        write_json(out / "train_summary.json", {
            "name": "fisao", "steps": state["step"], "samples": state["samples"],
            "processes": world, "engine": launched_engine(), "global_batch": per_rollout,
            "seconds": round(seconds, 3),
            "samples_per_second": round(state["samples"] / max(seconds, 1e-9), 3),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            # Share of the rollout phase (sampling + scoring) spent in the verifier.
            "verifier_share_of_rollout": round(timings["verifier"] / max(gen_and_verify, 1e-9),
                                               4),
            "entities": entities.stats(),
            "calibration": {"mu_gt": calib.mu_gt, "mu_hal": calib.mu_hal,
                            "lam": calib.lam if cfg.lam is None else cfg.lam},
            "last": stats})
    end_tracking(acc, cfg.report_to)
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, state["step"], time.time() - t_start, state["samples"],
                       stats)
