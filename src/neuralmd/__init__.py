"""neuralmd: deep learning for molecular dynamics.

    calc = neuralmd.load_calculator("runs/ethanol/model.pt")   # any ASE MD, optimiser or NEB
"""

from .md.ase_calculator import NeuralCalculator, load_calculator
from .models.neural import NeuralPotential, load_potential
from .version import __version__
__all__ = ["NeuralCalculator", "NeuralPotential", "load_calculator", "load_potential", "__version__"]
