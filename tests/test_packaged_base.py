"""The base model shipped for the demo matches the world the demo builds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def test_packaged_base_matches_small_world_seed0(tmp_path, tiny_world_dir):
    from visalign.methods.base_model.packaged import (install_packaged_base,
                                                      packaged_base_dir, world_fingerprint)
    from visalign.world import build_world, world_config

    src = packaged_base_dir()
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"packaged base is {size / 2**20:.1f} MiB (limit 20)"
    meta = json.loads((src / "eval.json").read_text())
    assert "chair_s" in meta["metrics"] and "clip_auroc" in meta["metrics"]
    # the demo's world: generator changes that alter it make this fail -> re-package the base
    world = tmp_path / "world"
    build_world(world_config("small", seed=0), world, preset="small")
    assert world_fingerprint(world) == (src / "world_fingerprint.txt").read_text().strip()
    dst = install_packaged_base(world, tmp_path / "base")
    assert (dst / "config.json").exists() and (dst / "verifier" / "config.json").exists()
    with pytest.raises(ValueError, match="another world"):
        install_packaged_base(tiny_world_dir, tmp_path / "base2")


def test_packaged_base_was_trained_with_the_current_small_recipe():
    """`visalign world base` with today's defaults reproduces the shipped model's settings: a
    recipe change without re-packaging (scripts/package_base.py) fails here."""
    import yaml

    from visalign.methods.base_model.packaged import packaged_base_dir
    from visalign.config import config_to_dict
    from visalign.world import world_config
    from visalign.methods.base_model import base_config, resolve_scene_order

    shipped = yaml.safe_load((packaged_base_dir() / "base_config.yaml").read_text())
    # scene_order=auto is saved resolved, to the default world's description order
    world = SimpleNamespace(meta={"config": config_to_dict(world_config("small"))})
    current = config_to_dict(resolve_scene_order(base_config("small"), world))
    for key in ("world", "out", "visalign_version", "progress"):
        shipped.pop(key, None)
        current.pop(key, None)
    assert shipped == current
