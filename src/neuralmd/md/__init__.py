"""Simulation: the potential inside ASE (and, later, the native engine and OpenMM)."""

from .ase_calculator import NeuralCalculator, load_calculator

__all__ = ["NeuralCalculator", "load_calculator"]
