"""``fissure tune merge``: a LoRA adapter folded into its base, written as a full checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..backends import load
from ..errors import CheckpointError
from ..train.checkpoint import read_adapter, save_checkpoint, write_model_files, write_tuned_meta


def merge_adapter(checkpoint: Path, out: Path) -> Path:
    """Load base + adapter (checked against the base's SHA-256), merge, and write ``out``: an HF
    ``LlamaForCausalLM`` directory for Llama bases, a fissure checkpoint for our GPT."""
    meta, _ = read_adapter(checkpoint)
    if out.exists():
        raise CheckpointError(f"{out} exists already: choose another --out")
    lm = load(str(checkpoint), fuse=False)  # the adapter backend merges the adapter into the base
    model = lm.model

    def write(directory: Path) -> None:
        write_model_files(directory, model, lm.tokenizer)
        write_tuned_meta(directory, {**{k: v for k, v in meta.items() if k != "fissure_version"},
                                     "kind": "full", "method": "lora-merged", "merged_from": str(checkpoint)})

    return save_checkpoint(out, writer=write)
