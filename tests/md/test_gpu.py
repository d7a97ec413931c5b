"""The native engine on a GPU: same forces and trajectories as on the CPU, and a GPU checkpoint
that resumes on the CPU (compiled GPU runs: tests/md/test_compiled.py). Skipped where torch sees
no CUDA device (the CI machine); run on a GPU machine with
``pytest tests/md/test_gpu.py tests/md/test_compiled.py``."""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule

from neuralmd.md.simulation import Simulation
from neuralmd.state import AtomsBatch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _molecules() -> AtomsBatch:
    return AtomsBatch.from_atoms([molecule("CH3CH2OH"), molecule("trans-butane"), molecule("CH3CH2OH")])


def test_forces_on_the_gpu_equal_the_cpu_forces(float64_model):
    batch = _molecules()
    batch = batch.replace(positions=batch.positions + 0.05 * torch.randn_like(batch.positions))
    cpu = float64_model(batch)
    gpu = float64_model.to("cuda")(batch.to("cuda"))
    assert torch.allclose(gpu["energy"].cpu(), cpu["energy"], rtol=0, atol=1e-9)
    assert torch.allclose(gpu["forces"].cpu(), cpu["forces"], rtol=0, atol=1e-9)


def test_langevin_on_the_gpu_follows_the_cpu_trajectory(float64_model):
    """The noise comes from the same CPU generators, so only force round-off differs."""
    states = {}
    for device in ("cpu", "cuda"):
        sim = Simulation(float64_model.to(device), _molecules(), ensemble="nvt", timestep_fs=0.5,
                         temperature_K=[300, 400, 500], seed=5)
        sim.run(100)
        states[device] = sim.state
    assert states["cuda"].batch.positions.device.type == "cuda"
    gap = (states["cuda"].batch.positions.cpu() - states["cpu"].batch.positions).abs().max()
    assert float(gap) < 1e-8


def test_a_gpu_checkpoint_resumes_on_the_cpu(float64_model, tmp_path):
    settings = dict(ensemble="nvt", timestep_fs=0.5, temperature_K=300, seed=2, report_every=10,
                    checkpoint_every=20)
    straight = Simulation(float64_model, _molecules(), **settings)
    straight.run(40)
    gpu = Simulation(float64_model.to("cuda"), _molecules(), run_dir=tmp_path / "run", **settings)
    gpu.run(20)
    resumed = Simulation.resume(tmp_path / "run", float64_model.to("cpu"))
    assert resumed.state.batch.positions.device.type == "cpu"
    resumed.run(20)
    gap = (resumed.state.batch.positions - straight.state.batch.positions).abs().max()
    assert float(gap) < 1e-8
