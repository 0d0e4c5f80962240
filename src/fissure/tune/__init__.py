"""Fine-tuning: adapt any local model (full or LoRA) with causal LM, SFT, DPO or classification
objectives, through the one Trainer, into checkpoints every verb loads. See :mod:`.run`."""

from .config import TuneConfig, load_tune_config
from .data import TuningData, read_tuning_data
from .run import run_tune

__all__ = ["TuneConfig", "TuningData", "load_tune_config", "read_tuning_data", "run_tune"]
