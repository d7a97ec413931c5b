"""The MM → ML/MM correction to ΔG°bind: alchemical windows λ between the force field's and the
neuralmd potential's guest-internal energy, in the bound and in the unbound state, joined by MBAR
(pymbar), with the overlap between neighbouring windows as the diagnostic.

U(λ) = U_env + (1 − λ) U_MM,int + λ U_ML   (U_env: everything but the guest's internal MM terms)

ΔΔG = ΔA_bound(MM → ML) − ΔA_unbound(MM → ML),   ΔG°(ML/MM) = ΔG°(MM) + ΔΔG.

Both states are the binding run's own: bound is the funnel closed at ``bound_z``, unbound the
funnel's plateau (its lower wall moved there), so the correction uses the run's definitions.
Each window is one OpenMM run whose ``CustomCVForce`` reports U_MM,int and U_ML per frame; MBAR
takes the reduced energies of every frame at every λ. Windows are stored as they finish
(``windows/{state}_{k}.npz``) and reused, so a stopped correction resumes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import openmm
from openmm import unit

from ..errors import InputError
from ..io_utils import atomic_write_json
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem
from ..models.base import Potential
from ..sampling.fes import kT_kjmol
from ..units import NM_IN_A
from .funnel import AxialPosition, Funnel
from .mlmm import BONDED, bonded_terms, guest_force, remove_guest_internal
from .runs import BindSettings, FunnelTerm, bound_funnel, plateau_funnel, unbound_start
from .system import positions_A

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def guest_internal_forces(system: openmm.System, guest: Sequence[int]) -> list[openmm.Force]:
    """Forces whose sum is the guest's internal MM energy: its bonds, angles and torsions and its
    guest–guest nonbonded pairs (non-periodic, the exceptions of the force field kept), exactly
    what :func:`~.mlmm.remove_guest_internal` removes."""
    guest_set = {int(i) for i in guest}
    out: list[openmm.Force] = []
    for force in system.getForces():
        if type(force) in BONDED:
            out.append(bonded_terms(force, guest_set, internal=True))
        elif isinstance(force, openmm.NonbondedForce):
            pairs = openmm.NonbondedForce()
            pairs.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
            for i in range(force.getNumParticles()):
                charge, sigma, epsilon = force.getParticleParameters(i)
                pairs.addParticle(*((charge, sigma, epsilon) if i in guest_set else (0.0, 1.0, 0.0)))
            for k in range(force.getNumExceptions()):
                i, j, q, sigma, epsilon = force.getExceptionParameters(k)
                if i in guest_set and j in guest_set:
                    pairs.addException(i, j, q, sigma, epsilon)
            out.append(pairs)
    return out


def lambda_force(system: openmm.System, guest: Sequence[int], numbers: Sequence[int], potential: Potential
                 ) -> openmm.CustomCVForce:
    """(1 − λ) U_MM,int + λ U_ML as one force with global parameter ``lambda`` (its collective
    variables: the internal MM terms, then ``ml``)."""
    internal = guest_internal_forces(system, guest)
    names = [f"mm{k}" for k in range(len(internal))]
    force = openmm.CustomCVForce(f"(1-lambda)*({'+'.join(names) or '0'})+lambda*ml")
    force.addGlobalParameter("lambda", 0.0)
    for name, f in zip(names, internal):
        force.addCollectiveVariable(name, f)
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    force.addCollectiveVariable("ml", guest_force(potential, numbers, guest, system.getNumParticles(), masses))
    return force


def _window(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings, potential: Potential,
            funnel: Funnel, start_A: np.ndarray, lam: float, steps: int, every: int, seed: int, state: str = ""
            ) -> tuple[np.ndarray, np.ndarray]:
    """U_MM,int and U_ML (kJ/mol) every ``every`` steps of a window at λ (after steps/5
    discarded), and the final positions (Å)."""
    window = parts.copy(start_A / NM_IN_A * unit.nanometer)
    remove_guest_internal(window.system, settings.guest)
    mix = lambda_force(parts.system, settings.guest, parts.numbers, potential)
    window.system.addForce(mix)
    run = OpenMMRun(dataclasses.replace(engine, seed=seed, walkers=1), None, window,
                    [FunnelTerm(funnel, settings.frame_cv(AxialPosition))])
    context = run.simulation.context
    context.setParameter("lambda", lam)
    values = []
    try:
        run.simulation.step(max(every, steps // 5))
        for _ in range(steps // every):
            run.simulation.step(every)
            cv = mix.getCollectiveVariableValues(context)
            if not np.isfinite(cv).all():  # platforms that do not check coordinates themselves
                raise openmm.OpenMMException("Particle coordinate is NaN (the guest's energies are not finite)")
            values.append([sum(cv[:-1]), cv[-1]])
    except openmm.OpenMMException as exc:
        if "nan" not in str(exc).lower():
            raise
        raise InputError(f"ml-correction: the {state} state's λ = {lam:g} window blew up (NaN coordinates after at most "
                         f"{len(values) * every + max(every, steps // 5)} steps): the guest model is not stable "
                         f"where MM puts the guest; train it on more of the guest's conformations") from None
    final = run.current_state().batch.positions.numpy()
    return np.array(values), final


def mlmm_correction(parts: OpenMMSystem, settings: BindSettings, engine: OpenMMSettings, potential: Potential,
                    folder: str | Path, ps_per_window: float = 100.0, lambdas: Sequence[float] = LAMBDAS,
                    every_steps: int = 250) -> dict:
    """ΔΔG (kJ/mol) of replacing the guest's internal MM energy by ``potential``, per state ΔA
    with MBAR errors, and the smallest overlap between neighbouring windows (None with the reason
    where MBAR fails for want of overlap); windows stored in ``folder`` and reused; the result
    also written to ``folder/correction.json``."""
    pymbar = _quiet_pymbar()
    folder = Path(folder)
    (folder / "windows").mkdir(parents=True, exist_ok=True)
    if list(lambdas) != sorted(lambdas) or lambdas[0] != 0.0 or lambdas[-1] != 1.0 or len(lambdas) < 2:
        raise InputError(f"lambdas: {list(lambdas)}; expected increasing values from 0 to 1")
    kT = kT_kjmol(engine.temperature_K)
    steps = int(round(ps_per_window * 1000 / engine.timestep_fs))
    every_steps = max(1, min(every_steps, steps // 20))  # at least 20 frames per window
    states = {"bound": (bound_funnel(settings), positions_A(parts)),
              "unbound": (plateau_funnel(settings), unbound_start(parts, settings, engine))}
    out: dict = {"lambdas": list(lambdas), "ps_per_window": ps_per_window, "states": {}}
    for name, (funnel, start) in states.items():
        samples = []
        for k, lam in enumerate(lambdas):
            path = folder / "windows" / f"{name}_{k}.npz"
            if path.exists():
                data = np.load(path)
                values, start = data["values"], data["final_A"]
            else:
                values, start = _window(parts, settings, engine, potential, funnel, start, lam, steps, every_steps,
                                        seed=engine.seed + 100 * k + (0 if name == "bound" else 50), state=name)
                np.savez(path, values=values, final_A=start)
            samples.append(values)
        energies = np.concatenate(samples)  # (n, 2): U_MM,int, U_ML in kJ/mol
        offset = float(np.mean(energies[:, 1] - energies[:, 0]))  # ML and MM zeros differ; a constant shift
        lam = np.asarray(lambdas)[:, None]
        u_kn = ((1 - lam) * energies[None, :, 0] + lam * (energies[None, :, 1] - offset)) / kT
        try:
            mbar = pymbar.MBAR(u_kn, np.array([len(s) for s in samples]), solver_protocol="robust")
            result = mbar.compute_free_energy_differences()
            overlap = mbar.compute_overlap()["matrix"]
        except (pymbar.utils.ParameterError, np.linalg.LinAlgError) as exc:  # windows so far apart that MBAR fails
            out["states"][name] = {"dA_kjmol": None, "dA_err_kjmol": None, "min_neighbour_overlap": 0.0,
                                   "reason": f"MBAR failed ({str(exc).splitlines()[0][:120]}): the λ windows do not "
                                             f"overlap; add windows or sample longer"}
            continue
        out["states"][name] = {
            "dA_kjmol": float(result["Delta_f"][0, -1] * kT + offset), "dA_err_kjmol": float(result["dDelta_f"][0, -1] * kT),
            "min_neighbour_overlap": float(min(overlap[k, k + 1] for k in range(len(lambdas) - 1)))}
    b, u = out["states"]["bound"], out["states"]["unbound"]
    known = b["dA_kjmol"] is not None and u["dA_kjmol"] is not None
    out["ddG_kjmol"] = b["dA_kjmol"] - u["dA_kjmol"] if known else None
    out["ddG_err_kjmol"] = float(np.hypot(b["dA_err_kjmol"], u["dA_err_kjmol"])) if known else None
    out["min_neighbour_overlap"] = min(b["min_neighbour_overlap"], u["min_neighbour_overlap"])
    atomic_write_json(out, folder / "correction.json")
    return out


def check_correction_model(model: str | Path, numbers: Sequence[int], settings: BindSettings) -> Potential:
    """The guest model for an MM → ML/MM correction, loaded in its own precision (a float32
    network is 2-3× faster per step than float64; its energy, summed in float64, is precise to
    far below k_BT) and checked: InputError if the run's guest is already ML or the model lacks
    one of the guest's elements."""
    from ..models.neural import load_potential

    if settings.ml_guest:
        raise InputError("ml-correction: this run's guest is already ML (--ml-guest); the correction is for an MM run")
    potential = load_potential(model)
    potential.check_elements([int(numbers[i]) for i in settings.guest], where=f"the guest (--ml-correction {model})")
    return potential


def correct_binding(run_dir: str | Path, model: str | Path, ps_per_window: float = 100.0) -> dict:
    """The ML/MM correction of the binding run in ``run_dir`` for the guest potential ``model``,
    in ``run_dir/ml-correction`` (windows reused when it is run again)."""
    from ..rundir import ML_CORRECTION
    from .runs import load_settings, stored_system

    settings, engine = load_settings(run_dir)
    parts = stored_system(run_dir)
    potential = check_correction_model(model, parts.numbers, settings)
    folder = Path(run_dir) / ML_CORRECTION
    out = {"model": str(Path(model).resolve()), **mlmm_correction(parts, settings, engine, potential, folder,
                                                                   ps_per_window)}
    atomic_write_json(out, folder / "correction.json")
    return out


def _quiet_pymbar():
    """pymbar, imported without the banner and warning it prints (no JAX, timeseries caveats)."""
    import contextlib
    import io
    import logging

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import pymbar
    logging.getLogger("pymbar").setLevel(logging.ERROR)
    return pymbar
