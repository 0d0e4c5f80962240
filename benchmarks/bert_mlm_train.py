"""MLM training throughput: our Bert (train.mlm's MaskedLM loss) against HF ``BertForMaskedLM`` with
the same config, initial weights, batches, masks and optimizer, rounds interleaved in one run.

Variants: ``hf`` (``BertForMaskedLM(..., labels=...)``: decoder over every position), ``ours`` (the
loss ``fissure train`` uses: the decoder only at the masked positions, as Google's BERT) and
``ours-full`` (our model with logits at every position, as HF: isolates the model from that choice).

    python benchmarks/bert_mlm_train.py --threads 1 --steps 4 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import save  # noqa: E402

from fissure.models.hf_bert import bert_from_hf_state_dict, config_from_hf_bert  # noqa: E402
from fissure.train.batches import IGNORE  # noqa: E402
from fissure.train.mlm import MaskedLM, mask_tokens  # noqa: E402
from fissure.train.trainer import TrainConfig, make_optimizer  # noqa: E402


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        lengths = torch.randint(seq * 3 // 4, seq + 1, (batch,), generator=g)
        mask = (torch.arange(seq)[None] < lengths[:, None]).long()
        ids[:, 0], ids[mask == 0] = 2, 0
        inputs, labels = mask_tokens(ids, mask.bool() & (ids > 4), g, mask_id=4, random_ids=torch.arange(5, vocab))
        out.append((inputs, mask, torch.zeros_like(ids), labels))
    return out


def step_fn(model, variant: str):
    opt = make_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.01, objective="mlm"))
    objective = MaskedLM()

    def step(batch):
        inputs, mask, types, labels = batch
        if variant == "hf":
            loss = model(input_ids=inputs, attention_mask=mask, token_type_ids=types, labels=labels).loss
        elif variant == "ours":
            loss = objective.loss(model, (inputs, mask, types, labels, None))
        else:
            logits, _ = model(inputs, attention_mask=mask, token_type_ids=types)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(args.seed)
    hf_cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
                        num_attention_heads=args.n_embd // 64, intermediate_size=4 * args.n_embd,
                        max_position_embeddings=args.seq, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = BertForMaskedLM(hf_cfg).train()
    models = {"hf": hf}
    for name in ("ours", "ours-full"):
        models[name] = bert_from_hf_state_dict(config_from_hf_bert(hf_cfg.to_dict()), hf.state_dict()).train()
    steps = {name: step_fn(m, name) for name, m in models.items()}
    batches = make_batches(args.steps * args.rounds + 1, args.batch, args.seq, args.vocab, args.seed)
    first_loss = {name: step(batches[0]) for name, step in steps.items()}  # warm-up; same weights: same loss
    times = {name: 0.0 for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for b in batches[1 + r * args.steps: 1 + (r + 1) * args.steps]:
                step(b)
            times[name] += time.perf_counter() - t
    tokens = args.batch * args.seq * args.steps * args.rounds
    rows = {name: {"tokens_per_s": tokens / times[name], "first_loss": first_loss[name],
                   "vs_hf": times["hf"] / times[name]} for name in steps}
    result = {"config": vars(args), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "variants": rows}
    path = save("bert_mlm_train", result, args.seed, args.threads)
    print(f"cpu capability {result['cpu_capability']}, {args.threads} thread(s)")
    for name, row in rows.items():
        print(f"{name:10s} {row['tokens_per_s']:9,.0f} tokens/s  {row['vs_hf']:.2f}x HF  first loss {row['first_loss']:.4f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
