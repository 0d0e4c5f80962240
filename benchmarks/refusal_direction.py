"""Residual-stream activations for a refusal direction on SmolLM2-135M-Instruct: fissure's
``last_token_states`` (forward hooks on the native Llama, batched) against HF transformers'
``output_hidden_states`` on the same weights and prompts (one prompt at a time: no padding to get
wrong, as a user of transformers would write it first). Every
built-in policy's restricted requests and benign twins, rendered with SmolLM2's chat template, in
every registered attack's form: the white-box pass the probe suite would need.

    python benchmarks/refusal_direction.py --threads 2 --layers 16 --sample 560
    python benchmarks/refusal_direction.py --threads 2 --layers 16 --sample 560 --dtype bf16   # both in bf16

``--dtype bf16`` is skipped, saying why, on a CPU whose bf16 matmul is slow (AVX2 only).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save, slow_dtype  # noqa: E402

import fissure  # noqa: E402
from fissure.probes.attacks import ATTACKS, get_attack  # noqa: E402
from fissure.probes.direction import last_token_states  # noqa: E402
from fissure.probes.policies import load_policy  # noqa: E402
from fissure.runs import cache_dir  # noqa: E402
from fissure.utils import set_threads  # noqa: E402


def prompts() -> list[list[dict]]:
    chats = []
    for name in ("secret", "private_record", "topic_ban"):
        policy = load_policy(name)
        texts = list(policy.requests) + [t.prompt for t in policy.benign_twins]
        for attack in sorted(ATTACKS):
            for text in texts:
                chats.append([{"role": "system", "content": policy.system_prompt},
                              {"role": "user", "content": get_attack(attack).apply(text).text}])
    return chats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", type=int, default=0,
                    help="N prompts drawn at random (seed 0) from all of them (0: all; the full set takes ~30 min)")
    ap.add_argument("--layers", type=int, default=0, help="also time fissure's pass stopped after this many layers "
                                                        "(what projecting on a chosen layer needs; 0: skip)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="weights and activations of both racers (bf16: `fissure.load(..., dtype='bf16')`)")
    args = ap.parse_args()
    if args.sample < 0 or args.layers < 0:
        ap.error("--sample and --layers must be 0 or more")
    set_threads(args.threads)
    torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.dtype == "bf16" and (why := slow_dtype(torch_dtype)):
        sys.exit(why)
    from transformers import AutoModelForCausalLM

    lm = fissure.load("smollm2", dtype=args.dtype)
    chats = prompts()
    if args.sample:
        chats = random.Random(0).sample(chats, min(args.sample, len(chats)))
    ids = [lm.prompt_ids(c) for c in chats]
    hf = AutoModelForCausalLM.from_pretrained(str(cache_dir() / "smollm2-135m-instruct"),  # fissure.load's copy
                                              dtype=torch_dtype).eval()

    t = time.perf_counter()
    ours = last_token_states(lm, chats, batch_size=16)
    ours_s = time.perf_counter() - t

    partial_s = None
    if args.layers:
        t = time.perf_counter()
        upto = last_token_states(lm, chats, batch_size=16, layers=args.layers)
        partial_s = time.perf_counter() - t
        assert torch.equal(upto, ours[:args.layers])

    t = time.perf_counter()
    with torch.inference_mode():
        # each prompt's last position only, copied out: a view would keep all its hidden states alive
        ref = torch.stack([torch.stack([h[0, -1].clone() for h in hf(torch.tensor([x]), output_hidden_states=True)
                                        .hidden_states[1:]]) for x in ids], dim=1)
    hf_s = time.perf_counter() - t
    # HF's last hidden state has the final norm applied; compare the layers before it
    gap, ref = ours[:-1] - ref[:-1].float(), ref[:-1].float()
    diff = gap.abs().max().item()
    relative = (gap.norm(dim=-1) / ref.norm(dim=-1)).max().item()
    tokens = sum(len(x) for x in ids)
    print(f"{args.dtype}: {len(chats)} prompts, {tokens:,} tokens, {ours.shape[0]} layers: fissure {ours_s:.1f} s, transformers "
          f"(one prompt at a time) {hf_s:.1f} s, ratio {hf_s / ours_s:.2f}x; max |difference| {diff:.2e} "
          f"(relative to a state's norm: {relative:.2e})"
          + (f"; fissure up to layer {args.layers}: {partial_s:.1f} s" if partial_s else ""))
    name = "refusal_direction" if args.dtype == "fp32" else f"refusal_direction_{args.dtype}"
    path = save(name, {"dtype": args.dtype, "prompts": len(chats), "sampled": bool(args.sample), "tokens": tokens, "fissure_seconds": ours_s,
                       "transformers_seconds": hf_s, "ratio": hf_s / ours_s, "max_abs_difference": diff,
                       "max_relative_difference": relative, "layers": args.layers or None,
                       "fissure_seconds_up_to_layers": partial_s}, seed=0, threads=args.threads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
