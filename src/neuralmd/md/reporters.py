"""Reporters: small objects with ``report(run, state)`` (OpenMM's shape) that write what a run
produces, called by the engine every ``interval`` steps, plus ``truncate(step)`` so a resumed run
first drops what was written after its checkpoint, and ``close()`` (see
:class:`~neuralmd.md.protocols.Reporter`).

- :class:`H5MDReporter`: one H5MD (HDF5) file per replica, readable by MDAnalysis
  (``mda.Universe("traj_000.pdb", "traj_000.h5md")``); positions Å, velocities Å/ps, time ps.
- :class:`LogReporter`: a CSV log, one row per replica and report: step, time (ps), potential
  (including any bias terms), kinetic and total energy (eV), temperature (K); NPT runs add
  pressure (bar), volume (Å³) and density (g/cm³).
- :class:`ProgressReporter`: the progress bar of a run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np
import torch
from ase import units
from ase.io import write

from ..errors import InputError
from ..progress import progress_bar
from ..units import AMU_PER_A3_IN_G_PER_CM3, VELOCITY_TO_A_PER_PS
from ..version import __version__
from .integrators import MDState, kinetic_energy, pressure, temperature

if TYPE_CHECKING:
    from .run import MDRun

def thermo(state: MDState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Potential and kinetic energy (eV) and temperature (K) of every replica, as numpy."""
    return (state.energy.detach().cpu().numpy(), kinetic_energy(state.batch).cpu().numpy(),
            temperature(state.batch, dof=state.dof).cpu().numpy())


