"""``report.html`` of ``fissure attention``: one grid of heat maps per layer (a subplot per head,
tokens on both axes), drawn with matplotlib and embedded as PNG, and a table of head entropies."""

from __future__ import annotations

import io
from pathlib import Path

from ..runs import write_text_atomic
from .html import Raw, image, num, page, paragraph, section, table

MAX_TICK_LABELS = 48  # more tokens than this: axes without labels (they would overlap)


def _label(token: str) -> str:
    """A token as a tick label: whitespace made visible, mathtext's ``$`` left alone."""
    return token.replace("\n", "\\n").replace(" ", "\u00b7").replace("$", r"\$") or "\u2205"


def heatmap_grid(maps, tokens: list[str], heads: list[int], title: str, key_tokens: list[str] | None = None) -> bytes:
    """A PNG with one heat map per head of one layer's ``maps`` ``(H, queries, keys)``: queries
    (``tokens``) down, keys (``key_tokens``, the same tokens unless given) across."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # a token the font cannot draw

    key_tokens = tokens if key_tokens is None else key_tokens
    T, K = len(tokens), len(key_tokens)
    cols = min(len(heads), 4)
    rows = (len(heads) + cols - 1) // cols
    size = 2.2 + 0.14 * min(max(T, K), MAX_TICK_LABELS)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    labels, key_labels = [_label(t) for t in tokens], [_label(t) for t in key_tokens]
    for ax in axes.flat[len(heads):]:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        ax.imshow(maps[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        if max(T, K) <= MAX_TICK_LABELS:
            ax.set_xticks(range(K), key_labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), labels, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("key", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_attention_report(results: dict, groups: dict, layers: list[int], heads: list[int] | None) -> str:
    """The page: settings, a head table, then a heat map grid for each layer in ``layers`` of each
    group (``self``; or an encoder-decoder's ``encoder``, ``decoder`` and ``cross``)."""
    tokens = results["tokens"]
    single = len(groups) == 1
    body = [paragraph(f"{results['model']} ({results['backend']}, {results['kind']}): {len(tokens)} tokens, "
                      f"{results['n_layer']} layers, {results['n_head']} heads. Row = query token, column = "
                      "key token; each row sums to 1 and a causal map gives no weight above the diagonal. "
                      "Attention shows where a head reads from, not why the model predicts what it does "
                      "(Jain & Wallace 2019, Attention is not Explanation; Wiegreffe & Pinter 2019)."),
            section("Text", paragraph(results["text"]), table(["#", "token", "id"], [[i, t, n] for i, (t, n) in
                                                          enumerate(zip(tokens, results["ids"]))], text_columns=[1]))]
    if "translation" in results:
        body.append(section("Translation (greedy; the decoder's input)", paragraph(results["translation"]),
                            table(["#", "token", "id"], [[i, t, n] for i, (t, n) in enumerate(
                                zip(results["target_tokens"], results["target_ids"]))], text_columns=[1])))
    rows = [[group, layer, h, num(s["entropy"], 3), num(s["relative_entropy"], 3), num(s["first_token_share"], 3)]
            for group, info in results["groups"].items() for layer in layers if layer < info["n_layer"]
            for h, s in enumerate(info["heads"][layer]) if heads is None or h in heads]
    body.append(section("Heads", paragraph("Entropy: mean over query rows, nats. Relative: each row's entropy "
                                           "over its maximum, log(keys seen) (1 = uniform, 0 = one key). "
                                           "First-token share: mean weight on key 0.", "note"),
                        table(["group", "layer", "head", "entropy", "relative entropy", "first-token share"], rows)))
    chosen = heads if heads is not None else list(range(results["n_head"]))
    for group, (maps, queries, keys, _) in groups.items():
        for layer in layers:
            if layer >= len(maps):
                continue
            title = f"layer {layer}" if single else f"{group} layer {layer}"
            png = heatmap_grid(maps[layer], queries, chosen, title, key_tokens=keys)
            body.append(section(title.capitalize(), Raw(image(png, f"attention heat maps of {title}"))))
    return page(f"fissure attention: {results['model']}", body)


def write_attention_report(run_dir: str | Path, results: dict, groups: dict, layers: list[int],
                           heads: list[int] | None) -> Path:
    path = Path(run_dir) / "report.html"
    write_text_atomic(path, render_attention_report(results, groups, layers, heads))
    return path
