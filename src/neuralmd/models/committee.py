"""Committee of potentials: the mean prediction and the members' disagreement (uncertainty).

The committee is itself a :class:`~.base.Potential` (its energy is the members' mean, so MD
with it is conservative). :meth:`Committee.predict` also returns, per system, the energy
standard deviation per atom and the maximum over atoms of the force deviation
``max_i sqrt(<|F_i - <F_i>|^2>)`` (DP-GEN's model deviation), in eV and eV/Å.

:func:`calibrate` compares that disagreement with the true force error on labelled frames: the
scale factor that turns it into a calibrated error estimate, and the Spearman rank correlation.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..state import AtomsBatch
from .base import Potential


class Committee(Potential):
    """Members evaluated on the same batch; energies and forces averaged."""

    def __init__(self, members: Sequence[Potential]) -> None:
        super().__init__()
        if len(members) < 2:
            raise InputError(f"committee: {len(members)} member(s); at least two are needed for a disagreement")
        self.members = nn.ModuleList(members)
        self.cutoff = max(m.cutoff for m in members)
        self.max_atoms_per_chunk = members[0].max_atoms_per_chunk

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    def check_elements(self, numbers, where: str = "input") -> None:
        for m in self.members:
            m.check_elements(numbers, where)

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        return torch.stack([m.atomic_energies(batch) for m in self.members]).mean(0)

    def predict(self, batch: AtomsBatch) -> dict[str, torch.Tensor]:
        """Mean ``energy`` (B,) and ``forces`` (N, 3), plus ``energy_std_per_atom`` (B,) eV and
        ``force_deviation`` (B,) eV/Å (max over atoms of the RMS member deviation), detached."""
        outs = [m(batch) for m in self.members]
        energies = torch.stack([o["energy"].detach() for o in outs])  # (M, B)
        forces = torch.stack([o["forces"].detach().to(torch.float64) for o in outs])  # (M, N, 3)
        mean_f = forces.mean(0)
        per_atom = (forces - mean_f).pow(2).sum(-1).mean(0).sqrt()  # (N,)
        dev = torch.zeros(batch.n_systems, dtype=per_atom.dtype).scatter_reduce(
            0, batch.system, per_atom, "amax", include_self=False)
        return {"energy": energies.mean(0), "forces": mean_f,
                "energy_std_per_atom": energies.std(0) / batch.counts.to(torch.float64), "force_deviation": dev}


def load_committee(paths: Sequence[str | os.PathLike], dtype: torch.dtype | None = None) -> Committee:
    """A committee of the model files ``paths``."""
    from .neural import load_potential

    return Committee([load_potential(p, dtype=dtype) for p in paths])


def committee_deviation(committee: Committee, frames: Sequence, batch_size: int = 64) -> np.ndarray:
    """Force deviation (eV/Å) of every frame, evaluated in batches."""
    out = []
    for start in range(0, len(frames), batch_size):
        batch = AtomsBatch.from_atoms(frames[start : start + batch_size], dtype=committee.dtype)
        out.append(committee.predict(batch)["force_deviation"].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def calibrate(committee: Committee, frames: Sequence, batch_size: int = 64) -> dict[str, float]:
    """Disagreement against true error on labelled frames: per frame, the max-atom force
    deviation and the max-atom force error of the mean prediction (eV/Å). Returns the scale
    factor s (least squares, error ≈ s · deviation), the Spearman rank correlation and means."""
    from scipy.stats import spearmanr

    deviation, error = [], []
    for start in range(0, len(frames), batch_size):
        part = frames[start : start + batch_size]
        batch = AtomsBatch.from_atoms(part, dtype=committee.dtype)
        pred = committee.predict(batch)
        true = torch.as_tensor(np.concatenate([a.arrays["forces"] for a in part]), dtype=torch.float64)
        per_atom = (pred["forces"] - true).norm(dim=-1)
        err = torch.zeros(batch.n_systems, dtype=torch.float64).scatter_reduce(
            0, batch.system, per_atom, "amax", include_self=False)
        deviation.append(pred["force_deviation"].numpy())
        error.append(err.numpy())
    d, e = np.concatenate(deviation), np.concatenate(error)
    scale = float((d @ e) / (d @ d)) if (d @ d) > 0 else float("nan")
    rho = float(spearmanr(d, e).statistic) if len(d) > 2 else float("nan")
    return {"frames": len(d), "scale_factor": scale, "spearman": rho, "mean_deviation_eV_per_A": float(d.mean()),
            "mean_max_force_error_eV_per_A": float(e.mean())}
