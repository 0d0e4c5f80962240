"""Model families. Each family registers its class and config under a name."""

from .gpt import GPT, GPTConfig

MODEL_FAMILIES: dict[str, tuple[type, type]] = {"gpt": (GPT, GPTConfig)}

__all__ = ["GPT", "GPTConfig", "MODEL_FAMILIES"]
