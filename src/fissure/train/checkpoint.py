"""Checkpoints are directories, written atomically, with no pickle anywhere:

- ``model.safetensors``   weights (tied weights stored once)
- ``config.json``         model family and config, fissure version
- ``tokenizer.json``      the tokenizer
- ``trainer_state.json``  step, history, best validation loss, training config (optional)
- ``optimizer.safetensors`` / ``rng_state.safetensors`` optimizer moments and RNG states (optional)

A fine-tuned model writes its weights in the form its base came in (a ``writer`` replaces the
first three files): an HF-layout directory for a Llama, or an *adapter checkpoint* that holds
only the LoRA weights (``adapter_model.safetensors``, peft's ``adapter_config.json``) and, in
``fissure.json``, the base model's spec and the SHA-256 of its weights, so a base that changed
is caught when the adapter is loaded.

A crash while saving never leaves half a checkpoint: everything is written to a temporary
sibling directory which then replaces the target with ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .._version import __version__
from ..errors import CheckpointError, UserError
from ..models import MODEL_FAMILIES
from ..models.limits import build

REQUIRED = ("model.safetensors", "config.json", "tokenizer.json")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Put saved moments back, after checking every name, shape and dtype against the parameters:
    a wrong shape would otherwise corrupt memory inside fused AdamW (measured: NaN, or a segfault)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups) or \
            [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError("its parameter groups do not match this model's")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, _, key = name.partition(".")
        if not idx.isdigit() or int(idx) >= len(params) or key not in ("exp_avg", "exp_avg_sq", "step"):
            raise ValueError(f"unexpected optimizer tensor '{name}'")
        expected = () if key == "step" else tuple(params[int(idx)].shape)
        if tuple(value.shape) != expected or not value.is_floating_point():
            raise ValueError(f"optimizer tensor '{name}' has shape {tuple(value.shape)} and dtype {value.dtype}, "
                             f"the model needs shape {expected} (float)")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"optimizer tensor '{name}' holds NaN or infinity")
        if key != "exp_avg" and bool((value < 0).any()):
            raise ValueError(f"optimizer tensor '{name}' holds a negative value")
        state.setdefault(int(idx), {})[key] = value.to(params[int(idx)].dtype) if key != "step" else value
    for idx, entry in state.items():
        if set(entry) != {"exp_avg", "exp_avg_sq", "step"}:
            raise ValueError(f"optimizer state of parameter {idx} is incomplete ({', '.join(sorted(entry))})")
    # the moments come from the file; the hyperparameters from this run's config (the same config,
    # or resuming is refused), so nothing in the file's groups can reach AdamW's arithmetic
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


# --- writing a checkpoint so that a kill at any moment leaves a complete one -----------------------

COMPLETE = ".complete"  # written last, after every other file is on disk: marks a finished directory


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _siblings(path: Path) -> list[Path]:
    """Temporary and previous versions of ``path`` that writers killed mid-swap may have left."""
    return sorted(path.parent.glob(f".{path.name}.tmp-*")) + sorted(path.parent.glob(f".{path.name}.old-*"))


def _step(path: Path) -> int:
    try:
        return int(json.loads((path / "trainer_state.json").read_text()).get("step", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def recover_checkpoint(path: str | Path) -> Path:
    """``path`` as a complete checkpoint: when a kill interrupted a save (``path`` missing or not
    marked complete) the newest complete version left beside it is moved into place; then the
    leftovers of killed writers are removed. Checkpoints written before the marker existed count
    as complete when nothing is left beside them."""
    path = Path(path)
    leftovers = _siblings(path)
    if leftovers and not (path / COMPLETE).is_file():
        complete = [p for p in leftovers if (p / COMPLETE).is_file()]
        if complete:
            best = max(complete, key=lambda p: (_step(p), p.stat().st_mtime))
            if path.exists():
                shutil.rmtree(path)
            os.replace(best, path)
            _fsync(path.parent)
    if path.is_dir():
        for leftover in _siblings(path):
            shutil.rmtree(leftover, ignore_errors=True)
    return path


def save_checkpoint(path: str | Path, model: torch.nn.Module | None = None, tokenizer=None, *,
                    writer: Callable[[Path], None] | None = None, trainer_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    rng_states: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory: the model (a fissure model and its tokenizer, or whatever
    ``writer(directory)`` writes) and, with ``trainer_state``, what resuming needs.

    Everything goes into a temporary sibling and is fsynced, the :data:`COMPLETE` marker last; then
    the old checkpoint is moved aside and the new one into place. A kill at any moment leaves a
    complete checkpoint at ``path`` or beside it, which :func:`recover_checkpoint` (run by every
    reader and by the next save) puts back."""
    path = Path(path)
    recover_checkpoint(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if writer is not None:
        writer(tmp)
    else:
        write_fissure_model(tmp, model, tokenizer)
    if trainer_state is not None:
        state = dict(trainer_state)
        if optimizer is not None:
            tensors, state["optimizer"] = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        if rng_states:
            save_file({k: v.contiguous() for k, v in rng_states.items()}, str(tmp / "rng_state.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str) + "\n")
    for file in tmp.rglob("*"):
        if file.is_file():
            _fsync(file)
    (tmp / COMPLETE).write_text(f"{__version__}\n")
    _fsync(tmp / COMPLETE)
    _fsync(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def write_fissure_model(directory: Path, model: torch.nn.Module, tokenizer) -> None:
    """``model.safetensors``, ``config.json`` (family and config) and the tokenizer of a fissure model."""
    save_model(model, str(directory / "model.safetensors"))
    config = {"family": model.family, "config": asdict(model.config), "fissure_version": __version__}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(directory)


def write_model_files(directory: Path, model: torch.nn.Module, tokenizer) -> None:
    """A whole model in the form its family loads from: an HF ``LlamaForCausalLM`` directory for a
    Llama (``transformers`` loads it too), ``save_pretrained`` for a model run through transformers,
    a fissure checkpoint for the rest."""
    family = getattr(model, "family", None)
    if family == "llama":
        from ..models.hf_llama import save_hf_llama_dir

        save_hf_llama_dir(model, directory)
        tokenizer.save(directory)
    elif family == "transformers":
        model.hf.save_pretrained(directory, safe_serialization=True)
        tokenizer.save(directory)
    else:
        write_fissure_model(directory, model, tokenizer)


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected a folder with {', '.join(REQUIRED)})")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint: missing {', '.join(missing)}")


def read_model_config(path: str | Path) -> dict:
    path = recover_checkpoint(path)
    _check_dir(path)
    try:
        data = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path / 'config.json'} is corrupted ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("family"), str) or not isinstance(data.get("config"), dict):
        raise CheckpointError(f"{path / 'config.json'} is corrupted: it needs a 'family' name and a 'config' table")
    if data["family"] not in MODEL_FAMILIES:
        raise CheckpointError(f"{path / 'config.json'}: unknown model family '{data['family']}' "
                              f"(known: {', '.join(MODEL_FAMILIES)})")
    return data


