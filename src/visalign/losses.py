"""Pure loss functions on tensors (no models, no state), shared by every trainer.

Shapes: ``b`` = batch, ``T`` = response length, ``V`` = vocabulary. ``mask`` (b, T) is 1 on the
response tokens that count and 0 on prompt/padding; it may be bool or 0/1 float.

* :func:`clipped_surrogate_loss` — FiSAO Eq. 9-10 (clipped PPO on token-level rewards).
* :func:`kl_penalty`, :func:`full_kl_from_logits` — per-token KL to the reference (the −ξ·KL of
  Eq. 8; nSFT's optional KL to the frozen model).
* :func:`reward_to_go` — undiscounted (γ = 1, Sec. 3.3.1) return of token rewards.
* :func:`dpo_loss` — sigmoid DPO for the GT-DPO / SeVa / SIMA / POVID baselines.
* :func:`sft_loss` — shifted next-token cross-entropy (what HF's built-in loss computes, kept
  here so losses can be combined and tested without a model).

Where this departs from the paper: Eq. 10 writes the ratio against ``π_ref`` and calls ``π_ref``
"the policy before the update"; as in PPO (Schulman et al., 2017), the ratio here is against the
policy that *sampled* the response (``old_logprobs``), which is ``π_ref`` only on the first PPO
epoch. The frozen reference model enters through the KL term instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is set. x, mask: same shape; returns a scalar or reduces ``dim``."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over masked entries (over all, or along ``dim``); 0 where nothing is masked.

    x, mask: same shape, e.g. (b, T). ``dim=None`` -> scalar; ``dim=1`` -> (b,).
    """
    m = mask.to(x.dtype)
    num = (x * m).sum() if dim is None else (x * m).sum(dim=dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(x.dtype).tiny),
                       torch.zeros_like(num))


