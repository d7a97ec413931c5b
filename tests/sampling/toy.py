"""A two-state toy for OpenMM runs: two carbon atoms bound by a tilted double well in their
distance, a force-field XML and a PDB (sampled at OpenMM speed, so runs of nanoseconds take
seconds), with the exact free-energy difference between its states by quadrature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import constants

#: the well: u(r) = EB ((r - RC)²/W² - 1)² + TILT (r - RC)/W, kJ/mol and nm; minima near RC ± W
EB, TILT, RC, W = 10.0, 5.0, 0.2, 0.05
#: the basins as `fes` reads them (the CV `distance(0,1)` is named d0-1, in Å)
BASIN_A, BASIN_B = "d0-1<2", "d0-1>2"

XML = f"""<ForceField>
 <AtomTypes>
  <Type name="dw-C" class="dwC" element="C" mass="12.011"/>
 </AtomTypes>
 <Residues>
  <Residue name="DWL">
   <Atom name="C1" type="dw-C"/>
   <Atom name="C2" type="dw-C"/>
   <Bond atomName1="C1" atomName2="C2"/>
  </Residue>
 </Residues>
 <CustomBondForce energy="eb*((r-rc)^2/w^2-1)^2 + tilt*(r-rc)/w">
  <GlobalParameter name="eb" defaultValue="{{eb}}"/>
  <GlobalParameter name="tilt" defaultValue="{TILT}"/>
  <GlobalParameter name="rc" defaultValue="{RC}"/>
  <GlobalParameter name="w" defaultValue="{W}"/>
  <Bond class1="dwC" class2="dwC"/>
 </CustomBondForce>
</ForceField>
"""

PDB = """HETATM    1  C1  DWL A   1       0.000   0.000   0.000  1.00  0.00           C
HETATM    2  C2  DWL A   1    {x:8.3f}   0.000   0.000  1.00  0.00           C
CONECT    1    2
END
"""


def write_toy(folder: Path, barrier_kjmol: float = EB, distance_A: float = 1.5) -> tuple[Path, Path]:
    """toy.pdb (the atoms ``distance_A`` apart: 1.5 in state A, 2.5 in B) and toy.xml (a well of
    height ``barrier_kjmol``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.pdb").write_text(PDB.format(x=distance_A))
    (folder / "toy.xml").write_text(XML.replace("{eb}", str(barrier_kjmol)))
    return folder / "toy.pdb", folder / "toy.xml"


def exact_delta_f_kjmol(temperature_K: float, barrier_kjmol: float = EB) -> float:
    """F(r > RC) - F(r < RC) in kJ/mol: the distance's density r² exp(-u/kT) integrated."""
    kT = constants.R * temperature_K / 1000.0
    r = np.linspace(0.05, 0.6, 400_001)
    u = (r - RC) / W
    p = r**2 * np.exp(-(barrier_kjmol * (u**2 - 1) ** 2 + TILT * u) / kT)
    return float(-kT * np.log(p[r > RC].sum() / p[r < RC].sum()))
