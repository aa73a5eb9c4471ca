"""The base model shipped with visalign: what ``visalign world base`` trains on the small world
(seed 0), installed instead of retrained when the world is the one it was trained on."""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources
from pathlib import Path


def world_fingerprint(world_dir: str | Path) -> str:
    """SHA-256 over the files a base model is trained on (train annotations and instructions)."""
    h = hashlib.sha256()
    for rel in ("annotations/instances_train.json", "annotations/captions_train.json",
                "llava/train.json", "synonyms.txt"):
        h.update(rel.encode())
        h.update((Path(world_dir) / rel).read_bytes())
    return h.hexdigest()


def packaged_base_dir() -> Path:
    """Where the shipped base model lies inside the installed package."""
    return Path(str(resources.files("visalign") / "resources" / "microworld_base"))


def install_packaged_base(world_dir: str | Path, dst: Path) -> Path:
    """Copy the shipped base model to ``dst`` after checking it was trained on this world.

    The shipped model is what ``visalign world base`` trains on ``visalign world build --preset
    small --seed 0`` (``base_config.yaml`` inside says with which settings); it saves the demo
    the base model's training time. A world of another preset, seed or generator version has
    another fingerprint, and then the base must be trained (``base_model=''``).
    """
    src = packaged_base_dir()
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src}: no packaged base model in this installation; "
                                "use base_model='' to train one")
    want = (src / "world_fingerprint.txt").read_text().strip()
    got = world_fingerprint(world_dir)
    if got != want:
        raise ValueError(f"{world_dir}: the packaged base was trained on another world "
                         f"(fingerprint {want[:12]} != {got[:12]}); use base_model='' to train "
                         "a base on this one")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.replace(dst)
    return dst