def clipped_surrogate_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                           mask: Tensor, clip_eps: float = 0.2,
                           reduction: Literal["token", "sequence", "sum"] = "token"
                           ) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO surrogate, FiSAO Eq. 9-10, as a loss to minimise.

    r_t = exp(logprobs − old_logprobs) (Eq. 10, against the sampling policy; module docstring)
    and L = −mean_t min(r_t·A_t, clip(r_t, 1 − ε, 1 + ε)·A_t) (Eq. 9, negated).

    Args:
        logprobs: (b, T) log π_θ(y_t | ...) of the sampled tokens, with grad.
        old_logprobs: (b, T) log-probs under the policy that sampled them (no grad needed).
        advantages: (b, T) per-token advantages (FiSAO: the token rewards of Eq. 8 or their
            reward-to-go).
        mask: (b, T) response tokens that count.
        clip_eps: ε.
        reduction: ``"token"`` (default) = mean over all valid tokens of the batch, so every
            token weighs the same whatever the length of its response; ``"sequence"`` = mean per
            response, then mean over responses that have at least one valid token; ``"sum"`` =
            sum over valid tokens (the caller divides by a global token count, e.g. across
            processes and gradient-accumulation steps, so that the split does not matter).

    Returns:
        ``(loss, stats)``: scalar loss; stats (detached scalars) ``clip_fraction`` (share of valid
        tokens where the clipped term is the smaller one, i.e. the gradient is cut),
        ``approx_kl`` (mean(old − new), the k1 estimate of KL(π_old ‖ π_θ)) and ``ratio_mean``.
    """
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)                                            # Eq. 10
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    objective = torch.minimum(unclipped, clipped)                           # Eq. 9
    per_token_loss = -objective
    if reduction == "token":
        loss = masked_mean(per_token_loss, mask)
    elif reduction == "sequence":
        per_seq = masked_mean(per_token_loss, mask, dim=1)
        has_tokens = mask.to(per_seq.dtype).sum(dim=1) > 0
        loss = masked_mean(per_seq, has_tokens)
    elif reduction == "sum":
        loss = masked_sum(per_token_loss, mask)
    else:
        raise ValueError(f"reduction must be 'token', 'sequence' or 'sum', got {reduction!r}")
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped < unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(-log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor,
               kind: Literal["k1", "k2", "k3"] = "k1") -> Tensor:
    """Per-token KL estimators on tokens sampled from π_θ (Schulman, "Approximating KL").

    With log r = log π_θ(y_t) − log π_ref(y_t), all three estimate the *forward-from-policy*
    KL(π_θ ‖ π_ref) at each position, given y_t ~ π_θ — the direction RLHF codebases (Ziegler et
    al. 2019; TRL, torchtune, OpenRLHF) penalise, and the β(log π_θ − log π_ref) of the paper's
    Sec. 2:

    * ``k1`` = log r — unbiased, high variance, can be negative per token;
    * ``k2`` = ½ (log r)² — biased (exact to second order), non-negative, low variance;
    * ``k3`` = (π_ref/π_θ) − 1 − log(π_ref/π_θ) = exp(−log r) − 1 + log r — unbiased and
      non-negative.

    FiSAO's Eq. 8 writes D_KL[π_ref ‖ π_θ]; the exact value of that direction needs the full
    distributions: use :func:`full_kl_from_logits` when logits are at hand.

    Args:
        logprobs, ref_logprobs: (b, T) log-probs of the sampled tokens under π_θ and π_ref.

    Returns:
        (b, T) per-token estimates (mask them yourself).
    """
    log_r = logprobs - ref_logprobs
    if kind == "k1":
        return log_r
    if kind == "k2":
        return 0.5 * log_r.square()
    if kind == "k3":
        return torch.expm1(-log_r) + log_r
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def full_kl_from_logits(logits: Tensor, ref_logits: Tensor, mask: Tensor | None = None,
                        direction: Literal["ref_theta", "theta_ref"] = "ref_theta",
                        chunk_size: int = 256) -> Tensor:
    """Exact per-position KL over the vocabulary.

    ``direction="ref_theta"`` (default, the paper's D_KL[π_ref ‖ π_θ] of Eq. 8):
    Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)); ``"theta_ref"`` swaps the roles. Computed in chunks
    of ``chunk_size`` positions in float32 so a (b, T, V) pair of log-softmaxes is never
    materialised at once.

    Args:
        logits, ref_logits: (b, T, V) (already aligned to the same positions).
        mask: optional (b, T); positions outside it get 0.

    Returns:
        (b, T) KL ≥ 0 (gradient flows to whichever logits require grad).
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits "
                         f"{tuple(ref_logits.shape)} differ in shape")
    if direction not in ("ref_theta", "theta_ref"):
        raise ValueError(f"direction must be 'ref_theta' or 'theta_ref', got {direction!r}")
    pieces = []
    for s in range(0, logits.shape[1], chunk_size):
        lp = F.log_softmax(logits[:, s:s + chunk_size].float(), dim=-1)
        lq = F.log_softmax(ref_logits[:, s:s + chunk_size].float(), dim=-1)
        if direction == "theta_ref":
            lp, lq = lq, lp
        # Σ q (log q − log p), q = the first argument of the KL.
        pieces.append((lq.exp() * (lq - lp)).sum(-1))
    kl = torch.cat(pieces, dim=1) if pieces else logits.new_zeros(logits.shape[:2])
    if mask is not None:
        kl = kl * mask.to(kl.dtype)
    return kl


