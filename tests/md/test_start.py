"""neuralmd.md.start: new runs in either engine, resumes, and run directories written before the
shared run loop (older md.toml and checkpoint layouts) resuming exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from neuralmd.config import save_config
from neuralmd.errors import InputError
from neuralmd.md.openmm_engine import OpenMMRun, OpenMMSettings
from neuralmd.md.simulation import MDSettings, Simulation
from neuralmd.md.start import resume_md, start_native, start_openmm
from neuralmd.sampling.bias_factory import BiasSettings
from neuralmd.sampling.runs import resume_run
from neuralmd.sampling.runs import start_openmm as start_biased_openmm

from ..conftest import shared_file


def test_native_run_from_settings_and_an_old_md_toml_resumes_exactly(tmp_path, float64_model):
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))

    def settings(total: int) -> MDSettings:
        return MDSettings(structure=str(tmp_path / "ethanol.xyz"), replicas=2, temperature_K=[300.0, 400.0], seed=2,
                          report_every=10, checkpoint_every=20, total_steps=total)

    straight = start_native(settings(60), tmp_path / "a", float64_model)
    straight.run()
    with pytest.raises(InputError, match="already holds an MD run"):
        start_native(settings(60), tmp_path / "a", float64_model)
    part = start_native(settings(60), tmp_path / "b", float64_model)
    part.run(40)
    # md.toml as written before it named its engine and recorded the structure
    old = {k: v for k, v in vars(settings(60)).items() if k not in ("engine", "structure", "replicas")}
    (tmp_path / "b" / "md.toml").write_text("".join(f"{k} = {v!r}\n".replace("'", '"').replace("True", "true")
                                                    .replace("False", "false") for k, v in old.items()))
    resumed = resume_md(tmp_path / "b", float64_model)
    assert isinstance(resumed, Simulation) and resumed.step == 40
    resumed.run(20)
    assert torch.equal(straight.state.batch.positions, resumed.state.batch.positions)
    assert (tmp_path / "a" / "log.csv").read_bytes() == (tmp_path / "b" / "log.csv").read_bytes()


def test_openmm_run_with_a_bias_checkpoint_of_the_old_layout_resumes_exactly(tmp_path):
    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))

    def settings() -> OpenMMSettings:
        return OpenMMSettings(pdb=pdb, report_every=100, checkpoint_every=1000, total_steps=2000, seed=5)

    bias = BiasSettings(cv="phi,psi", barrier_kjmol=30, pace=100, sigma=[0.3, 0.3])
    start_biased_openmm(settings(), BiasSettings(**vars(bias)), tmp_path / "full").run()
    part = start_biased_openmm(settings(), BiasSettings(**vars(bias)), tmp_path / "part")
    part.run(1000)
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    term = ckpt.pop("terms")[0]  # the layout before the terms were generic: one bias and its grid
    torch.save({**ckpt, "bias": term["bias"], "grid": term["grid"]}, tmp_path / "part" / "checkpoint.pt")
    resumed = resume_run(tmp_path / "part")
    assert resumed.step == 1000
    resumed.run()
    a = np.loadtxt(tmp_path / "full" / "colvar.csv", delimiter=",", skiprows=1)
    b = np.loadtxt(tmp_path / "part" / "colvar.csv", delimiter=",", skiprows=1)
    assert a.shape == b.shape == (21, 6) and np.array_equal(a, b)


def test_plain_openmm_run_writes_its_record_and_resumes(tmp_path):
    pdb = shared_file("alanine_dipeptide/ala2.pdb")
    run = start_openmm(OpenMMSettings(pdb=str(pdb), report_every=50, checkpoint_every=100, total_steps=200, seed=1),
                       tmp_path / "r")
    assert isinstance(run, OpenMMRun)
    assert (tmp_path / "r" / "topology.pdb").read_bytes() == pdb.read_bytes()
    run.run(100)
    resumed = resume_md(tmp_path / "r")
    assert isinstance(resumed, OpenMMRun) and resumed.step == 100
    resumed.run()
    assert len(np.loadtxt(tmp_path / "r" / "log.csv", delimiter=",", skiprows=1)) == 5  # steps 0..200 by 50
    save_config(OpenMMSettings(pdb=str(pdb), timestep_fs=-1.0), tmp_path / "bad.toml")
    with pytest.raises(InputError, match="timestep_fs"):
        start_openmm(OpenMMSettings(pdb=str(pdb), timestep_fs=-1.0), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_second_process_cannot_start_or_run_into_a_run_directory_in_use(tmp_path, float64_model):
    """The lock is taken before a run's first file: a run started into a directory another
    process holds is refused and writes nothing (md.toml keeps the first run's seed)."""
    import subprocess
    import sys
    import textwrap
    import tomllib

    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    first = start_native(MDSettings(structure=str(tmp_path / "ethanol.xyz"), seed=1, total_steps=20), tmp_path / "run",
                         float64_model)
    script = textwrap.dedent(f"""
        import torch
        from neuralmd.errors import InputError
        from neuralmd.md.simulation import MDSettings
        from neuralmd.md.start import start_native
        from neuralmd.models import NeuralPotential
        model = NeuralPotential([1, 6, 8], features=8, interactions=1, cutoff=4.0, num_basis=4).double()
        try:
            start_native(MDSettings(structure={str(tmp_path / 'ethanol.xyz')!r}, seed=2), {str(tmp_path / 'run')!r}, model)
        except InputError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "another neuralmd process is writing into this run directory" in out.stdout, out.stderr
    assert tomllib.loads((tmp_path / "run" / "md.toml").read_text())["seed"] == 1
    first.run()
    assert not first.lock.held  # released when the run returns
