"""FiSAO: token-level rewards from the model's own vision encoder, optimised with clipped PPO.

Seed 004_9eca003dbb219cab, Sec. 3.3-3.4 and Algorithm 1. For each batch of (image, prompt) from
the model's own instruction data (no extra data):

1. sample responses from the current policy (LoRA adapters on);
2. find entity mentions (:class:`~visalign.verifier.entities.EntitySet`), map each to its
   response tokens via the tokenizer's offsets, score S(word, image) with the verifier CLIP
   whose vision side is the VLM's own vision tower, and turn scores into rewards (Eq. 8,
   App. A.1.5) minus ξ·KL(π_ref‖π_θ) at the entity states (π_ref = adapters disabled);
3. run ``ppo_epochs`` epochs of the clipped surrogate (Eq. 9) with r_t = π_θ/π_old (Eq. 10),
   where π_old is the policy that sampled.

Departures from the paper, all configurable:
- the token reward is used directly as the advantage (Eq. 9 multiplies the ratio by R); the
  option ``advantage=reward_to_go`` sums future token rewards instead (no value network: FiSAO
  has none);
- the KL at a state is a single-sample estimate from the sampled token's log-probs under π_old
  and π_ref (k1 = log π_old − log π_ref by default; k2/k3 selectable), not the exact
  full-vocabulary KL, which would need both logit tensors at every step;
- the loss is normalised by the number of response tokens in the whole (global) PPO minibatch,
  so N processes × b samples equals 1 process × N·b samples (DDP averages gradients).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from visalign.config import field, save_run_config
from visalign.io import JsonlAppender, write_json
from visalign.methods.sft import resolve_image
from visalign.training import (TrainConfig, TrainResult, latest_checkpoint, prepare_model,
                               save_model, seed_everything)


@dataclasses.dataclass
class FisaoConfig(TrainConfig):
    data: str = field("", help="the base model's own instruction data (LLaVA records)")
    tasks: list[str] = field(["detail"], help="record tasks whose prompts are used ([] = all)")
    verifier: str = field("", help="CLIP dir whose vision tower is the VLM's ('' = MODEL/verifier)")
    calibration: str = field("", help="calibration JSON from `visalign fisao calibrate`")
    extra_vocab: str = field("", help="synonyms file (CHAIR form) added to the entity set")
    lam: float = field(0.0, help="margin λ of Eq. 8")
    xi: float = field(0.05, help="ξ: weight of the KL penalty in the reward")
    kl_on: Literal["entity", "all", "none"] = field("entity", help="tokens carrying -ξ·KL")
    kl_estimator: Literal["k1", "k2", "k3"] = field("k1", help="per-token KL estimator")
    ppo_epochs: int = field(4, help="e: PPO epochs per rollout batch (Algorithm 1)")
    clip_eps: float = field(0.2, help="ε of the clipped surrogate (Eq. 9)")
    rollout_batch: int = field(16, help="prompts per rollout (per process)")
    max_new_tokens: int = field(96, help="response length cap")
    temperature: float = field(1.0, help="sampling temperature of rollouts")
    top_p: float = field(1.0, help="nucleus sampling of rollouts")
    reward_level: Literal["token", "sentence"] = field("token", help="ablation: sentence level")
    reward_position: Literal["last", "first", "all"] = field("last",
                                                            help="sub-token(s) of a word rewarded")
    advantage: Literal["reward", "reward_to_go"] = field("reward", help="advantage estimate")
    template: str = field("", help="verifier prompt template ('' = the calibration's)")
    limit: int = field(0, help="use only the first N prompts (0 = all)")


def load_prompts(cfg: FisaoConfig) -> list[dict]:
    """(image, prompt) items from instruction records: first human turn without ``<image>``."""
    from visalign.data.llava import load_llava_records

    recs = load_llava_records(cfg.data)
    items = []
    for r in recs:
        if cfg.tasks and r.get("task") not in cfg.tasks:
            continue
        prompt = r["conversations"][0]["value"].replace("<image>", "").strip()
        items.append({"id": r["id"], "image": resolve_image(r["image"], cfg.image_root),
                      "prompt": prompt})
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise ValueError(f"{cfg.data}: no prompts with task in {cfg.tasks}")
    return items


def label_positions(labels: Any) -> list[list[int]]:
    """For each row, the positions whose label is a response token, in order."""
    return [(row != -100).nonzero().flatten().tolist() for row in labels]


@dataclasses.dataclass
class RolloutScores:
    rewards: Any          # (b, T) float tensor aligned with label positions
    is_entity: Any        # (b, T) bool
    entity_scores: list[list[float]]
    n_pos: int
    n_neg: int
    n_entities: int


def score_rollout(rollout: Any, images: list, scorer: Any, entities: Any, calib: Any,
                  cfg: FisaoConfig) -> RolloutScores:
    """Eq. 8 rewards for every sampled response (before the KL term)."""
    import torch

    from visalign.verifier.reward import sentence_rewards, token_rewards
    from visalign.verifier.token_map import map_spans_to_tokens

    labels = rollout.batch["labels"]
    b, T = labels.shape
    rewards = torch.zeros(b, T)
    is_entity = torch.zeros(b, T, dtype=torch.bool)
    img_emb = scorer.image_embeddings(images)
    positions = label_positions(labels)
    all_scores: list[list[float]] = []
    n_pos = n_neg = n_ent = 0
    if cfg.reward_level == "sentence":
        s = scorer.sentence_score(rollout.texts, img_emb)
        r = sentence_rewards(s, calib, cfg.lam)
        for i, pos in enumerate(positions):
            if pos:
                rewards[i, pos[-1]] = r[i]
                is_entity[i, pos[-1]] = True
                n_pos += int(r[i] > 0)
                n_neg += int(r[i] < 0)
        return RolloutScores(rewards, is_entity, [[float(x)] for x in s], n_pos, n_neg, b)
    for i, text in enumerate(rollout.texts):
        mentions = entities.find(text)
        pos = positions[i]
        if not mentions:
            all_scores.append([])
            continue
        offsets = rollout.response_offsets[i][: len(pos)]
        tok_idx = map_spans_to_tokens(offsets, [(m.start, m.end) for m in mentions],
                                      position=cfg.reward_position)
        sc = scorer.score([m.canonical for m in mentions], img_emb[i: i + 1]).reshape(-1)
        rw = token_rewards(sc, torch.ones_like(sc, dtype=torch.bool), calib, cfg.lam)
        all_scores.append([float(x) for x in sc])
        for m_i, toks in enumerate(tok_idx):
            for t in toks:
                if t < len(pos):
                    rewards[i, pos[t]] = rw[m_i]
                    is_entity[i, pos[t]] = True
            n_ent += 1
            n_pos += int(rw[m_i] > 0)
            n_neg += int(rw[m_i] < 0)
    return RolloutScores(rewards, is_entity, all_scores, n_pos, n_neg, n_ent)


def ppo_minibatch_loss(model: Any, batch: dict, old_logprobs: Any, advantages: Any, mask: Any,
                       clip_eps: float, n_tokens_global: float, world_size: int) -> tuple:
    """Clipped surrogate (Eq. 9) summed over tokens, normalised by the global token count.

    Returns (loss, stats). ``world_size`` undoes DDP's gradient averaging so that the gradient
    equals that of one process holding the whole global minibatch.
    """
    import torch

    from visalign.losses import clipped_surrogate_loss
    from visalign.models import sequence_logprobs

    logprobs = sequence_logprobs(model, batch)
    loss, stats = clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask,
                                         clip_eps=clip_eps, reduction="sum")
    loss = loss * world_size / max(n_tokens_global, 1.0)
    return loss, {k: (v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()}


def train_fisao(cfg: FisaoConfig, vlm: Any = None) -> TrainResult:
    """Algorithm 1 of FiSAO on ``cfg.data``; resumable from ``cfg.out/checkpoints``."""
    import torch
    from accelerate import Accelerator
    from PIL import Image

    from visalign.losses import kl_penalty, reward_to_go
    from visalign.models import load_vlm, sequence_logprobs
    from visalign.verifier.entities import EntitySet
    from visalign.verifier.reward import Calibration
    from visalign.verifier.scorer import ClipScorer

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if not cfg.calibration:
        raise ValueError("FiSAO needs calibration=PATH (run `visalign fisao calibrate` first)")
    calib = Calibration.from_json(cfg.calibration)
    items = load_prompts(cfg)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        save_run_config(cfg, out)
    if vlm is None:
        vlm = load_vlm(cfg.model, dtype=cfg.dtype)
    verifier = cfg.verifier or str(Path(cfg.model) / "verifier")
    scorer = ClipScorer.from_pretrained(verifier, template=cfg.template or calib.template,
                                        device=acc.device)
    entities = EntitySet.build(extra=cfg.extra_vocab or None)
    model = prepare_model(vlm, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    base = acc.unwrap_model(model)
    vlm.model = base

    world, rank = acc.num_processes, acc.process_index
    per_rollout = cfg.rollout_batch * world
    n_rollouts = math.ceil(len(items) * cfg.epochs / per_rollout)
    if cfg.max_steps:
        n_rollouts = min(n_rollouts, cfg.max_steps)
    state = {"step": 0, "samples": 0}
    ck = latest_checkpoint(out)
    if ck is not None:
        acc.load_state(str(ck))
        state.update(json.loads((ck / "trainer_state.json").read_text()))
        acc.print(f"[fisao] resumed from {ck} at rollout {state['step']}")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(items), generator=g).tolist()
    log = JsonlAppender(out / "log.jsonl") if acc.is_main_process else None
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_rollouts, initial=state["step"], desc="fisao", dynamic_ncols=True)
    timings = {"rollout": 0.0, "verifier": 0.0, "ppo": 0.0}
    t_start = time.time()
    shift_scores: list[float] = []
    stats: dict = {}
    while state["step"] < n_rollouts:
        k = state["step"]
        glob = [order[(k * per_rollout + j) % len(order)] for j in range(per_rollout)]
        mine = [items[i] for i in glob[rank::world]]
        images = [Image.open(it["image"]).convert("RGB") for it in mine]
        prompts = [it["prompt"] for it in mine]
        t0 = time.time()
        model.eval()
        with torch.no_grad():
            ro = vlm.rollout(images, prompts, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                             temperature=cfg.temperature, top_p=cfg.top_p,
                             generator_seed=cfg.seed * 100003 + k * 1009 + rank)
        t1 = time.time()
        with torch.no_grad():
            sc = score_rollout(ro, images, scorer, entities, calib, cfg)
        t2 = time.time()
        batch = {kk: (v.to(acc.device) if torch.is_tensor(v) else v) for kk, v in ro.batch.items()}
        mask = (batch["labels"] != -100)
        # sequence_logprobs is aligned with label positions, so mask/rewards index the same.
        with torch.no_grad():
            old = sequence_logprobs(model, batch)
            rewards = sc.rewards.to(old.device)
            if cfg.xi > 0 and cfg.kl_on != "none":
                with base.disable_adapter():
                    ref = sequence_logprobs(base, batch)
                kl = kl_penalty(old, ref, kind=cfg.kl_estimator)
                kl_mask = sc.is_entity.to(old.device) if cfg.kl_on == "entity" else mask
                rewards = rewards - cfg.xi * kl * kl_mask
                stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
            adv = reward_to_go(rewards, mask) if cfg.advantage == "reward_to_go" else rewards
        n_tok = mask.sum().float()
        n_tok_global = float(acc.reduce(n_tok.clone(), reduction="sum")) if world > 1 else float(n_tok)
        model.train()
        for _ in range(cfg.ppo_epochs):
            loss, st = ppo_minibatch_loss(model, batch, old, adv, mask, cfg.clip_eps,
                                          n_tok_global, world)
            acc.backward(loss)
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad()
        t3 = time.time()
        timings["rollout"] += t1 - t0
        timings["verifier"] += t2 - t1
        timings["ppo"] += t3 - t2
        for s in sc.entity_scores:
            shift_scores.extend(s)
        state["step"] += 1
        state["samples"] += per_rollout
        stats.update({
            "loss": float(loss.detach()),
            "mean_entity_reward": float(sc.rewards[sc.is_entity].mean()) if sc.is_entity.any()
            else 0.0,
            "pos_share": sc.n_pos / max(sc.n_entities, 1),
            "neg_share": sc.n_neg / max(sc.n_entities, 1),
            "entities_per_response": sc.n_entities / max(len(mine), 1),
            "clip_fraction": float(st.get("clip_fraction", 0.0)),
            "response_tokens": float(n_tok) / max(len(mine), 1),
        })
        if bar:
            bar.update(1)
            bar.set_postfix(r=f"{stats['mean_entity_reward']:+.3f}", neg=f"{stats['neg_share']:.2f}")
        if log:
            log.write({"step": state["step"], **stats, "elapsed": round(time.time() - t_start, 2)})
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < n_rollouts:
            from visalign.training import _checkpoint
            _checkpoint(acc, out, state)
    if bar:
        bar.close()
    if log:
        log.close()
    acc.wait_for_everyone()
    model_dir = out / "model"
    if acc.is_main_process:
        model_dir = save_model(vlm, cfg, out)
        seconds = time.time() - t_start
        write_json(out / "train_summary.json", {
            "name": "fisao", "steps": state["step"], "samples": state["samples"],
            "seconds": round(seconds, 3),
            "samples_per_second": round(state["samples"] / max(seconds, 1e-9), 3),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "verifier_share_of_rollout": round(timings["verifier"] / max(timings["rollout"], 1e-9),
                                               4),
            "last": stats})
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, state["step"], time.time() - t_start, state["samples"],
                       stats)
