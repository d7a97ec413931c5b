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
        pytest.skip(f"reference data {path} not found (../shared/data is not beside the project)",
                    allow_module_level=True)  # also from module-level constants
    return path


@pytest.fixture(scope="session")
def ethanol_xyz() -> Path:
    return shared_file("rmd17_ethanol/train.xyz")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, ethanol_xyz) -> Path:
    """Run directory of a small PaiNN model trained for 1000 steps on rMD17 ethanol."""
    from neuralmd.training import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(train=str(ethanol_xyz), architecture="painn", features=32, interactions=2, batch_size=16,
                      max_steps=1000, lr=2e-3, eval_every=250, checkpoint_every=1000, threads=2)
    Trainer(cfg, run, progress=False).run()
    return run


@pytest.fixture(scope="session")
def trained_model(trained_run) -> Path:
    """model.pt of :func:`trained_run`."""
    return trained_run / "model.pt"


def untrained_model(architecture: str = "painn", repulsion: str | None = None):
    """An untrained float64 network over H, C, O with non-trivial random weights."""
    from neuralmd.models import NeuralPotential

    torch.manual_seed(0)
    return NeuralPotential([1, 6, 8], e0=[-13.6, -1025.0, -2035.0], scale=1.3, shift=0.1, architecture=architecture,
                           repulsion={"name": repulsion} if repulsion else None, features=16, interactions=2, cutoff=4.0, num_basis=8).double()


@pytest.fixture
def float64_model():
    """An untrained float64 PaiNN over H, C, O."""
    return untrained_model()


@pytest.fixture(params=["painn", "tensornet+zbl"])
def any_float64_model(request):
    """Each native architecture, untrained, float64 (TensorNet with the ZBL repulsion)."""
    architecture, _, repulsion = request.param.partition("+")
    return untrained_model(architecture, repulsion or None)


#: bead elements of the mapped alanine dipeptide data (../shared/data/ala2_cg)
CG_BEADS = ["C", "N", "C", "C", "N"]


@pytest.fixture(scope="session")
def cg_data():
    return shared_file("ala2_cg/ala2_coordinates.npy"), shared_file("ala2_cg/ala2_forces.npy")


@pytest.fixture(scope="session")
def cgnet_run(cg_data, tmp_path_factory) -> Path:
    """CGnet's prior (bonds, angles, repulsion; no torsion terms) plus a network, 20 epochs."""
    from neuralmd.surrogates.cg_training import CGTrainer, CGTrainSettings

    coords, forces = cg_data
    run = tmp_path_factory.mktemp("cg")
    CGTrainer(CGTrainSettings(coords=str(coords), forces=str(forces), force_unit="kcal/mol/A", bead_elements=CG_BEADS,
                              prior_torsion_order=0, epochs=20, patience=20, threads=2), run, progress=False).run()
    return run