def barostat_view(state: MDState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pressure (bar), volume (Å³) and density (g/cm³) of every replica of an NPT state."""
    b = state.batch
    volume = torch.linalg.det(b.cell).abs()
    mass = torch.zeros(b.n_systems, dtype=volume.dtype, device=volume.device).index_add(0, b.system, b.masses)
    p = pressure(b, state.stress) / units.bar
    return p.cpu().numpy(), volume.cpu().numpy(), (mass / volume * AMU_PER_A3_IN_G_PER_CM3).cpu().numpy()


class H5MDReporter:
    """Appends frames every ``interval`` steps to ``folder/traj_XXX.h5md``; the file is flushed
    after every frame, so a crash leaves it readable up to the last complete frame."""

    def __init__(self, folder: str | Path, interval: int, replicas: list[int] | None = None,
                 velocities: bool = True) -> None:
        self.folder = Path(folder)
        self.interval = interval
        self.replicas = replicas
        self.velocities = velocities
        self._files: dict[int, h5py.File] = {}
        self._datasets: dict[int, dict[str, list]] = {}

    def path(self, replica: int) -> Path:
        return self.folder / f"traj_{replica:03d}.h5md"

    def _open(self, replica: int, atoms) -> h5py.File:
        path = self.path(replica)
        if path.exists():
            return h5py.File(path, "a")
        f = h5py.File(path, "w")
        f.create_group("h5md").attrs["version"] = np.array([1, 1])
        f["h5md"].create_group("author").attrs["name"] = "neuralmd"
        creator = f["h5md"].create_group("creator")
        creator.attrs["name"], creator.attrs["version"] = "neuralmd", __version__
        group = f.create_group("particles/trajectory")
        n = len(atoms)
        group.create_dataset("species", data=atoms.numbers.astype(np.int32))
        box = group.create_group("box")
        box.attrs["dimension"] = 3
        periodic = bool(atoms.pbc.all())
        box.attrs["boundary"] = np.array([b"periodic" if periodic else b"none"] * 3)
        elements = [("position", (n, 3), "Angstrom")]
        if self.velocities:
            elements.append(("velocity", (n, 3), "Angstrom ps-1"))
        if periodic:
            elements.append(("box/edges", (3, 3), "Angstrom"))
        for name, shape, unit in elements:
            self._element(group, name, shape, unit)
        obs = f.create_group("observables")
        for name in ("potential_energy", "kinetic_energy", "temperature"):
            self._element(obs, name, (), "K" if name == "temperature" else "eV")
        write(self.folder / f"traj_{replica:03d}.pdb", atoms)  # topology for MDAnalysis
        return f

    @staticmethod
    def _element(group: h5py.Group, name: str, shape: tuple, unit: str) -> None:
        element = group.create_group(name)
        element.create_dataset("value", shape=(0, *shape), maxshape=(None, *shape), dtype="f8",
                               chunks=(16, *shape)).attrs["unit"] = unit
        element.create_dataset("step", shape=(0,), maxshape=(None,), dtype="i8", chunks=(256,))
        element.create_dataset("time", shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,)).attrs["unit"] = "ps"

    @staticmethod
    def _append(datasets: list, value, step: int, time_ps: float) -> None:
        k = datasets[0].shape[0]
        for dataset, data in zip(datasets, (value, step, time_ps)):
            dataset.resize(k + 1, axis=0)
            dataset[k] = data

    def _handles(self, b: int, atoms) -> dict[str, list]:
        """The (value, step, time) datasets of every element of replica ``b``'s file (h5py
        lookups cost more than the writes, so they are made once)."""
        if b not in self._datasets:
            f = self._files[b] = self._open(b, atoms)
            elements = {"position": "particles/trajectory/position", "velocity": "particles/trajectory/velocity",
                        "box": "particles/trajectory/box/edges",
                        **{name: f"observables/{name}" for name in ("potential_energy", "kinetic_energy", "temperature")}}
            self._datasets[b] = {key: [f[path][n] for n in ("value", "step", "time")]
                                 for key, path in elements.items() if path in f}
        return self._datasets[b]

    def report(self, run: MDRun, state: MDState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        frames = state.batch.to_atoms()
        epot, ekin, temp = thermo(state)
        starts = np.cumsum([0] + [len(a) for a in frames])
        time_ps = run.time_ps(state.step)
        for b in self.replicas if self.replicas is not None else range(len(frames)):
            handles = self._handles(b, frames[b])
            self._append(handles["position"], frames[b].positions, state.step, time_ps)
            if "velocity" in handles:
                v = state.batch.velocities[starts[b] : starts[b + 1]].detach().cpu().numpy() * VELOCITY_TO_A_PER_PS
                self._append(handles["velocity"], v, state.step, time_ps)
            if "box" in handles:
                self._append(handles["box"], frames[b].cell.array, state.step, time_ps)
            for name, values in (("potential_energy", epot), ("kinetic_energy", ekin), ("temperature", temp)):
                self._append(handles[name], values[b], state.step, time_ps)
            self._files[b].flush()

    def truncate(self, step: int) -> None:
        """Drop frames written after ``step`` (and any partly written frame)."""
        for path in sorted(self.folder.glob("traj_*.h5md")):
            with h5py.File(path, "a") as f:
                elements = []
                f.visititems(lambda name, obj: elements.append(obj) if isinstance(obj, h5py.Group) and "step" in obj else None)
                for element in elements:
                    steps = element["step"][()]
                    keep = int(np.searchsorted(steps, step, side="right"))
                    keep = min(keep, element["value"].shape[0], element["time"].shape[0])
                    for name in ("value", "step", "time"):
                        element[name].resize(keep, axis=0)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._datasets.clear()


class CsvReporter:
    """A CSV file appended every ``interval`` steps and flushed after each report; subclasses
    give ``fields`` and ``rows(run, state)``. ``truncate`` keeps the header and the complete rows
    up to a step (a resumed run drops what was written after its checkpoint, and a torn line); a
    file with other columns (written by an earlier version) is moved aside whole, not cut."""

    fields: list[str]

    def __init__(self, path: str | Path, interval: int) -> None:
        self.path = Path(path)
        self.interval = interval
        self._fh = None

    def rows(self, run: MDRun, state: MDState) -> list[list]:
        raise NotImplementedError

    def report(self, run: MDRun, state: MDState) -> None:
        if self._fh is None:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", newline="")
            if new:
                csv.writer(self._fh, lineterminator="\n").writerow(self.fields)
        csv.writer(self._fh, lineterminator="\n").writerows(self.rows(run, state))
        self._fh.flush()

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        if lines and next(csv.reader([lines[0]])) != self.fields:
            k = 1
            while (aside := self.path.with_name(f"{self.path.stem}.earlier{k}{self.path.suffix}")).exists():
                k += 1
            self.path.rename(aside)
            return
        kept = lines[:1]
        for line in lines[1:]:
            parts = line.rstrip("\n").split(",")
            if line.endswith("\n") and len(parts) == len(self.fields) and int(parts[0]) <= step:
                kept.append(line)
        self.path.write_text("".join(kept))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class LogReporter(CsvReporter):
    """CSV log ``folder/log.csv``: step, time (ps), replica, potential/kinetic/total energy
    (eV), temperature (K); with ``pressure`` (NPT runs) also pressure (bar), volume (Å³) and
    density (g/cm³), as the run's :meth:`~.run.MDRun.barostat_view` gives them."""

    fields = ["step", "time_ps", "replica", "potential_energy_eV", "kinetic_energy_eV",  # noqa: RUF012
              "total_energy_eV", "temperature_K"]

    def __init__(self, path: str | Path, interval: int, pressure: bool = False) -> None:
        super().__init__(path, interval)
        self.pressure = pressure
        if pressure:
            self.fields = [*self.fields, "pressure_bar", "volume_A3", "density_g_cm3"]

    def rows(self, run: MDRun, state: MDState) -> list[list]:
        epot, ekin, temp = thermo(state)
        t = run.time_ps(state.step)
        rows = [[state.step, f"{t:.6f}", b, f"{epot[b]:.8f}", f"{ekin[b]:.8f}", f"{epot[b] + ekin[b]:.8f}",
                 f"{temp[b]:.3f}"] for b in range(len(epot))]
        if self.pressure:
            p, volume, density = run.barostat_view(state)
            for b, row in enumerate(rows):
                row += [f"{p[b]:.3f}", f"{volume[b]:.4f}", f"{density[b]:.6f}"]
        return rows


