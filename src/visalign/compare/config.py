"""Settings of the comparison grid (:class:`CompareConfig`) and what each method consumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from visalign.config import field, load_config
from visalign.eval.suite import EvalSettings

METHODS = ("cont-sft", "nsft", "gt-dpo", "seva", "sima", "povid", "fisao")
DPO_METHODS = ("gt-dpo", "seva", "sima", "povid")
# trainer kind of each method (visalign.methods.presets)
METHOD_KIND = {"cont-sft": "sft", "nsft": "sft", "gt-dpo": "dpo", "seva": "dpo", "sima": "dpo",
               "povid": "dpo", "fisao": "fisao"}
# Which alignment records each method consumes. nSFT (and its cont-SFT baseline) train on long
# descriptions plus short answers, as the paper mixes LLaVA detail descriptions with OCRVQA;
# the preference baselines and FiSAO work on detailed-description prompts, as their papers do.
METHOD_TASKS = {"cont-sft": ("detail", "vqa"), "nsft": ("detail", "vqa"),
                "gt-dpo": ("detail",), "seva": ("detail",), "sima": ("detail",),
                "povid": ("detail",), "fisao": ("detail",)}
PACKAGED = "packaged"


@dataclasses.dataclass
class CompareConfig:
    out: str = field("", help="output dir of the comparison")
    world: str = field("", help="existing world dir ('' = build one into OUT/world)")
    world_preset: Literal["small", "tiny"] = field("small", help="world size when building")
    base_model: str = field("", help="existing base model dir; '' = train one into OUT/base; "
                                     "'packaged' = the base shipped with visalign (small "
                                     "world, seed 0; checked against the world's fingerprint)")
    base_preset: Literal["small", "tiny"] = field("small", help="base model preset when training")
    base_overrides: dict = field({}, help="overrides of the base model config (world base)")
    methods: list[str] = field(list(METHODS), help="methods of the grid")
    data_sizes: list[int] = field([1200, 2400], help="alignment images per size (nested "
                                                     "subsets; configs/compare/microworld.yaml)")
    seed: int = field(0, help="seed of subset sampling and of every trainer")
    eval: EvalSettings = field(default_factory=EvalSettings)
    calibration_images: int = field(300, help="FiSAO calibration images (disjoint from the "
                                              "alignment sets)")
    fisao_calibration: str = field("", help="an existing calibration.json for FiSAO ('' = "
                                            "calibrate the verifier on the base model here)")
    sft: dict = field({}, help="overrides of every SFT run (cont-sft, nsft), e.g. {lr: 1e-4}")
    dpo: dict = field({}, help="overrides of every DPO run (gt-dpo, seva, sima, povid)")
    fisao: dict = field({}, help="overrides of the FiSAO run")
    fisao_calibrate: dict = field({}, help="overrides of the verifier calibration "
                                           "(CalibrateConfig), e.g. {pooling: patch}")
    nsft_data: dict = field({}, help="overrides of nsft build (NsftDataConfig)")
    pairs: dict = field({}, help="overrides of the pair builders (PairsConfig)")
    method_overrides: dict = field({}, help="per-method trainer overrides, e.g. "
                                            "{seva: {lr: 1e-5}}")
    workers: int = field(0, help="cells trained and evaluated at once, each in its own process "
                                 "(pinned to its share of the cores, or to one GPU each); 0 = "
                                 "automatic: one per GPU, else one per core; 1 = one after "
                                 "another in this process")
    progress: bool = field(True, help="progress bars and stage lines")


def check_config(cfg: CompareConfig) -> None:
    """Refuse unknown methods and a missing ``out`` before any work."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not cfg.out:
        raise ValueError("compare: out=DIR is required")


def check_alignment_sizes(cfg: CompareConfig, n_train: int) -> None:
    """Raise ``ValueError`` unless the grid's largest alignment set (plus FiSAO's calibration
    images, which must stay disjoint from it) fits in ``n_train`` train images."""
    sizes = sorted(set(cfg.data_sizes))
    if not sizes:
        return
    if min(sizes) <= 0:
        raise ValueError(f"data sizes must be positive, got {sizes}")
    if sizes[-1] > n_train:
        raise ValueError(f"data size {sizes[-1]} > {n_train} train images")
    if "fisao" in cfg.methods and sizes[-1] + cfg.calibration_images > n_train:
        raise ValueError(f"{sizes[-1]} alignment + {cfg.calibration_images} calibration images "
                         f"> {n_train} train images")


def grid_dirs(cfg: CompareConfig, out: str | Path) -> tuple[Path, Path]:
    """(world dir, base model dir) of a grid written to ``out``: the config's own, or the ones
    the grid builds (or installs, for the packaged base) inside ``out``."""
    out = Path(out)
    world = Path(cfg.world) if cfg.world else out / "world"
    base = Path(cfg.base_model) if cfg.base_model not in ("", PACKAGED) else out / "base"
    return world, base


def demo_config(out: str, overrides: Any = ()) -> CompareConfig:
    """The README's main job: the micro-world grid sized for ≤ 15 minutes on 2 CPU cores."""
    from importlib import resources

    p = resources.files("visalign") / "resources" / "compare" / "demo.yaml"
    cfg = load_config(CompareConfig, Path(str(p)))
    return load_config(CompareConfig, None, [*overrides, f"out={out}"] if isinstance(
        overrides, (list, tuple)) else {**overrides, "out": out}, base=cfg)
