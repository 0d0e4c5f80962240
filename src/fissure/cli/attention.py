"""``fissure attention MODEL TEXT``: attention heat maps per layer and head, for a native model."""

from __future__ import annotations

from typing import Annotated

import typer

from ..runs import run_directory, write_json
from .app import app
from .common import BackendOption, JsonOption, ModelArgument, OutDirOption, ThreadsOption, check_text, err, guard, out, print_json


@app.command(epilog='Examples: fissure attention smollm2 "The nurse said that she would be late.";  '
                    'fissure attention runs/train-.../checkpoint "hello world" --layer 1 --head 0')
@guard
def attention(
    model: ModelArgument,
    text: Annotated[str, typer.Argument(help="The text whose attention to show.")],
    layer: Annotated[int, typer.Option(help="Draw only this layer (0-based). [default: every layer]")] = None,
    head: Annotated[int, typer.Option(help="Draw only this head (0-based). [default: every head]")] = None,
    backend: BackendOption = "auto",
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: JsonOption = False,
) -> None:
    """Attention heat maps of TEXT at every layer and head, for a model fissure runs itself.

    Writes report.html (heat maps), attention.safetensors (the maps) and results.json (tokens, per-head
    entropies). Models: a checkpoint (GPT, BERT), smollm2, an HF Llama or BERT directory, a .gguf Llama.
    See docs/attention.md."""
    import json

    from safetensors.torch import save_file

    from ..backends import load
    from ..backends.registry import ModelSpec, resolve
    from ..diagnose.attention import (
        NATIVE, NoAttentionAccessError, encoder_attention, head_summary, is_encoder, text_attention,
    )
    from ..errors import UserError
    from ..report.attention import write_attention_report
    from ..utils import set_threads

    check_text("TEXT", text)
    if not text:
        raise UserError("TEXT is empty")
    encoder = is_encoder(model)
    if not encoder:
        entry = resolve(ModelSpec.parse(model), backend)
        if entry.name == "http" or entry.engine == "transformers":  # refused before loading anything
            raise NoAttentionAccessError(f"attention maps need a model fissure runs natively: {NATIVE}; "
                                         f"{model} would run on the {entry.name} backend")
    n_threads = set_threads(threads)
    if encoder:
        att, backend_name = encoder_attention(model, text), "bert"
    else:
        lm = load(model, backend=backend)
        att, backend_name = text_attention(lm, text), lm.capabilities.backend
    n_layer, n_head = len(att.maps), att.maps[0].shape[0]
    for name, value, count in (("--layer", layer, n_layer), ("--head", head, n_head)):
        if value is not None and not 0 <= value < count:
            raise UserError(f"{name} must be from 0 to {count - 1} for this model, not {value}")
    layers = [layer] if layer is not None else list(range(n_layer))
    heads = [head] if head is not None else None
    results = {"model": model, "backend": backend_name, "causal": att.causal, "text": text, "tokens": att.tokens,
               "ids": att.ids, "n_layer": n_layer, "n_head": n_head, "shape": [n_layer, n_head, len(att.ids),
                                                                                len(att.ids)],
               "drawn": {"layers": layers, "heads": heads if heads is not None else list(range(n_head))},
               "heads": head_summary(att)}
    config = {"model": model, "backend": backend_name, "text": text, "layer": -1 if layer is None else layer,
              "head": -1 if head is None else head}
    with run_directory("attention", config, None, root=out_dir, threads=n_threads) as run_dir:
        save_file({f"layer_{i}": m.contiguous() for i, m in enumerate(att.maps)}, str(run_dir / "attention.safetensors"),
                  metadata={"model": str(model), "tokens": json.dumps(att.tokens, ensure_ascii=False),
                            "layout": "layer_<i>: (heads, query, key), rows sum to 1"})
        results["run_dir"] = str(run_dir)
        write_json(run_dir / "results.json", results)
        write_attention_report(run_dir, results, att.maps, layers, heads)
    if as_json:
        print_json(results)
    else:
        for i in layers:
            line = "  ".join(f"h{h}:{s['entropy']:.2f}" for h, s in enumerate(results["heads"][i])
                             if heads is None or h in heads)
            out.print(f"layer {i} entropy (nats)  {line}")
    err.print(f"run directory: {run_dir}")
