"""neuralmd.md.reporters: H5MD trajectories and CSV logs read back, cut back on resume, and
damaged files as one clear error."""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.md.reporters import read_h5md
from neuralmd.md.simulation import Simulation
from neuralmd.state import AtomsBatch


def test_trajectory_and_log_read_back_and_truncate_to_a_step(tmp_path, float64_model):
    sim = Simulation(float64_model, AtomsBatch.from_atoms([molecule("CH3CH2OH")] * 2), temperature_K=300, seed=1,
                     report_every=10, run_dir=tmp_path)
    sim.run(50)
    frames = read_h5md(tmp_path / "traj_001.h5md")
    assert [a.info["step"] for a in frames] == [0, 10, 20, 30, 40, 50]
    assert torch.allclose(torch.as_tensor(frames[-1].positions), sim.state.batch.positions[9:].cpu())
    log = (tmp_path / "log.csv").read_bytes()
    assert b"\r" not in log and log.count(b"\n") == 1 + 6 * 2  # LF only: a resumed file matches byte for byte
    for reporter in sim.reporters:
        reporter.truncate(20)
    assert [a.info["step"] for a in read_h5md(tmp_path / "traj_001.h5md")] == [0, 10, 20]
    assert (tmp_path / "log.csv").read_text().count("\n") == 1 + 3 * 2


def test_a_damaged_trajectory_is_one_clear_error(tmp_path):
    (tmp_path / "cut.h5md").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(InputError, match=r"cut\.h5md: not a readable H5MD trajectory"):
        read_h5md(tmp_path / "cut.h5md")
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = [1, 2, 3]
    with pytest.raises(InputError, match=r"other\.h5: field 'particles/trajectory/position': missing"):
        read_h5md(tmp_path / "other.h5")


def test_a_log_with_other_columns_is_moved_aside_on_resume_not_cut(tmp_path):
    """A log an earlier version wrote without the pressure columns keeps every row (beside the
    new file) when a resumed run writes the new columns."""
    from neuralmd.md.reporters import LogReporter

    old = "step,time_ps,replica,potential_energy_eV,kinetic_energy_eV,total_energy_eV,temperature_K\n" + "".join(
        f"{s},{s / 1000},0,-1.0,0.1,-0.9,300.0\n" for s in range(0, 500, 100))
    (tmp_path / "log.csv").write_text(old)
    (tmp_path / "log.earlier1.csv").write_text("kept\n")
    reporter = LogReporter(tmp_path / "log.csv", 100, pressure=True)
    reporter.truncate(200)
    assert (tmp_path / "log.earlier2.csv").read_text() == old and (tmp_path / "log.earlier1.csv").read_text() == "kept\n"
    assert not (tmp_path / "log.csv").exists()  # the next report starts it with the new header
