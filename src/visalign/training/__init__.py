"""Training shared by every method: settings, the loop, checkpoints, batch order, schedule.

One loop instead of one trainer per algorithm (:mod:`visalign.training.loop`); FiSAO's PPO keeps
its own outer loop and reuses the pieces (checkpoints, parameter selection, schedule).
"""

from visalign.training.checkpoint import latest_checkpoint, save_checkpoint, save_model
from visalign.training.config import LoraSettings, TrainConfig
from visalign.training.conversations import conversation_items, make_collate, open_image
from visalign.training.loop import TrainResult, run_training
from visalign.training.params import prepare_model, set_trainable
from visalign.training.sampler import LengthGroupedSampler, item_length
from visalign.training.schedule import lr_lambda, seed_everything

__all__ = ["LengthGroupedSampler", "LoraSettings", "TrainConfig", "TrainResult",
           "conversation_items", "item_length", "latest_checkpoint", "lr_lambda", "make_collate",
           "open_image", "prepare_model", "run_training", "save_checkpoint", "save_model",
           "seed_everything", "set_trainable"]
