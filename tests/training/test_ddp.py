"""Data-parallel training under torchrun (2 processes, gloo): the same Trainer, and the same
model as one process training on whole batches."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from neuralmd.data.io import read_frames, write_frames


def test_torchrun_two_processes_train_the_same_model_as_one(tmp_path, ethanol_xyz):
    write_frames(read_frames(ethanol_xyz)[:40], tmp_path / "train.xyz")
    options = ["train", "--train", str(tmp_path / "train.xyz"), "--valid-fraction", "0.1", "--features", "8",
               "--interactions", "1", "--batch-size", "8", "--max-steps", "20", "--eval-every", "10",
               "--checkpoint-every", "20", "--lr-schedule", "plateau", "--float64", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "neuralmd.cli", *options, "-o", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "neuralmd.cli", *options, "-o", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert one["step"] == two["step"] == 20
    for name, p in one["model"].items():
        assert torch.allclose(p, two["model"][name], rtol=1e-6, atol=1e-9), name
