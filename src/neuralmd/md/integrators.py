"""Integrators as functional ``init_fn, step_fn`` pairs (JAX-MD style).

``init_fn(batch) -> MDState`` evaluates the first forces; ``step_fn(state) -> MDState`` advances
one step and returns a new state (nothing is modified in place). A ``force_fn`` maps an
AtomsBatch to ``(energy (B,) eV, forces (N, 3) eV/Å)``. State is float64. Time inside is in
ASE units; every user-facing argument is in fs or 1/ps.

- :func:`nve`: velocity Verlet (microcanonical).
- :func:`langevin`: BAOAB Langevin (Leimkuhler & Matthews 2013), canonical; the noise of
  each replica comes from its own seeded generator, so a batch of replicas follows exactly the
  trajectories the same replicas would follow one by one.
- :func:`csvr`: velocity Verlet between two half-steps of stochastic velocity rescaling
  (Bussi, Donadio & Parrinello, J. Chem. Phys. 126, 014101 (2007)), canonical; it rescales each
  replica's velocities as a whole, so diffusion and other dynamics are left as NVE has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from ase import units

from ..errors import InputError
from ..state import AtomsBatch

ForceFn = Callable[[AtomsBatch], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MDState:
    """The integrator state: the batch (positions Å and velocities Å/ASE-time inside), the
    forces (N, 3) eV/Å and potential energies (B,) eV at those positions, and the step count.
    ``dof`` (B,), when set, are the degrees of freedom for the temperature (an engine with
    constraints sets it); None means 3N."""

    batch: AtomsBatch
    forces: torch.Tensor | None
    energy: torch.Tensor
    step: int = 0
    dof: torch.Tensor | None = None


class ReplicaNoise:
    """Standard normal noise, one seeded ``torch.Generator`` per replica.

    The generators live on the CPU whatever device the run uses, so a seed gives the same
    trajectory on a CPU and on a GPU (up to floating-point differences in the forces)."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def normal(self, counts: Sequence[int], dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor:
        """(sum(counts), 3) normals on ``device``: replica b's rows come from generator b."""
        noise = torch.cat([torch.randn(n, 3, generator=g, dtype=dtype) for n, g in zip(counts, self.generators)])
        return noise.to(device)

    def scalars(self, counts: Sequence[int], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
        """``counts[b]`` standard normals from generator b, one tensor per replica (CPU)."""
        return [torch.randn(n, generator=g, dtype=dtype) for n, g in zip(counts, self.generators)]

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: Sequence[torch.Tensor]) -> None:
        if len(states) != len(self.generators):
            raise InputError(f"checkpoint holds {len(states)} generator states for {len(self.generators)} replicas")
        for g, s in zip(self.generators, states):
            g.set_state(s)


def check_timestep(timestep_fs: float) -> float:
    """The timestep in ASE time units; InputError if non-positive or absurd (> 10 fs)."""
    if not 0.0 < timestep_fs <= 10.0:
        raise InputError(f"timestep_fs: {timestep_fs} fs is not in (0, 10]; molecular MD uses 0.25-2 fs")
    return timestep_fs * units.fs


def check_temperature(temperature_K: float | Sequence[float]) -> torch.Tensor:
    """Temperatures as a float64 tensor; InputError if any is non-positive or absurd (> 1e5 K)."""
    t = torch.as_tensor(temperature_K, dtype=torch.float64).reshape(-1)
    if not bool(((t > 0) & (t <= 1e5)).all()):
        raise InputError(f"temperature: {t.tolist()} K; expected values in (0, 100000] K")
    return t


def kinetic_energy(batch: AtomsBatch) -> torch.Tensor:
    """Kinetic energy per system (B,) in eV."""
    per_atom = 0.5 * batch.masses * batch.velocities.pow(2).sum(-1)
    return torch.zeros(batch.n_systems, dtype=per_atom.dtype, device=per_atom.device).index_add(0, batch.system, per_atom)


