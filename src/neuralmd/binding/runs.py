"""Binding runs: OPES on a host–guest CV inside a funnel, in OpenMM, in a run directory that
resumes on its own (the System is stored, not rebuilt from the input files).

Run directory: ``bind.toml`` (:class:`BindSettings`), ``input.toml`` (the
:class:`~.system.ComplexInput` it came from), ``md.toml`` (engine settings), ``system.xml``
(OpenMM's serialised System without the funnel and the bias), ``topology.pdb``, ``colvar.csv``
(z, rho, d and the bias each frame felt), ``traj_000.h5md``, ``log.csv``, ``checkpoint.pt``,
``results.json``; ``binding.json``/``binding.png`` from :mod:`.analysis`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import app

from ..config import load_config, save_config
from ..errors import InputError
from ..io_utils import atomic_write_text
from ..md.integrators import MDState
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem
from ..md.start import claim
from ..rundir import COLVAR, MD_SETTINGS, TOPOLOGY, refuse_existing, require_existing
from ..sampling.biases import OPES
from ..sampling.colvar import ColvarReporter
from ..sampling.cvs import Stack
from ..sampling.openmm_bias import GridBias
from .funnel import AxialPosition, CentroidDistance, Funnel, HostGuestCV, RadialDistance
from .system import ComplexInput, fitted_funnel, host_axis, host_guest, positions_A

BIND_SETTINGS = "bind.toml"
INPUT = "input.toml"
SYSTEM = "system.xml"
CVS = {"axial": AxialPosition, "distance": CentroidDistance}


@dataclass
class BindSettings:
    """A binding run's geometry and bias (bind.toml). Lengths Å, energies kJ/mol.

    ``host``/``guest``/``anchor``: atom indices (0-based; the anchor's centroid sets the host's
    axis). ``funnel``: the :class:`~.funnel.Funnel`'s fields. ``cv``: the biased CV, ``axial``
    (z along the funnel axis) or ``distance`` (host–guest centroid distance). ``bound_z_A``: the
    guest is bound below this z; ``unbound_z_A``: the plateau [low, high] where it is free.
    """

    host: list[int] = field(default_factory=list)
    guest: list[int] = field(default_factory=list)
    anchor: list[int] = field(default_factory=list)
    funnel: dict[str, float] = field(default_factory=dict)
    cv: str = "axial"
    barrier_kjmol: float = 80.0
    sigma_A: float = 0.5
    pace: int = 500
    bound_z_A: float = 0.0
    unbound_z_A: list[float] = field(default_factory=list)

    def make_funnel(self) -> Funnel:
        try:
            funnel = Funnel(**self.funnel)
        except TypeError as exc:
            raise InputError(f"funnel: {exc}") from None
        funnel.validate()
        return funnel

    def validate(self) -> None:
        if self.cv not in CVS:
            raise InputError(f"cv: {self.cv!r}; expected one of {', '.join(CVS)}")
        for name in ("host", "guest", "anchor"):
            if not getattr(self, name):
                raise InputError(f"{name}: no atoms")
        if set(self.host) & set(self.guest):
            raise InputError("host and guest selections overlap")
        if not set(self.anchor) <= set(self.host):
            raise InputError("anchor: atoms outside the host")
        funnel = self.make_funnel()
        if not 0 < self.barrier_kjmol < float("inf") or not 0 < self.sigma_A < float("inf") or self.pace < 1:
            raise InputError(f"barrier {self.barrier_kjmol} kJ/mol, sigma {self.sigma_A} Å, pace {self.pace}: "
                             f"expected > 0, > 0, >= 1")
        lo, hi = self.unbound_z_A if len(self.unbound_z_A) == 2 else (None, None)
        if lo is None or not funnel.switch_z_A <= lo < hi <= funnel.upper_z_A:
            raise InputError(f"unbound_z_A: {self.unbound_z_A}; expected [low, high] inside the funnel's cylinder "
                             f"[{funnel.switch_z_A}, {funnel.upper_z_A}] Å")
        if not funnel.lower_z_A < self.bound_z_A < lo:
            raise InputError(f"bound_z_A: {self.bound_z_A}; expected between the funnel's lower end "
                             f"{funnel.lower_z_A} and the unbound plateau {lo} Å")

    def frame_cv(self, cls: type[HostGuestCV]) -> HostGuestCV:
        return cls(self.host, self.anchor, self.guest)

    def bias_cv(self) -> HostGuestCV:
        return self.frame_cv(CVS[self.cv])

    def recorded_cv(self) -> Stack:
        """What colvar.csv records: z, rho and d."""
        return Stack([self.frame_cv(AxialPosition), self.frame_cv(RadialDistance), self.frame_cv(CentroidDistance)])

    def grid_range(self) -> tuple[float, float]:
        """The biased CV's range (Å) over the funnel, with a margin of 1 Å."""
        f = self.make_funnel()
        if self.cv == "axial":
            return f.lower_z_A - 1.0, f.upper_z_A + 1.0
        far = float(np.hypot(f.upper_z_A, f.radius_A))
        return 0.0, far + 1.0


class FunnelTerm:
    """The funnel as an :class:`~neuralmd.md.openmm_engine.OpenMMTerm` (a fixed force)."""

    pace = 0

    def __init__(self, funnel: Funnel, frame: HostGuestCV) -> None:
        self.funnel, self.frame = funnel, frame

    def add_to(self, system: openmm.System) -> None:
        system.addForce(self.funnel.openmm_force(self.frame))

    def attach(self, context: openmm.Context) -> None:
        """Nothing to push: the funnel does not change."""

    def update(self, state: MDState) -> None:
        """Never called (pace 0)."""

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        """Nothing to restore."""


