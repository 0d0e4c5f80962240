"""Model families. Each family registers its class and config under a name."""

from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig

MODEL_FAMILIES: dict[str, tuple[type, type]] = {"gpt": (GPT, GPTConfig), "llama": (Llama, LlamaConfig)}

__all__ = ["GPT", "GPTConfig", "Llama", "LlamaConfig", "MODEL_FAMILIES"]
