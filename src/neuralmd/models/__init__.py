"""Neural potentials: the Potential interface, the native equivariant model, model files."""

from .base import Potential
from .neural import NeuralPotential, load_potential

__all__ = ["Potential", "NeuralPotential", "load_potential"]
