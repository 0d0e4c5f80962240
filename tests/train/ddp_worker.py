"""A tiny GPT trained by the Trainer as one process or under torchrun (used by test_distributed.py).

    python ddp_worker.py DATA_DIR OUT [--until N] [--resume CKPT] [--parallel ddp|fsdp]
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from fissure.models import GPT, GPTConfig
from fissure.text.dataset import TokenFile
from fissure.text.tokenizers import load_tokenizer
from fissure.train import TrainConfig, Trainer
from fissure.train.checkpoint import load_model_from_checkpoint
from fissure.train.distributed import world_from_env

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("out")
ap.add_argument("--until", type=int)
ap.add_argument("--resume")
ap.add_argument("--parallel", default="ddp")
args = ap.parse_args()
torch.set_num_threads(1)
world = world_from_env()
data = Path(args.data)
tok = load_tokenizer(data)
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
cfg = TrainConfig(max_steps=12, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=2, progress=False,
                  parallel=args.parallel)
if args.resume:  # the weights before the trainer: FSDP shards them when it is made
    model.load_state_dict(load_model_from_checkpoint(args.resume).state_dict())
trainer = Trainer(model, cfg, TokenFile(data / "train.bin"), TokenFile(data / "val.bin"), tokenizer=tok, seed=0,
                  checkpoint_dir=Path(args.out) / "checkpoint", world=world)
if args.resume:
    trainer.resume(args.resume)
result = trainer.train(until=args.until)
if world.is_main:
    held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    (Path(args.out) / "history.json").write_text(json.dumps({"history": result.history, "world": world.size,
                                                             "params_held": held, "params": model.num_params()}))
sys.exit(0)
