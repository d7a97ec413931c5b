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
- :func:`npt_csvr`: the same with isotropic stochastic cell rescaling (Bernetti & Bussi, J.
  Chem. Phys. 153, 114107 (2020)) after each drift: isothermal-isobaric, one temperature and
  one pressure per replica. Its ``force_fn`` also returns the stress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from ase import units

from ..errors import InputError
from ..state import AtomsBatch

ForceFn = Callable[[AtomsBatch], tuple[torch.Tensor, torch.Tensor]]
#: energy (B,) eV, forces (N, 3) eV/Å and stress (B, 3, 3) eV/Å³ (ASE's sign: (1/V) dE/dε)
StressForceFn = Callable[[AtomsBatch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    stress: torch.Tensor | None = None  # (B, 3, 3) eV/Å³ at these positions, NPT only


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
    return _baoab(lambda b: (*force_fn(b), None), check_timestep(timestep_fs), temperature_K, friction_per_ps, noise)


def _baoab(evaluate: Callable[[AtomsBatch], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], dt: float,
           temperature_K: float | Sequence[float], friction_per_ps: float, noise: ReplicaNoise,
           barostat: Callable[[AtomsBatch, torch.Tensor], AtomsBatch] | None = None):
    """``(init_fn, step_fn)`` of BAOAB Langevin dynamics, with ``barostat(batch, stress)`` after
    the second drift where given (``dt`` in ASE time units; ``evaluate`` gives energy, forces and
    the stress, or None without a barostat)."""
    if not friction_per_ps > 0:
        raise InputError(f"friction_per_ps: {friction_per_ps}; expected > 0 (typical 1-10 /ps)")
    gamma = friction_per_ps / (1000.0 * units.fs)
    c1 = torch.exp(torch.tensor(-gamma * dt, dtype=torch.float64))
    c2 = torch.sqrt(1 - c1**2)
    kT = check_temperature(temperature_K) * units.kB
    counts: list[int] = []  # atoms per replica, read once (a host sync) and reused every step

    def init_fn(batch: AtomsBatch) -> MDState:
        energy, forces, stress = evaluate(batch)
        return MDState(batch, forces, energy, 0, stress=stress)

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
        if barostat is not None:
            moved = barostat(moved, state.stress)
        energy, forces, stress = evaluate(moved)
        moved = moved.replace(velocities=moved.velocities + 0.5 * dt * forces * inv_m)   # B
        return MDState(moved, forces, energy, state.step + 1, stress=stress)

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


def moving_dof(batch: AtomsBatch) -> torch.Tensor:
    """Degrees of freedom (B,) of replicas whose centre of mass is at rest: 3N - 3 (at least 1)."""
    return (3 * batch.counts - 3).clamp(min=1).to(torch.float64)


def _csvr_rescaler(temperature_K: float | Sequence[float], c: float, noise: ReplicaNoise):
    """The velocity-rescaling operator of CSVR over a time t with c = exp(-t/τ): batch -> batch."""
    kT = check_temperature(temperature_K) * units.kB
    dof: list[int] = []

    def rescale(b: AtomsBatch) -> AtomsBatch:
        if len(dof) != b.n_systems:
            dof[:] = [int(f) for f in moving_dof(b).tolist()]
        kinetic = kinetic_energy(b).cpu()
        target = 0.5 * torch.tensor(dof, dtype=torch.float64) * kT.expand(b.n_systems)
        new = csvr_kinetic_energy(kinetic, target, dof, c, noise)
        alpha = torch.sqrt(new.clamp(min=0) / kinetic.clamp(min=1e-300)).to(b.velocities)
        return b.replace(velocities=b.velocities * alpha[b.system].unsqueeze(-1))

    return rescale


def _half_step_c(dt: float, tau_ps: float) -> float:
    """exp(-Δt/2τ) for a relaxation time ``tau_ps`` (InputError unless > 0)."""
    if not 0 < tau_ps < float("inf"):
        raise InputError(f"tau_ps: {tau_ps}; expected a relaxation time > 0 ps (typical 0.1-1)")
    return float(torch.exp(torch.tensor(-0.5 * dt / (tau_ps * 1000.0 * units.fs), dtype=torch.float64)))


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
    return _rescaled_verlet(lambda b: (*force_fn(b), None), dt,
                            _csvr_rescaler(temperature_K, _half_step_c(dt, tau_ps), noise))


def _rescaled_verlet(evaluate: Callable[[AtomsBatch], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                     dt: float, rescale: Callable[[AtomsBatch], AtomsBatch],
                     barostat: Callable[[AtomsBatch, torch.Tensor], AtomsBatch] | None = None):
    """``(init_fn, step_fn)`` of velocity Verlet between two half-step velocity rescalings, with
    ``barostat(batch, stress)`` after the drift where given (``dt`` in ASE time units;
    ``evaluate`` gives energy, forces and the stress, or None without a barostat)."""

    def init_fn(batch: AtomsBatch) -> MDState:
        energy, forces, stress = evaluate(batch)
        return MDState(batch, forces, energy, 0, dof=moving_dof(batch), stress=stress)

    def step_fn(state: MDState) -> MDState:
        b = rescale(state.batch)
        inv_m = (1.0 / b.masses).unsqueeze(-1)
        v = b.velocities + 0.5 * dt * state.forces * inv_m
        moved = b.replace(positions=b.positions + dt * v, velocities=v)
        if barostat is not None:
            moved = barostat(moved, state.stress)
        energy, forces, stress = evaluate(moved)
        moved = rescale(moved.replace(velocities=moved.velocities + 0.5 * dt * forces * inv_m))
        return MDState(moved, forces, energy, state.step + 1, dof=state.dof, stress=stress)

    return init_fn, step_fn


def check_pressure(pressure_bar: float | Sequence[float]) -> torch.Tensor:
    """Pressures as a float64 tensor in bar; InputError unless finite and within ±1e6 bar."""
    p = torch.as_tensor(pressure_bar, dtype=torch.float64).reshape(-1)
    if not bool((p.abs() <= 1e6).all()):
        raise InputError(f"pressure: {p.tolist()} bar; expected finite values within ±1e6 bar (1 atm = 1.013 bar)")
    return p


def pressure_tensor(batch: AtomsBatch, stress: torch.Tensor) -> torch.Tensor:
    """Instantaneous pressure tensor per replica (B, 3, 3) in eV/Å³: the kinetic part
    Σ m v_α v_β / V minus the stress (``stress`` in ASE's sign, the potential's (1/V) dE/dε)."""
    volume = torch.linalg.det(batch.cell).abs()
    mvv = batch.masses[:, None, None] * batch.velocities.unsqueeze(-1) * batch.velocities.unsqueeze(-2)
    kinetic = torch.zeros(batch.n_systems, 3, 3, dtype=mvv.dtype, device=mvv.device).index_add_(0, batch.system, mvv)
    return kinetic / volume[:, None, None] - stress


def pressure_diagonal(batch: AtomsBatch, stress: torch.Tensor) -> torch.Tensor:
    """Diagonal of :func:`pressure_tensor` per replica (B, 3) in eV/Å³."""
    volume = torch.linalg.det(batch.cell).abs()
    mv2 = batch.masses.unsqueeze(-1) * batch.velocities.pow(2)
    kinetic = torch.zeros(batch.n_systems, 3, dtype=mv2.dtype, device=mv2.device).index_add_(0, batch.system, mv2)
    return kinetic / volume.unsqueeze(-1) - torch.diagonal(stress, dim1=1, dim2=2)


def pressure(batch: AtomsBatch, stress: torch.Tensor) -> torch.Tensor:
    """Instantaneous pressure per replica (B,) in eV/Å³: the mean of :func:`pressure_diagonal`,
    2K/(3V) - tr(stress)/3."""
    return pressure_diagonal(batch, stress).mean(-1)


#: barostat couplings: one volume (liquids), each Cartesian axis on its own (orthorhombic
#: solids), or all six components of a cell in standard form, shear included (any crystal)
COUPLINGS = ("isotropic", "anisotropic", "triclinic")


def npt_csvr(force_fn: StressForceFn, timestep_fs: float, temperature_K: float | Sequence[float],
             pressure_bar: float | Sequence[float], tau_ps: float, tau_p_ps: float,
             compressibility_per_bar: float, noise: ReplicaNoise, coupling: str = "isotropic"):
    """Isothermal-isobaric dynamics: :func:`csvr` with stochastic cell rescaling (SCR) after
    each drift: ``(init_fn, step_fn)``. Every replica needs a periodic cell.

    SCR moves ε = ln V by dε = -(β_T/τ_p)(P_0 - P - k_BT/V) dt + √(2 k_BT β_T dt/(V τ_p)) R
    (Bernetti & Bussi 2020; R one normal per replica from its generator), and scales positions
    and the cell by e^{dε/3} and velocities by e^{-dε/3}. P = 2K/(3V) - tr(stress)/3 with the
    stress at the start of the step (forces are evaluated once per step). With the centre of
    mass at rest (CSVR) ⟨2K/(3V)⟩ = (N-1)k_BT/V, and the k_BT/V term supplies the missing
    k_BT/V: the Fokker-Planck equation of ε (diffusion ∝ 1/V) is then stationary at
    p(V) ∝ V^N exp(-βP_0V) times the configurational weight, the isothermal-isobaric ensemble.

    ``coupling="anisotropic"`` (solids; Del Tatto, Raiteri, Bernetti & Bussi, Appl. Sci. 2022,
    diagonal strain): each Cartesian axis α has its own ε_α = ln L_α with
    dε_α = -(β_T/3τ_p)(P_0 - P_αα - k_BT/V) dt + √(2 k_BT β_T dt/(3 V τ_p)) R_α, P_αα the
    diagonal of the pressure tensor (kinetic Σ m v_α²/V with the centre of mass at rest, so
    the k_BT/V term is needed along each axis as above); positions and every lattice vector's
    α component scale by e^{dε_α}, velocities by e^{-dε_α}. The three ε_α sum to the isotropic
    ε in drift and in noise variance. Shear (off-diagonal strain) is not sampled.

    ``coupling="triclinic"`` (any crystal, shear included): the cell in ASE's standard form
    (rows a, b, c; a along x, b in the xy plane: lower triangular) moves by h' = h(1 + e) with e
    lower triangular, e_βα = -(β_T/3τ_p)(P_0δ_αβ - P_αβ - k_BT/V δ_αβ) dt
    + (β_T/3τ_p)(k_BT/V) n_α δ_αβ dt + √(2 k_BT β_T dt/(3 V τ_p)) R_αβ, P the full pressure
    tensor (kinetic Σ m v_α v_β/V minus the stress); positions move as r' = r(1 + e), velocities
    as v' = v(1 + e)^{-T} (the canonical partner of the positions' map). n = (3, 2, 1) is the
    divergence of the cell's diffusion matrix: the noise of e_xx moves the three x components
    of a, b and c, that of e_zz only c_z. With the update linear in e, the Fokker-Planck
    equation of the six cell components is stationary at p(h) ∝ V^N exp(-β(P_0V + A(h))), flat
    in each component as the anisotropic coupling is flat in each L_α (test: a box of springs
    on its lengths and angles holding an ideal gas). A rotationally invariant potential's
    stress is symmetric, so no torque turns the cell.

    Args:
        pressure_bar: target pressure P_0, one value or one per replica (bar).
        tau_ps: CSVR's relaxation time (ps); tau_p_ps: the barostat's (ps, 1-5 ps typical).
        compressibility_per_bar: β_T used by the barostat (1/bar; water 4.5e-5): it sets how
            fast the volume relaxes, not the volume it relaxes to.
    """
    dt = check_timestep(timestep_fs)
    rescale = _csvr_rescaler(temperature_K, _half_step_c(dt, tau_ps), noise)
    barostat = _scr_barostat(dt, temperature_K, pressure_bar, tau_p_ps, compressibility_per_bar, noise, coupling,
                             centre_of_mass_at_rest=True)
    return _periodic_only(*_rescaled_verlet(force_fn, dt, rescale, barostat), coupling)


def npt_langevin(force_fn: StressForceFn, timestep_fs: float, temperature_K: float | Sequence[float],
                 pressure_bar: float | Sequence[float], friction_per_ps: float, tau_p_ps: float,
                 compressibility_per_bar: float, noise: ReplicaNoise, coupling: str = "isotropic"):
    """Isothermal-isobaric dynamics: BAOAB :func:`langevin` with stochastic cell rescaling after
    the second drift (see :func:`npt_csvr`). Langevin noise moves the centre of mass, so the
    kinetic pressure averages N k_BT/V over all 3N degrees of freedom and SCR needs no k_BT/V
    term: the drift of ε is -(β_T/τ_p)(P_0 - P) with the same noise, stationary at the same
    p(V) ∝ V^N exp(-βP_0V)."""
    dt = check_timestep(timestep_fs)
    barostat = _scr_barostat(dt, temperature_K, pressure_bar, tau_p_ps, compressibility_per_bar, noise, coupling,
                             centre_of_mass_at_rest=False)
    return _periodic_only(*_baoab(force_fn, dt, temperature_K, friction_per_ps, noise, barostat), coupling)


def _scr_barostat(dt: float, temperature_K: float | Sequence[float], pressure_bar: float | Sequence[float],
                  tau_p_ps: float, compressibility_per_bar: float, noise: ReplicaNoise, coupling: str,
                  centre_of_mass_at_rest: bool) -> Callable[[AtomsBatch, torch.Tensor], AtomsBatch]:
    """The stochastic cell rescaling step ``barostat(batch, stress) -> batch`` of
    :func:`npt_csvr` (``centre_of_mass_at_rest``: add the k_BT/V the kinetic pressure lacks)."""
    if not 0 < tau_p_ps < float("inf"):
        raise InputError(f"tau_p_ps: {tau_p_ps}; expected the barostat's relaxation time > 0 ps (typical 1-5)")
    if not 0 < compressibility_per_bar < 1:
        raise InputError(f"compressibility_per_bar: {compressibility_per_bar}; expected a compressibility in 1/bar "
                         f"(water 4.5e-5)")
    if coupling not in COUPLINGS:
        raise InputError(f"barostat coupling: {coupling!r}; expected one of {', '.join(COUPLINGS)}")
    kT = check_temperature(temperature_K) * units.kB
    p0 = check_pressure(pressure_bar) * units.bar
    beta_t = compressibility_per_bar / units.bar  # Å³/eV
    tau_p = tau_p_ps * 1000.0 * units.fs
    axes = {"isotropic": 1, "anisotropic": 3, "triclinic": 3}[coupling]  # strain rates share β_T/τ_p
    missing = 1.0 if centre_of_mass_at_rest else 0.0  # k_BT/V the kinetic pressure lacks
    rate = beta_t / (tau_p * axes)

    def diagonal(b: AtomsBatch, stress: torch.Tensor) -> AtomsBatch:
        volume = torch.linalg.det(b.cell).abs().cpu().unsqueeze(-1)
        p_int = pressure_diagonal(b, stress).cpu()
        p_int = p_int if axes == 3 else p_int.mean(-1, keepdim=True)
        kt, target = kT.expand(b.n_systems).unsqueeze(-1), p0.expand(b.n_systems).unsqueeze(-1)
        r = torch.stack(noise.scalars([axes] * b.n_systems))
        d_eps = -rate * (target - p_int - missing * kt / volume) * dt + torch.sqrt(2 * kt * rate * dt / volume) * r
        mu = torch.exp(d_eps / (3 // axes)).expand(-1, 3).to(b.positions)  # (B, 3) scale per Cartesian axis
        return b.replace(positions=b.positions * mu[b.system], cell=b.cell * mu.unsqueeze(1),
                         velocities=b.velocities / mu[b.system])

    def triclinic(b: AtomsBatch, stress: torch.Tensor) -> AtomsBatch:
        volume = torch.linalg.det(b.cell).abs().cpu()[:, None, None]
        kt, target = kT.expand(b.n_systems)[:, None, None], p0.expand(b.n_systems)[:, None, None]
        eye = torch.eye(3, dtype=torch.float64)
        drift = -rate * (target * eye - pressure_tensor(b, stress).cpu() - missing * kt / volume * eye)
        drift = drift + rate * kt / volume * torch.diag(DIVERGENCE)
        r = torch.zeros(b.n_systems, 3, 3, dtype=torch.float64)
        r[:, LOWER[0], LOWER[1]] = torch.stack(noise.scalars([6] * b.n_systems))
        e = torch.tril(drift * dt + torch.sqrt(2 * kt * rate * dt / volume) * r)
        mu = (eye + e).to(b.positions)  # (B, 3, 3), lower triangular
        inv_t = torch.linalg.inv(mu).transpose(1, 2)
        return b.replace(positions=torch.einsum("na,nab->nb", b.positions, mu[b.system]), cell=b.cell @ mu,
                         velocities=torch.einsum("na,nab->nb", b.velocities, inv_t[b.system]))

    return triclinic if coupling == "triclinic" else diagonal


#: the triclinic barostat's lower-triangular strain components (row, column) and the divergence
#: of the cell's diffusion matrix per diagonal component (lattice components each strain moves)
LOWER = (torch.tensor([0, 1, 2, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 0, 1]))
DIVERGENCE = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)


def _periodic_only(init: Callable[[AtomsBatch], MDState], step_fn: Callable[[MDState], MDState],
                   coupling: str = "isotropic"):
    """``(init_fn, step_fn)`` whose init refuses a batch without a periodic cell in every replica
    (and, for the triclinic barostat, a cell not in standard form)."""

    def init_fn(batch: AtomsBatch) -> MDState:
        if not bool(batch.pbc.all()) or bool((torch.linalg.det(batch.cell).abs() <= 0).any()):
            raise InputError("npt: every replica needs a periodic cell (pbc in all three directions, volume > 0)")
        if coupling == "triclinic":
            upper = torch.triu(batch.cell, diagonal=1).abs().amax(dim=(1, 2))
            scale = batch.cell.abs().amax(dim=(1, 2))
            bad = torch.nonzero(upper > 1e-9 * scale).flatten().tolist()
            if bad:
                raise InputError(f"npt: the triclinic barostat needs each cell in standard form (a along x, b in the "
                                 f"xy plane: a lower-triangular cell); replica {bad[0]} is not. Rotate it first: "
                                 f"atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)")
        return init(batch)

    return init_fn, step_fn
