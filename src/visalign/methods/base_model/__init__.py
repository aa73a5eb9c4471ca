"""``visalign world base``: train the micro-world's base VLM from scratch, the LLaVA way.

Stages (each resumable: a finished stage is loaded, not retrained):

0. tokenizer: byte-level BPE trained on the world's training text, LLaVA-1.5 chat template;
1. CLIP: a tiny ``CLIPModel`` trained contrastively on images vs captions and object phrases —
   it becomes the VLM's vision tower *and* FiSAO's verifier (``MODELDIR/verifier``);
2. LM pre-training: the tiny Llama learns the world's language from text alone, so it brings a
   language prior (co-occurrence statistics) to the VLM the way a pretrained LLM does;
3. LLaVA stage 1: projector only, on short captions (feature alignment);
4. LLaVA stage 2: projector + LM on the instruction data (with its GPT-4-like defects);
5. evaluation on the held-out split: CHAIR, POPE ×3, short-answer accuracy, caption metrics,
   and the verifier's AUROC for "a photo of a {object}" → ``MODELDIR/eval.json``.
"""

from visalign.methods.base_model.build import build_base_model, stage_loss
from visalign.methods.base_model.clip_data import (clip_examples, clip_training_examples,
                                                   tokenizer_texts)
from visalign.methods.base_model.config import (PATCH_SIZE, BaseModelConfig, base_config,
                                                packed_stages, resolve_scene_order)
from visalign.methods.base_model.lm_texts import (scene_lm_texts, scene_text, text_collate,
                                                  world_chat_template)

__all__ = ["PATCH_SIZE", "BaseModelConfig", "base_config", "build_base_model", "clip_examples",
           "clip_training_examples", "packed_stages", "resolve_scene_order", "scene_lm_texts",
           "scene_text", "stage_loss", "text_collate", "tokenizer_texts", "world_chat_template"]
