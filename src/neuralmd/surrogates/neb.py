"""Reaction paths with a surrogate: nudged elastic band (ASE's NEB) on any ASE calculator.

:func:`run_neb` relaxes the two endpoints (optional), interpolates the band with IDPP and
optimises it with a climbing image; it takes a neuralmd :class:`~neuralmd.models.base.Potential`
or any factory of ASE calculators, so the same code runs the reference method's own NEB (e.g.
``lambda: TBLite(method="GFN2-xTB", verbosity=0)``). With a :class:`~neuralmd.models.committee.Committee`
the band runs on the committee mean and :func:`committee_uncertainty` tells, per image, how much
the members disagree (force deviation in eV/Å, energy standard deviation in eV): where that is
large the surrogate is extrapolating and its barrier is not to be trusted.

Units: positions and distances Å, energies eV (barriers also kJ/mol), forces eV/Å.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.geometry import find_mic
from ase.mep import NEB
from ase.optimize import FIRE

from ..errors import InputError
from ..md.ase_calculator import relax
from ..models.base import Potential
from ..models.committee import Committee
from ..rundir import refuse_existing
from ..state import AtomsBatch
from ..units import EV_IN_KJMOL

CalculatorFactory = Callable[[], Calculator]

#: Default trust level: images whose committee force deviation exceeds it (eV/Å) are flagged.
TRUST_EV_A = 0.2


# --- input --------------------------------------------------------------------------------
def read_endpoint(path: str | os.PathLike) -> Atoms:
    """The geometry in ``path`` (its last frame, so an optimisation trajectory works too)."""
    from ..data.io import read_frames

    return read_frames(path, require_labels=False, energy_unit="eV", force_unit="eV/A")[-1]


def check_endpoints(start: Atoms, end: Atoms, start_name: str = "start", end_name: str = "end") -> None:
    """Raise InputError unless both endpoints hold the same elements in the same order."""
    if len(start) != len(end):
        raise InputError(f"{start_name} and {end_name}: NEB endpoints differ in atom count: {start_name} has "
                         f"{len(start)} atoms, {end_name} has {len(end)}; expected the same atoms in the same order")
    differ = np.flatnonzero(start.numbers != end.numbers)
    if len(differ):
        i = int(differ[0])
        raise InputError(f"{start_name} and {end_name}: NEB endpoints differ in element order: atom {i} is "
                         f"{start.get_chemical_symbols()[i]} in {start_name} but {end.get_chemical_symbols()[i]} "
                         f"in {end_name} ({len(differ)} atom(s) differ); expected the same atoms in the same order")
    if (start.pbc != end.pbc).any() or (start.pbc.any() and not np.allclose(start.cell, end.cell)):
        raise InputError(f"{start_name} and {end_name}: NEB endpoints differ in cell or periodicity")
    if np.abs(start.positions - end.positions).max() < 1e-3:
        raise InputError(f"{start_name} and {end_name}: the same geometry; a NEB needs two different states")


def check_settings(images: int, fmax_eV_per_A: float, steps: int, trust_eV_per_A: float) -> None:
    """Raise InputError unless the band has at least one intermediate image and the threshold,
    step limit and trust level are positive."""
    if images < 1:
        raise InputError(f"images: {images}; a NEB needs at least 1 intermediate image")
    if not fmax_eV_per_A > 0 or steps < 1 or not trust_eV_per_A > 0:
        raise InputError(f"fmax {fmax_eV_per_A} eV/Å, steps {steps}, trust {trust_eV_per_A} eV/Å: expected fmax > 0, "
                         f"steps >= 1 and trust > 0")


def load_endpoints(start_path: str | os.PathLike, end_path: str | os.PathLike) -> tuple[Atoms, Atoms]:
    """Read and check both endpoint files (InputError names both files and what differs)."""
    start, end = read_endpoint(start_path), read_endpoint(end_path)
    check_endpoints(start, end, str(start_path), str(end_path))
    return start, end


def calculator_factory(model: Potential | CalculatorFactory) -> CalculatorFactory:
    """A factory of fresh calculators: for a neuralmd potential, NeuralCalculators that share
    the one potential object; any other callable is returned as is."""
    if isinstance(model, Potential):
        from ..md.ase_calculator import NeuralCalculator

        return lambda: NeuralCalculator(model)
    return model


# --- result -------------------------------------------------------------------------------
@dataclass
class NEBResult:
    """The optimised band. ``images`` carry ``info["energy"]`` (eV) and ``arrays["forces"]``
    (eV/Å, the potential's, not the NEB's projected forces); per-image arrays have one entry
    per image, endpoints included. The uncertainty arrays are set for a committee only."""

    images: list[Atoms]
    energies_eV: np.ndarray
    reaction_coordinate_A: np.ndarray
    converged: bool
    steps: int
    endpoints_converged: list[bool] | None
    settings: dict[str, Any]
    force_deviation_eV_per_A: np.ndarray | None = None
    energy_std_eV: np.ndarray | None = None
    energy_std_per_atom_eV: np.ndarray | None = None

    @property
    def highest_image(self) -> int:
        return int(np.argmax(self.energies_eV))

    @property
    def barrier_forward_eV(self) -> float:
        """Highest image energy minus the start energy (eV)."""
        return float(self.energies_eV.max() - self.energies_eV[0])

    @property
    def barrier_reverse_eV(self) -> float:
        """Highest image energy minus the end energy (eV)."""
        return float(self.energies_eV.max() - self.energies_eV[-1])

    def untrusted_images(self, trust_eV_per_A: float = TRUST_EV_A) -> list[int]:
        """Indices of images whose committee force deviation exceeds ``trust_eV_per_A`` (eV/Å)."""
        if self.force_deviation_eV_per_A is None:
            return []
        return [int(i) for i in np.flatnonzero(self.force_deviation_eV_per_A > trust_eV_per_A)]

    def warning(self, trust_eV_per_A: float = TRUST_EV_A) -> str | None:
        """One line saying where the surrogate is unreliable, or None."""
        bad = self.untrusted_images(trust_eV_per_A)
        if not bad:
            return None
        worst = float(self.force_deviation_eV_per_A.max())
        return (f"warning: committee force deviation exceeds the trust level {trust_eV_per_A:g} eV/Å at image(s) "
                f"{', '.join(map(str, bad))} (max {worst:.3f} eV/Å); the surrogate is unreliable there, "
                "check those geometries with the reference method")

    def summary(self, trust_eV_per_A: float = TRUST_EV_A) -> dict[str, Any]:
        """Everything of neb.json: barriers in eV and kJ/mol and the per-image table."""
        rows = []
        for i, energy in enumerate(self.energies_eV):
            row = {"image": i, "energy_eV": float(energy), "relative_energy_eV": float(energy - self.energies_eV[0]),
                   "reaction_coordinate_A": float(self.reaction_coordinate_A[i])}
            if self.force_deviation_eV_per_A is not None:
                row.update(force_deviation_eV_per_A=float(self.force_deviation_eV_per_A[i]),
                           energy_std_eV=float(self.energy_std_eV[i]),
                           energy_std_per_atom_eV=float(self.energy_std_per_atom_eV[i]))
            rows.append(row)
        forward, reverse = self.barrier_forward_eV, self.barrier_reverse_eV
        return {
            "barrier_forward_eV": forward, "barrier_reverse_eV": reverse,
            "barrier_forward_kjmol": forward * EV_IN_KJMOL, "barrier_reverse_kjmol": reverse * EV_IN_KJMOL,
            "reaction_energy_eV": float(self.energies_eV[-1] - self.energies_eV[0]),
            "highest_image": self.highest_image, "converged": self.converged, "steps": self.steps,
            "endpoints_converged": self.endpoints_converged, "settings": self.settings,
            "committee": self.force_deviation_eV_per_A is not None, "trust_eV_per_A": trust_eV_per_A,
            "untrusted_images": self.untrusted_images(trust_eV_per_A), "warning": self.warning(trust_eV_per_A),
            "images": rows,
        }


# --- the band -----------------------------------------------------------------------------
def reaction_coordinate(images: Sequence[Atoms]) -> np.ndarray:
    """Cumulative distance along the band (Å): the sum of the Cartesian norms of the
    displacements between consecutive images (minimum image for periodic cells)."""
    steps = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        d = b.positions - a.positions
        if a.pbc.any():
            d, _ = find_mic(d, a.cell, a.pbc)
        steps.append(float(np.linalg.norm(d)))
    return np.cumsum(steps)


def labelled_copy(atoms: Atoms) -> Atoms:
    """A copy without calculator carrying the calculator's energy (eV) and forces (eV/Å)."""
    out = atoms.copy()
    out.info["energy"] = float(atoms.get_potential_energy())
    out.arrays["forces"] = np.array(atoms.get_forces(apply_constraint=False))
    out.calc = None
    return out


