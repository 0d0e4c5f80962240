"""Speculative decoding on SmolLM2-135M-Instruct (30 layers): plain greedy decoding against
speculative greedy decoding with ``layers:N`` self-drafts (the model's own first N layers, then its
final norm and head: no training, no extra weights) and with any model of the same tokenizer as the
draft (``--draft``: a student from ``fissure distill``, or ``dtype:int4`` / ``dtype:int8``: a copy of
SmolLM2 with quantised weights), batch 1, in the same run.

    python benchmarks/speculative_smollm2.py --threads 2
    python benchmarks/speculative_smollm2.py --layers --draft dtype:int4 dtype:int8 --new-tokens 64
    python benchmarks/speculative_smollm2.py --layers --draft runs/distill-.../distilled --new-tokens 64

Every speculative output is asserted equal to the plain greedy output, token for token. Reports new
tokens/s, the acceptance rate, the speed-up over plain decoding, and the speed-up the acceptance
rate predicts (Leviathan et al.: a round of cost ``gamma * c + v`` target steps yields
``(1 - a^(gamma+1)) / (1 - a)`` tokens, with ``c`` the draft's measured step cost relative to the target's,
``v`` the measured cost of verifying gamma + 1 tokens in one pass, and ``a`` the acceptance rate
taken as the per-token acceptance probability).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

import fissure  # noqa: E402
from fissure.decode import Decoding, generate  # noqa: E402
from fissure.backends.speculative import DTYPE_DRAFT, quantized_copy  # noqa: E402
from fissure.decode.speculative import first_layers, speculative_generate  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n"]


def predicted_speedup(alpha: float, gamma: int, cost: float, verify: float) -> float:
    """Tokens per round over the round's cost in target steps (``verify``: the cost of scoring
    gamma + 1 tokens in one pass, in steps; 1 on an ideally memory-bound machine)."""
    tokens = gamma + 1 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * cost + verify)


@torch.inference_mode()
def step_cost(model, prompt: list[int], width: int, repeats: int = 3) -> float:
    """Seconds of one cached forward pass over ``width`` new tokens after ``prompt`` (best of repeats):
    verification scores gamma + 1 tokens in one pass, and pays off only if that costs about one step."""
    best = float("inf")
    for _ in range(repeats):
        cache = model.new_kv_cache(1, len(prompt) + width)
        model(torch.tensor([prompt]), kv_cache=cache)
        t = time.perf_counter()
        model(torch.tensor([prompt[:width]]), kv_cache=cache)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--layers", type=int, nargs="*", default=[8, 20])
    ap.add_argument("--draft", nargs="*", default=[], help="draft model specs (same tokenizer as SmolLM2)")
    ap.add_argument("--prompt", nargs="*", default=PROMPTS, help="prompts (default: two short ones)")
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = fissure.load("smollm2")  # the native Llama, q/k/v and gate/up fused, as `fissure generate` runs it
    model = lm.model
    prompts = [lm.tokenizer.encode(p) for p in args.prompt]
    d = Decoding(max_new_tokens=args.new_tokens)
    drafts = {f"layers:{n}": first_layers(model, n) for n in args.layers}
    for spec in args.draft:
        if m := DTYPE_DRAFT.fullmatch(spec):
            drafts[spec] = quantized_copy(model, m.group(1))
            continue
        draft_lm = fissure.load(spec)
        if draft_lm.tokenizer.encode(args.prompt[0]) != prompts[0]:
            raise SystemExit(f"{spec} does not share SmolLM2's tokenizer")
        drafts[spec] = draft_lm.model

    def plain(prompt):
        return generate(model, [prompt], d, eos_token_id=None).sequences[0], None

    def runner(draft):
        def run(prompt):
            out = speculative_generate(model, draft, [prompt], d, gamma=args.gamma, eos_token_id=None)
            return out.sequences[0], (out.accepted, out.drafted)
        return run

    variants = {"plain": plain, **{name: runner(dr) for name, dr in drafts.items()}}
    for fn in variants.values():  # warm-up
        fn(prompts[0][:3])
    reference = {i: plain(p)[0] for i, p in enumerate(prompts)}
    times = dict.fromkeys(variants, 0.0)
    tokens = dict.fromkeys(variants, 0)
    counts = {name: [0, 0] for name in variants}
    for _ in range(args.rounds):
        for i, prompt in enumerate(prompts):
            for name, fn in variants.items():
                t = time.perf_counter()
                seq, acc = fn(prompt)
                times[name] += time.perf_counter() - t
                assert seq == reference[i], f"{name} changed the greedy output of prompt {i}"
                tokens[name] += len(seq)
                if acc:
                    counts[name][0] += acc[0]
                    counts[name][1] += acc[1]
    one, verify = step_cost(model, prompts[0], 1), step_cost(model, prompts[0], args.gamma + 1)
    cost = {name: step_cost(draft, prompts[0], 1) / one for name, draft in drafts.items()}
    base = tokens["plain"] / times["plain"]
    rows = {}
    print(f"SmolLM2-135M greedy, batch 1, {args.new_tokens} new tokens x {len(prompts)} prompts x {args.rounds} rounds, "
          f"gamma {args.gamma}, {args.threads} threads, cpu {torch.backends.cpu.get_cpu_capability()}")
    print(f"one cached target step {one * 1e3:.0f} ms; verifying {args.gamma + 1} tokens in one pass {verify * 1e3:.0f} ms "
          f"(x{verify / one:.2f})")
    for name in variants:
        tps = tokens[name] / times[name]
        row = {"tokens_per_s": tps, "speedup": tps / base}
        line = f"{name:10s} {tps:6.1f} tokens/s  x{tps / base:.2f}"
        if name != "plain":
            alpha = counts[name][0] / counts[name][1]
            row.update(acceptance_rate=alpha, draft_cost=cost[name],
                       predicted_speedup=predicted_speedup(alpha, args.gamma, cost[name], verify / one))
            line += (f"  acceptance {alpha:.3f}  draft cost {cost[name]:.2f}  "
                     f"(predicted x{row['predicted_speedup']:.2f})")
        rows[name] = row
        print(line)
    path = save("speculative_smollm2", {"config": vars(args), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                        "outputs_identical": True, "results": rows,
                                        "step_s": one, "verify_s": verify}, args.seed, args.threads)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
