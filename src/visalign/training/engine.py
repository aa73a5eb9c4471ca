"""The distributed engine a run is launched under, and the ``Accelerator`` each trainer uses.

``accelerate launch --config_file configs/accelerate/<engine>.yaml`` picks the engine: one
process, DDP, FSDP (version 2, ``fully_shard``) or DeepSpeed ZeRO-2/3. :func:`make_accelerator`
builds the trainer's ``Accelerator`` for it and fills in what accelerate cannot know itself:

- DeepSpeed's engine steps the optimiser inside ``backward`` at its own accumulation boundary,
  so its ``gradient_accumulation_steps``, ``train_micro_batch_size_per_gpu`` and
  ``gradient_clipping`` are set from the trainer's settings (a YAML's ``gradient_accumulation_steps:
  1`` would otherwise silently win over ``grad_accum``), and ZeRO-3 is told to gather full weights
  on save;
- without CUDA (the 2-process CPU tests), accelerate 1.16 maps no distributed backend to the CPU
  device: with ``cpu=True`` it drops the DeepSpeed plugin (``MULTI_CPU``), and with ``cpu=False``
  it lets DeepSpeed start its process group but records no backend, so every process reports
  ``process_index`` 0 of 1. Asking for ``gloo`` explicitly (``InitProcessGroupKwargs``) gives
  DeepSpeed its ranks. FSDP is attached by accelerate only to accelerator devices; on CPU the
  plugin accelerate would have built is attached here, so the CPU runs go through the same
  ``fully_shard`` preparation as GPU runs;
- each trainer gets a fresh DeepSpeed/FSDP plugin (accelerate keeps one process-wide state, and
  a plugin filled in by one trainer's ``prepare`` must not leak into the next).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from visalign.config import ConfigError

ENGINES = ("single", "ddp", "fsdp", "deepspeed")


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launched_engine() -> str:
    """The engine ``accelerate launch`` set up for this process: single, ddp, fsdp, deepspeed."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "ddp"
    return "single"


def zero_stage() -> int:
    """The DeepSpeed ZeRO stage of this launch (0 when DeepSpeed is not used)."""
    if launched_engine() != "deepspeed":
        return 0
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") or 2)


def is_sharded() -> bool:
    """Whether parameters are sharded across processes (FSDP, ZeRO-3): a process then never
    holds the whole model, and saving, generation and reference copies must gather it."""
    return launched_engine() == "fsdp" or zero_stage() == 3


def check_launch() -> None:
    """Refuse an accelerate config that does not fit this machine, with one line saying which
    setting to change (accelerate itself fails later with a device or NCCL traceback)."""
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    cpu = _flag("ACCELERATE_USE_CPU")
    if torch.cuda.is_available() and not cpu and local > torch.cuda.device_count():
        raise ConfigError(
            f"accelerate config: num_processes starts {local} processes on this machine but it "
            f"has {torch.cuda.device_count()} GPU(s): set num_processes: "
            f"{torch.cuda.device_count()} (or --num_processes) or use_cpu: true")
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    multi = launched_engine() != "single"
    if mp in ("bf16", "fp16") and not torch.cuda.is_available() and multi:
        raise ConfigError(
            f"accelerate config: mixed_precision: {mp} with {launched_engine()} is a GPU config "
            "and this machine has no CUDA GPU: set mixed_precision: 'no' and use_cpu: true "
            "(configs/accelerate/cpu_2proc.yaml, cpu_2proc_fsdp.yaml and cpu_2proc_zero3.yaml "
            "are the CPU forms)")
    if mp == "bf16" and torch.cuda.is_available() and not cpu and \
            not torch.cuda.is_bf16_supported():
        raise ConfigError("accelerate config: mixed_precision: bf16 but this GPU has no bfloat16 "
                          "support: set mixed_precision: fp16 or 'no'")
    if launched_engine() == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("accelerate config: distributed_type: DEEPSPEED but deepspeed is "
                              "not installed: pip install 'visalign[gpu]' (or deepspeed)") from None


