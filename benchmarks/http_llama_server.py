"""HTTP throughput of fissure's http backend against llama.cpp's OpenAI-compatible server
(llama-cpp-python, built once per machine by tests/e2e/llama_server.py) serving SmolLM2-135M Q4_1.

    python benchmarks/http_llama_server.py --threads 1 --requests 16 --new-tokens 16

Requests per second and generated tokens per second for short greedy completions at
``--concurrency`` 1 and 4 (rounds interleaved), through ``HTTPLanguageModel.generate``; the
server runs with ``--threads`` threads. llama-cpp-python's server runs one completion at a time
(a lock around its single model), so concurrency can only hide the client's and HTTP's latency.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "e2e"))
from common import save  # noqa: E402
from llama_server import LLAMA_CPP_VERSION, ensure_installed, serve  # noqa: E402

from fissure.backends.http import HTTPLanguageModel  # noqa: E402
from fissure.decode import Decoding  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):", "The weather today is",
           "My favourite food is", "In 1969, astronauts", "The best way to learn is", "Water boils at"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="server threads")
    ap.add_argument("--requests", type=int, default=16, help="completions per round")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4")
    args = ap.parse_args()
    build_s = ensure_installed()
    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = [PROMPTS[i % len(PROMPTS)] + f" ({i})" for i in range(args.requests)]
    decoding = Decoding(max_new_tokens=args.new_tokens)
    rows: dict[int, list[dict]] = {c: [] for c in levels}
    from fissure.models.gguf import load_gguf_tokenizer
    from fissure.models.registry_files import smollm2_gguf_path

    tokenizer = load_gguf_tokenizer(smollm2_gguf_path())  # to count the generated tokens
    with serve(threads=args.threads) as base:
        warm = HTTPLanguageModel(base + "/v1", concurrency=1)
        warm.generate(prompts[:2], decoding)
        for _ in range(args.rounds):
            for c in levels:
                lm = HTTPLanguageModel(base + "/v1", concurrency=c)
                start = time.perf_counter()
                texts = lm.generate(prompts, decoding)
                seconds = time.perf_counter() - start
                tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
                rows[c].append({"seconds": seconds, "requests_per_s": len(prompts) / seconds,
                                "tokens_per_s": tokens / seconds, "max_in_flight": lm.throughput["max_in_flight"]})
    result = {"server": f"llama-cpp-python {LLAMA_CPP_VERSION} (python -m llama_cpp.server)",
              "model": "SmolLM2-135M-Instruct Q4_1 GGUF", "server_threads": args.threads,
              "requests": args.requests, "new_tokens": args.new_tokens, "rounds": args.rounds,
              "wheel_build_seconds": round(build_s, 1),
              "concurrency": {str(c): {"best_requests_per_s": round(max(r["requests_per_s"] for r in rs), 3),
                                       "mean_requests_per_s": round(sum(r["requests_per_s"] for r in rs) / len(rs), 3),
                                       "max_in_flight": max(r["max_in_flight"] for r in rs),
                                       "best_tokens_per_s": round(max(r["tokens_per_s"] for r in rs), 1)}
                              for c, rs in rows.items()}}
    path = save("http_llama_server", result, seed=0, threads=args.threads)
    for c, r in result["concurrency"].items():
        print(f"concurrency {c}: {r['best_requests_per_s']:.2f} requests/s best, {r['mean_requests_per_s']:.2f} mean "
              f"{r['best_tokens_per_s']:.1f} tokens/s (max in flight {r['max_in_flight']})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
