"""How long does the base recipe's CLIP stage take on this machine? Prints one JSON object.

Trains a fresh tiny CLIP (the small preset's architecture and settings) for one epoch on
``--examples`` generated training examples and scales its mean step time to the recipe's
steps (``clip.images // clip.batch_size`` per epoch × ``clip.epochs``, as ``train_clip``
counts). Useful where the CLIP stage was not rerun (a base run that copies the shipped
verifier as its CLIP stage).

    python benchmarks/bench_clip_step.py --world W --tokenizer STAGES/tokenizer [--examples 2688]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--tokenizer", required=True, help="a base run's STAGES/tokenizer dir")
    ap.add_argument("--examples", type=int, default=64 * 42)
    args = ap.parse_args()

    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

    from visalign.models.tiny import build_tiny_clip
    from visalign.world import load_world
    from visalign.methods.base_model import PATCH_SIZE, base_config, clip_training_examples
    from visalign.methods.base_model.clip_train import train_clip

    cfg = base_config("small")
    world = load_world(args.world)
    a = cfg.clip_arch
    tmp = Path(tempfile.mkdtemp()) / "clip"
    build_tiny_clip(tmp, AutoTokenizer.from_pretrained(args.tokenizer),
                    image_size=world.image_size, patch_size=PATCH_SIZE,
                    vision_hidden=a.vision_hidden, text_hidden=a.text_hidden,
                    layers=(a.vision_layers, a.text_layers), projection_dim=a.projection_dim,
                    heads=a.heads, seed=0)
    clip, proc = CLIPModel.from_pretrained(tmp), CLIPProcessor.from_pretrained(tmp)
    cats = [c.name for c in world.vocab.categories]
    t = time.time()
    examples = clip_training_examples(world, args.examples, cats)
    per_example = (time.time() - t) / args.examples
    s = train_clip(clip, proc, examples, dataclasses.replace(cfg.clip, epochs=1.0), seed=0,
                   categories=cats, progress=False)
    # as train_clip counts them: whole batches per epoch, epochs rounded up
    steps = math.ceil(cfg.clip.epochs * (cfg.clip.images // cfg.clip.batch_size))
    step_s = s["seconds"] / s["steps"]
    print(json.dumps({"step_seconds": round(step_s, 4), "recipe_steps": steps,
                      "implied_clip_train_seconds": round(step_s * steps, 1),
                      "implied_examples_seconds": round(per_example * cfg.clip.images, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
