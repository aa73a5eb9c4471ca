"""Argument helpers shared by command modules."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus trailing ``key=value`` overrides, and ``--debug`` for tracebacks."""
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. lr=1e-4 lora.r=8")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
