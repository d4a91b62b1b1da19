"""Run by tests under torchrun: train, then save this rank's weights for comparison."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from etalage.core import probe
from etalage.core.train import TrainConfig, train

train_bson, out = sys.argv[1], Path(sys.argv[2])
weights = sys.argv[3] if len(sys.argv) > 3 else "none"  # a weights file: the probe path (rank 0 reads and fits)
probe.PROBE_MAX_ITER = 60  # random features converge slowly (tests/core/test_probe.py, quick_probe)
cfg = TrainConfig(train=train_bson, out=str(out), backbone="test_efficientnet", weights=weights, picture_size=48,
                  crop=40, batch_size=8, epochs=2, val_fraction=0.2, workers=0, lr=3e-3)
result = train(cfg, progress=False)
# The checkpoint holds rank 0's weights only: each rank saves what it holds in memory.
torch.save(result.model.state_dict(), out / f"rank{dist.get_rank()}.pt")
