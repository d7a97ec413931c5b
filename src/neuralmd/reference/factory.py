"""One factory for the labelers the command line names, used by ``label``, active learning and
Δ-learning alike."""

from __future__ import annotations

from ..errors import InputError
from .base import Labeler

#: method names -> what they are: GFN2-xTB and GFN1-xTB (tblite), DFT and Hartree-Fock (PySCF)
METHODS = ("xtb", "gfn1", "dft", "hf")
XTB_METHODS = {"xtb": "GFN2-xTB", "gfn1": "GFN1-xTB"}


def make_labeler(method: str, functional: str = "PBE", basis: str = "def2-SVP", density_fit: bool = True,
                 charge: int = 0, spin: int = 0, threads: int | None = None) -> Labeler:
    """The labeler of ``method`` (one of :data:`METHODS`): ``charge`` in e and ``spin`` (2S,
    unpaired electrons) are the defaults a frame's ``info["charge"]``/``info["spin"]`` override;
    ``functional``, ``basis``, ``density_fit`` and ``threads`` (None: the library's default)
    matter for dft/hf only."""
    from .dft import PySCFLabeler
    from .xtb import XTBLabeler

    if threads is not None and threads < 1:
        raise InputError(f"threads: {threads}; expected >= 1 (or 0 for the library's default)")

    if method in XTB_METHODS:
        return XTBLabeler(XTB_METHODS[method], charge=charge, uhf=spin)
    if method in ("dft", "hf"):
        return PySCFLabeler("HF" if method == "hf" else functional, basis, density_fit, charge, spin, threads)
    raise InputError(f"method: {method!r}; expected one of {', '.join(METHODS)}")