def run_neb(start: Atoms, end: Atoms, model: Potential | CalculatorFactory, images: int = 9,
            fmax_eV_per_A: float = 0.05, steps: int = 500, climb: bool = True, relax_endpoints: bool = True,
            method: str = "improvedtangent", spring_eV_A2: float = 0.1, logfile: str | None = None,
            output: str | os.PathLike | None = None, trust_eV_per_A: float = TRUST_EV_A) -> NEBResult:
    """Climbing-image NEB between ``start`` and ``end`` (left unchanged).

    Args:
        model: a neuralmd potential (a committee runs on its mean and gets per-image
            uncertainties) or a factory of ASE calculators, called once per image.
        images: intermediate images (>= 1).
        fmax_eV_per_A: convergence threshold on the NEB forces and the endpoint relaxation, eV/Å.
        steps: optimiser step limit (band and each endpoint relaxation).
        climb: climbing image on the highest image (the barrier is then a saddle-point energy).
        relax_endpoints: minimise both endpoints with the model first.
        method: ASE NEB method (``improvedtangent``, ``aseneb``, ``eb``, ``spline``, ``string``).
        spring_eV_A2: spring constant in eV/Å².
        logfile: per-step optimiser log (``"-"``: stdout; None: silent).
        output: folder for path.xyz, neb.json and neb.png (see :func:`write_neb_outputs`).
        trust_eV_per_A: committee force deviation above which an image is flagged, eV/Å.
    """
    if output is not None:
        refuse_existing(output, "a NEB result", marker="neb.json", resumable=False)
    check_settings(images, fmax_eV_per_A, steps, trust_eV_per_A)
    check_endpoints(start, end)
    factory = calculator_factory(model)
    periodic = bool(start.pbc.any())
    band = [start.copy()] + [start.copy() for _ in range(images)] + [end.copy()]
    for image in band:
        image.calc = factory()
    endpoints_converged = None
    if relax_endpoints:
        endpoints_converged = [relax(end, fmax_eV_per_A, steps, logfile)[0] for end in (band[0], band[-1])]
    neb = NEB(band, k=spring_eV_A2, climb=climb, method=method, remove_rotation_and_translation=not periodic)
    neb.interpolate(method="idpp", mic=periodic, apply_constraint=False)
    with FIRE(neb, logfile=logfile) as opt:
        converged = bool(opt.run(fmax=fmax_eV_per_A, steps=steps))
        n_steps = int(opt.nsteps)
    final = [labelled_copy(image) for image in band]
    settings = {"images": images, "fmax_eV_per_A": fmax_eV_per_A, "steps": steps, "climb": climb,
                "relax_endpoints": relax_endpoints, "method": method, "spring_eV_A2": spring_eV_A2,
                "interpolation": "idpp", "optimizer": "FIRE"}
    result = NEBResult(final, np.array([a.info["energy"] for a in final]), reaction_coordinate(final), converged,
                       n_steps, endpoints_converged, settings)
    if isinstance(model, Committee):
        add_uncertainty(result, model)
    if output is not None:
        write_neb_outputs(result, output, trust_eV_per_A)
    return result


