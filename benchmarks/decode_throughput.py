"""Decoding throughput: our GPT + fissure.decode against HF ``generate`` on the same weights
(a GPT2LMHeadModel copied into our GPT), in the same run, rounds interleaved.

    python benchmarks/decode_throughput.py --threads 2

Measures new tokens per second for greedy decoding at batch 1 and for sampling 32 prompts
(top-p 0.9, temperature 0.8). Both sides generate exactly ``--new-tokens`` tokens (no EOS), with
a KV cache. ``--checkpoint`` takes a trained fissure GPT (e.g. ``fissure quickstart``'s): random
weights give near-uniform next-token distributions, which no trained model has and which make
top-p sampling sort the whole vocabulary every step. ``ours-bf16`` runs our model with bf16
weights (lower precision: tokens can differ from fp32); ``ours`` is fp32 like HF.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from fissure.decode import Decoding, generate  # noqa: E402
from fissure.models.hf_gpt2 import gpt_from_hf_gpt2  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="a trained fissure GPT checkpoint (GPT-2 layout)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    if args.checkpoint:
        from fissure.models.hf_gpt2 import hf_gpt2_from_gpt
        from fissure.train.checkpoint import load_model_from_checkpoint

        ours = load_model_from_checkpoint(args.checkpoint)
        hf = hf_gpt2_from_gpt(ours)
        args.vocab, args.block = ours.config.vocab_size, ours.config.block_size
    else:
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.block, n_embd=args.n_embd,
                                        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=0,
                                        eos_token_id=0)).eval()
        ours = gpt_from_hf_gpt2(hf)
    ours.fuse_projections()  # as fissure.load runs a checkpoint
    ours_bf16 = gpt_from_hf_gpt2(hf).to(torch.bfloat16).fuse_projections()
    g = torch.Generator().manual_seed(args.seed)
    n = args.new_tokens

    def prompts(b):
        return torch.randint(1, args.vocab, (b, args.prompt_len), generator=g)

    def hf_run(ids, sample):
        kw = dict(do_sample=True, top_p=0.9, temperature=0.8) if sample else dict(do_sample=False)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              pad_token_id=0, eos_token_id=None, **kw)
        assert out.shape[1] == ids.shape[1] + n

    def ours_run(ids, sample, model=ours):
        d = Decoding(max_new_tokens=n, do_sample=sample, top_p=0.9 if sample else 1.0,
                     temperature=0.8 if sample else 1.0, seed=args.seed)
        out = generate(model, ids.tolist(), d, eos_token_id=None)
        assert all(len(s) == n for s in out.sequences)

    cases = {"greedy_b1": (1, False), "sample_b32": (32, True)}
    runners = {"hf": hf_run, "ours": ours_run, "ours-bf16": lambda ids, s: ours_run(ids, s, ours_bf16)}
    times = {(c, who): 0.0 for c in cases for who in runners}
    for c, (b, sample) in cases.items():  # warm-up
        ids = prompts(b)
        for fn in runners.values():
            fn(ids, sample)
    for _ in range(args.rounds):
        for c, (b, sample) in cases.items():
            ids = prompts(b)
            for who, fn in runners.items():
                t = time.perf_counter()
                fn(ids, sample)
                times[(c, who)] += time.perf_counter() - t
    rows = {}
    for c, (b, _) in cases.items():
        tokens = args.rounds * b * n
        tps = {who: tokens / times[(c, who)] for who in runners}
        rows[c] = {f"{who}_tokens_per_s": v for who, v in tps.items()}
        rows[c].update(speedup=tps["ours"] / tps["hf"], speedup_bf16=tps["ours-bf16"] / tps["hf"])
        print(f"{c:12s} hf {tps['hf']:8.1f}   ours {tps['ours']:8.1f} (x{tps['ours'] / tps['hf']:.2f})   "
              f"ours-bf16 {tps['ours-bf16']:8.1f} (x{tps['ours-bf16'] / tps['hf']:.2f})  tokens/s")
    name = "decode_throughput" + ("_trained" if args.checkpoint else "")
    path = save(name, {"config": vars(args), "results": rows}, args.seed, args.threads)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
