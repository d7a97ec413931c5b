"""Binding geometry: a frame on the host, the guest's coordinates in it, and the funnel restraint.

The host's axis runs from the centroid of the host atoms ``c`` to the centroid of an anchor group
``a`` (host atoms on one side, e.g. one portal of a macrocycle), so it turns with the host and
needs no restraint on the host's orientation. The guest's centroid ``g`` has, in that frame,

- ``z = (g - c)·u`` with ``u = (a - c)/|a - c|`` (Å): the axial position, the binding CV of
  funnel metadynamics (Limongelli, Bonomi & Parrinello, PNAS 2013);
- ``rho = |(g - c) - z u|`` (Å): the distance from the axis;
- ``d = |g - c|`` (Å): the plain host–guest centroid distance.

Each is a :class:`~neuralmd.sampling.cvs.CV` (torch, for colvar files and reweighting) with an
exact OpenMM twin (``openmm_force``: a ``CustomCentroidBondForce`` of the same three centroids,
unweighted as the torch centroids are), so OpenMM's tabulated biases act on them without Python.

:class:`Funnel`: a cone (wide around the binding site) that narrows into a cylinder of radius
``radius_A`` from ``switch_z_A`` on, closed by walls at ``lower_z_A`` and ``upper_z_A``; outside
it a harmonic wall of stiffness ``k_kjmol_A2`` pushes back (inside: no force). In the cylinder a
free guest can be anywhere in the cross-section, whose Boltzmann-weighted area
:meth:`Funnel.cross_section_A2` (πR² plus what the soft wall lets through, analytic) turns the
probability density along ``z`` into the binding constant:

    K_b = A_eff ∫_bound p(z) dz / p(z_unbound),   ΔG° = -k_BT ln(K_b C°),   C° = 1 M = 1/1660.54 Å³.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import openmm
import torch

from ..errors import InputError
from ..sampling.cvs import CV
from ..sampling.fes import kT_kjmol
from ..units import NM_IN_A

STANDARD_VOLUME_A3 = 1.0e27 / 6.02214076e23  # the volume per molecule at 1 mol/L, Å³ (1660.54)
# the centroid frame in OpenMM's expression language (nm); g1 host, g2 anchor, g3 guest
_FRAME = "z = d*cos(th); rho = d*sin(th); d = distance(g1,g3); th = angle(g2,g1,g3)"


class HostGuestCV(CV):
    """Base of the host–guest CVs: the host centroid, the axis and the guest centroid.

    Args:
        host: indices of the host atoms (its centroid is the frame's origin).
        anchor: host atoms whose centroid sets the axis direction from the origin.
        guest: indices of the guest atoms.
    """

    def __init__(self, host: Sequence[int], anchor: Sequence[int], guest: Sequence[int]) -> None:
        super().__init__()
        for name, group in (("host", host), ("anchor", anchor), ("guest", guest)):
            if len(group) == 0:
                raise InputError(f"binding CV: the {name} group is empty")
        self.register_buffer("host", torch.tensor(list(host), dtype=torch.long))
        self.register_buffer("anchor", torch.tensor(list(anchor), dtype=torch.long))
        self.register_buffer("guest", torch.tensor(list(guest), dtype=torch.long))

    def frame(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(guest centroid - host centroid, unit axis), each (B, 3), for positions (B, n, 3) Å."""
        c = x[:, self.host].mean(dim=1)
        u = x[:, self.anchor].mean(dim=1) - c
        return x[:, self.guest].mean(dim=1) - c, u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)

    def coordinates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, rho) in Å, each (B,)."""
        r, u = self.frame(x)
        z = (r * u).sum(-1)
        rho = torch.sqrt(torch.clamp((r * r).sum(-1) - z * z, min=1e-12))
        return z, rho

    def centroid_force(self, expression: str) -> openmm.CustomCentroidBondForce:
        """A CustomCentroidBondForce of ``expression`` (in z, rho, d: nm) over the three groups
        (a CV, the funnel, an umbrella along z)."""
        force = openmm.CustomCentroidBondForce(3, f"{expression}; {_FRAME}")
        for group in (self.host, self.anchor, self.guest):
            force.addGroup([int(i) for i in group], [1.0] * len(group))
        force.addBond([0, 1, 2], [])
        return force


class ScalarHostGuestCV(HostGuestCV):
    """A one-output host–guest CV named after its variable in :data:`_FRAME` (``variable``: z,
    rho or d)."""

    variable = ""

    def __init__(self, host: Sequence[int], anchor: Sequence[int], guest: Sequence[int]) -> None:
        super().__init__(host, anchor, guest)
        self.names = [self.variable]

    def openmm_force(self) -> openmm.CustomCentroidBondForce:
        """An OpenMM force whose energy is this CV's value (Å)."""
        force = self.centroid_force(f"{NM_IN_A}*{self.variable}")
        force.setName(f"neuralmd-cv-{self.variable}")
        return force


class AxialPosition(ScalarHostGuestCV):
    """z: the guest centroid's position along the host axis (Å)."""

    variable = "z"

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return self.coordinates(x)[0].unsqueeze(-1)


