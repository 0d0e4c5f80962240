"""What a fine-tuning run does: the ``[tune]`` section of a TOML config, or the same fields as flags.

```toml
[tune]
model = "smollm2"          # any model spec fissure.load takes
data = "notes.txt"         # a text file or folder, JSONL (messages / prompt+completion /
                           # prompt+chosen+rejected / text+label) or CSV
method = "lora"            # lora | full
objective = "auto"         # auto (from the data) | causal_lm | sft | dpo | classify

[tune.lora]
rank = 16

[tune.train]
max_steps = 300
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_range, from_dict, to_dict
from ..errors import ConfigError
from ..models.classifier import POOLINGS
from ..train import TrainConfig
from ..train.lora import LoraSpec
from ..train.objectives import OBJECTIVES
from ..utils import check_seed

METHODS = ("lora", "full")


def _train_defaults() -> TrainConfig:
    """Fine-tuning, not pretraining: few steps, a small learning rate, no weight decay, bf16 where
    the CPU has it."""
    return TrainConfig(max_steps=200, batch_size=8, lr=2e-4, min_lr=2e-5, warmup_steps=10, weight_decay=0.0,
                       eval_every=50, eval_batches=10, dtype="auto")


@dataclass
class TuneConfig:
    model: str = "smollm2"
    data: str = ""
    method: str = "lora"
    objective: str = "auto"
    backend: str = "auto"  # auto | native | transformers
    seed: int = 0
    val_fraction: float = 0.1  # share of documents / rows held out (seeded)
    max_length: int = 256  # tokens per example (per window of text); longer examples are truncated
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)  # the label set; empty: every label found, sorted
    pooling: str = "last"  # classification: the last real token's state, or the mean
    beta: float = 0.1  # DPO: how far from the reference the policy may move
    extra_data: list[str] = field(default_factory=list)  # more tasks: each a data source, trained as a mixture
    weights: list[float] = field(default_factory=list)  # one per task (data first, then extra_data); default equal
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: TrainConfig = field(default_factory=_train_defaults)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.objective != "auto" and self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be auto or one of {', '.join(OBJECTIVES)}, not '{self.objective}'")
        check_seed(self.seed)
        check_range("val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True)
        check_range("max_length", self.max_length, 8, 2**20, integer=True)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not '{self.pooling}'")
        check_range("beta", self.beta, 0, lo_open=True)
        for name in ("text_column", "label_column"):
            if not getattr(self, name):
                raise ValueError(f"{name} must name a column")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeats a label: {self.labels}")
        for w in self.weights:
            check_range("weights[]", w, 0)
        if self.weights and (len(self.weights) != 1 + len(self.extra_data) or sum(self.weights) <= 0):
            raise ValueError(f"weights: give one non-negative weight per data source ({1 + len(self.extra_data)}), "
                             f"not all zero, not {self.weights}")

    def as_dict(self) -> dict:
        return to_dict(self)


def load_tune_config(raw: dict) -> TuneConfig:
    """A :class:`TuneConfig` from a config dict: its ``[tune]`` table, or the whole dict."""
    section = raw.get("tune", raw) if isinstance(raw, dict) else raw
    if not isinstance(section, dict):
        raise ConfigError("[tune] must be a table")
    if not isinstance(section.get("train", {}), dict):
        raise ConfigError("[tune.train] must be a table")
    train = {**to_dict(_train_defaults()), **section.get("train", {})}
    config = from_dict(TuneConfig, {**section, "train": train}, prefix="tune.")
    if not config.data:
        raise ConfigError("tune.data is empty: give --data FILE (text, JSONL or CSV) or a folder")
    return config