def make_accelerator(*, grad_accum: int = 1, micro_batch: int | None = None,
                     max_grad_norm: float = 0.0, report_to: str = "none",
                     project_dir: str | None = None) -> Any:
    """The ``Accelerator`` of one trainer under the launched engine (module docstring).

    ``grad_accum`` backward passes make one optimiser step; ``micro_batch`` (rows per backward)
    is what DeepSpeed needs when ``prepare`` gets no data loader (FiSAO); ``max_grad_norm`` is
    DeepSpeed's ``gradient_clipping`` (its engine clips inside the step; 0 = off);
    ``report_to`` names accelerate's tracker (``none`` = none), logging under ``project_dir``.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    check_launch()
    engine = launched_engine()
    cuda = torch.cuda.is_available()
    kw: dict[str, Any] = {"gradient_accumulation_steps": grad_accum}
    if report_to != "none":
        kw["log_with"] = report_to
        kw["project_dir"] = project_dir
    if engine in ("single", "ddp"):
        # The path every micro-world result was trained on: unchanged.
        return Accelerator(cpu=not cuda, **kw)
    # A plugin filled in by an earlier trainer of this process must not carry over.
    AcceleratorState._reset_state()
    if engine == "deepspeed":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()
        conf = plugin.deepspeed_config
        conf["gradient_accumulation_steps"] = grad_accum
        conf["gradient_clipping"] = float(max_grad_norm or 0.0)
        if micro_batch:
            conf["train_micro_batch_size_per_gpu"] = int(micro_batch)
        if plugin.zero_stage == 3:
            conf.setdefault("zero_optimization", {})[
                "stage3_gather_16bit_weights_on_model_save"] = True
        handlers = [] if cuda else [InitProcessGroupKwargs(backend="gloo")]
        acc = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers, **kw)
    else:  # fsdp
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        if cuda and not _flag("ACCELERATE_USE_CPU"):
            acc = Accelerator(fsdp_plugin=plugin, **kw)
        else:
            acc = Accelerator(cpu=True, **kw)
            if acc.num_processes > 1:
                # accelerate attaches FSDP only to accelerator devices (module docstring)
                # (on both shared states: each AcceleratorState() built later, e.g. inside
                # save_state, copies the PartialState's distributed_type over its own)
                from accelerate.state import PartialState

                PartialState._shared_state["distributed_type"] = DistributedType.FSDP
                acc.state.distributed_type = DistributedType.FSDP
                acc.state.fsdp_plugin = plugin
    if acc.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
        raise ConfigError(f"accelerate set up {acc.num_processes} process(es) for a launch of "
                          f"{os.environ.get('WORLD_SIZE')}: check the accelerate config's "
                          "distributed_type and use_cpu")
    return acc


@contextlib.contextmanager
def generation_model(acc: Any, model: Any) -> Iterator[Any]:
    """The plain model to call ``generate`` on, with sharded weights gathered once for the whole
    generation batch instead of once per token.

    ZeRO-3: DeepSpeed's ``unwrap_model_for_generation`` (the context TRL wrote and DeepSpeed
    now ships) gathers every parameter and removes the engine's per-layer hooks until it exits.
    FSDP2: every ``fully_shard`` unit is all-gathered once and told not to reshard after its
    forward until the batch is done. Either way a forward then makes no collective call, so
    ranks that generate different lengths never wait on each other (``generate`` is called with
    ``synced_gpus=False`` by :class:`~visalign.models.VLM`). The gathered model takes the full
    weights' memory on every process for the duration (docs/gpu-memory-and-scaling.md).
    Other engines: the unwrapped model, nothing gathered.
    """
    engine = launched_engine()
    if engine == "deepspeed" and zero_stage() == 3:
        from deepspeed.runtime.zero import unwrap_model_for_generation

        with unwrap_model_for_generation(model):
            yield acc.unwrap_model(model)
        return
    if engine == "fsdp" and acc.num_processes > 1:
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        if isinstance(model, FSDPModule):
            # generate runs the vision tower before the root's forward: the root must claim
            # its units first (torch does that lazily, at the root's first forward)
            model._get_fsdp_state()._lazy_init()
        # torch restores a unit's resharding only through private state: saved and put back
        # exactly (the root and the output head are set up differently from the layers)
        saved = []
        for u in units:
            st = u._get_fsdp_state()
            saved.append((st, st._auto_reshard_after_forward,
                          [(g, g.post_forward_mesh_info) for g in st._fsdp_param_groups]))
            u.set_reshard_after_forward(False, recurse=False)
            u.unshard()   # collective: every rank, same order
        try:
            yield acc.unwrap_model(model)
        finally:
            for u in units:
                u.reshard()
            for st, auto, groups in saved:
                st._auto_reshard_after_forward = auto
                for g, info in groups:
                    g.post_forward_mesh_info = info
        return
    yield acc.unwrap_model(model)


@contextlib.contextmanager
def plain_init() -> Iterator[None]:
    """Models built or loaded inside are ordinary, whole models, even while a DeepSpeed ZeRO-3
    plugin is active: transformers would otherwise build them inside ``deepspeed.zero.Init``
    (partitioned across processes, with collective calls that hang a build on one process).
    visalign loads the policy whole and lets ``prepare`` partition it; the verifier and the
    model written at the end are never partitioned."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref
