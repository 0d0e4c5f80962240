"""Data-parallel training on one machine: 1 process with T threads against W processes with T/W
threads each (DDP and FSDP over gloo), the same GPT, global batch and steps, rounds interleaved.
The peer is the one-process run: on one machine extra processes only pay where one process cannot
keep the cores busy, so the ratio says what torchrun costs or gains here, not what it gains across
machines.

    python benchmarks/train_distributed.py --threads 2 --steps 20 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

WORKER = textwrap.dedent('''
    import json, sys, time
    import torch
    from fissure.models import GPT, GPTConfig
    from fissure.text.dataset import TokenFile
    from fissure.text.tokenizers import load_tokenizer
    from fissure.train import TrainConfig, Trainer
    from fissure.train.distributed import world_from_env
    data, out, threads, steps, batch, parallel, n_layer, n_embd, block = sys.argv[1:10]
    torch.set_num_threads(int(threads))
    world = world_from_env()
    tok = load_tokenizer(data)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=int(block), n_layer=int(n_layer), n_head=4,
                          n_embd=int(n_embd), dropout=0.0))
    cfg = TrainConfig(max_steps=int(steps), batch_size=int(batch), lr=1e-3, warmup_steps=2, eval_every=10**6,
                      progress=False, parallel=parallel)
    trainer = Trainer(model, cfg, TokenFile(data + "/train.bin"), None, tokenizer=tok, seed=0, world=world)
    trainer.train(until=2)  # warm-up steps, not timed
    t = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t
    tokens = (int(steps) - 2) * int(batch) * int(block)
    if world.is_main:
        open(out, "w").write(json.dumps({"tokens_per_second": tokens / seconds, "loss": result.train_loss}))
''')


def prepare(root: Path) -> Path:
    from fissure.text.corpus import builtin_corpus
    from fissure.text.dataset import write_tokens
    from fissure.text.tokenizers import CharTokenizer

    docs = builtin_corpus("stdlib", max_bytes=2_000_000)
    tok = CharTokenizer.from_texts([d.text for d in docs])
    write_tokens(docs, tok, root / "train.bin")
    tok.save(root)
    return root


def run(root: Path, variant: str, args) -> dict:
    processes, parallel = (1, "ddp") if variant == "1 process" else (args.processes, variant)
    threads = args.threads // processes
    out = root / f"{variant}.json"
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
        "--master-port", str(29600 + os.getpid() % 1000)]
    cmd = [*launcher, str(root / "worker.py"), str(root), str(out), str(threads), str(args.steps), str(args.batch),
           parallel, str(args.n_layer), str(args.n_embd), str(args.block)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="cores used in total, by every variant")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    args = ap.parse_args()
    variants = ["1 process", "ddp", "fsdp"]
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare(Path(tmp))
        (root / "worker.py").write_text(WORKER)
        for r in range(args.rounds):
            for v in variants:
                res = run(root, v, args)
                print(f"round {r + 1} {v:>9}: {res['tokens_per_second']:,.0f} tokens/s (loss {res['loss']:.4f})")
                if v not in best or res["tokens_per_second"] > best[v]["tokens_per_second"]:
                    best[v] = res
    base = best["1 process"]["tokens_per_second"]
    rows = {v: {**r, "vs_one_process": r["tokens_per_second"] / base} for v, r in best.items()}
    for v, r in rows.items():
        print(f"{v:>9}: {r['tokens_per_second']:,.0f} tokens/s ({r['vs_one_process']:.2f}x), loss {r['loss']:.4f}")
    path = save("train_distributed", {"config": vars(args), "results": rows}, seed=0, threads=args.threads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
