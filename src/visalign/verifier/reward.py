"""FiSAO's fine-grained reward (Eq. 8, App. A.1.5) and the sentence-level ablation.

For an entity token y_t ∈ C with verifier score S = S(y_t, v) (clamped to [S_min, S_max]):

* S < μ_hal − λ  ->  R = (S − (μ_hal − λ)) / ((μ_hal − λ) − S_min)  ∈ [−1, 0)
* S > μ_gt + λ   ->  R = (S − (μ_gt + λ)) / (S_max − (μ_gt + λ))   ∈ (0, 1]
* otherwise (and for every non-entity token)  ->  R = 0.

Departures from the paper, on purpose:

* App. A.1.5 prints the hallucinated-branch denominator as (μ_gt − λ) − S_min. With it S_min
  would not map to −1 (the paper's stated range is [−1, 1]) and the branch would not be
  continuous at its own threshold's scale; we read it as a typo for (μ_hal − λ) − S_min, which
  maps S_min -> −1 and the threshold μ_hal − λ -> 0.
* S is clamped into [S_min, S_max] first, so scores outside the calibration range (unseen
  extremes) still give rewards in [−1, 1].
* When the two thresholds overlap (μ_hal − λ > μ_gt + λ, a verifier that does not separate
  the two populations) the negative branch is tested first, as Eq. 8 lists it first.
* The −ξ·KL term of Eq. 8 is not part of :func:`token_rewards`: the trainer adds it with
  :func:`add_kl_penalty`, either on every response token (the usual RLHF reward) or, as Eq. 8
  literally has it, only on the tokens whose score branch fired (``entity_only=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from visalign.io import DataError, atomic_write_text, read_json


@dataclass
class Calibration:
    """Baseline scores of the verifier (Eq. 7) and the range used by the normalisation.

    Fields: ``mu_gt`` / ``mu_hal`` mean score of correct / hallucinated entity tokens (Eq. 7);
    ``s_min`` / ``s_max`` the score range mapped to −1 / +1; ``n_gt`` / ``n_hal`` how many
    tokens the means came from; ``lam`` the margin λ; ``template`` the CLIP prompt template the
    scores were computed with; ``scale`` the factor on the cosine (CLIP's logit scale, or 1);
    ``level`` ``"token"`` or ``"sentence"``; ``auroc`` how well the score separates the two
    populations (None when unknown); ``pooling`` the scorer's ``"image"`` (the paper) or
    ``"patch"`` score and ``patch_labels`` the latter's label set
    (:class:`~visalign.verifier.scorer.ClipScorer`).
    """

    mu_gt: float
    mu_hal: float
    s_min: float
    s_max: float
    n_gt: int = 0
    n_hal: int = 0
    lam: float = 0.0
    template: str = "a photo of a {}."
    scale: float = 1.0
    level: str = "token"
    auroc: float | None = None
    pooling: str = "image"
    patch_labels: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not self.s_min <= self.s_max:
            raise ValueError(f"Calibration: s_min {self.s_min} > s_max {self.s_max}")
        if self.lam < 0:
            raise ValueError(f"Calibration: lam must be >= 0, got {self.lam}")

    @property
    def pos_threshold(self) -> float:
        return self.mu_gt + self.lam

    @property
    def neg_threshold(self) -> float:
        return self.mu_hal - self.lam

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, path: str | os.PathLike | None = None) -> "Calibration":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DataError(path, f"unknown calibration field(s) {unknown}", field=unknown[0])
        for req in ("mu_gt", "mu_hal", "s_min", "s_max"):
            if req not in d:
                raise DataError(path, "missing calibration field", field=req)
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise DataError(path, str(e)) from None

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write as JSON (atomically)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Calibration":
        d = read_json(path)
        if not isinstance(d, dict):
            raise DataError(path, "expected a JSON object")
        return cls.from_dict(d, path)


def normalized_reward(scores: Tensor, calib: Calibration, lam: float | None = None) -> Tensor:
    """The three branches of Eq. 8 (without KL) applied elementwise; any shape -> same shape.

    Values lie in [−1, 1]; see the module docstring for the normalisation (App. A.1.5).
    """
    lam = calib.lam if lam is None else float(lam)
    s = scores.to(torch.float32).clamp(calib.s_min, calib.s_max)
    pos_thr = calib.mu_gt + lam
    neg_thr = calib.mu_hal - lam
    # The branch conditions guarantee positive denominators whenever they fire (S > pos_thr
    # implies S_max > pos_thr after clamping; likewise for the negative side).
    pos_den = max(calib.s_max - pos_thr, 1e-12)
    neg_den = max(neg_thr - calib.s_min, 1e-12)
    pos = (s - pos_thr) / pos_den                                  # App. A.1.5, correct objects
    neg = (s - neg_thr) / neg_den                                  # App. A.1.5 (typo fixed)
    out = torch.where(s < neg_thr, neg, torch.where(s > pos_thr, pos, torch.zeros_like(s)))
    return out.clamp(-1.0, 1.0)


def token_rewards(scores: Tensor, is_entity: Tensor, calib: Calibration,
                  lam: float | None = None) -> Tensor:
    """Eq. 8 without the KL term: normalised score on entity tokens, 0 elsewhere.

    Args:
        scores: (b, T) verifier score S(y_t, v) on each token (anything where not an entity).
        is_entity: (b, T) bool, the tokens that carry an entity (y_t ∈ C).
        calib: baseline scores (Eq. 7) and range.
        lam: margin λ (default ``calib.lam``).

    Returns:
        (b, T) float32 rewards in [−1, 1].
    """
    r = normalized_reward(scores, calib, lam)
    return torch.where(is_entity.bool(), r, torch.zeros_like(r))


def sentence_rewards(scores: Tensor, calib: Calibration, lam: float | None = None,
                     mask: Tensor | None = None) -> Tensor:
    """Sentence-level ablation: one normalised reward per response, on its last valid token.

    Args:
        scores: (b,) sentence-level verifier score of each response (CLIP score of the text).
        calib: a sentence-level :class:`Calibration` (μ's of the sentence scores of responses
            with / without hallucinated objects); the same normalisation as the tokens'.
        lam: margin λ (default ``calib.lam``).
        mask: (b, T) response tokens. Given -> (b, T) with the reward on each response's last
            valid token (none for a response without valid tokens); None -> the (b,) rewards.

    Returns:
        (b, T) or (b,) float32 in [−1, 1].
    """
    r = normalized_reward(scores, calib, lam)                        # (b,)
    if mask is None:
        return r
    m = mask.bool()
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values   # (b,)
    out = torch.zeros(m.shape, dtype=r.dtype, device=m.device)
    has = last >= 0
    out[has.nonzero(as_tuple=True)[0], last[has]] = r.to(m.device)[has]
    return out


def add_kl_penalty(rewards: Tensor, kl: Tensor, xi: float, mask: Tensor | None = None,
                   entity_only: bool = False, active: Tensor | None = None) -> Tensor:
    """R_t − ξ·KL_t (the KL term of Eq. 8).

    Args:
        rewards: (b, T) token rewards (e.g. :func:`token_rewards`).
        kl: (b, T) per-token KL (``losses.kl_penalty`` or ``losses.full_kl_from_logits``).
        xi: ξ.
        mask: (b, T) response tokens; the penalty is applied only there (default: everywhere).
        entity_only: apply the penalty only on ``active`` tokens — Eq. 8 literally, where the
            −ξ·KL appears only in the two branches that fired; ``active`` defaults to
            ``rewards != 0``. Otherwise every (masked) token is penalised (usual RLHF reward).

    Returns:
        (b, T).
    """
    where = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    if entity_only:
        where = where & (rewards != 0 if active is None else active.bool())
    return rewards - xi * kl.to(rewards.dtype) * where.to(rewards.dtype)


def response_entity_scores(text: str, offsets: Sequence[tuple[int, int] | None], image_emb,
                           entities, scorer, *, word: str = "canonical",
                           position: str = "last") -> tuple[Tensor, Tensor, list]:
    """Glue for one response: find entities, score them against the image, place on tokens.

    Args:
        text: the decoded response; ``offsets`` its T tokens' char offsets
            (:func:`visalign.verifier.token_map.decode_with_offsets`).
        image_emb: (d,) image embedding from ``scorer.image_embeddings``.
        entities: an :class:`~visalign.verifier.entities.EntitySet`.
        scorer: a :class:`~visalign.verifier.scorer.ClipScorer`.
        word: score the ``"canonical"`` entity name (default: stable, cached, e.g. "bicycle"
            for "bikes") or the ``"surface"`` form as written.
        position: which sub-token carries the score (``token_map.map_spans_to_tokens``).

    Returns:
        ``(scores (T,), is_entity (T,) bool, mentions)``; scores are 0 off entities. When two
        entities land on one token, the lower score is kept (the more cautious reward).
    """
    from visalign.verifier.token_map import map_spans_to_tokens

    T = len(offsets)
    scores = torch.zeros(T)
    is_entity = torch.zeros(T, dtype=torch.bool)
    mentions = entities.find(text)
    if not mentions:
        return scores, is_entity, mentions
    words = [m.canonical if word == "canonical" else m.surface.lower() for m in mentions]
    s = scorer.score(words, image_emb).detach().float().cpu()          # (n,)
    tok = map_spans_to_tokens(offsets, [(m.start, m.end) for m in mentions], position)
    for j, idx in enumerate(tok):
        for t in idx:
            scores[t] = torch.minimum(scores[t], s[j]) if is_entity[t] else s[j]
            is_entity[t] = True
    return scores, is_entity, mentions


def adaptive_kl_coef(xi: float, kl: float, target: float, n_samples: int,
                     horizon: int) -> float:
    """The adaptive KL controller of Ziegler et al. (2019), as TRL's ``AdaptiveKLController``:
    ``ξ ← ξ · (1 + clip(kl / target − 1, −0.2, 0.2) · n_samples / horizon)``.

    Not in the FiSAO paper. ``kl`` is the measured per-token KL of the last rollout,
    ``n_samples`` the rollout's size, ``horizon`` how many samples a full ±20 % correction takes.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive_kl_coef: target and horizon must be > 0, got {target}, "
                         f"{horizon}")
    err = min(max(kl / target - 1.0, -0.2), 0.2)
    return xi * (1.0 + err * n_samples / horizon)

