"""Run under torchrun by test_train.py: one SFT step with FSDP2 on gloo, full weights written by rank 0."""
import os
import sys

import torch
from safetensors.torch import save_file

from kojudge.model.tokenizer import Tokenizer
from kojudge.train.checkpoint import full_weights
from kojudge.train.loop import make_optimizer
from kojudge.train.policy import build_policy
from kojudge.train.data import load_sft, pack
from kojudge.train.distributed import init_distributed
from kojudge.train.sft import sft_step

model_dir, data, out = sys.argv[1:4]
rank, world = init_distributed()
examples = load_sft(data, Tokenizer(model_dir), 512)
module = build_policy(model_dir, world, "float32")
optimizer = make_optimizer(module, 1e-2, 0.01)
micro = [examples[:4], examples[4:8]]  # two micro-batches, gradient accumulation
sft_step(module, optimizer, [pack(b[rank::world]) for b in micro], world, "float32", 1e-2, 1.0)
weights = full_weights(module)
if rank == 0:
    save_file({k: v.contiguous() for k, v in weights.items()}, out)
torch.distributed.barrier()
# Leave without tearing the gloo group down: its teardown aborts now and then ("terminate called
# without an active exception") when the rank hosting the store exits first. Every collective is done
# and rank 0's file is closed, so nothing is lost.
os._exit(0)