def check_start(settings: BindSettings, positions: np.ndarray) -> None:
    """InputError unless the starting pose is bound and inside the funnel."""
    settings.validate()
    funnel = settings.make_funnel()
    with torch.no_grad():
        z, rho = settings.frame_cv(AxialPosition).coordinates(torch.as_tensor(positions, dtype=torch.float64)[None])
    z, rho = float(z), float(rho)
    if not funnel.contains(z, rho):
        raise InputError(f"the funnel does not contain the starting pose (guest at z = {z:.2f} Å, {rho:.2f} Å from the "
                         f"axis; the funnel allows z in [{funnel.lower_z_A}, {funnel.upper_z_A}] and "
                         f"{float(funnel.radius(z)):.2f} Å from the axis there)")
    if z >= settings.bound_z_A:
        raise InputError(f"the starting pose is not bound: the guest is at z = {z:.2f} Å, the bound state ends at "
                         f"{settings.bound_z_A} Å")


def _terms_and_reporters(settings: BindSettings, engine: OpenMMSettings, run_dir: Path) -> tuple[list, list]:
    """The funnel and the OPES bias (tabulated over the CV's range) and the colvar reporter."""
    cv = settings.bias_cv()
    bias = OPES(cv, [settings.sigma_A], settings.barrier_kjmol, settings.pace, engine.temperature_K)
    terms = [FunnelTerm(settings.make_funnel(), settings.frame_cv(AxialPosition)),
             GridBias(bias, ranges=[settings.grid_range()])]
    reporters = [ColvarReporter(run_dir / COLVAR, settings.recorded_cv(), bias, engine.report_every)]
    return terms, reporters


def start_binding(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings, run_dir: str | Path,
                  source: ComplexInput | None = None, progress: bool = False) -> OpenMMRun:
    """A new binding run of ``parts`` in ``run_dir``: checks the settings and the starting pose,
    then writes bind.toml, input.toml (``source``), md.toml, system.xml and topology.pdb; returns
    the run, ready to ``run()``. Nothing is written when a check fails."""
    run_dir = refuse_existing(run_dir, "a binding run")
    n = parts.system.getNumParticles()
    bad = [i for i in settings.host + settings.guest + settings.anchor if not 0 <= i < n]
    if bad:
        raise InputError(f"atom index {bad[0]} but the system has {n} atoms")
    check_start(settings, positions_A(parts))
    system_xml = openmm.XmlSerializer.serialize(parts.system)  # before the funnel and bias are added
    lock = claim(run_dir)
    try:
        with open(run_dir / TOPOLOGY, "w") as fh:
            app.PDBFile.writeFile(parts.topology, parts.positions, fh, keepIds=True)
        engine.pdb = str(run_dir / TOPOLOGY)
        engine.validate()
        terms, reporters = _terms_and_reporters(settings, engine, run_dir)
        run = OpenMMRun(engine, run_dir, parts, terms, reporters, progress)
        atomic_write_text(system_xml, run_dir / SYSTEM)
        save_config(settings, run_dir / BIND_SETTINGS)
        if source is not None:
            save_config(source, run_dir / INPUT)
        save_config(engine, run_dir / MD_SETTINGS)
    except BaseException:
        lock.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    run.lock = lock
    return run


def load_settings(run_dir: str | Path) -> tuple[BindSettings, OpenMMSettings]:
    run_dir = require_existing(run_dir, "a binding run directory", marker=BIND_SETTINGS)
    settings = load_config(BindSettings, run_dir / BIND_SETTINGS)
    engine = load_config(OpenMMSettings, run_dir / MD_SETTINGS)
    engine.pdb = str(run_dir / TOPOLOGY)
    return settings, engine


def resume_binding(run_dir: str | Path, progress: bool = False) -> OpenMMRun:
    """The binding run in ``run_dir`` rebuilt from its stored System and settings and continued
    from its checkpoint, ready to ``run()``."""
    run_dir = require_existing(run_dir, "a binding run directory")
    settings, engine = load_settings(run_dir)
    system = openmm.XmlSerializer.deserialize((run_dir / SYSTEM).read_text())
    pdb = app.PDBFile(str(run_dir / TOPOLOGY))
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in pdb.topology.atoms()])
    parts = OpenMMSystem(pdb.topology, system, pdb.positions, numbers)
    terms, reporters = _terms_and_reporters(settings, engine, run_dir)
    run = OpenMMRun(engine, run_dir, parts, terms, reporters, progress)
    run.restore()
    return run


def build_settings(parts: OpenMMSystem, spec: ComplexInput, cv: str = "axial", funnel: dict[str, float] | None = None,
                   **bias: float) -> BindSettings:
    """Settings for a binding run of ``parts``: host and guest from ``spec``, the host's axis,
    the funnel fitted to the host (fields in ``funnel`` override it), bound below the cone's end
    (``switch_z_A``) and unbound on the last 7 Å of the cylinder but the final one."""
    host, guest = host_guest(parts.topology, spec)
    positions = positions_A(parts)
    anchor, axis = host_axis(positions, host, guest)
    fitted = fitted_funnel(positions, host, axis)
    values = {**fitted.__dict__, **(funnel or {})}
    lo = max(values["switch_z_A"], values["upper_z_A"] - 8.0)
    return BindSettings(host=host, guest=guest, anchor=anchor, funnel=values, cv=cv, bound_z_A=values["switch_z_A"],
                        unbound_z_A=[lo, values["upper_z_A"] - 1.0], **bias)
