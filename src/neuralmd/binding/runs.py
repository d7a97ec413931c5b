"""Binding runs: OPES on a host–guest CV inside a funnel, in OpenMM, in a run directory that
resumes on its own (the System is stored, not rebuilt from the input files).

Run directory: ``bind.toml`` (:class:`BindSettings`), ``input.toml`` (the
:class:`~.system.ComplexInput` it came from), ``md.toml`` (engine settings), ``system.xml``
(OpenMM's serialised System without the funnel and the bias), ``topology.pdb``, ``colvar.csv``
(z, rho, d and the bias each frame felt), ``traj_000.h5md``, ``log.csv``, ``checkpoint.pt``,
``results.json``; ``binding.json``/``binding.png`` from :mod:`.analysis`.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import app, unit

from ..config import load_config, save_config
from ..errors import InputError
from ..io_utils import atomic_write_text
from ..md.openmm_engine import FixedTerm, OpenMMRun, OpenMMSettings, OpenMMSystem
from ..md.start import claim
from ..geometry import minimum_image
from ..units import NM_IN_A
from ..rundir import (BIND_INPUT, BIND_SETTINGS, COLVAR, GUEST_MODEL, LEARNED_CV, MD_SETTINGS, SYSTEM_XML, TOPOLOGY,
                      refuse_existing, require_existing)
from ..sampling.biases import OPES
from ..sampling.colvar import ColvarReporter
from ..sampling.cvs import CV, Stack
from ..sampling.openmm_bias import GridBias
from ..models.neural import load_potential
from .mlmm import MLGuestTerm
from .funnel import AxialPosition, CentroidDistance, Funnel, HostGuestCV, RadialDistance
from .system import (ComplexInput, box_A, fitted_funnel, host_axis, host_guest, positions_A, water_molecules,
                     water_oxygens)

#: the learned CV's kernel width: a twentieth of the way from the bound to the unbound state
#: (Deep-LDA flattens the CV inside each state, so their own spread would give needle kernels)
LEARNED_SIGMA = 0.05
CVS = ("axial", "distance", "learned")


@dataclass
class BindSettings:
    """A binding run's geometry and bias (bind.toml). Lengths Å, energies kJ/mol.

    ``host``/``guest``/``anchor``: atom indices (0-based; the anchor's centroid sets the host's
    axis). ``funnel``: the :class:`~.funnel.Funnel`'s fields. ``cv``: the biased CV, ``axial``
    (z along the funnel axis), ``distance`` (host–guest centroid distance) or ``learned``
    (a discriminant of host–guest descriptors, ``cv_method`` ``lda`` or ``deep-lda``,
    :mod:`.learned`, trained from ``cv_train_ps`` of unbiased MD in each state before the run;
    ``cv_range`` is then its grid's range).
    ``ml_guest``: the guest's internal energy from the neuralmd potential stored as
    ``guest_model.pt`` in the run directory (ML/MM, :mod:`.mlmm`). ``equilibrate_ps``: explicit
    solvent only, a minimisation and this much NPT MD with the guest held bound before anything
    else (a solvated box as tleap or PDBFixer writes it has gaps at its faces: CB7–B2's TIP3P
    box starts at 0.72 g/cm³). ``sigma``: the initial kernel width in the CV's unit (0: from the learned CV's
    fluctuations). ``bound_z_A``: the guest is bound below this z; ``unbound_z_A``: the plateau
    [low, high] where it is free. ``unbound_walkers``: of the run's walkers, this many start with
    the guest on the plateau (:func:`unbound_start`), the others from the pose, so the shared bias
    grows in both states from the first step instead of meeting the plateau at its floor.
    """

    host: list[int] = field(default_factory=list)
    guest: list[int] = field(default_factory=list)
    anchor: list[int] = field(default_factory=list)
    funnel: dict[str, float] = field(default_factory=dict)
    cv: str = "axial"
    barrier_kjmol: float = 80.0
    sigma: float = 0.5
    pace: int = 500
    cv_train_ps: float = 200.0
    cv_method: str = "lda"
    equilibrate_ps: float = 100.0
    ml_guest: bool = False
    cv_range: list[float] = field(default_factory=list)
    bound_z_A: float = 0.0
    unbound_z_A: list[float] = field(default_factory=list)
    unbound_walkers: int = 0

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
        if not 0 < self.barrier_kjmol < float("inf") or not 0 <= self.sigma < float("inf") or self.pace < 1:
            raise InputError(f"barrier {self.barrier_kjmol} kJ/mol, sigma {self.sigma}, pace {self.pace}: "
                             f"expected > 0, >= 0, >= 1")
        if self.cv != "learned" and self.sigma == 0:
            raise InputError(f"sigma: 0; the {self.cv} CV needs a kernel width in Å")
        if self.cv_method not in ("lda", "deep-lda"):
            raise InputError(f"cv_method: {self.cv_method!r}; expected lda or deep-lda")
        if not 0 <= self.equilibrate_ps < float("inf"):
            raise InputError(f"equilibrate_ps: {self.equilibrate_ps}; expected >= 0 ps")
        if self.cv == "learned" and not 0 < self.cv_train_ps < float("inf"):
            raise InputError(f"cv_train_ps: {self.cv_train_ps}; expected > 0 ps of MD per state")
        lo, hi = self.unbound_z_A if len(self.unbound_z_A) == 2 else (None, None)
        if lo is None or not funnel.switch_z_A <= lo < hi <= funnel.upper_z_A:
            raise InputError(f"unbound_z_A: {self.unbound_z_A}; expected [low, high] inside the funnel's cylinder "
                             f"[{funnel.switch_z_A}, {funnel.upper_z_A}] Å")
        if not funnel.lower_z_A < self.bound_z_A < lo:
            raise InputError(f"bound_z_A: {self.bound_z_A}; expected between the funnel's lower end "
                             f"{funnel.lower_z_A} and the unbound plateau {lo} Å")

    def frame_cv(self, cls: type[HostGuestCV]) -> HostGuestCV:
        return cls(self.host, self.anchor, self.guest)

    def bias_cv(self, run_dir: Path) -> CV:
        """The biased CV (the learned one read from ``run_dir``)."""
        if self.cv == "learned":
            from .learned import load_binding_cv

            return load_binding_cv(run_dir / LEARNED_CV)
        return self.frame_cv(AxialPosition if self.cv == "axial" else CentroidDistance)

    def recorded_cv(self, bias_cv: CV) -> Stack:
        """What colvar.csv records: z, rho, d (and a learned CV's value)."""
        frame = [self.frame_cv(AxialPosition), self.frame_cv(RadialDistance), self.frame_cv(CentroidDistance)]
        return Stack(frame + ([bias_cv] if self.cv == "learned" else []))

    def grid_range(self) -> tuple[float, float]:
        """The biased CV's range over the funnel (Å, with a margin of 1 Å; a learned CV's stored
        range)."""
        f = self.make_funnel()
        if self.cv == "learned":
            return self.cv_range[0], self.cv_range[1]
        if self.cv == "axial":
            return f.lower_z_A - 1.0, f.upper_z_A + 1.0
        return 0.0, float(np.hypot(f.upper_z_A, f.radius_A)) + 1.0


class FunnelTerm(FixedTerm):
    """The funnel as an :class:`~neuralmd.md.openmm_engine.OpenMMTerm` (a fixed force)."""

    def __init__(self, funnel: Funnel, frame: HostGuestCV) -> None:
        self.funnel, self.frame = funnel, frame

    def add_to(self, system: openmm.System) -> None:
        system.addForce(self.funnel.openmm_force(self.frame))


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


def _terms_and_reporters(settings: BindSettings, engine: OpenMMSettings, run_dir: Path, numbers: np.ndarray
                         ) -> tuple[list, list]:
    """The ML/MM guest (if any), the funnel and the OPES bias (tabulated over the CV's range)
    and the colvar reporter."""
    cv = settings.bias_cv(run_dir)
    bias = OPES(cv, [settings.sigma], settings.barrier_kjmol, settings.pace, engine.temperature_K)
    terms = [FunnelTerm(settings.make_funnel(), settings.frame_cv(AxialPosition)),
             GridBias(bias, ranges=[settings.grid_range()])]
    if settings.ml_guest:
        terms.insert(0, MLGuestTerm(load_potential(run_dir / GUEST_MODEL), settings.guest, numbers))  # its own dtype
    reporters = [ColvarReporter(run_dir / COLVAR, settings.recorded_cv(cv), bias, engine.report_every)]
    return terms, reporters


def start_binding(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings, run_dir: str | Path,
                  source: ComplexInput | None = None, ml_guest: str | Path | None = None,
                  progress: bool = False) -> OpenMMRun:
    """A new binding run of ``parts`` in ``run_dir``: checks the settings, the starting pose and
    the ML guest model (``ml_guest``: a neuralmd model.pt for ML/MM), then writes bind.toml,
    input.toml (``source``), md.toml, system.xml, topology.pdb (and guest_model.pt); returns the
    run, ready to ``run()``. Nothing is written when a check fails."""
    run_dir = refuse_existing(run_dir, "a binding run")
    settings.ml_guest = ml_guest is not None
    if ml_guest is not None:
        load_potential(ml_guest).check_elements([int(parts.numbers[i]) for i in settings.guest],
                                                where=f"the guest (--ml-guest {ml_guest})")
    n = parts.system.getNumParticles()
    bad = [i for i in settings.host + settings.guest + settings.anchor if not 0 <= i < n]
    if bad:
        raise InputError(f"atom index {bad[0]} but the system has {n} atoms")
    check_start(settings, positions_A(parts))
    if not 0 <= settings.unbound_walkers < engine.walkers:
        raise InputError(f"unbound walkers: {settings.unbound_walkers}; expected 0 to {engine.walkers - 1} of the "
                         f"{engine.walkers} walker(s) (one at least starts bound)")
    if parts.system.usesPeriodicBoundaryConditions() and settings.equilibrate_ps > 0:
        parts = equilibrated(parts, settings, engine, progress)
    learned = train_learned_cv(parts, settings, engine, progress) if settings.cv == "learned" else None
    system_xml = openmm.XmlSerializer.serialize(parts.system)  # before the funnel and bias are added
    lock = claim(run_dir)
    try:
        if learned is not None:
            cv, stats = learned
            cv.export(run_dir / LEARNED_CV, meta={"groups": cv.descriptors.groups(), "states": stats})
        with open(run_dir / TOPOLOGY, "w") as fh:
            app.PDBFile.writeFile(parts.topology, parts.positions, fh, keepIds=True)
        engine.pdb = str(run_dir / TOPOLOGY)
        engine.validate()
        if ml_guest is not None:
            shutil.copyfile(ml_guest, run_dir / GUEST_MODEL)
        terms, reporters = _terms_and_reporters(settings, engine, run_dir, parts.numbers)
        run = OpenMMRun(engine, run_dir, parts, terms, reporters, progress)
        if settings.unbound_walkers:
            start_unbound(run, parts, settings, engine)
        atomic_write_text(system_xml, run_dir / SYSTEM_XML)
        save_config(settings, run_dir / BIND_SETTINGS)
        if source is not None:
            save_config(source, run_dir / BIND_INPUT)
        save_config(engine, run_dir / MD_SETTINGS)
    except BaseException:
        lock.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    run.lock = lock
    return run


#: iterations of the minimisations before equilibration and of a guest swapped with waters
EQUILIBRATION_MINIMISE_ITERATIONS = 1000
SWAP_MINIMISE_ITERATIONS = 200


def equilibrated(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings,
                 progress: bool = False) -> OpenMMSystem:
    """``parts`` after a minimisation and ``settings.equilibrate_ps`` of MD at constant pressure
    (its barostat) with the guest held in the bound part of the funnel (:func:`bound_funnel`):
    the final positions (whole molecules) and box, the box stored in the System and topology."""
    from rich.console import Console

    steps = int(round(settings.equilibrate_ps * 1000 / engine.timestep_fs))
    if progress:
        Console(stderr=True).print(f"explicit solvent: minimisation and {settings.equilibrate_ps} ps of NPT "
                                   f"equilibration, the guest held bound")
    probe = OpenMMRun(dataclasses.replace(engine, walkers=1), None, parts.copy(),
                      [FunnelTerm(bound_funnel(settings), settings.frame_cv(AxialPosition))])
    context = probe.simulation.context
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=EQUILIBRATION_MINIMISE_ITERATIONS)
    context.setVelocitiesToTemperature(engine.temperature_K * unit.kelvin, engine.seed + 1)
    probe.simulation.step(steps)
    state = context.getState(getPositions=True)
    box = state.getPeriodicBoxVectors()
    parts.system.setDefaultPeriodicBoxVectors(*box)
    parts.topology.setPeriodicBoxVectors(box)
    return OpenMMSystem(parts.topology, parts.system, state.getPositions(), parts.numbers)


