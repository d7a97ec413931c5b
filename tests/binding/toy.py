"""A toy host–guest system with an exactly known binding constant: a rigid ring "host" of fixed
particles and one guest particle in a Gaussian well at the host's centre, inside a funnel."""

from __future__ import annotations

import math

import numpy as np
import openmm
from openmm import app, unit

from neuralmd.binding.funnel import Funnel
from neuralmd.md.openmm_engine import OpenMMSystem
from neuralmd.sampling.fes import kT_kjmol

RING = 6  # particles per ring; two rings at z = ±1 Å, radius 3 Å
GUEST_MASS = 40.0  # amu


def toy_complex(depth_kjmol: float, width_A: float = 1.0, start=(0.0, 0.0, 0.0), diatomic: bool = False
                ) -> OpenMMSystem:
    """The host (two fixed rings, atoms 0-11, residue HST) and the guest (atom 12, or atoms 12
    and 13 bonded 1.5 Å apart along x with ``diatomic``; residue GST) whose centroid sits in a
    well -depth·exp(-r²/2w²) around the host's centroid (so K_b does not depend on the guest's
    shape)."""
    topology = app.Topology()
    chain = topology.addChain()
    host = topology.addResidue("HST", chain)
    positions = []
    for ring, z in enumerate((-1.0, 1.0)):
        for k in range(RING):
            topology.addAtom(f"C{ring}{k}", app.element.carbon, host)
            a = 2 * math.pi * k / RING
            positions.append((3.0 * math.cos(a), 3.0 * math.sin(a), z))
    guest = topology.addResidue("GST", chain)
    offsets = [(-0.75, 0.0, 0.0), (0.75, 0.0, 0.0)] if diatomic else [(0.0, 0.0, 0.0)]
    for k, offset in enumerate(offsets):
        topology.addAtom(f"AR{k}", app.element.argon, guest)
        positions.append(tuple(a + b for a, b in zip(start, offset)))
    system = openmm.System()
    for _ in range(2 * RING):
        system.addParticle(0.0)  # fixed
    guest_atoms = list(range(2 * RING, 2 * RING + len(offsets)))
    for _ in guest_atoms:
        system.addParticle(GUEST_MASS)
    if diatomic:
        bond = openmm.HarmonicBondForce()
        bond.addBond(guest_atoms[0], guest_atoms[1], 0.15, 50_000.0)
        system.addForce(bond)
    well = openmm.CustomCentroidBondForce(2, f"-{depth_kjmol!r}*exp(-distance(g1,g2)^2/(2*{width_A / 10!r}^2))")
    well.addGroup(list(range(2 * RING)), [1.0] * (2 * RING))
    well.addGroup(guest_atoms, [1.0] * len(guest_atoms))
    well.addBond([0, 1], [])
    system.addForce(well)
    pos = np.array(positions) / 10.0
    return OpenMMSystem(topology, system, pos * unit.nanometer, np.array([6] * (2 * RING) + [18] * len(offsets)))


def exact_binding_dG(depth_kjmol: float, width_A: float, funnel: Funnel, bound_z_A: float, temperature_K: float,
                     n: int = 1500) -> float:
    """ΔG° (kJ/mol, 1 M) of the toy by quadrature: K_b = ∫_{z < bound_z} exp(-β(U_well + U_funnel)) d³r
    (the well vanishes on the unbound plateau, where the funnel alone acts)."""
    import torch

    kT = kT_kjmol(temperature_K)
    z = np.linspace(funnel.lower_z_A - 3.0, bound_z_A, n)
    rho = np.linspace(0.0, float(funnel.radius(z.min())) + 3.0, n)
    zz, rr = np.meshgrid(z, rho, indexing="ij")
    u_funnel = funnel.energy(torch.as_tensor(zz), torch.as_tensor(rr)).numpy()
    u_well = -depth_kjmol * np.exp(-(zz**2 + rr**2) / (2 * width_A**2))
    integrand = 2 * np.pi * rr * np.exp(-(u_well + u_funnel) / kT)
    k_b = np.trapezoid(np.trapezoid(integrand, rho, axis=1), z)
    return -kT * math.log(k_b / 1660.5390671738466)


TOY_XML = """<ForceField>
 <AtomTypes>
  <Type name="top" class="T" element="C" mass="12.011"/>
  <Type name="bottom" class="B" element="C" mass="12.011"/>
  <Type name="guest" class="G" element="Ar" mass="39.948"/>
 </AtomTypes>
 <Residues>
  <Residue name="HST">
{atoms}
{bonds}
  </Residue>
  <Residue name="GST"><Atom name="AR0" type="guest"/></Residue>
 </Residues>
 <HarmonicBondForce>
  <Bond class1="T" class2="T" length="0.3" k="20000"/>
  <Bond class1="B" class2="B" length="0.3" k="20000"/>
  <Bond class1="T" class2="B" length="0.2" k="20000"/>
 </HarmonicBondForce>
 <NonbondedForce coulomb14scale="0.8333" lj14scale="0.5">
  <Atom type="top" charge="0" sigma="0.34" epsilon="0.4"/>
  <Atom type="bottom" charge="0" sigma="0.34" epsilon="0.4"/>
  <Atom type="guest" charge="0" sigma="0.34" epsilon="1.2"/>
 </NonbondedForce>
</ForceField>
"""


def write_toy_pdb_and_xml(folder) -> tuple[str, str]:
    """The toy's host (a bonded two-ring cage, residue HST) and guest (residue GST) as a PDB with
    CONECT records and an OpenMM force-field XML for them: the --pdb + --forcefield input path."""
    from pathlib import Path

    parts = toy_complex(0.0)
    atoms = list(parts.topology.atoms())
    bonds = []
    for ring in (0, 1):
        for k in range(RING):
            bonds.append((ring * RING + k, ring * RING + (k + 1) % RING))
    bonds += [(k, RING + k) for k in range(RING)]
    for i, j in bonds:
        parts.topology.addBond(atoms[i], atoms[j])
    folder = Path(folder)
    with open(folder / "toy.pdb", "w") as fh:
        app.PDBFile.writeFile(parts.topology, parts.positions, fh)
    atom_lines = "\n".join(f'   <Atom name="{a.name}" type="{"bottom" if a.index < RING else "top"}"/>'
                           for a in atoms[: 2 * RING])
    bond_lines = "\n".join(f'   <Bond atomName1="{atoms[i].name}" atomName2="{atoms[j].name}"/>' for i, j in bonds)
    (folder / "toy.xml").write_text(TOY_XML.format(atoms=atom_lines, bonds=bond_lines))
    return str(folder / "toy.pdb"), str(folder / "toy.xml")
