"""A classifier tuned by ``fissure tune`` on labelled data, loaded back for inference: the tuned
model (full weights or base + adapter, through the backends), its head (``head.safetensors``), its
labels and pooling from ``fissure.json``. Texts are encoded as in training: the start token, then
the text, cut to the tuned ``max_length``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..backends import TorchLM, load
from ..errors import CheckpointError
from ..models.classifier import SequenceClassifier
from ..train.checkpoint import read_tuned_meta, recover_checkpoint


class TunedClassifier:
    """``probabilities(texts)``: softmax over :attr:`labels`, one row per text."""

    def __init__(self, lm: TorchLM, head: SequenceClassifier, labels: list[str], max_length: int):
        self.lm, self.head, self.labels, self.max_length = lm, head.eval(), labels, max_length

    def encode(self, text: str) -> list[int]:
        return [self.lm.start_token, *self.lm.tokenizer.encode(text)][:self.max_length]

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        from ..backends.scoring import pad_right

        rows = [torch.zeros(0, len(self.labels))]
        for start in range(0, len(texts), batch_size):
            ids, mask = pad_right([self.encode(t) for t in texts[start:start + batch_size]])
            rows.append(self.head(ids, attention_mask=mask).float().softmax(-1))
        return torch.cat(rows)


def load_classifier(path: str | Path) -> TunedClassifier:
    from safetensors.torch import load_file

    directory = recover_checkpoint(path)
    meta = read_tuned_meta(directory)
    tasks = [t for t in (meta or {}).get("tasks", []) if t.get("head")]
    if len(tasks) != 1:
        why = "not a checkpoint of fissure tune" if meta is None else \
            f"{'no' if not tasks else len(tasks)} classification heads"
        raise CheckpointError(f"{path} is not a tuned classifier ({why}): tune one with `fissure tune MODEL --data "
                              "labelled.jsonl`")
    lm = load(str(directory), fuse=False)
    hidden = getattr(lm.model.config, "n_embd", None)
    head = SequenceClassifier(lm.model, len(tasks[0]["classes"]), hidden, pooling=meta.get("pooling") or "last")
    head.head.load_state_dict(load_file(str(directory / tasks[0]["head"])))
    return TunedClassifier(lm, head, list(tasks[0]["classes"]), meta.get("max_length") or lm.model.max_positions)
