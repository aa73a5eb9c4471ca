"""FiSAO's rewards for a rollout: entity mentions scored by the verifier and turned into token
rewards (Eq. 8 with the App. A.1.5 normalisation), the KL term and the advantage; plus the
diagnostics that replace or scramble the rewards."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from visalign.io import DataError
from visalign.methods.fisao.config import FisaoConfig
from visalign.methods.fisao.prompts import yes_no_span


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