class BaseReporter:
    """A convenient base of a :class:`~.protocols.Reporter` that writes no file: subclasses set
    ``interval`` (steps) and implement :meth:`report`; there is nothing to truncate or close."""

    interval: int = 1

    def report(self, run: MDRun, state: MDState) -> None:
        raise NotImplementedError

    def truncate(self, step: int) -> None:
        """Nothing written, nothing to cut back."""

    def close(self) -> None:
        """Nothing to close."""


class ProgressReporter(BaseReporter):
    """The progress bar of a run: steps done of ``total``, time remaining and ``status(state)``
    (temperature, ns/day), refreshed every ``interval`` steps."""

    def __init__(self, label: str, total: int, completed: int, interval: int,
                 status: Callable[[MDState], str]) -> None:
        self.interval, self.status = interval, status
        self._bar = progress_bar(label)
        self._task = self._bar.add_task(label, total=total, completed=completed, status="")
        self._bar.start()

    def report(self, run: MDRun, state: MDState) -> None:
        self._bar.update(self._task, completed=state.step, status=self.status(state))

    def close(self) -> None:
        self._bar.stop()


def read_h5md(path: str | Path) -> list:
    """Frames of a trajectory written by :class:`H5MDReporter` as ``ase.Atoms`` (positions Å,
    velocities in ASE units, ``info["energy"]`` the potential energy in eV, ``info["step"]``)."""
    from ase import Atoms

    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # truncated or not HDF5
        raise InputError(f"{path}: not a readable H5MD trajectory ({exc})") from None
    with f:
        if "particles/trajectory/position/value" not in f:
            raise InputError(f"{path}: field 'particles/trajectory/position': missing; not a neuralmd H5MD trajectory")
        group = f["particles/trajectory"]
        numbers = group["species"][()]
        positions = group["position/value"][()]
        steps = group["position/step"][()]
        n = min(len(positions), len(steps))
        velocities = group["velocity/value"][()] if "velocity" in group else None
        edges = group["box/edges/value"][()] if "edges" in group["box"] else None
        epot = f["observables/potential_energy/value"][()]
    frames = []
    for k in range(n):
        atoms = Atoms(numbers=numbers, positions=positions[k])
        if edges is not None and k < len(edges):
            atoms.cell, atoms.pbc = edges[k], True
        if velocities is not None and k < len(velocities):
            atoms.set_velocities(velocities[k] / VELOCITY_TO_A_PER_PS)
        if k < len(epot):
            atoms.info["energy"] = float(epot[k])
        atoms.info["step"] = int(steps[k])
        frames.append(atoms)
    return frames
