#!/usr/bin/env bash
# Install visalign on a fresh machine: the CPU torch pin first (the package itself asks only for
# torch>=2.4, which pip would otherwise satisfy with a multi-GB CUDA build), then the package,
# then WordNet for FiSAO's entity expansion (optional: without it expansion skips WordNet and
# says so). `setup.sh dev` adds the test tools (pytest, deepspeed, tensorboard, wandb). On a GPU
# machine, install your CUDA torch and then `pip install -e ".[gpu,track]"` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "dev" ]; then
  python -m pip install -q -e ".[dev]"
else
  python -m pip install -q -e .
fi
if [ ! -d /usr/share/wordnet ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null) \
    || echo "setup: wordnet-base not installed; entity expansion will skip WordNet" >&2
fi
