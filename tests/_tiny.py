"""Tiny saved models for tests (import as ``from _tiny import build_tiny_llava_dir``).

Each builder returns a fresh copy under the caller's ``tmp_path`` (safe to modify), made from a
per-process cache so the models are built once. All share one locally trained tokenizer. The
LLaVA's vision tower is a copy of the tiny CLIP's vision model (as in the micro-world), so
``build_tiny_clip_dir`` is its exact FiSAO verifier.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from PIL import Image

CORPUS = [
    "USER: What is in the image? ASSISTANT: There is a red ball and a blue cube.",
    "A small green tree stands next to a yellow car on the left of the picture.",
    "Is there a dog in the image? Yes, there is a dog. No, there is no cat.",
    "Describe the image in detail. The large red ball is on the right of the blue cube.",
    "How many balls are there? There are two balls. What color is the car? The car is yellow.",
    "A person is sitting on a chair near the table with a cup and a book.",
]
VOCAB_SIZE = 400
_CACHE: dict[str, Path] = {}
_ROOT: list[Path] = []


def _root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="visalign-tiny-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


def tiny_tokenizer():
    """The shared test tokenizer (trained once per process, a fresh copy each call)."""
    from transformers import AutoTokenizer

    from visalign.models.tokenizer import train_tokenizer

    if "tokenizer" not in _CACHE:
        path = _root() / "tokenizer"
        train_tokenizer(CORPUS * 20, VOCAB_SIZE).save_pretrained(path)
        _CACHE["tokenizer"] = path
    return AutoTokenizer.from_pretrained(_CACHE["tokenizer"])


def _cached(kind: str) -> Path:
    from visalign.models.tiny import build_tiny_clip, build_tiny_llava, build_tiny_qwen2vl

    if kind not in _CACHE:
        path = _root() / kind
        if kind == "clip":
            build_tiny_clip(path, tiny_tokenizer())
        elif kind == "llava":
            build_tiny_llava(path, tiny_tokenizer(), clip_dir=_cached("clip"), text_hidden=64,
                             text_layers=2)
        elif kind == "qwen2vl":
            build_tiny_qwen2vl(path, tiny_tokenizer())
        _CACHE[kind] = path
    return _CACHE[kind]


def _copy(kind: str, tmp_path: Path) -> Path:
    dst = Path(tmp_path) / f"tiny_{kind}"
    if not dst.exists():
        shutil.copytree(_cached(kind), dst)
    return dst


def build_tiny_llava_dir(tmp_path: Path) -> Path:
    """A tiny LlavaForConditionalGeneration dir (64x64 images, patch 8 -> 64 image tokens)."""
    return _copy("llava", tmp_path)


def build_tiny_qwen2vl_dir(tmp_path: Path) -> Path:
    """A tiny Qwen2VLForConditionalGeneration dir (64x64 images -> 16 merged image tokens)."""
    return _copy("qwen2vl", tmp_path)


def build_tiny_clip_dir(tmp_path: Path) -> Path:
    """The tiny CLIPModel dir whose vision model is the tiny LLaVA's vision tower."""
    return _copy("clip", tmp_path)


def solid_images(n: int, size: int = 64) -> list[Image.Image]:
    """``n`` distinct solid-colour RGB images."""
    colors = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 230, 40), (120, 60, 20),
              (250, 250, 250), (10, 10, 10), (200, 100, 200)]
    return [Image.new("RGB", (size, size), colors[i % len(colors)]) for i in range(n)]
