"""Sampling runs as the command line makes them: a CV specification and bias settings, an engine
(OpenMM with a PDB and force field, or the native engine with a neural potential), a run
directory (:mod:`neuralmd.rundir`), start and resume.

Run directory: ``md.toml`` (engine settings), ``sample.toml`` (:class:`BiasSettings`),
``traj_XXX.h5md`` (+ ``.pdb``), ``log.csv``, ``colvar.csv``, ``checkpoint.pt``, ``results.json``,
``topology.pdb`` (OpenMM runs).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from ..config import load_config, save_config
from ..errors import InputError
from ..geometry import replica_cells, replica_positions
from ..md import start as md_start
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem, pdb_numbers
from ..md.run import MDRun
from ..md.simulation import MDSettings, Simulation
from ..models.base import Potential
from ..rundir import BIAS_SETTINGS, COLVAR, refuse_existing
from ..state import AtomsBatch
from .bias_factory import BiasSettings, check_bias_cv, grid_ranges, make_bias
from .biases import Bias, OPESMultithermal
from .colvar import ColvarReporter
from .cvs import CV
from .energy_cv import energy_cvs
from .kernel_widths import estimate_sigma, probe_sigma
from .openmm_bias import openmm_bias_terms
from .spec import parse_cv


def _prepare(engine_settings, bias_settings: BiasSettings) -> None:
    """Check everything that can be checked before anything is written."""
    bias_settings.validate()
    engine_settings.validate()


def start_openmm(settings: OpenMMSettings, bias_settings: BiasSettings, run_dir: str | Path,
                 progress: bool = False) -> OpenMMRun:
    """A new OpenMM run with the bias of ``bias_settings`` (kernel widths and grid ranges probed
    in a short unbiased run where not given, and stored); writes md.toml, sample.toml and
    topology.pdb; returns the run, ready to ``run()``."""
    run_dir = refuse_existing(run_dir, "an MD run")
    settings.pdb = str(Path(settings.pdb).resolve())
    _prepare(settings, bias_settings)
    parts = OpenMMSystem.from_settings(settings)
    cv = parse_cv(bias_settings.cv, parts.numbers, settings.pdb) if bias_settings.cv else None
    if cv is not None:
        check_bias_cv(bias_settings, cv)
        cv.check_atoms(len(parts.numbers))
    for energy in energy_cvs(cv):
        energy.bind(parts.system)
    bias, ranges = None, None
    if cv is not None and bias_settings.bias != "none":
        values = None
        needs_range = bias_settings.grid and not bias_settings.grid_ranges and min(cv.periods) == 0
        if not bias_settings.sigma or needs_range:
            probe = OpenMMRun(settings, None, parts)
            positions, cells = probe.sample_positions(bias_settings.probe_steps)
            with torch.no_grad():
                values = cv(torch.as_tensor(positions, dtype=torch.float64),
                            None if cells is None else torch.as_tensor(cells)).numpy()
        if not bias_settings.sigma and bias_settings.bias == "opes-multithermal":  # not a kernel bias
            # the energy's spread sets the temperature ladder and the grid; a probe of a few ps
            # underestimates it (ala2: 7.4-8.0 kJ/mol against 12.6 by equipartition), which left
            # the ladder too coarse and the grid's top below the energies of its hot end
            floor = energy_cvs(cv)[0].equipartition_std_kjmol(settings.temperature_K)
            bias_settings.sigma = [max(estimate_sigma(values, cv.periods)[0], floor)]
        elif not bias_settings.sigma:
            bias_settings.sigma = probe_sigma(cv, values, positions, probe.template.masses.numpy(),
                                              settings.temperature_K, settings.timestep_fs, cells)
        bias = make_bias(bias_settings, cv, settings.temperature_K, bias_settings.sigma)
        if isinstance(bias, OPESMultithermal) and settings.timestep_fs > 1.0:
            warnings.warn(f"opes-multithermal at {settings.timestep_fs} fs: the energy-dependent force scale "
                          f"heats bond and angle vibrations above 1 fs; use --timestep-fs 1", stacklevel=2)
        if bias_settings.grid:
            ranges = grid_ranges(bias_settings, cv, values, settings.temperature_K)
            if all(r is not None for r in ranges):  # stored, so that a resumed run has the same grid
                bias_settings.grid_ranges = [list(r) for r in ranges]
    terms, reporters = openmm_bias_terms(settings, run_dir, bias, cv, bias_settings.grid, ranges)
    run = md_start.start_openmm(settings, run_dir, terms, reporters, progress)
    save_config(bias_settings, run_dir / BIAS_SETTINGS)
    return run


def native_bias(potential: Potential, batch: AtomsBatch, md_settings: MDSettings, bias_settings: BiasSettings,
                cv: CV) -> Bias | None:
    """The bias of ``bias_settings`` on ``cv`` for a native-engine run of ``batch``; kernel
    widths not given are estimated from a short unbiased probe run (and stored in
    ``bias_settings.sigma``)."""
    if bias_settings.bias == "none":
        return None
    if not bias_settings.sigma:
        probe = Simulation(potential, batch, dataclasses.replace(md_settings))  # run() sets total_steps
        values, positions, cells = [], [], []
        for _ in range(bias_settings.probe_steps // 10):
            state = probe.run(10).batch
            pos, cell = replica_positions(state).detach(), replica_cells(state)
            positions.append(pos.numpy().copy())
            if cell is not None:
                cells.append(cell.detach().numpy().copy())
            with torch.no_grad():
                values.append(cv(pos, cell).numpy())
        bias_settings.sigma = probe_sigma(cv, np.concatenate(values), np.concatenate(positions),
                                          batch.masses[batch.system == 0].numpy(), md_settings.temperature_K[0],
                                          md_settings.timestep_fs, np.concatenate(cells) if cells else None)
    return make_bias(bias_settings, cv, md_settings.temperature_K[0], bias_settings.sigma)


def start_native(potential: Potential, frames: Sequence[Atoms], md_settings: MDSettings, bias_settings: BiasSettings,
                 run_dir: str | Path, progress: bool = False) -> Simulation:
    """A new native-engine run of ``frames`` (one per replica; all replicas are walkers of one
    bias); writes md.toml and sample.toml; returns the run, ready to ``run()``."""
    run_dir = refuse_existing(run_dir, "an MD run")
    _prepare(md_settings, bias_settings)
    batch = AtomsBatch.from_atoms(frames)
    cv = parse_cv(bias_settings.cv, frames[0].numbers) if bias_settings.cv else None
    if energy_cvs(cv):
        raise InputError("CV 'energy': the force-field energy is a CV of OpenMM runs (--engine openmm)")
    bias = native_bias(potential, batch, md_settings, bias_settings, cv) if cv is not None else None
    reporters = [ColvarReporter(run_dir / COLVAR, cv, bias, md_settings.report_every)] if cv is not None else []
    sim = md_start.start_native(md_settings, run_dir, potential, frames, [bias] if bias is not None else [],
                                reporters, progress)
    save_config(bias_settings, run_dir / BIAS_SETTINGS)
    return sim


def load_bias_settings(run_dir: str | Path) -> BiasSettings:
    """The run's sample.toml, or no bias for a plain MD run."""
    path = Path(run_dir) / BIAS_SETTINGS
    return load_config(BiasSettings, path) if path.exists() else BiasSettings(bias="none")


