"""Translation decoding speed: our Seq2Seq + fissure.decode against HF ``MarianMTModel.generate`` on the
same random weights (a MarianMTModel copied into ours), in the same run, rounds interleaved.

    python benchmarks/translate_decode.py --threads 1 --rounds 2

Sentences per second for greedy and beam search (4 beams) over a batch of sources. EOS is made
unreachable (a -1e4 logit bias on both sides) so both generate exactly ``--new-tokens`` tokens per
sentence; the fp32 greedy outputs are checked to be identical. ``--dtypes fp32,int8,int4`` also times
our model with weight-only int8 / int4 linear layers (``fissure translate --dtype``), whose outputs
differ from fp32's: the share of greedy tokens equal to fp32's is reported beside their speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from fissure.decode import Decoding  # noqa: E402
from fissure.decode.seq2seq import generate_seq2seq  # noqa: E402
from fissure.models.quantize import DTYPES, set_dtype  # noqa: E402
from fissure.models.hf_marian import seq2seq_from_hf_state_dict  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--src-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtypes", default="fp32", help="ours in these dtypes (comma-separated: fp32,bf16,int8,int4)")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    if "fp32" not in dtypes or any(d not in DTYPES for d in dtypes):
        ap.error(f"--dtypes must include fp32 and name only {', '.join(DTYPES)}")
    torch.set_num_threads(args.threads)
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(args.seed)
    pad, eos = args.vocab - 1, 0
    hf = MarianMTModel(MarianConfig(
        vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn, max_position_embeddings=256, pad_token_id=pad, decoder_start_token_id=pad,
        eos_token_id=eos, forced_eos_token_id=None, activation_function="swish", scale_embedding=True,
        init_std=0.1)).eval()
    with torch.no_grad():
        hf.final_logits_bias[0, eos] = -1e4  # never stop early: both sides generate --new-tokens
    models = {}
    for dtype in dtypes:
        models[dtype] = seq2seq_from_hf_state_dict(hf.config, hf.state_dict())
        models[dtype].fuse()
        set_dtype(models[dtype], dtype)
    g = torch.Generator().manual_seed(args.seed)
    n = args.new_tokens

    def sources():
        src = torch.randint(1, pad, (args.batch, args.src_len), generator=g)
        src[:, -1] = eos
        return src

    def hf_run(src, beams):
        with torch.inference_mode():
            out = hf.generate(input_ids=src, attention_mask=torch.ones_like(src), num_beams=beams,
                              max_length=n + 1, do_sample=False, no_repeat_ngram_size=0, bad_words_ids=None)
        assert out.shape[1] == n + 1
        return out[:, 1:].tolist()

    def ours(dtype):
        def run(src, beams):
            out = generate_seq2seq(models[dtype], src.tolist(), Decoding(max_new_tokens=n, num_beams=beams))
            assert all(len(s) == n for s in out.sequences)
            return out.sequences
        return run

    cases = {"greedy": 1, "beam4": 4}
    runners = {"hf": hf_run, **{("ours" if d == "fp32" else f"ours_{d}"): ours(d) for d in dtypes}}
    src = sources()
    reference = hf_run(src, 1)
    assert reference == runners["ours"](src, 1), "greedy outputs differ"
    agreement = {}
    for who in runners:
        if who.startswith("ours_"):  # a quantised model: the share of greedy tokens equal to fp32's
            got = runners[who](src, 1)
            agreement[who] = sum(a == b for x, y in zip(got, reference) for a, b in zip(x, y)) / (len(src) * n)
            print(f"{who}: {agreement[who]:.1%} of greedy tokens equal to fp32's")
    for beams in cases.values():  # warm-up
        for fn in runners.values():
            fn(src, beams)
    times = {(c, who): 0.0 for c in cases for who in runners}
    for _ in range(args.rounds):
        for c, beams in cases.items():
            src = sources()
            for who, fn in runners.items():
                t = time.perf_counter()
                fn(src, beams)
                times[(c, who)] += time.perf_counter() - t
    rows = {}
    for c in cases:
        sps = {who: args.rounds * args.batch / times[(c, who)] for who in runners}
        rows[c] = {"hf_sentences_per_s": sps["hf"], "ours_sentences_per_s": sps["ours"],
                   "speedup": sps["ours"] / sps["hf"]}
        for who in runners:
            if who.startswith("ours_"):
                rows[c][f"{who}_sentences_per_s"], rows[c][f"{who}_speedup"] = sps[who], sps[who] / sps["hf"]
        print(f"{c:8s} hf {sps['hf']:7.2f}   " + "   ".join(
            f"{who} {sps[who]:7.2f} (x{sps[who] / sps['hf']:.2f})" for who in runners if who != "hf") + " sentences/s")
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"cpu capability: {capability}, threads {args.threads}")
    path = save("translate_decode", {"config": vars(args), "cpu_capability": capability, "results": rows,
                                        "greedy_token_agreement_with_fp32": agreement},
                args.seed, args.threads)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