def train_learned_cv(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings, progress: bool = False):
    """The learned binding CV (``settings.cv_method``) from ``settings.cv_train_ps`` of unbiased
    MD (in the funnel) per state. The bound state is sampled as the analysis defines it, over
    the whole bound basin: half from the bound pose in the funnel, half held at the basin's far
    end (:func:`far_end_funnel`: a macrocycle's other portal, which a CV trained on the bound
    pose alone mistakes for the way out); the unbound state from the guest moved along the axis
    to the middle of the plateau (held there by :func:`plateau_funnel`). Sets
    ``settings.cv_range`` (the states' means ± 1: the CV is scaled to one unit between them)
    and, where 0, ``settings.sigma`` (:data:`LEARNED_SIGMA`). Returns the CV and the states'
    statistics."""
    from rich.console import Console

    from .learned import descriptor_groups, sample_state, train_binding_cv

    positions = positions_A(parts)
    groups = descriptor_groups(positions, parts.numbers, settings.host, settings.anchor, settings.guest,
                               water_oxygens(parts))
    frame = settings.frame_cv(AxialPosition)
    steps = int(round(settings.cv_train_ps * 1000 / engine.timestep_fs))
    every = max(1, steps // 400)
    if progress:
        Console(stderr=True).print(f"learned CV: {settings.cv_train_ps} ps of unbiased MD in the bound and in the "
                                   f"unbound state, then {settings.cv_method}")

    def sample(funnel: Funnel, start_A: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray | None]:
        return sample_state(parts, engine, [FunnelTerm(funnel, frame)], start_A / NM_IN_A, n_steps, every)

    pose, far_end = sample(settings.make_funnel(), positions, steps // 2), sample(far_end_funnel(settings), positions,
                                                                                 steps - steps // 2)
    bound = (np.concatenate([pose[0], far_end[0]]), None if pose[1] is None else np.concatenate([pose[1], far_end[1]]))
    unbound = sample(plateau_funnel(settings), unbound_start(parts, settings, engine), steps)
    cv, stats = train_binding_cv(bound, unbound, groups, settings.cv_method, seed=engine.seed)
    settings.cv_range = [stats["bound_mean"] - 1.0, stats["unbound_mean"] + 1.0]  # the states are one unit apart
    if settings.sigma == 0:
        settings.sigma = LEARNED_SIGMA
    return cv, stats


#: depth (Å) of the far end of the bound basin sampled for the learned CV's bound state
FAR_END_A = 2.0


def far_end_funnel(settings: BindSettings) -> Funnel:
    """The funnel closed :data:`FAR_END_A` above its lower wall: holds a guest at the far end of
    the bound basin."""
    funnel = settings.make_funnel()
    top = funnel.lower_z_A + FAR_END_A
    return dataclasses.replace(funnel, upper_z_A=top, switch_z_A=min(funnel.switch_z_A, top - 0.5))


def plateau_funnel(settings: BindSettings) -> Funnel:
    """The funnel with its lower wall moved to the unbound plateau: holds a guest unbound (the
    guest would come back)."""
    funnel, lo = settings.make_funnel(), settings.unbound_z_A[0]
    return dataclasses.replace(funnel, lower_z_A=lo,
                               switch_z_A=min(max(funnel.switch_z_A, lo + 0.5), 0.5 * (lo + funnel.upper_z_A)))


def bound_funnel(settings: BindSettings) -> Funnel:
    """The funnel closed at ``bound_z``: holds a guest bound."""
    funnel = settings.make_funnel()
    return dataclasses.replace(funnel, upper_z_A=settings.bound_z_A,
                               switch_z_A=min(funnel.switch_z_A, settings.bound_z_A - 0.5))


#: explicit solvent: waters closer than this (Å, oxygen to any guest atom) to the guest moved
#: onto the plateau swap places with it
CLASH_A = 3.0


def guest_on_plateau(parts: OpenMMSystem, settings: BindSettings) -> np.ndarray:
    """The starting positions (Å) with the guest's centroid moved onto the axis at the middle of
    the unbound plateau. In explicit solvent the waters it lands on (oxygen within
    :data:`CLASH_A` of a guest atom, minimum image) move by the opposite shift into the place
    it left, so the solvent keeps its density (:func:`unbound_start` relaxes the seams)."""
    positions = positions_A(parts)
    r, u = (v[0].numpy() for v in settings.frame_cv(AxialPosition).frame(torch.as_tensor(positions)[None]))
    shift = float(np.mean(settings.unbound_z_A)) * u - r
    out = positions.copy()
    out[settings.guest] += shift
    waters = water_molecules(parts)
    if waters:
        cell = torch.as_tensor(box_A(parts))[None]
        oxygens = torch.as_tensor(out[[w[0] for w in waters]])
        d = minimum_image((oxygens[:, None] - torch.as_tensor(out[settings.guest])[None])[None], cell)[0]
        closest, nearest = torch.linalg.vector_norm(d, dim=-1).min(1)
        for k in np.flatnonzero(closest.numpy() < CLASH_A):
            image = out[settings.guest][int(nearest[k])] + d[k, int(nearest[k])].numpy()  # the oxygen's nearest image
            out[waters[k]] += image - out[waters[k][0]] - shift
    return out


def unbound_start(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings) -> np.ndarray:
    """:func:`guest_on_plateau`, in explicit solvent relaxed by a short minimisation in the
    plateau's funnel (the seams of the swap with the waters): where the unbound state's
    sampling (the learned CV's training, the ML/MM correction's windows) starts, Å."""
    out = guest_on_plateau(parts, settings)
    if not parts.system.usesPeriodicBoundaryConditions():
        return out
    system = parts.copy().system
    FunnelTerm(plateau_funnel(settings), settings.frame_cv(AxialPosition)).add_to(system)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(engine.platform))
    context.setPositions(out / NM_IN_A)
    openmm.LocalEnergyMinimizer.minimize(context, maxIterations=SWAP_MINIMISE_ITERATIONS)
    return np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom))