def resume_run(run_dir: str | Path, potential: Potential | None = None, progress: bool = False) -> MDRun:
    """The run in ``run_dir`` (plain MD or biased, either engine) rebuilt from its settings and
    checkpoint, ready to ``run()``."""
    settings = md_start.load_md_settings(run_dir)
    bias_settings = load_bias_settings(run_dir)
    if not bias_settings.cv:
        return md_start.resume_md(run_dir, potential, progress=progress)
    if isinstance(settings, OpenMMSettings):
        cv = parse_cv(bias_settings.cv, pdb_numbers(settings.pdb), settings.pdb)
        bias = make_bias(bias_settings, cv, settings.temperature_K, bias_settings.sigma)
        ranges = grid_ranges(bias_settings, cv) if bias is not None and bias_settings.grid else None
        terms, reporters = openmm_bias_terms(settings, run_dir, bias, cv, bias_settings.grid, ranges)
        return md_start.resume_md(run_dir, terms=terms, reporters=reporters, progress=progress)
    ckpt = Simulation.read_checkpoint(run_dir)
    numbers = ckpt["batch"]["numbers"][ckpt["batch"]["system"] == 0].numpy()
    cv = parse_cv(bias_settings.cv, numbers)
    bias = make_bias(bias_settings, cv, settings.temperature_K[0], bias_settings.sigma)
    reporters = [ColvarReporter(Path(run_dir) / COLVAR, cv, bias, settings.report_every)]
    return md_start.resume_md(run_dir, potential, [bias] if bias is not None else [], reporters, progress)
