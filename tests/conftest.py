"""Shared fixtures: tiny saved models, built once per session (treat them as read-only; use
``_tiny.build_tiny_*_dir(tmp_path)`` for a private copy)."""

from __future__ import annotations

import pytest


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
