"""CG MD with OPES walkers and its analysis (neuralmd.surrogates.cg_md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from neuralmd.models.coarse_grain import torsion_angles

from ..conftest import shared_file


def test_cg_md_cli_with_opes_walkers_and_resume(cgnet_run, tmp_path):
    """`neuralmd cg md --bias opes` runs walkers of one bias, reweights, and extends on --resume."""
    reference = shared_file("ala2_cg/ala2_coordinates.npy")
    out = tmp_path / "md"
    cli = [sys.executable, "-m", "neuralmd.cli", "cg", "md"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--replicas", "4", "--report-every", "50", "--reference", str(reference), "--threads", "1"]
    subprocess.run(cli + [str(cgnet_run / "model.pt"), "--ns", "0.004", "--bias", "opes", "--trajectory-replicas", "2",
                          "-o", str(out)] + common, check=True, capture_output=True, env=env)
    first = json.loads((out / "cg_analysis.json").read_text())
    proc = subprocess.run(cli + ["--resume", str(out), "--ns", "0.006"] + common, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    second = json.loads((out / "cg_analysis.json").read_text())
    assert second["frames"] > first["frames"]
    assert math.isfinite(second["fes_mae_kT"]) and second["reference_deltaF_kjmol"] == pytest.approx(9.25, abs=0.01)
    # two replicas wrote trajectories; the colvar holds the torsions and the bias of all four,
    # and its torsions match a direct computation on the trajectories
    from neuralmd.md.reporters import read_h5md
    from neuralmd.sampling.samples import load_samples

    assert sorted(p.name for p in out.glob("traj_*.h5md")) == ["traj_000.h5md", "traj_001.h5md"]
    samples = load_samples(out)
    assert sorted(set(samples.replica.tolist())) == [0, 1, 2, 3]
    for b in (0, 1):
        frames = read_h5md(out / f"traj_{b:03d}.h5md")
        direct = torsion_angles(np.stack([a.positions for a in frames]), {"phi": [0, 1, 2, 3], "psi": [1, 2, 3, 4]})
        assert np.abs(np.angle(np.exp(1j * (samples.values[samples.replica == b] - direct)))).max() < 1e-6
    assert samples.weights.std() > 0  # the bias grew, so frames carry different weights