def temperature(batch: AtomsBatch, remove_com_dof: bool = False, dof: torch.Tensor | None = None) -> torch.Tensor:
    """Instantaneous temperature per system (B,) in K from ``dof`` degrees of freedom (default
    3N, or 3N-3 with ``remove_com_dof``)."""
    if dof is None:
        dof = 3 * batch.counts.to(torch.float64) - (3 if remove_com_dof else 0)
    return 2 * kinetic_energy(batch) / (dof * units.kB)


def remove_com_velocity(batch: AtomsBatch) -> AtomsBatch:
    """Subtract each system's centre-of-mass velocity."""
    m = batch.masses.unsqueeze(-1)
    zeros = torch.zeros(batch.n_systems, 3, dtype=m.dtype, device=m.device)
    p = zeros.index_add(0, batch.system, m * batch.velocities)
    mass = torch.zeros(batch.n_systems, dtype=m.dtype, device=m.device).index_add(0, batch.system, batch.masses)
    return batch.replace(velocities=batch.velocities - (p / mass.unsqueeze(-1))[batch.system])


def maxwell_boltzmann(batch: AtomsBatch, temperature_K: float | Sequence[float], noise: ReplicaNoise) -> AtomsBatch:
    """Velocities drawn from the Maxwell-Boltzmann distribution at ``temperature_K`` (one value
    or one per replica), centre-of-mass motion removed."""
    kT = (check_temperature(temperature_K) * units.kB).to(batch.positions).expand(batch.n_systems)
    sigma = torch.sqrt(kT[batch.system] / batch.masses).unsqueeze(-1)
    velocities = sigma * noise.normal(batch.counts.tolist(), batch.positions.dtype, batch.positions.device)
    return remove_com_velocity(batch.replace(velocities=velocities))


def nve(force_fn: ForceFn, timestep_fs: float):
    """Velocity Verlet: ``(init_fn, step_fn)``."""
    dt = check_timestep(timestep_fs)

    def init_fn(batch: AtomsBatch) -> MDState:
        energy, forces = force_fn(batch)
        return MDState(batch, forces, energy, 0)

    def step_fn(state: MDState) -> MDState:
        b = state.batch
        inv_m = (1.0 / b.masses).unsqueeze(-1)
        v = b.velocities + 0.5 * dt * state.forces * inv_m
        moved = b.replace(positions=b.positions + dt * v, velocities=v)
        energy, forces = force_fn(moved)
        moved = moved.replace(velocities=v + 0.5 * dt * forces * inv_m)
        return MDState(moved, forces, energy, state.step + 1)

    return init_fn, step_fn


def langevin(force_fn: ForceFn, timestep_fs: float, temperature_K: float | Sequence[float],
             friction_per_ps: float, noise: ReplicaNoise):
    """BAOAB Langevin dynamics: ``(init_fn, step_fn)``.

    Args:
        temperature_K: bath temperature, one value or one per replica.
        friction_per_ps: collision frequency γ in 1/ps.
        noise: per-replica generators (their state is part of the simulation state).
    """
    dt = check_timestep(timestep_fs)
    if not friction_per_ps > 0:
        raise InputError(f"friction_per_ps: {friction_per_ps}; expected > 0 (typical 1-10 /ps)")
    gamma = friction_per_ps / (1000.0 * units.fs)
    c1 = torch.exp(torch.tensor(-gamma * dt, dtype=torch.float64))
    c2 = torch.sqrt(1 - c1**2)
    kT = check_temperature(temperature_K) * units.kB
    counts: list[int] = []  # atoms per replica, read once (a host sync) and reused every step

    def init_fn(batch: AtomsBatch) -> MDState:
        energy, forces = force_fn(batch)
        return MDState(batch, forces, energy, 0)

    def step_fn(state: MDState) -> MDState:
        b = state.batch
        if len(counts) != b.n_systems:
            counts[:] = b.counts.tolist()
        inv_m = (1.0 / b.masses).unsqueeze(-1)
        v = b.velocities + 0.5 * dt * state.forces * inv_m                       # B
        x = b.positions + 0.5 * dt * v                                           # A
        sigma = torch.sqrt(kT.to(v).expand(b.n_systems)[b.system].unsqueeze(-1) * inv_m)
        v = c1 * v + c2 * sigma * noise.normal(counts, v.dtype, v.device)        # O
        x = x + 0.5 * dt * v                                                     # A
        moved = b.replace(positions=x, velocities=v)
        energy, forces = force_fn(moved)
        moved = moved.replace(velocities=v + 0.5 * dt * forces * inv_m)          # B
        return MDState(moved, forces, energy, state.step + 1)

    return init_fn, step_fn



