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
    entropies). Models: a checkpoint (GPT, BERT, encoder-decoder), smollm2, an HF Llama, BERT or Marian
    directory, a .gguf Llama. For an encoder-decoder TEXT is the source: its encoder self-attention, and the
    decoder's self- and cross-attention over the model's greedy translation. See docs/attention.md."""
    import json

    from safetensors.torch import save_file

    from ..backends import load
    from ..backends.registry import ModelSpec, resolve
    from ..diagnose.attention import (
        NATIVE, NoAttentionAccessError, encoder_attention, head_stats, is_encoder, is_translation_model,
        text_attention, translation_attention,
    )
    from ..errors import UserError
    from ..report.attention import write_attention_report
    from ..utils import set_threads

    check_text("TEXT", text)
    if not text:
        raise UserError("TEXT is empty")
    kind = "encoder-decoder" if is_translation_model(model) else "encoder" if is_encoder(model) else "decoder"
    if kind == "decoder":
        entry = resolve(ModelSpec.parse(model), backend)
        if entry.name == "http" or entry.engine == "transformers":  # refused before loading anything
            raise NoAttentionAccessError(f"attention maps need a model fissure runs natively: {NATIVE}; "
                                         f"{model} would run on the {entry.name} backend")
    n_threads = set_threads(threads)
    extra = {}
    if kind == "encoder-decoder":  # TEXT is the source; the decoder reads the model's greedy translation
        tr = translation_attention(model, text)
        groups, tokens, ids, backend_name = tr.groups(), tr.source_tokens, tr.source_ids, "seq2seq"
        extra = {"translation": tr.translation, "target_tokens": tr.target_tokens, "target_ids": tr.target_ids}
    else:
        if kind == "encoder":
            att, backend_name = encoder_attention(model, text), "bert"
        else:
            lm = load(model, backend=backend)
            att, backend_name = text_attention(lm, text), lm.capabilities.backend
        groups, tokens, ids = {"self": (att.maps, att.tokens, att.tokens, att.causal)}, att.tokens, att.ids
    main_maps = next(iter(groups.values()))[0]
    n_layer, n_head = max(len(g[0]) for g in groups.values()), main_maps[0].shape[0]
    for name, value, count in (("--layer", layer, n_layer), ("--head", head, n_head)):
        if value is not None and not 0 <= value < count:
            raise UserError(f"{name} must be from 0 to {count - 1} for this model, not {value}")
    layers = [layer] if layer is not None else list(range(n_layer))
    heads = [head] if head is not None else None
    summary = {name: {"n_layer": len(maps), "causal": causal, "queries": len(q), "keys": len(k),
                      "heads": head_stats(maps, causal)} for name, (maps, q, k, causal) in groups.items()}
    results = {"model": model, "backend": backend_name, "kind": kind, "causal": kind == "decoder", "text": text,
               "tokens": tokens, "ids": ids, **extra, "n_layer": len(main_maps), "n_head": n_head,
               "shape": [len(main_maps), n_head, *main_maps[0].shape[1:]],
               "drawn": {"layers": layers, "heads": heads if heads is not None else list(range(n_head))},
               "heads": next(iter(summary.values()))["heads"], "groups": summary}
    config = {"model": model, "backend": backend_name, "text": text, "layer": -1 if layer is None else layer,
              "head": -1 if head is None else head}
    with run_directory("attention", config, None, root=out_dir, threads=n_threads) as run_dir:
        prefix = (lambda group: "") if len(groups) == 1 else (lambda group: f"{group}_")
        save_file({f"{prefix(g)}layer_{i}": m.contiguous() for g, (maps, *_) in groups.items()
                   for i, m in enumerate(maps)}, str(run_dir / "attention.safetensors"),
                  metadata={"model": str(model), "tokens": json.dumps(tokens, ensure_ascii=False),
                            "layout": "[<group>_]layer_<i>: (heads, query, key), rows sum to 1"})
        results["run_dir"] = str(run_dir)
        write_json(run_dir / "results.json", results)
        write_attention_report(run_dir, results, groups, layers, heads)
    if as_json:
        print_json(results)
    else:
        for group, info in summary.items():
            for i in layers:
                if i >= info["n_layer"]:
                    continue
                line = "  ".join(f"h{h}:{s['entropy']:.2f}" for h, s in enumerate(info["heads"][i])
                                 if heads is None or h in heads)
                label = f"layer {i}" if len(summary) == 1 else f"{group} layer {i}"
                out.print(f"{label} entropy (nats)  {line}")
    err.print(f"run directory: {run_dir}")