def start_unbound(run: OpenMMRun, parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings) -> None:
    """Move the last ``settings.unbound_walkers`` walkers of a new ``run`` onto the unbound plateau
    (:func:`unbound_start`), their velocities drawn there with the walker's own seed."""
    positions = unbound_start(parts, settings, engine) / NM_IN_A
    for k in range(engine.walkers - settings.unbound_walkers, engine.walkers):
        context = run.simulations[k].context
        context.setPositions(positions * unit.nanometer)
        context.setVelocitiesToTemperature(engine.temperature_K * unit.kelvin, engine.seed + 1 + k)


def load_settings(run_dir: str | Path) -> tuple[BindSettings, OpenMMSettings]:
    run_dir = require_existing(run_dir, "a binding run directory", marker=BIND_SETTINGS)
    settings = load_config(BindSettings, run_dir / BIND_SETTINGS)
    engine = load_config(OpenMMSettings, run_dir / MD_SETTINGS)
    engine.pdb = str(run_dir / TOPOLOGY)
    return settings, engine


def stored_system(run_dir: str | Path) -> OpenMMSystem:
    """The binding run's MM system as stored (system.xml, topology.pdb with its start positions)."""
    run_dir = Path(run_dir)
    system = openmm.XmlSerializer.deserialize((run_dir / SYSTEM_XML).read_text())
    pdb = app.PDBFile(str(run_dir / TOPOLOGY))
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in pdb.topology.atoms()])
    return OpenMMSystem(pdb.topology, system, pdb.positions, numbers)


def resume_binding(run_dir: str | Path, progress: bool = False) -> OpenMMRun:
    """The binding run in ``run_dir`` rebuilt from its stored System and settings and continued
    from its checkpoint, ready to ``run()``."""
    run_dir = require_existing(run_dir, "a binding run directory")
    settings, engine = load_settings(run_dir)
    parts = stored_system(run_dir)
    terms, reporters = _terms_and_reporters(settings, engine, run_dir, parts.numbers)
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
