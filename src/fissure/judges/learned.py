"""A learned offline judge: logistic regression on a language model's hidden states of the reply.

The features of a labelled reply are the model's final (normed) hidden states, averaged over the
tokens of ``Request: ...\\nReply: ...`` (the request cut to :data:`MAX_REQUEST_TOKENS` tokens, the
reply to :data:`MAX_REPLY_TOKENS`: a refusal shows early). Features are standardised and a
multinomial logistic regression is fitted with its regularisation chosen by 5-fold stratified
cross-validation (scikit-learn's ``LogisticRegression`` in ``GridSearchCV``), on the ``dev`` split of labelled sets
only: :func:`fit_learned_judge` refuses test rows, so the test split's score stays honest.

A fitted judge is saved under the user cache (``judges/<name>/``: ``weights.safetensors`` and
``judge.json`` with the model, the scheme, the files and rows it was fitted on and its
cross-validated accuracy) and named ``learned:<name>`` wherever a judge is chosen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..errors import DataError
from .labelled import LabelledReply

MAX_REQUEST_TOKENS = 64
MAX_REPLY_TOKENS = 256
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def judges_dir() -> Path:
    from ..runs import cache_dir

    return cache_dir() / "judges"


@torch.inference_mode()
def reply_features(lm, rows: Sequence[LabelledReply], batch_size: int = 8) -> np.ndarray:
    """(n, hidden) mean-pooled final hidden states of each row's request and reply (see the module
    docstring), from a torch backend (``fissure.load``'s native or transformers models)."""
    model, tok = getattr(lm, "model", None), getattr(lm, "tokenizer", None)
    if model is None or not hasattr(model, "hidden_states"):
        raise DataError(f"{lm.capabilities.name} does not expose hidden states: a learned judge needs a local "
                        "model (a registry name or a checkpoint path)")
    sequences = []
    for row in rows:
        head = tok.encode(f"Request: {row.request or ''}")[:MAX_REQUEST_TOKENS]
        sequences.append([lm.start_token] + head + tok.encode(f"\nReply: {row.reply}")[:MAX_REPLY_TOKENS])
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: less padding
    pooled: list = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, :len(sequences[i])] = torch.tensor(sequences[i])
            mask[b, :len(sequences[i])] = 1
        hidden = model.hidden_states(ids, attention_mask=mask).float()
        means = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        for i, vector in zip(chunk, means.numpy()):
            pooled[i] = vector
    return np.stack(pooled).astype(np.float32)


@dataclass
class LearnedJudge:
    name: str
    model: str  # the model spec whose hidden states are read
    scheme: str
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (k, hidden); k = 1 for two classes (scikit-learn's binary layout)
    bias: np.ndarray
    meta: dict

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = (features - self.mean) / self.scale @ self.weights.T + self.bias
        if z.shape[1] == 1:  # binary: the score is for classes[1]
            p1 = 1 / (1 + np.exp(-z[:, 0]))
            return np.stack([1 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.probabilities(features).argmax(axis=1)]

    def save(self, directory: Path | None = None) -> Path:
        from safetensors.numpy import save_file

        from ..runs import write_text_atomic

        directory = directory or judges_dir() / self.name
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "scale": self.scale, "weights": self.weights, "bias": self.bias},
                  str(directory / "weights.safetensors"))
        write_text_atomic(directory / "judge.json", json.dumps(
            {"name": self.name, "model": self.model, "scheme": self.scheme, "classes": list(self.classes),
             **self.meta}, indent=2) + "\n")
        return directory


def load_learned_judge(name: str) -> LearnedJudge:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = judges_dir() / name
    if not NAME.fullmatch(name) or not (directory / "judge.json").is_file():
        known = sorted(p.name for p in judges_dir().glob("*") if (p / "judge.json").is_file()) \
            if judges_dir().is_dir() else []
        raise DataError(f"no learned judge '{name}' (fitted: {', '.join(known) or 'none'}; "
                        "fit one with fissure judge fit)")
    try:
        meta = json.loads((directory / "judge.json").read_text())
        tensors = load_file(str(directory / "weights.safetensors"))
        classes = tuple(meta["classes"])
        judge = LearnedJudge(name, meta["model"], meta["scheme"], classes, tensors["mean"], tensors["scale"],
                             tensors["weights"], tensors["bias"], meta)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise DataError(f"{directory} is damaged ({exc.__class__.__name__}); fit it again") from None
    if judge.weights.shape[1] != judge.mean.shape[0] or judge.weights.shape[0] not in (1, len(classes)):
        raise DataError(f"{directory} is damaged (weights do not match its classes); fit it again")
    return judge


def fit_learned_judge(name: str, lm, model_spec: str, rows: Sequence[LabelledReply], scheme: str,
                      classes: Sequence[str], sources: Sequence[str], seed: int = 0) -> tuple[LearnedJudge, dict]:
    """Fit on ``rows`` (dev rows only); returns the judge and what the fit measured."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
    except ImportError:
        raise DataError("fitting a learned judge needs scikit-learn: pip install 'fissure[judge]'") from None

    if not NAME.fullmatch(name):
        raise DataError(f"a judge name is letters, digits, '_', '.' and '-' (up to 64), not {name!r}")
    if any(r.split not in ("dev",) for r in rows):
        raise DataError("a learned judge is fitted on dev rows only (the test split is what it is scored on)")
    labels = np.array([list(classes).index(r.label) for r in rows])
    counts = np.bincount(labels, minlength=len(classes))
    if (counts < 5).any():
        raise DataError(f"each class needs at least 5 dev rows to fit on; have {dict(zip(classes, counts.tolist()))}")
    features = reply_features(lm, rows)
    mean, scale = features.mean(0), features.std(0) + 1e-6
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(np.logspace(-4, 1, 11))}, cv=folds,
                          scoring="accuracy")
    search.fit((features - mean) / scale, labels)
    fit, cv_accuracy = search.best_estimator_, float(search.best_score_)
    present = [classes[c] for c in fit.classes_]
    judge = LearnedJudge(name, model_spec, scheme, tuple(present), mean.astype(np.float32),
                         scale.astype(np.float32), fit.coef_.astype(np.float32), fit.intercept_.astype(np.float32),
                         {"fitted_on": list(sources), "rows": len(rows), "class_counts": dict(zip(classes, counts.tolist())),
                          "cv_accuracy": cv_accuracy, "C": float(fit.C), "seed": seed,
                          "features": f"mean final hidden state; request<= {MAX_REQUEST_TOKENS}, "
                                      f"reply<= {MAX_REPLY_TOKENS} tokens",
                          "fissure_version": __version__})
    return judge, {"rows": len(rows), "cv_accuracy": cv_accuracy, "C": judge.meta["C"]}
