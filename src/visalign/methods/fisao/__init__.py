"""FiSAO: token-level rewards from the model's own vision encoder, optimised with clipped PPO.

Fine-Grained Verifiers (FiSAO) paper, Sec. 3.3-3.4 and Algorithm 1. For each batch of (image, prompt) from
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
  broken words (docs/research/fisao-on-the-micro-world.md);
- with ``trainable`` other than ``lora`` the reference policy is a frozen copy of the initial
  model (twice the weights in memory; refused under FSDP/ZeRO-3, which would not shard the
  copy); with LoRA it is the same model with adapters disabled.

Off by default and not the paper's method: ``existence_reward`` (an extension that also rewards
yes/no existence answers with the verifier's score of the asked object) and the diagnostics
``reward_source=annotations``, ``reward_branches`` and ``reward_shuffle``
(docs/research/fisao-pope-cost.md).

Every rollout writes one line to ``OUT/log.jsonl`` (global over processes): ``mean_reward`` (Eq. 8
reward, before KL, over the rewarded entity mentions), ``pos_share`` / ``neg_share`` (share of
mentions with a positive / negative reward), ``kl`` (mean per-token KL estimate π_old‖π_ref over
response tokens), ``clip_fraction`` (share of response tokens whose clipped term is the smaller
one, averaged over PPO epochs), ``loss``, ``grad_norm``, ``approx_kl`` (π_old‖π_θ after the
update), ``entities_per_response``, ``response_tokens``, ``finished``, ``lr``, ``tokens_per_s``
(prompt and response tokens of the rollout, all processes, per second of the whole iteration),
``peak_gpu_mem_gb`` (on CUDA), ``xi`` (the KL weight used
for this rollout; it moves only with ``kl_target`` > 0, the adaptive controller of Ziegler et
al. that TRL also offers, which is not in the paper and is saved in checkpoints).
"""

from visalign.methods.fisao.config import FisaoConfig, effective_minibatch
from visalign.methods.fisao.ppo import (anchor_kl, batch_logprobs, first_answer_logprobs,
                                            ppo_epoch, slice_batch, whitespace_token_ids)
from visalign.methods.fisao.prompts import (asked_object, load_anchor_items, load_prompts,
                                                rollout_seed, sample_index, yes_no_span)
from visalign.methods.fisao.rollout import (RolloutScores, keep_branches, load_calibrations,
                                                load_entities, oracle_rewards, score_rollout,
                                                shaped_rewards, shuffled_rewards)
from visalign.methods.fisao.train import train_fisao

__all__ = ["FisaoConfig", "RolloutScores", "anchor_kl", "asked_object", "batch_logprobs",
           "effective_minibatch", "first_answer_logprobs", "keep_branches", "load_anchor_items",
           "load_calibrations", "load_entities", "load_prompts", "oracle_rewards", "ppo_epoch",
           "rollout_seed", "sample_index", "score_rollout", "shaped_rewards", "shuffled_rewards",
           "slice_batch", "train_fisao", "whitespace_token_ids", "yes_no_span"]
