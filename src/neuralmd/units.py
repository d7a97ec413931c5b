"""Units. Internally everything is in ASE units: Å, eV, eV/Å, amu, K; time in ASE units in
code and in fs in every user-facing option. Foreign units are converted once, on the way in."""

from __future__ import annotations

from ase import units as ase_units

from .errors import InputError

#: Energy units a reader accepts, as the factor that converts one of them to eV.
ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": ase_units.Hartree,
    "Ha": ase_units.Hartree,
    "kcal/mol": ase_units.kcal / ase_units.mol,
    "kJ/mol": ase_units.kJ / ase_units.mol,
    "Ry": ase_units.Rydberg,
}

#: Length units a reader accepts, as the factor that converts one of them to Å.
LENGTH_UNITS: dict[str, float] = {"A": 1.0, "Angstrom": 1.0, "Å": 1.0, "Bohr": ase_units.Bohr, "nm": 10.0}

#: Time: one femtosecond in ASE time units.
FS = ase_units.fs

#: Boltzmann constant in eV/K.
KB_EV = ase_units.kB

#: One kJ/mol in eV, and one eV in kJ/mol (free energies and OpenMM speak kJ/mol).
KJMOL = ase_units.kJ / ase_units.mol
EV_IN_KJMOL = ase_units.mol / ase_units.kJ

#: One nm in Å (OpenMM speaks nm).
NM_IN_A = 10.0

#: A density of one amu per Å³ in g/cm³ (1.66054 g/cm³).
AMU_PER_A3_IN_G_PER_CM3 = ase_units._amu * 1e3 / 1e-24

#: ASE velocity units (Å per ASE time) to Å/ps.
VELOCITY_TO_A_PER_PS = 1000.0 * ase_units.fs


def energy_factor(unit: str, what: str = "energy_unit") -> float:
    """Factor converting ``unit`` to eV; raises InputError naming ``what`` for unknown units."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise InputError(f"{what}: unknown energy unit {unit!r}; expected one of {sorted(ENERGY_UNITS)}") from None


def force_factor(unit: str) -> float:
    """Factor converting a force unit written ``energy/length`` (e.g. ``kcal/mol/A``,
    ``Hartree/Bohr``, ``eV/A``) to eV/Å."""
    for length, lfac in LENGTH_UNITS.items():
        suffix = "/" + length
        if unit.endswith(suffix):
            return energy_factor(unit[: -len(suffix)], "force_unit") / lfac
    raise InputError(
        f"force_unit: cannot parse {unit!r}; expected '<energy>/<length>' such as 'eV/A', 'kcal/mol/A', 'Hartree/Bohr'"
    )


def kT_eV(temperature_K: float) -> float:
    """Thermal energy k_B T in eV for a temperature in K (InputError if not positive)."""
    if not temperature_K > 0:
        raise InputError(f"temperature_K: {temperature_K}; expected > 0")
    return KB_EV * temperature_K