def load_model_from_checkpoint(path: str | Path) -> torch.nn.Module:
    """The model stored in a checkpoint directory, in eval mode. Corruption is a :class:`CheckpointError`."""
    from ..config import from_dict

    path = Path(path)
    data = read_model_config(path)
    model_cls, config_cls = MODEL_FAMILIES[data["family"]]
    try:
        model = build(model_cls, from_dict(config_cls, data["config"], prefix="config."))
    except UserError as exc:
        raise CheckpointError(f"{path / 'config.json'} has an invalid model config: "
                              f"{getattr(exc, 'detail', exc)}") from None
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path / 'model.safetensors'} is corrupted or truncated, or does not match "
                              f"config.json: {_one_line(exc)}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path / 'model.safetensors'} does not match config.json "
                              f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.eval()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's shape mismatches span many), cut to ``limit``."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_checkpoint(path: str | Path):
    """``(model, tokenizer)`` of a fissure checkpoint, checked to belong together: a tokenizer with
    another vocabulary size than the model's embedding (a file copied from elsewhere) would feed
    the model ids it has no row for, or decode its ids as the wrong text."""
    from ..text.tokenizers import load_tokenizer

    model = load_model_from_checkpoint(path)
    tokenizer = load_tokenizer(path)
    vocab = model.config.vocab_size
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
                              f"{vocab}: tokenizer.json does not belong to this model")
    return model, tokenizer


