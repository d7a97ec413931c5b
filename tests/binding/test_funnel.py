"""The funnel's geometry: torch CVs and restraint against their OpenMM twins (values and forces),
the cylinder's cross-section against quadrature, and the host frame of a real complex."""

from __future__ import annotations

import math

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from neuralmd.binding.funnel import (STANDARD_VOLUME_A3, AxialPosition, CentroidDistance, Funnel, RadialDistance,
                                     standard_binding_free_energy)
from neuralmd.binding.system import fitted_funnel, host_axis, host_guest, positions_A
from neuralmd.errors import InputError
from neuralmd.sampling.fes import kT_kjmol
from tests.binding.cb7 import cb7_complex



@pytest.fixture(scope="module")
def cb7():
    parts, spec = cb7_complex()
    host, guest = host_guest(parts.topology, spec)
    pos = positions_A(parts)
    anchor, axis = host_axis(pos, host, guest)
    return parts, host, guest, anchor, axis, pos


def test_cb7_frame_is_the_ring_axis_and_the_fitted_funnel_holds_the_bound_guest(cb7):
    parts, host, guest, anchor, axis, pos = cb7
    assert len(host) == 126 and len(guest) == 30 and set(anchor) < set(host)
    r = pos[host] - pos[host].mean(0)
    # the ring's atoms lie in a band around the axis: their spread along it is the smallest
    assert np.std(r @ axis) < 0.6 * min(np.std(r @ v) for v in np.linalg.svd(r)[2][:2])
    funnel = fitted_funnel(pos, host, axis)
    z, rho = AxialPosition(host, anchor, guest).coordinates(torch.as_tensor(pos)[None])
    assert funnel.contains(float(z), float(rho)) and abs(float(z)) < 1.0
    assert funnel.lower_z_A < 0 < funnel.switch_z_A < funnel.upper_z_A


def _openmm_energy(forces: list[openmm.Force], positions_A: np.ndarray) -> tuple[list[float], np.ndarray]:
    system = openmm.System()
    for _ in range(len(positions_A)):
        system.addParticle(1.0)
    for k, force in enumerate(forces):
        force.setForceGroup(k)
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_A / 10.0)
    energies = [context.getState(getEnergy=True, groups={k}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                for k in range(len(forces))]
    last = context.getState(getForces=True, groups={len(forces) - 1}).getForces(asNumpy=True)
    return energies, last.value_in_unit(unit.kilojoule_per_mole / unit.angstrom)


@pytest.mark.parametrize("shift", [(0.3, -0.2, 0.5), (3.0, 4.0, 12.0), (-4.0, 1.0, -6.0), (1.0, 2.5, 25.0)])
def test_cvs_and_funnel_equal_their_openmm_twins_values_and_forces(cb7, shift):
    """z, rho, d and the restraint energy and forces from torch and from OpenMM's
    CustomCentroidBondForce agree to rounding, inside the funnel, beyond its cone and cylinder
    walls and beyond its ends."""
    _, host, guest, anchor, axis, pos = cb7
    x = pos.copy()
    x[guest] += np.array(shift)
    cvs = [AxialPosition(host, anchor, guest), RadialDistance(host, anchor, guest), CentroidDistance(host, anchor, guest)]
    funnel = fitted_funnel(pos, host, axis)
    energies, forces = _openmm_energy([cv.openmm_force() for cv in cvs] + [funnel.openmm_force(cvs[0])], x)
    xt = torch.as_tensor(x)[None].requires_grad_(True)
    values = [float(cv(xt).detach()) for cv in cvs]
    np.testing.assert_allclose(energies[:3], values, rtol=1e-10, atol=1e-10)
    z, rho = cvs[0].coordinates(xt)
    restraint = funnel.energy(z, rho).sum()
    (grad,) = torch.autograd.grad(restraint, xt)
    assert energies[3] == pytest.approx(float(restraint), rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(forces, -grad[0].numpy(), atol=1e-8)
    inside = funnel.contains(values[0], values[1])
    assert (energies[3] == 0.0) == inside


def test_cross_section_equals_the_integral_over_the_soft_wall():
    funnel = Funnel(radius_A=2.0, k_kjmol_A2=5.0)
    kT = kT_kjmol(300.0)
    rho = np.linspace(0.0, 12.0, 200_001)
    wall = 0.5 * funnel.k_kjmol_A2 * np.maximum(rho - funnel.radius_A, 0.0) ** 2
    numeric = np.trapezoid(2 * np.pi * rho * np.exp(-wall / kT), rho)
    assert funnel.cross_section_A2(300.0) == pytest.approx(numeric, rel=1e-7)
    assert funnel.cross_section_A2(300.0) > math.pi * 4.0  # the soft wall lets the guest a little further


def test_standard_state_free_energy_of_a_known_constant():
    """K_b = 1 M⁻¹ (one standard volume) is ΔG° = 0; ten times that is -kT ln 10."""
    kT = kT_kjmol(298.15)
    assert standard_binding_free_energy(0.5, 0.5 / 10.0, STANDARD_VOLUME_A3 / 10.0, 298.15) == pytest.approx(0.0, abs=1e-12)
    assert standard_binding_free_energy(0.5, 0.05, STANDARD_VOLUME_A3, 298.15) == pytest.approx(-kT * math.log(10))
    with pytest.raises(InputError, match="never sampled"):
        standard_binding_free_energy(0.0, 0.1, 10.0, 300.0)


@pytest.mark.parametrize("bad, match", [({"radius_A": 0.0}, "radius"), ({"cone_angle_deg": 95.0}, "cone angle"),
                                        ({"switch_z_A": 30.0}, "lower"), ({"k_kjmol_A2": -1.0}, "stiffness")])
def test_funnel_refuses_impossible_shapes(bad, match):
    with pytest.raises(InputError, match=match):
        Funnel(**bad).validate()
