"""Bounds on model configs, checked when a config is made (from TOML, a checkpoint or flags), so a
huge or absurd size is a one-line error, not an overflow or an allocation that takes the machine."""

from __future__ import annotations

from ..config import check_range

__all__ = ["LIMITS", "MAX_PARAMS", "build", "check_range", "check_size"]

# Each far beyond any real model (Llama 3 405B: n_embd 16384, 126 layers, a 128k vocabulary and
# context), and small enough that no product of them overflows a 64-bit size.
LIMITS = {"vocab_size": 2**24, "block_size": 2**24, "n_layer": 2**12, "n_head": 2**12, "n_embd": 2**16}
MAX_PARAMS = 2**40  # about a trillion floats (4 TB): a bigger model cannot be built on any one machine


def check_size(params: int, family: str) -> None:
    if params > MAX_PARAMS:
        raise ValueError(f"this {family} config would need about {params:.3g} parameters (more than "
                         f"{MAX_PARAMS:.3g}); lower n_embd, n_layer, vocab_size or block_size")


def build(model_cls: type, config):
    """``model_cls(config)``, with an allocation the machine cannot make (a config within the
    limits above can still be too big for this machine's memory) as a one-line error."""
    from ..errors import ConfigError

    try:
        return model_cls(config)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ConfigError(f"a {model_cls.__name__} of about {config.approx_params():.3g} parameters does not fit "
                          "in this machine's memory; lower n_embd, n_layer, vocab_size or block_size") from None
