"""Training shared by every method: settings, the loop, checkpoints, batch order, schedule.

One loop instead of one trainer per algorithm (:mod:`visalign.training.loop`); FiSAO's PPO keeps
its own outer loop and reuses the pieces (checkpoints, parameter selection, schedule).
"""

from visalign.training.checkpoint import (check_resume, latest_checkpoint, save_checkpoint,
                                          save_model)
from visalign.training.config import LoraSettings, TrainConfig
from visalign.training.conversations import conversation_items, make_collate, open_image
from visalign.training.loop import TrainResult, run_training
from visalign.training.engine import (generation_model, is_sharded, launched_engine,
                                      make_accelerator, plain_init)
from visalign.training.params import (check_memory_settings, load_for_training, prepare_model,
                                      resolve_dtype, set_trainable)
from visalign.training.sampler import LengthGroupedSampler, item_length
from visalign.training.schedule import lr_lambda, seed_everything

__all__ = ["LengthGroupedSampler", "LoraSettings", "TrainConfig", "TrainResult",
           "check_memory_settings", "check_resume", "conversation_items", "generation_model",
           "is_sharded", "item_length", "latest_checkpoint", "launched_engine",
           "load_for_training", "lr_lambda", "make_accelerator", "make_collate", "open_image",
           "plain_init",
           "prepare_model", "resolve_dtype", "run_training", "save_checkpoint", "save_model",
           "seed_everything", "set_trainable"]
