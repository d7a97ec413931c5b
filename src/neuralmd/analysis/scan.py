"""Energy profiles along a scan: predicted against reference along an info key of the frames
(a normal-mode displacement, a bond length, a dihedral), one profile per group of frames
(``config_type``, e.g. the element pairs of dimer curves).

Both profiles are aligned at the group's first frame (file order): the error of a profile is
that of energy differences, which is what barriers and reaction energies are made of. The
barrier of a profile is its highest minus its lowest energy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms

from ..errors import InputError


@dataclass
class Profile:
    """One scan: coordinate values in file order, energies in eV relative to the first frame."""

    name: str
    key: str
    coordinate: np.ndarray
    reference: np.ndarray
    predicted: np.ndarray

    def metrics(self) -> dict[str, float]:
        """Errors of the predicted profile (meV) and both barriers (meV)."""
        err = (self.predicted - self.reference) * 1000
        return {
            "frames": int(len(err)),
            "energy_profile_mae_mev": float(np.abs(err).mean()),
            "energy_profile_rmse_mev": float(np.sqrt((err**2).mean())),
            "energy_profile_max_error_mev": float(np.abs(err).max()),
            "barrier_ref_mev": float(np.ptp(self.reference) * 1000),
            "barrier_pred_mev": float(np.ptp(self.predicted) * 1000),
        }


def scan_profiles(frames: Sequence[Atoms], predicted: np.ndarray, key: str, source: str = "input",
                  group_key: str = "config_type") -> list[Profile]:
    """Profiles of reference (``info['energy']``, eV) and ``predicted`` energies (eV, one per
    frame) along ``info[key]``, one per value of ``info[group_key]`` (one profile if the frames
    have none). InputError naming ``source`` and the frame if a frame lacks a numeric ``key``."""
    coordinate = np.empty(len(frames))
    for k, atoms in enumerate(frames):
        value = atoms.info.get(key)
        if value is None:
            found = ", ".join(sorted(n for n, v in atoms.info.items() if np.ndim(v) == 0 and n != "energy"))
            raise InputError(f"{source}: frame {k}: info key {key!r} missing (scan keys on this frame: "
                             f"{found or 'none'})")
        try:
            coordinate[k] = float(value)
        except (TypeError, ValueError):
            coordinate[k] = np.nan
        if not np.isfinite(coordinate[k]):
            raise InputError(f"{source}: frame {k}: info key {key!r} is {value!r}, not a finite number")
    reference = np.array([a.info["energy"] for a in frames], dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    groups = [str(a.info.get(group_key, "")) for a in frames]
    profiles = []
    for name in dict.fromkeys(groups):  # in order of first appearance
        idx = np.array([k for k, g in enumerate(groups) if g == name])
        profiles.append(Profile(name or key, key, coordinate[idx], reference[idx] - reference[idx[0]],
                                predicted[idx] - predicted[idx[0]]))
    return profiles
