"""Fill in ``[MASK]`` tokens with a masked language model (a :class:`~fissure.models.bert.Bert`),
returning what HF's ``fill-mask`` pipeline returns: for each mask, the ``top_k`` most likely tokens
as ``{score, token, token_str, sequence}`` (one list for one mask, a list of lists for several).

Each ``[MASK]`` stands for exactly one token (one WordPiece), and each is predicted on its own with
the other masks left in place, as HF does: a word the vocabulary splits into pieces ("un ##happy")
needs one mask per piece, and several masks are not a joint prediction.
"""

from __future__ import annotations

import torch

from ..errors import GenerationError

MAX_MASKS = 8  # masks in one text: more would leave too little context around each to mean much


def encode_with_masks(tokenizer, text: str) -> list[int]:
    """``[CLS] text [SEP]`` with every literal ``tokenizer.mask_token`` in ``text`` as the mask id
    (and nothing else in ``text`` read as a special token)."""
    mask = tokenizer.mask_token
    pieces = text.split(mask)
    if len(pieces) == 1:
        raise GenerationError(f"the text has no {mask} token: write {mask} where a token should be predicted, "
                              f"e.g. \"The {mask} sat on the mat.\"")
    if len(pieces) - 1 > MAX_MASKS:
        raise GenerationError(f"the text has {len(pieces) - 1} {mask} tokens; fill-mask predicts at most {MAX_MASKS}")
    ids = [tokenizer.cls_id]
    for i, piece in enumerate(pieces):
        if i:
            ids.append(tokenizer.mask_id)
        ids.extend(tokenizer.encode(piece))
    return ids + [tokenizer.sep_id]


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, top_k: int = 5) -> list[dict] | list[list[dict]]:
    """The ``top_k`` predictions for each mask in ``text`` (HF's fill-mask output, see the module doc)."""
    if not isinstance(top_k, int) or top_k < 1:
        raise GenerationError(f"top_k must be a positive integer, not {top_k!r}")
    ids = encode_with_masks(tokenizer, text)
    limit = model.config.block_size
    if len(ids) > limit:
        raise GenerationError(f"the text is {len(ids)} tokens with [CLS] and [SEP]; the model reads at most {limit}")
    input_ids = torch.tensor([ids])
    model.eval()
    logits, _ = model(input_ids, mlm_positions=input_ids == tokenizer.mask_id)
    probs = logits.float().softmax(-1)
    scores, tokens = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    single = len(positions) == 1
    results = []
    for position, row_scores, row_tokens in zip(positions, scores.tolist(), tokens.tolist()):
        row = []
        for score, token in zip(row_scores, row_tokens):
            filled = list(ids)
            filled[position] = token
            filled = [t for t in filled if t != tokenizer.pad_id]  # as HF: a predicted [PAD] is left out
            row.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                        "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
        results.append(row)
    return results[0] if single else results
