"""CB7–B2 (../shared/data/cb7_b2) loaded as a binding run sees it, for the tests of this package."""

from __future__ import annotations

from neuralmd.binding.system import ComplexInput, load_complex
from neuralmd.md.openmm_engine import OpenMMSystem
from tests.conftest import shared_file

CB7 = shared_file("cb7_b2/complex-vacuum.prmtop").parent


def cb7_complex(constraints: str = "HBonds", solvent: str = "obc2") -> tuple[OpenMMSystem, ComplexInput]:
    """The complex in OBC2 (or ``solvent``: explicit, the TIP3P box) at 300 K (host CUC, guest
    B2) and the input that names it."""
    files = "complex-explicit" if solvent == "explicit" else "complex-vacuum"
    spec = ComplexInput(prmtop=str(CB7 / f"{files}.prmtop"), inpcrd=str(CB7 / f"{files}.inpcrd"), host="CUC", guest="B2",
                        solvent=solvent)
    return load_complex(spec, 300.0, constraints=constraints), spec
