"""Reference labelers: frames in, energies and forces out."""

from .base import Failure, LabelResult, Labeler
from .calculator import ASECalculatorLabeler
from .dft import PySCFLabeler
from .xtb import XTBLabeler

__all__ = ["Failure", "LabelResult", "Labeler", "ASECalculatorLabeler", "PySCFLabeler", "XTBLabeler"]
