"""Shared fixtures: tiny saved models, built once per session (treat them as read-only; use
``_tiny.build_tiny_*_dir(tmp_path)`` for a private copy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("bench_x")`` -> the module ``benchmarks/bench_x.py``, or
    ``benchmarks/research/bench_x.py`` for a research script (the benchmark scripts are not a
    package)."""
    root = Path(__file__).parents[1] / "benchmarks"

    def load(name: str):
        path = root / f"{name}.py"
        if not path.exists():
            path = root / "research" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from _tiny import build_tiny_llava_dir

    return build_tiny_llava_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_qwen2vl_dir(tmp_path_factory):
    from _tiny import build_tiny_qwen2vl_dir

    return build_tiny_qwen2vl_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from _tiny import build_tiny_clip_dir

    return build_tiny_clip_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory):
    """The micro-world's tiny preset (120 train + 40 val images)."""
    from visalign.world import build_world, world_config

    out = tmp_path_factory.mktemp("world") / "world"
    build_world(world_config("tiny", seed=0), out, preset="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(tiny_world_dir, tmp_path_factory):
    """`visalign world base --preset tiny` on the tiny world (model + verifier + eval.json)."""
    from visalign.methods.base_model import base_config, build_base_model

    out = tmp_path_factory.mktemp("base") / "base"
    build_base_model(base_config("tiny", {"world": str(tiny_world_dir), "out": str(out),
                                          "progress": False}))
    return out


@pytest.fixture(scope="session")
def llava15_hf_dir(tmp_path_factory):
    """A tiny llava-1.5 in llava-hf's file format (read-only; ``_tiny.build_llava15_hf_dir``
    for a private copy)."""
    from _tiny import build_llava15_hf_dir

    return build_llava15_hf_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def openai_clip_dir(tmp_path_factory):
    """Its verifier, a CLIP in openai/clip-vit-large-patch14-336's file format (read-only)."""
    from _tiny import build_openai_clip_dir

    return build_openai_clip_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory):
    """A tiny COCO root (train2017 + val2014) as the COCO site ships it (read-only)."""
    from _tiny import build_coco_root

    return build_coco_root(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def instruct_file(coco_root, tmp_path_factory):
    """A llava_v1_5_mix665k.json-style file over ``coco_root``: shared ids, text-only records
    (read-only)."""
    from _tiny import build_instruct_file

    return build_instruct_file(tmp_path_factory.mktemp("instruct"), coco_root)


@pytest.fixture(scope="session")
def nltk_tagger_data():
    """NLTK's official English tagger and punkt_tab (tests/data/nltk_data, zips in NLTK's own
    layout: they cannot be downloaded on machines without internet) put on nltk's data path.
    Tests that also need WordNet skip when Debian's wordnet-base is absent."""
    import nltk.data

    path = str(Path(__file__).parent / "data" / "nltk_data")
    nltk.data.path.insert(0, path)
    yield path
    nltk.data.path.remove(path)


@pytest.fixture(scope="session")
def wordnet_available():
    import os

    if not os.path.exists("/usr/share/wordnet/index.noun") and not os.environ.get(
            "VISALIGN_WORDNET"):
        pytest.skip("no WordNet (Debian's wordnet-base, or $VISALIGN_WORDNET)")
    return True


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a loaded 2-core machine two threads mostly wait on each other."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
