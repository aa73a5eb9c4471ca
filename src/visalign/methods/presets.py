"""The packaged trainer presets (``resources/presets/<method>.yaml``): each method's settings."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# trainer kind -> the presets it accepts ("dpo" = plain DPO, no preset file)
PRESETS = {"sft": ("cont-sft", "nsft"), "dpo": ("gt-dpo", "seva", "sima", "povid", "dpo"),
           "fisao": ("fisao",)}


def preset_path(name: str) -> Path:
    """The packaged YAML of preset ``name``; ``ValueError`` for an unknown one."""
    p = resources.files("visalign") / "resources" / "presets" / f"{name}.yaml"
    if not p.is_file():
        raise ValueError(f"unknown preset {name!r}")
    return Path(str(p))


def trainer_class(kind: str) -> type:
    """The config class of a trainer kind (sft, dpo, fisao)."""
    if kind == "sft":
        from visalign.methods.sft import SftConfig
        return SftConfig
    if kind == "dpo":
        from visalign.methods.dpo import DpoConfig
        return DpoConfig
    if kind == "fisao":
        from visalign.methods.fisao import FisaoConfig
        return FisaoConfig
    raise ValueError(f"unknown trainer kind {kind!r}; choose from sft, dpo, fisao")


def trainer(kind: str):
    """The training function of a trainer kind: ``fn(cfg) -> TrainResult``."""
    if kind == "sft":
        from visalign.methods.sft import train_sft
        return train_sft
    if kind == "dpo":
        from visalign.methods.dpo import train_dpo
        return train_dpo
    if kind == "fisao":
        from visalign.methods.fisao import train_fisao
        return train_fisao
    raise ValueError(f"unknown trainer kind {kind!r}; choose from sft, dpo, fisao")
