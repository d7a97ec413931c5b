"""Biases inside OpenMM: the bias as an ``openmm.PythonForce``, and a driver that advances an
OpenMM simulation in chunks of the bias's pace, updating the bias between chunks (the scheme
of OpenMM's own ``app.Metadynamics``), so classical force fields run at OpenMM speed with
neuralmd's CVs and biases. All walkers here are one OpenMM context (one replica)."""

from __future__ import annotations

import numpy as np
import openmm
import torch
from openmm import unit

from ..md.integrators import MDState
from ..md.openmm_force import NM_IN_A, python_force
from ..md.simulation import terms_force_fn
from ..state import AtomsBatch
from .biases import Bias


def system_template(system: openmm.System) -> AtomsBatch:
    """A one-system AtomsBatch with the System's masses (amu); positions are filled in per call.
    Biases need no element types, so every atom is given number 1."""
    n = system.getNumParticles()
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)]
    return AtomsBatch(positions=torch.zeros(n, 3, dtype=torch.float64), numbers=torch.ones(n, dtype=torch.long),
                      system=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3, dtype=torch.float64),
                      pbc=torch.zeros(1, 3, dtype=torch.bool), masses=torch.tensor(masses, dtype=torch.float64))


def bias_force(bias: Bias, system: openmm.System) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` whose energy is ``bias`` (forces by autograd)."""
    bias.cv.check_atoms(system.getNumParticles())
    return python_force(terms_force_fn([bias]), system_template(system), periodic=False, name="neuralmd-bias")


class BiasedOpenMM:
    """Runs an ``openmm.app.Simulation`` whose System holds :func:`bias_force`, calling
    ``bias.update`` every ``bias.pace`` steps and recording the CV and bias.

    Args:
        simulation: the OpenMM simulation (its System must already contain the bias force).
        bias: the bias (adaptive or not).
        record_every: steps between recorded samples (CV values, bias in eV, step).
    """

    def __init__(self, simulation, bias: Bias, record_every: int = 500) -> None:
        self.simulation = simulation
        self.bias = bias
        self.record_every = record_every
        self.template = system_template(simulation.system)
        self.steps = 0
        self.cv: list[np.ndarray] = []
        self.bias_eV: list[float] = []
        self.sample_steps: list[int] = []

    def _state(self) -> MDState:
        pos = self.simulation.context.getState(getPositions=True).getPositions(asNumpy=True)
        positions = torch.as_tensor(np.asarray(pos.value_in_unit(unit.nanometer)) * NM_IN_A, dtype=torch.float64)
        return MDState(self.template.replace(positions=positions), None, None, self.steps)

    def run(self, steps: int) -> None:
        """Advance ``steps`` steps."""
        pace = getattr(self.bias, "pace", self.record_every)
        target = self.steps + steps
        while self.steps < target:
            n = min(pace - self.steps % pace, self.record_every - self.steps % self.record_every, target - self.steps)
            self.simulation.step(n)
            self.steps += n
            if self.steps % self.record_every == 0 or (hasattr(self.bias, "update") and self.steps % pace == 0):
                state = self._state()
                with torch.no_grad():
                    s = self.bias.cv_values(state.batch)
                    if self.steps % self.record_every == 0:
                        self.cv.append(s[0].numpy().copy())
                        self.bias_eV.append(float(self.bias.energy_of_cv(s)[0]))
                        self.sample_steps.append(self.steps)
                if hasattr(self.bias, "update") and self.steps % pace == 0:
                    self.bias.update(state)