class RadialDistance(ScalarHostGuestCV):
    """rho: the guest centroid's distance from the host axis (Å)."""

    variable = "rho"

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return self.coordinates(x)[1].unsqueeze(-1)


class CentroidDistance(ScalarHostGuestCV):
    """d: the host–guest centroid distance (Å)."""

    variable = "d"

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        r, _ = self.frame(x)
        return torch.linalg.vector_norm(r, dim=-1, keepdim=True)


@dataclass
class Funnel:
    """A cone + cylinder restraint along the host axis (lengths Å, stiffness kJ/mol/Å²).

    The allowed radius is ``radius_A`` for z ≥ ``switch_z_A`` and grows as
    ``radius_A + tan(cone_angle) (switch_z_A - z)`` below it; z is held in
    [``lower_z_A``, ``upper_z_A``]. Beyond the surface the energy is ½ k (excess)².
    """

    radius_A: float = 2.0
    cone_angle_deg: float = 30.0
    switch_z_A: float = 7.0
    lower_z_A: float = -5.0
    upper_z_A: float = 20.0
    k_kjmol_A2: float = 20.0

    def validate(self) -> None:
        if not 0 < self.radius_A < float("inf"):
            raise InputError(f"funnel radius: {self.radius_A} Å; expected > 0")
        if not 0 <= self.cone_angle_deg < 90:
            raise InputError(f"funnel cone angle: {self.cone_angle_deg}°; expected 0 <= angle < 90")
        if not self.lower_z_A < self.switch_z_A < self.upper_z_A:
            raise InputError(f"funnel: lower {self.lower_z_A} < switch {self.switch_z_A} < upper {self.upper_z_A} Å "
                             f"expected")
        if not 0 < self.k_kjmol_A2 < float("inf"):
            raise InputError(f"funnel wall stiffness: {self.k_kjmol_A2} kJ/mol/Å²; expected > 0")

    def radius(self, z: np.ndarray | float) -> np.ndarray:
        """The allowed distance from the axis at axial position ``z`` (Å)."""
        tan = math.tan(math.radians(self.cone_angle_deg))
        return self.radius_A + tan * np.maximum(self.switch_z_A - np.asarray(z, dtype=float), 0.0)

    def energy(self, z: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """The restraint energy (kJ/mol) at (z, rho) in Å."""
        tan = math.tan(math.radians(self.cone_angle_deg))
        allowed = self.radius_A + tan * torch.clamp(self.switch_z_A - z, min=0.0)
        out = torch.clamp(rho - allowed, min=0.0) ** 2
        out = out + torch.clamp(z - self.upper_z_A, min=0.0) ** 2 + torch.clamp(self.lower_z_A - z, min=0.0) ** 2
        return 0.5 * self.k_kjmol_A2 * out

    def contains(self, z: float, rho: float) -> bool:
        """Whether (z, rho) lies inside the funnel (where the restraint exerts no force)."""
        return self.lower_z_A <= z <= self.upper_z_A and rho <= float(self.radius(z))

    def openmm_force(self, frame: HostGuestCV) -> openmm.CustomCentroidBondForce:
        """The restraint as an OpenMM force on ``frame``'s centroids (kJ/mol, nm)."""
        tan = math.tan(math.radians(self.cone_angle_deg))
        k = self.k_kjmol_A2 * NM_IN_A**2
        nm = {name: getattr(self, name) / NM_IN_A for name in ("radius_A", "switch_z_A", "lower_z_A", "upper_z_A")}
        expression = (f"0.5*{k!r}*(max(0, rho - allowed)^2 + max(0, z - {nm['upper_z_A']!r})^2"
                      f" + max(0, {nm['lower_z_A']!r} - z)^2);"
                      f" allowed = {nm['radius_A']!r} + {tan!r}*max(0, {nm['switch_z_A']!r} - z)")
        force = frame.centroid_force(expression)
        force.setName("neuralmd-funnel")
        return force

    def cross_section_A2(self, temperature_K: float) -> float:
        """The Boltzmann-weighted cross-section of the cylinder (Å²), ∫ 2πρ exp(-βU_wall(ρ)) dρ
        = πR² + 2π(R σ √(π/2) + σ²) with σ² = k_BT / k: what a free guest in the cylinder may
        occupy."""
        sigma = math.sqrt(kT_kjmol(temperature_K) / self.k_kjmol_A2)
        r = self.radius_A
        return math.pi * r * r + 2 * math.pi * (r * sigma * math.sqrt(math.pi / 2) + sigma * sigma)


def standard_binding_free_energy(bound_probability: float, unbound_density_per_A: float, cross_section_A2: float,
                                 temperature_K: float) -> float:
    """ΔG°bind (kJ/mol, 1 M standard state) from the probability of the bound basin, the
    probability density along z on the unbound plateau (1/Å) and the funnel's cross-section
    there (Å²): K_b = A P_bound / p_unbound (Å³), ΔG° = -k_BT ln(K_b / 1660.54 Å³)."""
    if not bound_probability > 0 or not unbound_density_per_A > 0:
        raise InputError("binding free energy: the bound basin or the unbound plateau was never sampled")
    k_b = cross_section_A2 * bound_probability / unbound_density_per_A
    return -kT_kjmol(temperature_K) * math.log(k_b / STANDARD_VOLUME_A3)
