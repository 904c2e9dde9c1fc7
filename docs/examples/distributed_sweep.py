"""Runnable example of docs/distributed-sweeps.md (tests/test_docs_examples.py runs this file
in one process; tests/emulate/test_distributed_sweep.py runs it under torchrun and checks
that both print the same).

    torchrun --nproc_per_node 2 docs/examples/distributed_sweep.py
"""

import os

import torch
import torch.distributed as dist
from torch import nn

from precal.emulate import sweep

if "WORLD_SIZE" in os.environ:  # launched by torchrun: join the group ("nccl" and one GPU per rank on GPUs)
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0

torch.manual_seed(0)  # every rank builds the same model and the same inputs
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
x_test, x_calib = torch.randn(1000, 20), torch.randn(256, 20)

# 8 batches of 128: rank 0 runs batches 0-3, rank 1 batches 4-7, for every config; the
# w8a8 observers of every rank see all of x_calib; every rank gets all 1000 rows back
logits = sweep(model, x_test, ["fp32", "bf16", "w8a8", "w4a16"], calibration_data=x_calib, batch_size=128,
               progress=False)
if rank == 0:  # one rank reports (or saves: np.savez("logits.npz", **logits))
    reference = logits["fp32"].argmax(axis=1)
    for name, z in logits.items():
        agree = (z.argmax(axis=1) == reference).mean()
        print(f"{name:6s} {z.shape}  argmax agrees with fp32: {agree:.1%}  last row, first logit {z[-1, 0]:+.6f}")
if dist.is_initialized():
    dist.destroy_process_group()
