"""FiSAO's policy update: clipped PPO over one rollout (Eq. 9 with Eq. 10's ratio), the log-probs
it needs, and the optional yes/no anchor (an extension, not in the paper)."""

from __future__ import annotations

import contextlib
from typing import Any


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

    Under DeepSpeed the engine steps the optimiser inside ``backward`` at its accumulation
    boundary and divides each loss by its accumulation steps: the accelerator must have been
    made with ``gradient_accumulation_steps`` = the backward passes of one epoch (slices, plus
    one for ``extra_loss``), each pass runs under ``accelerator.accumulate`` and its loss is
    multiplied back, so the engine steps exactly once per epoch with the same gradient.

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
    starts = list(range(0, b, mb))
    ds = deepspeed_engine(accelerator)
    n_micro = len(starts) + (extra_loss is not None)
    if ds and accelerator.gradient_accumulation_steps != n_micro:
        raise ValueError(f"DeepSpeed accumulates {accelerator.gradient_accumulation_steps} "
                         f"backward passes per step but a PPO epoch makes {n_micro}")

    def backward(loss: Any) -> None:
        if ds:
            accelerator.backward(loss * n_micro)   # the engine divides by n_micro
        elif accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()

    if extra_loss is not None:
        ctx = (accelerator.accumulate(model) if ds else accelerator.no_sync(model)
               if accelerator is not None and accelerator.num_processes > 1
               else contextlib.nullcontext())
        with ctx:
            extra = extra_loss()
            backward(extra)
        sums["extra"] = float(extra.detach())
    for j, s in enumerate(starts):
        e = min(s + mb, b)
        last = j == len(starts) - 1
        ctx = (accelerator.accumulate(model) if ds else accelerator.no_sync(model)
               if accelerator is not None and not last else contextlib.nullcontext())
        with ctx:
            logprobs = sequence_logprobs(model, slice_batch(batch, s, e))
            m = mask[s:e]
            loss, st = clipped_surrogate_loss(logprobs, old_logprobs[s:e], advantages[s:e], m,
                                              clip_eps=clip_eps, reduction="sum")
            loss = loss * world_size / max(float(n_tokens_global), 1.0)
            backward(loss)
        n_local = float(m.sum())
        sums["loss"] += float(loss.detach()) / world_size
        sums["clipped"] += float(st["clip_fraction"]) * n_local
        sums["approx_kl"] += float(st["approx_kl"]) * n_local
    if max_grad_norm or ds:   # DeepSpeed clipped inside its step; this reads its norm
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


def deepspeed_engine(accelerator: Any) -> bool:
    """Whether ``accelerator`` runs a DeepSpeed engine (it steps inside ``backward``)."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


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
def dropout_off(model: Any, on: bool, keep_train_mode: bool = False):
    """No dropout while ``on``: PPO forwards with r_t = 1 exactly on the first epoch.

    By eval mode; or, with ``keep_train_mode`` (gradient checkpointing, which transformers
    applies only in train mode), by setting every dropout probability to 0 for the duration.
    """
    if on and keep_train_mode:
        import torch

        saved = []
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                saved.append((m, "p", m.p))
                m.p = 0.0
            if isinstance(getattr(m, "attention_dropout", None), float):
                saved.append((m, "attention_dropout", m.attention_dropout))
                m.attention_dropout = 0.0
        was = model.training
        model.train(True)
        try:
            yield
        finally:
            model.train(was)
            for m, name, v in saved:
                setattr(m, name, v)
        return
    was = model.training
    model.train(not on)
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def adapters_off(model: Any):
    """π_ref: the peft model with its adapters disabled."""
    with model.disable_adapter():
        yield model
