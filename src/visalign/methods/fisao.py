"""FiSAO: token-level rewards from the model's own vision encoder, optimised with clipped PPO.

Seed 004_9eca003dbb219cab, Sec. 3.3-3.4 and Algorithm 1. For each batch of (image, prompt) from
the model's own instruction data (no extra data):

1. sample responses from the current policy (LoRA adapters on) — Algorithm 1, line 4;
2. find entity mentions (:class:`~visalign.verifier.entities.EntitySet`, the set C), map each to
   its response tokens via their character offsets, score S(word, image) with the verifier CLIP
   whose vision side is the VLM's own vision tower, and turn scores into rewards (Eq. 8 with the
   App. A.1.5 normalisation) minus ξ·KL at the entity states (π_ref = adapters disabled) —
   lines 5-6;
3. run ``ppo_epochs`` epochs of the clipped surrogate (Eq. 9), one optimiser step each, with
   r_t = π_θ/π_old (Eq. 10), where π_old is the policy that sampled — lines 7-9.

Departures from the paper, all configurable:

- the token reward is used directly as the advantage (Eq. 9 multiplies the ratio by R); the
  option ``advantage=reward_to_go`` sums future token rewards instead (no value network: FiSAO
  has none);
- the KL at a state is a single-sample estimate from the sampled token's log-probs under π_old
  and π_ref (k1 = log π_old − log π_ref by default; k2/k3 selectable), not the exact
  full-vocabulary KL, which would need both logit tensors at every step. Its direction is
  KL(π_old ‖ π_ref), the usual RLHF penalty, whose single-sample estimate needs only the
  tokens the policy sampled; Eq. 8 writes KL(π_ref ‖ π_θ), whose estimate would need samples
  from π_ref. Both are 0 at π_θ = π_ref and agree to second order near it (the regime the
  penalty keeps the policy in);
- the loss is the sum over response tokens divided by the number of response tokens in the whole
  *global* rollout batch, so N processes × b samples give the gradient of 1 process × N·b
  samples (DDP averages gradients, which the factor N undoes); ``ppo_minibatch`` (or
  ``grad_accum``, the same thing counted in slices) splits the forward/backward into
  accumulated slices without changing the gradient;
- dropout is off during the PPO forward passes (``disable_dropout``, as TRL does), so that
  r_t = 1 exactly on the first epoch;
- ``kl_target`` > 0 (off by default) adapts ξ after each rollout so that the per-token KL to
  the reference tracks the target: on the micro-world, KL above ~0.2 nats/token came with
  broken words (docs/methods_on_grounded_base.md, stop 16);
- with ``trainable`` other than ``lora`` the reference policy is a frozen copy of the initial
  model (twice the weights in memory); with LoRA it is the same model with adapters disabled.

Off by default and not the paper's method: ``existence_reward`` (an extension that also rewards
yes/no existence answers with the verifier's score of the asked object) and the diagnostics
``reward_source=annotations``, ``reward_branches`` and ``reward_shuffle``
(docs/methods_on_grounded_base.md).

Every rollout writes one line to ``OUT/log.jsonl`` (global over processes): ``mean_reward`` (Eq. 8
reward, before KL, over the rewarded entity mentions), ``pos_share`` / ``neg_share`` (share of
mentions with a positive / negative reward), ``kl`` (mean per-token KL estimate π_old‖π_ref over
response tokens), ``clip_fraction`` (share of response tokens whose clipped term is the smaller
one, averaged over PPO epochs), ``loss``, ``grad_norm``, ``approx_kl`` (π_old‖π_θ after the
update), ``entities_per_response``, ``response_tokens``, ``finished``, ``lr``, ``xi`` (the KL weight used
for this rollout; it moves only with ``kl_target`` > 0, the adaptive controller of Ziegler et
al. that TRL also offers, which is not in the paper and is saved in checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

from visalign.config import field, save_run_config
from visalign.io import DataError, JsonlAppender, write_json
from visalign.methods.sft import resolve_image
from visalign.training import (TrainConfig, TrainResult, latest_checkpoint, lr_lambda,
                               prepare_model, save_model, seed_everything)


@dataclasses.dataclass
class FisaoConfig(TrainConfig):
    """FiSAO settings. Of :class:`~visalign.training.TrainConfig`, ``rollout_batch`` (per
    process) replaces ``batch_size``; ``grad_accum`` = G splits each rollout into G
    forward/backward passes whose gradients accumulate into one optimiser step (the same as
    ``ppo_minibatch`` = ceil(rollout_batch / G)); ``batch_size``, ``max_length`` and
    ``log_every`` are not used (every rollout is logged) and :func:`effective_minibatch`
    rejects them when set. ``max_steps`` counts rollouts (each makes ``ppo_epochs`` optimiser
    steps; the LR schedule runs over those)."""

    data: str = field("", help="the base model's own instruction data (LLaVA records)")
    tasks: list[str] = field(["detail"], help="record tasks whose prompts are used ([] = all)")
    verifier: str = field("", help="CLIP dir whose vision tower is the VLM's ('' = MODEL/verifier)")
    calibration: str = field("", help="calibration.json from `visalign fisao calibrate`")
    sentence_calibration: str = field(
        "", help="sentence-level calibration for reward_level=sentence ('' = "
                 "calibration_sentence.json next to `calibration`)")
    entities: str = field("", help="entity set C (entities.json); '' = the calibration's "
                                   "entities.json when extra_vocab is empty, else built")
    extra_vocab: str = field("", help="synonyms file (CHAIR form) added to a built entity set")
    lam: float | None = field(None, help="margin λ of Eq. 8 (None = the calibration's)")
    xi: float = field(0.05, help="ξ: weight of the KL penalty in the reward")
    kl_on: Literal["entity", "all", "none"] = field(
        "entity", help="tokens carrying -ξ·KL: 'entity' as Eq. 8 writes it; 'all' every response "
        "token, which on the micro-world kept the text intact at budgets where 'entity' let the "
        "policy break words (docs/methods_on_grounded_base.md, stop 16)")
    kl_estimator: Literal["k1", "k2", "k3"] = field("k1", help="per-token KL estimator")
    kl_target: float = field(
        0.0, help="adapt ξ after every rollout so that the per-token KL to the reference "
        "tracks this value (Ziegler et al.'s controller; not in the paper); 0 = fixed ξ")
    kl_horizon: int = field(10000, help="samples over which the adaptive controller makes a "
                                        "full ±20 % correction of ξ (kl_target > 0)")
    ppo_epochs: int = field(4, help="e: PPO epochs (optimiser steps) per rollout (Algorithm 1)")
    clip_eps: float = field(0.2, help="ε of the clipped surrogate (Eq. 9)")
    rollout_batch: int = field(16, help="prompts per rollout (per process)")
    ppo_minibatch: int = field(0, help="rows per PPO forward/backward (0 = the whole rollout); "
                                       "gradients accumulate, the result is the same; "
                                       "grad_accum=G sets it to ceil(rollout_batch / G)")
    max_new_tokens: int = field(96, help="response length cap")
    temperature: float = field(1.0, help="sampling temperature of rollouts")
    top_p: float = field(1.0, help="nucleus sampling of rollouts")
    reward_level: Literal["token", "sentence"] = field("token", help="ablation: sentence level")
    reward_position: Literal["last", "first", "all"] = field("last",
                                                            help="sub-token(s) of a word rewarded")
    advantage: Literal["reward", "reward_to_go"] = field("reward", help="advantage estimate")
    template: str = field("", help="verifier prompt template ('' = the calibration's)")
    limit: int = field(0, help="use only the first N prompts (0 = all)")
    disable_dropout: bool = field(True, help="no dropout in PPO forwards (r_t = 1 at epoch 1)")
    log_samples: int = field(0, help="write the first N responses of each rollout, with their "
                                     "rewarded mentions, to samples.jsonl")
    reward_source: Literal["verifier", "annotations"] = field(
        "verifier", help="diagnostic: 'annotations' replaces the verifier by the ground truth "
                         "(reward +1 on a mention of a present object, -1 on an absent one, 0 "
                         "where CHAIR has no label): FiSAO's ceiling with a perfect verifier. "
                         "Needs oracle_instances; not the method")
    oracle_instances: str = field("", help="COCO instances of the training images "
                                           "(reward_source=annotations)")
    oracle_synonyms: str = field("", help="CHAIR synonyms table of the oracle ('' = COCO's)")
    reward_branches: Literal["both", "negative", "positive"] = field(
        "both", help="diagnostic: keep only the negative (hallucinated) or only the positive "
                     "(grounded) branch of Eq. 8, the other set to 0; tells which branch moves "
                     "POPE (docs/methods_on_grounded_base.md, stop 21). Not the method")
    reward_shuffle: Literal["none", "permute", "centered"] = field(
        "none", help="diagnostic control: 'permute' permutes each rollout's rewards among its "
        "rewarded tokens (seeded): same distribution, content scrambled; 'centered' also "
        "subtracts their mean, so the push has no direction on average. Tells whether a change "
        "comes from the reward's content or from the optimisation itself. Not the method")
    anchor_weight: float = field(
        0.0, help="extension, not in the paper: weight of a KL(pi_ref || pi_theta) anchor on the "
        "first answer token of the instruction data's yes/no existence prompts (task "
        "'existence'; only their questions are used, answered by the reference itself), added "
        "to every PPO step. Moving the policy at all costs POPE discrimination on the "
        "micro-world (docs/methods_on_grounded_base.md, stop 22); this holds the yes/no answers "
        "where the reference had them while the descriptions move. 0 = off")
    existence_reward: bool = field(
        False, help="extension, not in the paper: also roll out the yes/no existence prompts "
        "of the instruction data (task 'existence', added to `tasks`) and put on the answer's "
        "yes/no word the Eq. 8 reward of the object asked about, signed by the answer (+r for "
        "'Yes', -r for 'No'). The paper's rewards sit on entity words, so a one-word answer "
        "gets none, and description rewards shift yes/no answers unchecked "
        "(docs/methods_on_grounded_base.md, stop 22)")


# TrainConfig fields FiSAO has no use for, with what to set instead (a silently ignored
# override would let a user believe a run used a setting it did not).
_UNUSED = {"batch_size": "rollout_batch (prompts per rollout, per process)",
           "max_length": "max_new_tokens (the response cap; prompts are not truncated)",
           "log_every": "nothing: every rollout is logged",
           "group_by_length": "nothing: a rollout's responses are scored in one batch",
           "padding_free": "nothing: the PPO loss needs one row per response",
           "padding_free_capacity": "nothing: the PPO loss needs one row per response"}


def effective_minibatch(cfg: FisaoConfig) -> int:
    """Rows per PPO forward/backward (0 = the whole rollout), from ``ppo_minibatch`` or
    ``grad_accum``; raises on TrainConfig fields FiSAO does not use when they differ from
    their defaults, and on a ``grad_accum`` that contradicts ``ppo_minibatch``."""
    defaults = TrainConfig()
    for name, instead in _UNUSED.items():
        if getattr(cfg, name) != getattr(defaults, name):
            raise ValueError(f"FiSAO does not use {name}={getattr(cfg, name)!r}; set {instead}")
    if cfg.grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {cfg.grad_accum}")
    if cfg.grad_accum == 1:
        return cfg.ppo_minibatch
    mb = math.ceil(cfg.rollout_batch / cfg.grad_accum)
    if cfg.ppo_minibatch and cfg.ppo_minibatch != mb:
        raise ValueError(f"grad_accum={cfg.grad_accum} means ppo_minibatch={mb} for "
                         f"rollout_batch={cfg.rollout_batch}, but ppo_minibatch="
                         f"{cfg.ppo_minibatch} is set: set one of them")
    return mb


# ----------------------------------------------------------------------------- data


def load_prompts(cfg: FisaoConfig, entities: Any = None) -> list[dict]:
    """(image, prompt) items from instruction records: first human turn without ``<image>``."""
    from visalign.data.llava import load_llava_records

    recs = load_llava_records(cfg.data)
    # Relative image paths start at image_root, else at the data file's directory (as in SFT).
    root = cfg.image_root or str(Path(cfg.data).parent)
    items = []
    if cfg.existence_reward and entities is None:
        entities = load_entities(cfg)
    for r in recs:
        existence = cfg.existence_reward and r.get("task") == "existence"
        if cfg.tasks and r.get("task") not in cfg.tasks and not existence:
            continue
        human = [t for t in r["conversations"] if t.get("from") == "human"]
        prompt = human[0]["value"].replace("<image>", "").strip()
        item = {"id": r["id"], "image": resolve_image(r["image"], root), "prompt": prompt,
                "image_id": r.get("image_id")}
        if existence:
            item["asks"] = asked_object(prompt, entities)
            if item["asks"] is None:
                continue
        items.append(item)
    if cfg.limit:
        items = items[: cfg.limit]
    if not items:
        raise DataError(cfg.data, f"no prompts with task in {cfg.tasks}", field="task")
    for it in items:
        if not Path(it["image"]).is_file():
            raise DataError(cfg.data, f"image file not found: {it['image']} (relative paths "
                                      "start at image_root, else at the data file's dir)",
                            record=it["id"], field="image")
    return items


_IMAGE_WORDS = frozenset({"image", "images", "picture", "pictures", "photo", "photos",
                          "photograph", "photographs", "scene"})


def asked_object(prompt: str, entities: Any) -> str | None:
    """The canonical entity a yes/no existence question asks about ("Is there a dog in the
    image?" -> "dog"): the one entity of C in the question (the text up to its first '?'),
    words for the image itself aside; None when there is none or more than one."""
    question = prompt.split("?", 1)[0]
    found = {m.canonical for m in entities.find(question) if m.surface.lower() not in _IMAGE_WORDS}
    return found.pop() if len(found) == 1 else None


def yes_no_span(text: str) -> tuple[int, tuple[int, int] | None]:
    """(+1 for a response starting with "yes", -1 with "no", 0 otherwise; the word's character
    span, or None)."""
    import re

    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    if m is None:
        return 0, None
    return (1 if m.group(1).lower() == "yes" else -1), (m.start(1), m.end(1))


def sample_index(n: int, seed: int, g: int, _cache: dict | None = None) -> int:
    """Item index of global sample ``g``: a fresh permutation of the ``n`` items every epoch."""
    import torch

    epoch, i = divmod(g, n)
    cache = _cache if _cache is not None else {}
    if epoch not in cache:
        cache.clear()
        cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(
            seed * 1_000_003 + epoch)).tolist()
    return cache[epoch][i]


def rollout_seed(seed: int, g: int) -> int:
    """Sampling seed of global sample ``g``: independent of process count and batch layout."""
    return (seed * 2_654_435_761 + g * 40_503 + 12_345) % (2 ** 62)


def load_entities(cfg: FisaoConfig) -> Any:
    """The entity set C: ``cfg.entities``, else the calibration's ``entities.json`` (when no
    ``extra_vocab`` asks for a different one), else built from ``extra_vocab``."""
    from visalign.verifier.entities import EntitySet

    if cfg.entities:
        return EntitySet.load(cfg.entities)
    sibling = Path(cfg.calibration).parent / "entities.json" if cfg.calibration else None
    if not cfg.extra_vocab and sibling is not None and sibling.exists():
        return EntitySet.load(sibling)
    return EntitySet.build(extra=cfg.extra_vocab or None)


def load_calibrations(cfg: FisaoConfig) -> tuple[Any, Any]:
    """(token calibration, sentence calibration or None); checks levels against the config."""
    from visalign.verifier.reward import Calibration

    if not cfg.calibration:
        raise ValueError("FiSAO needs calibration=PATH (run `visalign fisao calibrate` first)")
    calib = Calibration.from_json(cfg.calibration)
    sent = None
    if cfg.reward_level == "sentence":
        if calib.level == "sentence":
            sent = calib
        else:
            p = Path(cfg.sentence_calibration or Path(cfg.calibration).parent
                     / "calibration_sentence.json")
            if not p.exists():
                raise DataError(p, "reward_level=sentence needs a sentence-level calibration "
                                   "(written by `visalign fisao calibrate` when some responses "
                                   "are hallucination-free and some are not)")
            sent = Calibration.from_json(p)
            if sent.level != "sentence":
                raise DataError(p, f"expected a sentence-level calibration, got level "
                                   f"{sent.level!r}", field="level")
    elif calib.level != "token":
        raise DataError(cfg.calibration, f"reward_level=token needs a token-level calibration, "
                                         f"got level {calib.level!r}", field="level")
    return calib, sent


# ----------------------------------------------------------------------------- rewards


def label_positions(labels: Any) -> list[list[int]]:
    """For each row, the positions whose label is a response token, in order."""
    return [(row != -100).nonzero().flatten().tolist() for row in labels]


@dataclasses.dataclass
class RolloutScores:
    """Eq. 8 rewards of one rollout, before the KL term.

    ``rewards`` / ``is_entity``: (b, T) aligned with the batch's label positions; ``n_pos`` /
    ``n_neg`` / ``n_entities``: rewarded mentions (sentence level: responses) with a positive /
    negative / any reward; ``details[i]``: per mention ``{surface, canonical, score, reward}``.
    """

    rewards: Any
    is_entity: Any
    entity_scores: list[list[float]]
    n_pos: int
    n_neg: int
    n_entities: int
    reward_sum: float = 0.0
    details: list[list[dict]] = dataclasses.field(default_factory=list)


def oracle_rewards(text: str, mentions: list, chair: Any, image_id: Any) -> list[float]:
    """Ground-truth reward of each entity mention (``reward_source=annotations``): +1 when the
    CHAIR object it overlaps is in the image's annotations, -1 when not, 0 when CHAIR does not
    recognise it (no label)."""
    gt = chair.gt_objects(image_id)
    cm = chair.mentions(text)
    out = []
    for m in mentions:
        c = next((c for c in cm if c.start < m.end and m.start < c.end), None)
        out.append(0.0 if c is None else (1.0 if c.category in gt else -1.0))
    return out


def score_rollout(rollout: Any, images: list, scorer: Any, entities: Any, calib: Any,
                  cfg: FisaoConfig, sentence_calib: Any = None, oracle: Any = None,
                  image_ids: list | None = None, asks: list | None = None) -> RolloutScores:
    """Eq. 8 rewards for every sampled response (before the KL term).

    Token level: every mention of an entity in C gets ``normalized_reward(S(canonical, image))``
    on its ``reward_position`` sub-token(s); when two mentions share a token the lower reward is
    kept. Sentence level (ablation): one reward per response, from the CLIP score of the whole
    response and ``sentence_calib``, on its last token. With ``oracle`` (a
    :class:`~visalign.eval.chair.Chair`) and ``image_ids``, token rewards come from the
    annotations instead (:func:`oracle_rewards`); the verifier scores are still logged.
    ``asks[i]`` (``existence_reward``): the object a yes/no question asks about; such a
    response gets ``±normalized_reward(S(object, image))`` on the first token of its yes/no
    word (+ for "Yes", − for "No", nothing if it starts with neither) instead of entity
    rewards.
    """
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
    details: list[list[dict]] = []
    n_pos = n_neg = n_ent = 0
    total = 0.0
    if cfg.reward_level == "sentence":
        if sentence_calib is None:
            raise ValueError("reward_level=sentence needs a sentence-level calibration")
        s = scorer.sentence_score(rollout.texts, img_emb).float().cpu()
        r = keep_branches(sentence_rewards(s, sentence_calib, cfg.lam), cfg.reward_branches)
        for i, pos in enumerate(positions):
            if pos:
                rewards[i, pos[-1]] = r[i]
                is_entity[i, pos[-1]] = True
                n_ent += 1
                n_pos += int(r[i] > 0)
                n_neg += int(r[i] < 0)
                total += float(r[i])
            all_scores.append([float(s[i])])
            details.append([{"surface": None, "canonical": None, "score": float(s[i]),
                             "reward": float(r[i])}])
        return RolloutScores(rewards, is_entity, all_scores, n_pos, n_neg, n_ent, total, details)
    for i, text in enumerate(rollout.texts):
        pos = positions[i]
        if asks is not None and asks[i] is not None:
            answer, span = yes_no_span(text)
            sc = scorer.score([asks[i]], img_emb[i]).reshape(-1).float().cpu()
            all_scores.append([float(sc[0])])
            # the reward sits on the yes/no word's first token, found by its offsets: chat
            # templates often put a bare-space token before the answer, which decides nothing
            toks = (map_spans_to_tokens(rollout.response_offsets[i][: len(pos)], [span],
                                        position="first")[0] if answer else [])
            toks = [t for t in toks if t < len(pos)]
            if not toks:
                details.append([])
                continue
            r = float(keep_branches(token_rewards(sc, torch.ones_like(sc, dtype=torch.bool),
                                                  calib, cfg.lam), cfg.reward_branches)[0])
            rewards[i, pos[toks[0]]] = answer * r
            is_entity[i, pos[toks[0]]] = True
            n_ent += 1
            n_pos += int(answer * r > 0)
            n_neg += int(answer * r < 0)
            total += answer * r
            details.append([{"surface": text[span[0]:span[1]],
                             "canonical": asks[i], "score": float(sc[0]),
                             "reward": answer * r}])
            continue
        mentions = entities.find(text)
        if not mentions:
            all_scores.append([])
            details.append([])
            continue
        offsets = rollout.response_offsets[i][: len(pos)]
        tok_idx = map_spans_to_tokens(offsets, [(m.start, m.end) for m in mentions],
                                      position=cfg.reward_position)
        sc = scorer.score([m.canonical for m in mentions], img_emb[i]).reshape(-1).float().cpu()
        rw = token_rewards(sc, torch.ones_like(sc, dtype=torch.bool), calib, cfg.lam)
        if oracle is not None:
            rw = torch.tensor(oracle_rewards(text, mentions, oracle, image_ids[i]))
        rw = keep_branches(rw, cfg.reward_branches)
        all_scores.append([float(x) for x in sc])
        det = []
        for m_i, toks in enumerate(tok_idx):
            toks = [t for t in toks if t < len(pos)]
            if not toks:
                continue  # the mention lies outside the sampled tokens (cannot happen, guard)
            for t in toks:
                p = pos[t]
                rewards[i, p] = torch.minimum(rewards[i, p], rw[m_i]) if is_entity[i, p] \
                    else rw[m_i]
                is_entity[i, p] = True
            n_ent += 1
            n_pos += int(rw[m_i] > 0)
            n_neg += int(rw[m_i] < 0)
            total += float(rw[m_i])
            m = mentions[m_i]
            det.append({"surface": m.surface, "canonical": m.canonical, "score": float(sc[m_i]),
                        "reward": float(rw[m_i])})
        details.append(det)
    return RolloutScores(rewards, is_entity, all_scores, n_pos, n_neg, n_ent, total, details)


def shuffled_rewards(rewards: Any, is_entity: Any, seed: int, centered: bool = False) -> Any:
    """``rewards`` with its values on the ``is_entity`` positions permuted among those positions
    (``reward_shuffle``): same reward distribution and token count, content scrambled; with
    ``centered`` minus their mean (zero-mean scrambled rewards)."""
    import torch

    out = rewards.clone()
    idx = is_entity.nonzero(as_tuple=True)
    vals = rewards[idx]
    perm = torch.randperm(len(vals), generator=torch.Generator().manual_seed(seed))
    out[idx] = vals[perm] - (vals.mean() if centered and len(vals) else 0.0)
    return out


def keep_branches(rewards: Any, which: str) -> Any:
    """``rewards`` with the Eq. 8 branch(es) not named by ``which`` set to 0 (``reward_branches``)."""
    if which == "both":
        return rewards
    if which == "negative":
        return rewards.clamp(max=0.0)
    if which == "positive":
        return rewards.clamp(min=0.0)
    raise ValueError(f"reward_branches must be both, negative or positive, got {which!r}")


def shaped_rewards(rewards: Any, is_entity: Any, mask: Any, logprobs: Any, ref_logprobs: Any,
                   cfg: FisaoConfig, xi: float | None = None) -> tuple[Any, Any]:
    """Eq. 8 with its KL term and the advantage: returns ``(advantages, kl)``, both (b, T).

    ``kl`` is the per-token estimate (``cfg.kl_estimator``) of KL(π_old ‖ π_ref) at the sampled
    tokens (0 off the response); ``-ξ·kl`` is added on the entity tokens (``kl_on=entity``,
    Eq. 8 literally), on every response token (``all``) or nowhere (``none``). ``xi``
    overrides ``cfg.xi`` (the adaptive controller's current value).
    """
    from visalign.losses import kl_penalty, reward_to_go

    kl = kl_penalty(logprobs, ref_logprobs, kind=cfg.kl_estimator) * mask
    total = rewards
    xi = cfg.xi if xi is None else xi
    if xi > 0 and cfg.kl_on != "none":
        where = (is_entity & mask) if cfg.kl_on == "entity" else mask
        total = rewards - xi * kl * where
    adv = reward_to_go(total, mask) if cfg.advantage == "reward_to_go" else total * mask
    return adv, kl


# ----------------------------------------------------------------------------- PPO


def slice_batch(batch: dict, start: int, end: int) -> dict:
    """Rows ``start:end`` of a model batch (token tensors and per-image tensors; Qwen2-VL's
    flattened ``pixel_values`` are cut by ``image_grid_thw``)."""
    import torch

    b = batch["input_ids"].shape[0]
    grid = batch.get("image_grid_thw")
    out = {}
    for k, v in batch.items():
        if not torch.is_tensor(v):
            out[k] = v
        elif k == "pixel_values" and grid is not None and v.shape[0] != b:
            counts = [0] + grid.prod(-1).cumsum(0).tolist()
            out[k] = v[counts[start]:counts[end]]
        elif v.dim() > 0 and v.shape[0] == b:
            out[k] = v[start:end]
        else:
            out[k] = v
    return out


def batch_logprobs(model: Any, batch: dict, minibatch: int = 0) -> Any:
    """:func:`~visalign.models.sequence_logprobs` in row chunks of ``minibatch`` (no grad)."""
    import torch

    from visalign.models import sequence_logprobs

    b = batch["input_ids"].shape[0]
    mb = minibatch or b
    with torch.no_grad():
        parts = [sequence_logprobs(model, slice_batch(batch, s, min(s + mb, b)))
                 for s in range(0, b, mb)]
    return torch.cat(parts, dim=0)


def ppo_epoch(model: Any, batch: dict, old_logprobs: Any, advantages: Any, mask: Any,
              optimizer: Any, *, clip_eps: float, n_tokens_global: float, world_size: int = 1,
              minibatch: int = 0, accelerator: Any = None, params: list | None = None,
              max_grad_norm: float = 0.0, scheduler: Any = None,
              extra_loss: Any = None) -> dict:
    """One PPO epoch on one rollout batch = one optimiser step (Eq. 9 with Eq. 10's ratio).

    The clipped surrogate is summed over response tokens and divided by ``n_tokens_global`` (the
    response tokens of the whole global batch); ``world_size`` undoes DDP's gradient averaging,
    so the step equals that of one process holding the global batch. ``minibatch`` rows go
    through each forward/backward (gradients accumulate; DDP syncs only on the last one).

    ``extra_loss`` (a no-argument callable returning a scalar, e.g. the ``anchor_weight`` term)
    is back-propagated into the same step, before the PPO minibatches (its gradients join
    theirs at DDP's sync).

    Returns local sums for logging: ``loss`` (this process's share of the global loss),
    ``clipped`` and ``approx_kl`` (token sums), ``extra`` (the extra loss) and ``grad_norm``
    (global, after DDP's sync).
    """
    import torch

    from visalign.losses import clipped_surrogate_loss
    from visalign.models import sequence_logprobs

    b = mask.shape[0]
    mb = minibatch or b
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    sums = {"loss": 0.0, "clipped": 0.0, "approx_kl": 0.0, "extra": 0.0}
    if extra_loss is not None:
        ctx = (accelerator.no_sync(model) if accelerator is not None
               and accelerator.num_processes > 1 else contextlib.nullcontext())
        with ctx:
            extra = extra_loss()
            if accelerator is not None:
                accelerator.backward(extra)
            else:
                extra.backward()
        sums["extra"] = float(extra.detach())
    starts = list(range(0, b, mb))
    for j, s in enumerate(starts):
        e = min(s + mb, b)
        last = j == len(starts) - 1
        ctx = (accelerator.no_sync(model) if accelerator is not None and not last
               else contextlib.nullcontext())
        with ctx:
            logprobs = sequence_logprobs(model, slice_batch(batch, s, e))
            m = mask[s:e]
            loss, st = clipped_surrogate_loss(logprobs, old_logprobs[s:e], advantages[s:e], m,
                                              clip_eps=clip_eps, reduction="sum")
            loss = loss * world_size / max(float(n_tokens_global), 1.0)
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        n_local = float(m.sum())
        sums["loss"] += float(loss.detach()) / world_size
        sums["clipped"] += float(st["clip_fraction"]) * n_local
        sums["approx_kl"] += float(st["approx_kl"]) * n_local
    if max_grad_norm:
        clip = accelerator.clip_grad_norm_ if accelerator is not None else \
            torch.nn.utils.clip_grad_norm_
        norm = clip(params, max_grad_norm)
    else:
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros(())
    sums["grad_norm"] = float(norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad()
    return sums


def load_anchor_items(cfg: FisaoConfig) -> list[dict]:
    """(image, conversation) of the existence records of ``cfg.data`` (``anchor_weight``)."""
    from visalign.data.llava import load_llava_records

    root = cfg.image_root or str(Path(cfg.data).parent)
    items = [{"image": resolve_image(r["image"], root), "conversation": r["conversations"][:2]}
             for r in load_llava_records(cfg.data) if r.get("task") == "existence"]
    if not items:
        raise DataError(cfg.data, "anchor_weight > 0 needs records with task 'existence'",
                        field="task")
    return items


def whitespace_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokens that decode to whitespace only (e.g. the space a chat template puts
    between "ASSISTANT:" and the answer)."""
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == ""]


def first_answer_logprobs(model: Any, batch: dict, skip_ids: Any = None) -> Any:
    """(b, V) log-distribution of each row's first answer token: the first label that is not
    in ``skip_ids`` (whitespace tokens decide nothing)."""
    import torch

    labels = batch["labels"]
    counted = labels != -100
    if skip_ids is not None and len(skip_ids):
        counted &= ~torch.isin(labels, torch.as_tensor(skip_ids, device=labels.device))
    if not counted.any(dim=1).all():
        raise ValueError("a row has no answer token outside skip_ids")
    first = counted.float().argmax(dim=1)
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    rows = torch.arange(labels.shape[0], device=labels.device)
    return torch.log_softmax(out.logits[rows, first - 1].float(), dim=-1)


def anchor_kl(model: Any, batch: dict, ref_logprobs: Any, skip_ids: Any = None) -> Any:
    """Mean over rows of KL(pi_ref || pi_theta) of the first answer token (``anchor_weight``)."""
    logp = first_answer_logprobs(model, batch, skip_ids)
    return (ref_logprobs.exp() * (ref_logprobs - logp)).sum(-1).mean()


@contextlib.contextmanager
def _dropout_off(model: Any, on: bool):
    was = model.training
    model.train(not on)
    try:
        yield
    finally:
        model.train(was)


def _truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a resumed run redoes them)."""
    from visalign.io import atomic_write_text, read_jsonl

    if not path.exists():
        return
    rows = read_jsonl(path, tolerate_partial_last_line=True)
    keep = [r for r in rows if int(r.get("step", 0)) <= step]
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


# ----------------------------------------------------------------------------- trainer


def train_fisao(cfg: FisaoConfig, vlm: Any = None) -> TrainResult:
    """Algorithm 1 of FiSAO on ``cfg.data``; resumable from ``cfg.out/checkpoints``.

    Writes ``OUT/config.yaml``, ``OUT/log.jsonl`` (one line per rollout, module docstring),
    ``OUT/samples.jsonl`` (``log_samples``), ``OUT/checkpoints/step-N`` (``save_every``),
    ``OUT/adapter`` + ``OUT/model`` (merged HF dir) and ``OUT/train_summary.json``
    (``steps``, ``samples``, ``seconds``, ``timings`` {rollout, verifier, ppo},
    ``verifier_share_of_rollout``, ``entities``, ``last``).
    """
    import torch
    from accelerate import Accelerator
    from PIL import Image

    from visalign.models import load_vlm
    from visalign.verifier.reward import adaptive_kl_coef
    from visalign.verifier.scorer import ClipScorer

    if cfg.ppo_epochs < 1 or cfg.rollout_batch < 1:
        raise ValueError("ppo_epochs and rollout_batch must be >= 1")
    minibatch = effective_minibatch(cfg)
    if cfg.kl_target > 0 and (cfg.xi <= 0 or cfg.kl_on == "none" or cfg.kl_horizon <= 0):
        raise ValueError("kl_target > 0 adapts ξ multiplicatively: it needs xi > 0, "
                         "kl_on other than 'none' and kl_horizon > 0")
    if cfg.existence_reward and cfg.reward_level != "token":
        raise ValueError("existence_reward puts token rewards on yes/no answers: it needs "
                         "reward_level=token")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    calib, sent_calib = load_calibrations(cfg)
    entities = load_entities(cfg)
    items = load_prompts(cfg, entities)
    anchor_items = load_anchor_items(cfg) if cfg.anchor_weight > 0 else None
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        save_run_config(cfg, out)
    if vlm is None:
        vlm = load_vlm(cfg.model, dtype=cfg.dtype, device=str(acc.device))
    verifier = cfg.verifier or str(Path(cfg.model) / "verifier")
    # the calibration says how its scores were computed; the rewards must use the same score
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
    acc.register_for_checkpointing(sched)
    base = acc.unwrap_model(model)
    vlm.model = base

    state = {"step": 0, "samples": 0}
    ck = latest_checkpoint(out)
    if ck is not None:
        acc.load_state(str(ck))
        state.update(json.loads((ck / "trainer_state.json").read_text()))
        acc.print(f"[fisao] resumed from {ck} at rollout {state['step']}")
    if acc.is_main_process:
        for name in ("log.jsonl", "samples.jsonl"):
            _truncate_log(out / name, state["step"])
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
        return _adapters_off(base)

    while state["step"] < n_rollouts:
        k = state["step"]
        g_ids = list(range(k * per_rollout + rank, (k + 1) * per_rollout, world))
        mine = [items[sample_index(len(items), cfg.seed, g, perm_cache)] for g in g_ids]
        images = [Image.open(it["image"]).convert("RGB") for it in mine]
        prompts = [it["prompt"] for it in mine]
        t0 = time.time()
        ro = vlm.rollout(images, prompts, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                         temperature=cfg.temperature, top_p=cfg.top_p,
                         seeds=[rollout_seed(cfg.seed, g) for g in g_ids])
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
        with _dropout_off(model, True):
            old = batch_logprobs(model, batch, minibatch)
            with ref_ctx() as ref_m:
                ref = batch_logprobs(ref_m, batch, minibatch)
        xi = float(state.get("xi", cfg.xi))
        adv, kl = shaped_rewards(sc.rewards.to(old.device), sc.is_entity.to(old.device), mask,
                                 old, ref, cfg, xi=xi)
        n_tok = float(mask.sum())
        local = torch.tensor([n_tok, float(len(mine)), float(sc.n_entities), float(sc.n_pos),
                              float(sc.n_neg), sc.reward_sum, float(kl.sum()),
                              float(sum(ro.finished))], dtype=torch.float64, device=acc.device)
        glob = acc.reduce(local, reduction="sum") if world > 1 else local
        n_tok_global = float(glob[0])
        extra_loss = None
        if anchor_items is not None:
            picks = [anchor_items[sample_index(len(anchor_items), cfg.seed + 1, g, anchor_perm)]
                     for g in g_ids]
            a_batch = vlm.encode([Image.open(it["image"]).convert("RGB") for it in picks],
                                 [it["conversation"] for it in picks])
            a_batch = {kk: (v.to(acc.device) if torch.is_tensor(v) else v)
                       for kk, v in a_batch.items()}
            with torch.no_grad(), _dropout_off(model, True), ref_ctx() as ref_m:
                a_ref = first_answer_logprobs(ref_m, a_batch, ws_ids)

            def extra_loss():
                return cfg.anchor_weight * anchor_kl(model, a_batch, a_ref, ws_ids)
        ep = {"loss": 0.0, "clipped": 0.0, "approx_kl": 0.0, "grad_norm": 0.0, "extra": 0.0}
        lr = sched.get_last_lr()[0]
        with _dropout_off(model, cfg.disable_dropout):
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
        if log:
            log.write({"step": state["step"], **stats, "elapsed": round(time.time() - t_start, 2)})
        if samples_log:
            for it, text, det in list(zip(mine, ro.texts, sc.details))[: cfg.log_samples]:
                samples_log.write({"step": state["step"], "id": it["id"], "response": text,
                                   "mentions": det})
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < n_rollouts:
            from visalign.training import _checkpoint
            _checkpoint(acc, out, state)
    if bar:
        bar.close()
    if log:
        log.close()
    if samples_log:
        samples_log.close()
    acc.wait_for_everyone()
    model_dir = out / "model"
    if acc.is_main_process:
        model_dir = save_model(vlm, cfg, out)
        seconds = time.time() - t_start
        gen_and_verify = timings["rollout"] + timings["verifier"]
        write_json(out / "train_summary.json", {
            "name": "fisao", "steps": state["step"], "samples": state["samples"],
            "processes": world, "seconds": round(seconds, 3),
            "samples_per_second": round(state["samples"] / max(seconds, 1e-9), 3),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            # Share of the rollout phase (sampling + scoring) spent in the verifier.
            "verifier_share_of_rollout": round(timings["verifier"] / max(gen_and_verify, 1e-9),
                                               4),
            "entities": entities.stats(),
            "calibration": {"mu_gt": calib.mu_gt, "mu_hal": calib.mu_hal,
                            "lam": calib.lam if cfg.lam is None else cfg.lam},
            "last": stats})
    acc.wait_for_everyone()
    return TrainResult(out, model_dir, state["step"], time.time() - t_start, state["samples"],
                       stats)


@contextlib.contextmanager
def _adapters_off(model: Any):
    """π_ref: the peft model with its adapters disabled."""
    with model.disable_adapter():
        yield model
