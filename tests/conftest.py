"""Shared fixtures: the reference data folder, thread settings, a small trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuralmd.threads import set_threads

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

set_threads(2)


def shared_file(relative: str) -> Path:
    """Path of a file in ../shared/data, or skip the test saying what is missing."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"reference data {path} not found (../shared/data is not beside the project)")
    return path


@pytest.fixture(scope="session")
def ethanol_xyz() -> Path:
    return shared_file("rmd17_ethanol/train.xyz")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, ethanol_xyz) -> Path:
    """A small PaiNN model trained briefly on rMD17 ethanol (its model.pt)."""
    from neuralmd.training import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(train=str(ethanol_xyz), features=16, interactions=2, max_steps=60, eval_every=30,
                      checkpoint_every=60, batch_size=8, threads=2)
    Trainer(cfg, run, progress=False).run()
    return run / "model.pt"


@pytest.fixture
def float64_model():
    """An untrained float64 PaiNN over H, C, O with non-trivial random weights."""
    from neuralmd.models import NeuralPotential

    torch.manual_seed(0)
    return NeuralPotential([1, 6, 8], e0=[-13.6, -1025.0, -2035.0], scale=1.3, shift=0.1,
                           features=16, interactions=2, cutoff=4.0, num_basis=8).double()