# --- uncertainty --------------------------------------------------------------------------
def committee_uncertainty(committee: Committee, images: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """Per image: ``force_deviation_eV_per_A`` (max over atoms of the members' RMS force deviation,
    eV/Å), ``energy_std_eV`` (the members' energy standard deviation, eV) and
    ``energy_std_per_atom_eV`` (the same per atom)."""
    batch = AtomsBatch.from_atoms(list(images), dtype=committee.dtype)
    pred = committee.predict(batch)
    per_atom = pred["energy_std_per_atom"].numpy()
    return {"force_deviation_eV_per_A": pred["force_deviation"].numpy(),
            "energy_std_eV": per_atom * batch.counts.numpy(), "energy_std_per_atom_eV": per_atom}


def add_uncertainty(result: NEBResult, committee: Committee) -> None:
    """Evaluate the committee on the band and store the per-image uncertainty in ``result``
    and in each image's ``info``."""
    unc = committee_uncertainty(committee, result.images)
    result.force_deviation_eV_per_A = unc["force_deviation_eV_per_A"]
    result.energy_std_eV = unc["energy_std_eV"]
    result.energy_std_per_atom_eV = unc["energy_std_per_atom_eV"]
    for i, image in enumerate(result.images):
        image.info["force_deviation"] = float(result.force_deviation_eV_per_A[i])
        image.info["energy_std"] = float(result.energy_std_eV[i])


# --- output -------------------------------------------------------------------------------
def write_neb_outputs(result: NEBResult, output: str | os.PathLike, trust_eV_per_A: float = TRUST_EV_A) -> None:
    """Write ``output``/path.xyz (images with energies in eV, forces in eV/Å), neb.json
    (:meth:`NEBResult.summary`) and neb.png (:func:`plot_neb`), each atomically."""
    from ..data.io import write_frames
    from ..io_utils import atomic_write_json

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_frames(result.images, output / "path.xyz")
    atomic_write_json(result.summary(trust_eV_per_A), output / "neb.json")
    plot_neb(result, output / "neb.png", trust_eV_per_A)


def plot_neb(result: NEBResult, path: str | os.PathLike, trust_eV_per_A: float = TRUST_EV_A) -> None:
    """Energy relative to the start (eV) against the reaction coordinate (Å); for a committee
    also the band ± energy std and, below, the force deviation with the trust level, images
    above it marked in red."""
    import matplotlib.pyplot as plt

    from ..analysis.plots import save_figure

    x, energy = result.reaction_coordinate_A, result.energies_eV - result.energies_eV[0]
    committee = result.force_deviation_eV_per_A is not None
    fig, axes = plt.subplots(2 if committee else 1, 1, figsize=(6.4, 6.4 if committee else 4.2), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(x, energy, "o-", color="C0", label="NEB images")
    top = result.highest_image
    ax.plot(x[top], energy[top], "*", ms=14, color="C1",
            label=f"barrier {result.barrier_forward_eV:.3f} eV ({result.barrier_forward_eV * EV_IN_KJMOL:.1f} kJ/mol)")
    if committee:
        std = result.energy_std_eV
        ax.fill_between(x, energy - std, energy + std, color="C0", alpha=0.25, label="committee ± std")
        bad = result.untrusted_images(trust_eV_per_A)
        if bad:
            ax.plot(x[bad], energy[bad], "o", ms=10, mfc="none", mec="red", mew=2, label=f"deviation > {trust_eV_per_A:g} eV/Å")
        dev_ax = axes[1, 0]
        dev_ax.plot(x, result.force_deviation_eV_per_A, "o-", color="C2")
        dev_ax.axhline(trust_eV_per_A, color="red", ls="--", lw=1, label="trust level")
        if bad:
            dev_ax.plot(x[bad], result.force_deviation_eV_per_A[bad], "o", color="red")
        dev_ax.set_ylabel("committee force deviation (eV/Å)")
        dev_ax.legend(loc="upper left")
        dev_ax.grid(alpha=0.3)
    ax.set_ylabel("energy relative to start (eV)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("reaction coordinate: cumulative image distance (Å)")
    ax.set_title(f"NEB, {len(result.images) - 2} images, {'converged' if result.converged else 'NOT converged'} "
                 f"in {result.steps} steps")
    fig.tight_layout()
    save_figure(fig, path)
