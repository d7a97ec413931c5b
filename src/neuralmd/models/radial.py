"""Radial bases and smooth cutoffs. Distances in Å."""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    """sqrt(2/r_c) sin(n π r / r_c) / r for n = 1..num_basis (DimeNet, MACE); r in Å."""

    def __init__(self, cutoff: float, num_basis: int = 8) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("freqs", math.pi * torch.arange(1, num_basis + 1) / cutoff)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) distances -> (E, num_basis) features."""
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs.to(r.dtype) * r) / r


class PolynomialCutoff(nn.Module):
    """Smooth envelope that goes to zero at r_c with vanishing first and second derivatives
    (DimeNet's polynomial of order p); 1 at r = 0."""

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.p = p

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return polynomial_envelope(r / self.cutoff, self.p)


def polynomial_envelope(x: torch.Tensor, p: int = 6) -> torch.Tensor:
    """DimeNet's envelope of x = r / r_c: 1 at 0, zero with vanishing first and second
    derivatives at 1 and beyond."""
    env = (
        1.0
        - (p + 1) * (p + 2) / 2 * x.pow(p)
        + p * (p + 2) * x.pow(p + 1)
        - p * (p + 1) / 2 * x.pow(p + 2)
    )
    return env * (x < 1.0).to(x.dtype)