def csvr_kinetic_energy(kinetic: torch.Tensor, target: torch.Tensor, dof: Sequence[int], c: float,
                        noise: ReplicaNoise) -> torch.Tensor:
    """New kinetic energies (B,) after stochastic velocity rescaling over a time t with
    c = exp(-t/τ): K' = K + (1-c)(K̄/N_f (R_1² + Σ_{i≥2} R_i²) - K) + 2R_1 √(c(1-c) K K̄/N_f), with
    K̄ = N_f k_BT/2 the ``target`` and N_f ``dof`` per replica (Bussi et al. 2007, Eq. (A7)); the
    N_f normals R_i of replica b come from its generator."""
    out = []
    for b, normals in enumerate(noise.scalars(dof, kinetic.dtype)):
        k, kbar, n = float(kinetic[b]), float(target[b]), dof[b]
        r1, rest = float(normals[0]), float(normals[1:].pow(2).sum())
        out.append(k + (1 - c) * (kbar * (r1 * r1 + rest) / n - k) + 2 * r1 * (c * (1 - c) * k * kbar / n) ** 0.5)
    return torch.tensor(out, dtype=kinetic.dtype)


def csvr(force_fn: ForceFn, timestep_fs: float, temperature_K: float | Sequence[float], tau_ps: float,
         noise: ReplicaNoise):
    """Velocity Verlet with stochastic velocity rescaling (CSVR, "v-rescale") for half a step
    before and after: ``(init_fn, step_fn)``.

    Args:
        temperature_K: bath temperature, one value or one per replica.
        tau_ps: the thermostat's relaxation time in ps (0.1-1 ps leaves dynamics undisturbed; the
            kinetic energy relaxes to the bath as exp(-t/τ)).
        noise: per-replica generators (their state is part of the simulation state).

    Each replica has 3N - 3 degrees of freedom (its centre of mass is at rest: the starting
    velocities have none, the forces of a translation-invariant potential add none, and a
    rescaling keeps it so)."""
    dt = check_timestep(timestep_fs)
    if not 0 < tau_ps < float("inf"):
        raise InputError(f"tau_ps: {tau_ps}; expected a relaxation time > 0 ps (typical 0.1-1)")
    c = float(torch.exp(torch.tensor(-0.5 * dt / (tau_ps * 1000.0 * units.fs), dtype=torch.float64)))
    kT = check_temperature(temperature_K) * units.kB
    dof: list[int] = []

    def rescale(b: AtomsBatch) -> AtomsBatch:
        if len(dof) != b.n_systems:
            dof[:] = [max(3 * n - 3, 1) for n in b.counts.tolist()]
        kinetic = kinetic_energy(b).cpu()
        target = 0.5 * torch.tensor(dof, dtype=torch.float64) * kT.expand(b.n_systems)
        new = csvr_kinetic_energy(kinetic, target, dof, c, noise)
        alpha = torch.sqrt(new.clamp(min=0) / kinetic.clamp(min=1e-300)).to(b.velocities)
        return b.replace(velocities=b.velocities * alpha[b.system].unsqueeze(-1))

    def init_fn(batch: AtomsBatch) -> MDState:
        energy, forces = force_fn(batch)
        return MDState(batch, forces, energy, 0)

    def step_fn(state: MDState) -> MDState:
        b = rescale(state.batch)
        inv_m = (1.0 / b.masses).unsqueeze(-1)
        v = b.velocities + 0.5 * dt * state.forces * inv_m
        moved = b.replace(positions=b.positions + dt * v, velocities=v)
        energy, forces = force_fn(moved)
        moved = rescale(moved.replace(velocities=v + 0.5 * dt * forces * inv_m))
        return MDState(moved, forces, energy, state.step + 1)

    return init_fn, step_fn