def _check_state(state: object) -> dict:
    """The trainer state's fields, type-checked (a wrong type is corruption, not a crash later)."""
    if not isinstance(state, dict):
        raise ValueError("it is not a JSON object")
    step, best = state.get("step"), state.get("best_val_loss")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative integer, not {step!r}")
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool)
                             or not (isinstance(best, int) or math.isfinite(best))):
        raise ValueError(f"best_val_loss must be a finite number or null, not {best!r}")
    bad_evals = state.get("bad_evals", 0)
    if not isinstance(state.get("history", []), list) or not isinstance(bad_evals, int) or isinstance(bad_evals, bool) \
            or bad_evals < 0:
        raise ValueError("history must be a list and bad_evals a non-negative integer")
    train_config = state.get("train_config", {})
    if not isinstance(train_config, dict):
        raise ValueError(f"train_config must be a table, not {type(train_config).__name__}")
    max_steps = train_config.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool)):
        raise ValueError(f"train_config.max_steps must be an integer, not {max_steps!r}")
    return state


def _check_rng(rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RNG states must be byte vectors of the size torch's own generator state has."""
    size = torch.get_rng_state().numel()
    for name, tensor in rng.items():
        if name not in ("batch", "torch") or tensor.dtype != torch.uint8 or tuple(tensor.shape) != (size,):
            raise ValueError(f"RNG state '{name}' is not a byte vector of {size} (dtype {tensor.dtype}, "
                             f"shape {tuple(tensor.shape)})")
    return rng


def load_trainer_state(path: str | Path, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Trainer state JSON and RNG state tensors (every field and tensor checked); restores
    ``optimizer`` in place when given."""
    path = recover_checkpoint(path)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path} has no trainer_state.json: it cannot be resumed (only used for inference)")
    try:
        state = _check_state(json.loads(state_file.read_text()))
        rng = _check_rng(load_file(str(path / "rng_state.safetensors"))) \
            if (path / "rng_state.safetensors").exists() else {}
        if optimizer is not None and "optimizer" in state:
            if not isinstance(state["optimizer"], dict):
                raise ValueError("optimizer must be a table")
            _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, SafetensorError, OSError, KeyError,
            ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: trainer state is corrupted ({exc})") from None
    return state, rng


# --- fine-tuned models: provenance and adapters -----------------------------------------------

TUNED_META = "fissure.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and bytes, in name order): a base
    model's identity that does not depend on the file format it came in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_tuned_meta(directory: Path, meta: dict) -> None:
    (directory / TUNED_META).write_text(json.dumps({**meta, "fissure_version": __version__}, indent=2) + "\n")


def read_tuned_meta(path: str | Path) -> dict | None:
    """``fissure.json`` of a fine-tuned checkpoint (``None`` if there is none)."""
    file = recover_checkpoint(path) / TUNED_META
    if not file.is_file():
        return None
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{file} is corrupted ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("adapter", "full"):
        raise CheckpointError(f"{file} is not a fissure fine-tuning record (no kind 'adapter' or 'full')")
    return meta


def write_adapter(directory: Path, model: torch.nn.Module) -> None:
    """The LoRA weights of ``model`` and peft's config of them (peft's file names)."""
    from .lora import adapter_state, peft_config

    save_file(adapter_state(model), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(peft_config(model), indent=2, default=str) + "\n")


def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(fissure.json, adapter weights)`` of an adapter checkpoint."""
    path = Path(path)
    meta = read_tuned_meta(path)
    if meta is None or meta["kind"] != "adapter":
        raise CheckpointError(f"{path} is not an adapter checkpoint (no {TUNED_META} of kind 'adapter')")
    for key in ("base", "base_sha256", "lora"):
        if key not in meta:
            raise CheckpointError(f"{path / TUNED_META} lacks '{key}'")
    if not isinstance(meta["base"], str) or not meta["base"] or not isinstance(meta["base_sha256"], str):
        raise CheckpointError(f"{path / TUNED_META}: 'base' and 'base_sha256' must be text")
    from ..config import from_dict
    from .lora import LoraSpec

    try:
        from_dict(LoraSpec, meta["lora"], prefix="lora.")
    except UserError as exc:
        raise CheckpointError(f"{path / TUNED_META}: {exc}") from None
    try:
        state = load_file(str(path / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path / ADAPTER_WEIGHTS} is missing, corrupted or truncated: {exc}") from None
    return meta, state