def reward_to_go(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Return G_t = Σ_{k ≥ t, k valid} γ^(#valid steps from t to k) r_k, per token.

    FiSAO's MDP is undiscounted (γ = 1, Sec. 3.3.1). Masked positions (prompt, padding — also
    padding in the middle, as left padding leaves) contribute nothing, are skipped by the
    discounting, and get 0.

    Args:
        rewards: (b, T) per-token rewards.
        mask: (b, T).

    Returns:
        (b, T).
    """
    m = mask.to(rewards.dtype)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = m[:, t] * (rewards[:, t] + gamma * running) + (1 - m[:, t]) * running
        out[:, t] = running * m[:, t]
    return out


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023), with conservative-DPO label smoothing.

    z = β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))];
    loss = mean(−(1 − s)·log σ(z) − s·log σ(−z)), s = ``label_smoothing``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (b,)
            summed sequence log-probs.

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``: scalar; (b,) β·(log π − log π_ref) of the
        chosen and rejected responses (detached, for logging).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    z = beta * (chosen_logratios - rejected_logratios)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return (losses.mean(), (beta * chosen_logratios).detach(),
            (beta * rejected_logratios).detach())


def sft_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100,
             normaliser: float | None = None) -> Tensor:
    """Next-token cross-entropy: position t predicts ``labels[:, t + 1]``; mean over the labels
    that are not ``ignore_index`` (token mean, as HF's causal-LM loss), or, with
    ``normaliser``, their sum divided by that fixed number.

    A batch mean weighs a token by 1 / (label tokens in its batch). With random batches that is
    about the same for every batch; with length-grouped batches a batch of one-word answers and
    a batch of long descriptions get the same total weight, so the long answers count for
    much less. A fixed normaliser (the label tokens of an average random batch) keeps every
    token's weight what random batching gives it in expectation.

    Args:
        logits: (b, T, V).
        labels: (b, T), ``ignore_index`` on prompt/padding/image tokens.
        normaliser: None (batch mean) or a positive constant.

    Returns:
        scalar (0 when no label counts).
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if not (shift_labels != ignore_index).any():
        return shift_logits.sum() * 0.0
    if normaliser is None:
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)
    if not normaliser > 0:
        raise ValueError(f"normaliser must be > 0, got {normaliser}")
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index,
                           reduction="sum") / normaliser


def repetition_unlikelihood_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100,
                                 normaliser: float | None = None) -> Tensor:
    """Token-level unlikelihood against repetition (Welleck et al., 2019, Eq. 4):
    ``-sum_c log(1 - p(c | y_<t))`` over the candidates ``c`` = the answer tokens already
    written *in the same answer* before ``t``, minus the target ``y_t``.

    An answer is a contiguous run of labels that are not ``ignore_index``, so in a multi-turn
    conversation one turn's "Yes" is not a candidate in the next turn. Position t predicts
    ``labels[:, t + 1]`` as in :func:`sft_loss`; the loss is averaged like it (mean over the
    counted targets, or their sum over ``normaliser``).

    Memory: a (b, T, V) candidate mask, which is fine for the micro-world's 1,000-token
    vocabulary; for a 32k+ vocabulary restrict the batch or the sequence length.

    Args:
        logits: (b, T, V).
        labels: (b, T), ``ignore_index`` on prompt/padding/image tokens.
        normaliser: None (mean over counted targets) or a positive constant.

    Returns:
        scalar (0 when no label counts).
    """
    y = labels[:, 1:]
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1)          # (b, T-1, V)
    b, n, v = lp.shape
    valid = y != ignore_index
    if not valid.any():
        return lp.sum() * 0.0
    # answer segments: a new one starts at every valid label whose predecessor is not valid
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)
    seg = torch.cumsum((valid & ~prev_valid).long(), dim=1)
    pos = torch.arange(n, device=y.device)
    # pair (j, s): target s is an earlier token of target j's answer
    earlier = (pos[None, :, None] > pos[None, None, :]) & valid[:, None, :] & valid[:, :, None]
    earlier = earlier & (seg[:, :, None] == seg[:, None, :])
    idx = torch.where(earlier, y[:, None, :].expand(b, n, n), torch.full_like(y[:, None, :], v)
                      .expand(b, n, n))
    cand = torch.zeros(b, n, v + 1, device=y.device, dtype=torch.bool)
    cand.scatter_(2, idx, True)
    cand = cand[..., :v]
    cand.scatter_(2, y.clamp(min=0).unsqueeze(-1), False)      # the target itself is not one
    cand &= valid.unsqueeze(-1)
    # log(1 - p), stable for p near 1
    one_minus = torch.log1p(-lp.exp().clamp(max=1 - 1e-6))
    total = -(one_minus * cand).sum()
    if normaliser is None:
        return total / valid.sum()
    if not normaliser > 0:
        raise ValueError(f"normaliser must be > 0, got {normaliser}")
    return total / normaliser
