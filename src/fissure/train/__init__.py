"""Training: objectives, the Trainer, checkpoints."""

from .checkpoint import load_model_from_checkpoint, save_checkpoint
from .trainer import Trainer, TrainConfig, TrainResult

__all__ = ["Trainer", "TrainConfig", "TrainResult", "save_checkpoint", "load_model_from_checkpoint"]
