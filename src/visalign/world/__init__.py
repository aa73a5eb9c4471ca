"""The micro-world: a deterministic generator of synthetic scenes with full annotations.

It writes the same formats as the real pipeline (COCO instances/captions, LLaVA conversations, a
CHAIR synonyms table), with training data carrying the defects that make VLMs hallucinate.
Build one with ``build_world(world_config("tiny"), "out/world")`` or
``visalign world build --out DIR``; open one with ``load_world(DIR)``.
"""

from visalign.world.build import (PRESETS, World, WorldConfig, build_world, load_world,
                                  world_config)
from visalign.world.vocab import Vocab, default_vocab

__all__ = ["PRESETS", "World", "WorldConfig", "build_world", "load_world", "world_config",
           "Vocab", "default_vocab"]
