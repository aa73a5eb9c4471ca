"""FiSAO's settings (:class:`FisaoConfig`) and their checks."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from visalign.config import field
from visalign.training import TrainConfig


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
    allow_verifier_mismatch: bool = field(
        False, help="train with a verifier whose vision model differs from the policy's vision "
        "tower (configs or weights); off: such a verifier is an error, since FiSAO scores tokens "
        "with the policy's own encoder")
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
        "policy break words (docs/research/fisao-on-the-micro-world.md)")
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
                     "POPE (docs/research/fisao-pope-cost.md). Not the method")
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
        "micro-world (docs/research/fisao-pope-cost.md); this holds the yes/no answers "
        "where the reference had them while the descriptions move. 0 = off")
    existence_reward: bool = field(
        False, help="extension, not in the paper: also roll out the yes/no existence prompts "
        "of the instruction data (task 'existence', added to `tasks`) and put on the answer's "
        "yes/no word the Eq. 8 reward of the object asked about, signed by the answer (+r for "
        "'Yes', -r for 'No'). The paper's rewards sit on entity words, so a one-word answer "
        "gets none, and description rewards shift yes/no answers unchecked "
        "(docs/research/fisao-pope-cost.md)")


# TrainConfig fields FiSAO has no use for, with what to set instead (a silently ignored
# override would let a user believe a run used a setting it did not).
UNUSED_FIELDS = {"batch_size": "rollout_batch (prompts per rollout, per process)",
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
    for name, instead in UNUSED_FIELDS.items():
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
