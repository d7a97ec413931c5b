"""The learned binding CV: descriptors and the network inside OpenMM equal their torch versions
(values and forces), LDA separates the bound and unbound states of the toy with one unit
between them, and OPES on the learned CV drives binding and recovers the toy's ΔG°."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from neuralmd.binding.analysis import binding_report
from neuralmd.binding.learned import (BindingCV, BindingDescriptors, descriptor_groups, load_binding_cv,
                                      mlp_expression)
from neuralmd.binding.runs import (CLASH_A, build_settings, guest_on_plateau, resume_binding, start_binding,
                                   stored_system, unbound_start)
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.binding.system import (ComplexInput, box_A, host_axis, host_guest, positions_A, water_molecules,
                                     water_oxygens)
from neuralmd.geometry import minimum_image
from neuralmd.errors import InputError
from neuralmd.sampling.learned import CVNetwork, Normalise, mlp
from tests.binding.test_runs import FUNNEL, toy_engine, toy_settings
from tests.binding.toy import exact_binding_dG, toy_complex
from tests.binding.cb7 import cb7_complex

@pytest.fixture(scope="module")
def cb7_groups():
    parts, spec = cb7_complex()
    host, guest = host_guest(parts.topology, spec)
    pos = positions_A(parts)
    anchor, _ = host_axis(pos, host, guest)
    return descriptor_groups(pos, parts.numbers, host, anchor, guest), pos


def _openmm(force: openmm.Force, x: np.ndarray, cell: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Energy (kJ/mol) and forces (kJ/mol/Å) of ``force`` alone at positions ``x`` (Å), in the
    periodic box ``cell`` (Å) if given."""
    system = openmm.System()
    for _ in range(len(x)):
        system.addParticle(1.0)
    if cell is not None:
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) / 10.0 for row in cell))
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x / 10.0)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom))


def _random_network(n_in: int) -> CVNetwork:
    torch.manual_seed(1)
    net = mlp([n_in, 6, 4]).double()
    norm = Normalise(torch.randn(n_in, dtype=torch.float64), torch.rand(n_in, dtype=torch.float64) + 0.5)
    return CVNetwork(norm, net, torch.randn(4, 1, dtype=torch.float64)).double()


@pytest.mark.parametrize("shift", [(0.2, -0.3, 0.4), (1.5, 0.5, 6.0), (-2.0, 1.0, 11.0)])
def test_descriptors_and_network_in_openmm_equal_torch(cb7_groups, shift):
    groups, pos = cb7_groups
    x = pos.copy()
    x[groups["guest"]] += np.array(shift)
    descriptors = BindingDescriptors(**groups).double()
    xt = torch.as_tensor(x)[None].requires_grad_(True)
    values = descriptors(xt)[0]
    for k, force in enumerate(descriptors.openmm_forces()):
        energy, forces = _openmm(force, x)
        (grad,) = torch.autograd.grad(values[k], xt, retain_graph=True)
        assert energy == pytest.approx(float(values[k].detach()), rel=1e-9, abs=1e-9), descriptors.names[k]
        np.testing.assert_allclose(forces, -grad[0].numpy(), atol=1e-7, err_msg=descriptors.names[k])
    assert values[2] > 1.0 or shift[2] > 10  # contacts while the guest is near the host
    cv = BindingCV(descriptors, _random_network(len(descriptors.names)), "deep_lda", names=["lda"])
    energy, forces = _openmm(cv.openmm_force(), x)
    s = cv(xt)[0, 0]
    (grad,) = torch.autograd.grad(s, xt)
    assert energy == pytest.approx(float(s.detach()), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(forces, -grad[0].numpy(), atol=1e-7)


def test_expression_refuses_a_network_with_two_outputs():
    net = _random_network(5)
    net.projection = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(InputError, match="2 outputs"):
        mlp_expression({k: v.numpy() for k, v in net.state_dict().items()}, [f"d{k}" for k in range(5)])


def test_a_single_atom_guest_is_refused_with_the_cvs_that_work():
    toy = toy_complex(30.0)
    pos = np.asarray(toy.positions.value_in_unit(unit.angstrom))
    with pytest.raises(InputError, match="at least two heavy atoms.*--cv axial"):
        descriptor_groups(pos, toy.numbers, list(range(12)), list(range(6, 12)), [12])


def test_opes_on_the_learned_cv_drives_binding_and_unbinding_and_recovers_the_binding_free_energy(tmp_path):
    """LDA from 100 ps in each state of a diatomic guest, then OPES on it: the CV puts the
    states one unit apart, and the far end of the bound basin (the other portal of a symmetric
    host) on the bound side, the guest leaves and rebinds, and ΔG° comes out within the issue's
    4 kJ/mol of the quadrature (the axial CV does better on this toy, whose only slow coordinate
    is z: tests/binding/test_runs.py)."""
    depth = 30.0
    settings = toy_settings(depth, cv="learned", sigma=0.0, cv_train_ps=100.0, guest=[12, 13],
                            funnel={**FUNNEL, "lower_z_A": -1.5})
    run = start_binding(toy_complex(depth, diatomic=True), settings, toy_engine(seed=2), tmp_path / "run")
    assert settings.cv_range[1] - settings.cv_range[0] == pytest.approx(3.0) and settings.sigma == pytest.approx(0.05)
    assert (tmp_path / "run" / "cv" / "cv.pt").exists()
    cv = load_binding_cv(tmp_path / "run" / "cv")
    far_end = positions_A(toy_complex(depth, start=(0.0, 0.0, settings.make_funnel().lower_z_A + 0.5), diatomic=True))
    with torch.no_grad():
        value = float(cv(torch.as_tensor(far_end)[None])[0, 0])
    bound_mean = settings.cv_range[0] + 1.0
    assert value < bound_mean + 0.5, value  # nearer the bound state's mean than the unbound one's
    run.run(1_000_000)
    report = binding_report(tmp_path / "run", skip_ns=0.2)
    exact = exact_binding_dG(depth, 1.0, settings.make_funnel(), settings.bound_z_A, 300.0)
    assert report["recrossings"] >= 4
    assert abs(report["dG_kjmol"] - exact) < max(3 * report["dG_err_kjmol"], 4.0), (report["dG_kjmol"], exact)
    resumed = resume_binding(tmp_path / "run")  # the learned CV comes back from the run directory
    assert resumed.step == 1_000_000


@pytest.fixture(scope="module")
def cb7_explicit():
    parts, spec = cb7_complex(solvent="explicit")
    host, guest = host_guest(parts.topology, spec)
    pos = positions_A(parts)
    anchor, _ = host_axis(pos, host, guest)
    return parts, descriptor_groups(pos, parts.numbers, host, anchor, guest, water_oxygens(parts)), pos


def test_explicit_solvent_water_descriptors_use_minimum_images_and_equal_openmm(cb7_explicit):
    """The guest's and the site's water coordinations (explicit CB7–B2, TIP3P box) do not change
    when whole waters jump by lattice vectors, and their OpenMM twins (periodic) give the same
    values and forces; the learned CV over all seven descriptors does too."""
    parts, groups, pos = cb7_explicit
    cell = box_A(parts)
    descriptors = BindingDescriptors(**groups).double()
    assert descriptors.names[-2:] == ["guest_water", "site_water"] and len(groups["water"]) > 1000
    x = pos.copy()
    jumped = x.copy()
    for k, w in enumerate(water_molecules(parts)):
        jumped[w] += cell[k % 3] * (1 if k % 2 else -1)  # a third of the waters by a, b or c, either way
    ct = torch.as_tensor(cell)[None]
    with torch.no_grad():
        ref = descriptors(torch.as_tensor(x)[None], ct)[0]
        np.testing.assert_allclose(descriptors(torch.as_tensor(jumped)[None], ct)[0].numpy(), ref.numpy(), atol=1e-9)
    assert ref[-2] > 1.0, "water at the bound guest's ends, out of the portals"
    xt = torch.as_tensor(jumped)[None].requires_grad_(True)
    values = descriptors(xt, ct)[0]
    forces = descriptors.openmm_forces()
    for k in (5, 6):
        energy, f = _openmm(forces[k], jumped, cell)
        (grad,) = torch.autograd.grad(values[k], xt, retain_graph=True)
        assert energy == pytest.approx(float(values[k].detach()), rel=1e-9, abs=1e-9), descriptors.names[k]
        np.testing.assert_allclose(f, -grad[0].numpy(), atol=1e-7, err_msg=descriptors.names[k])
    cv = BindingCV(descriptors, _random_network(len(descriptors.names)), "deep_lda", names=["lda"])
    energy, f = _openmm(cv.openmm_force(), jumped, cell)
    s = cv(xt, ct)[0, 0]
    (grad,) = torch.autograd.grad(s, xt)
    assert energy == pytest.approx(float(s.detach()), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(f, -grad[0].numpy(), atol=1e-7)
    with pytest.raises(InputError, match="periodic cell"):
        descriptors(torch.as_tensor(x)[None])
    with pytest.raises(InputError, match="twice their cutoff"):
        descriptors(torch.as_tensor(x)[None], ct * 0.35)


def test_explicit_solvent_guest_on_the_plateau_swaps_places_with_the_waters_it_lands_on(cb7_explicit):
    """Moving the guest out into the solvent moves the waters there into the cavity it left: no
    water oxygen within the clash distance of the guest, the site's water coordination rises,
    and a short minimisation relaxes the seams (:func:`unbound_start`)."""
    parts, groups, pos = cb7_explicit
    settings = build_settings(parts, ComplexInput(prmtop="x", inpcrd="x", host="CUC", guest="B2"))
    out = guest_on_plateau(parts, settings)
    cell = box_A(parts)
    ct = torch.as_tensor(cell)[None]
    oxygens = torch.as_tensor(out[groups["water"]])
    d = minimum_image((oxygens[:, None] - torch.as_tensor(out[groups["guest"]])[None])[None], ct)[0]
    assert float(torch.linalg.vector_norm(d, dim=-1).min()) >= CLASH_A
    moved = np.flatnonzero(np.abs(out - pos).max(1) > 1e-9)
    assert set(groups["guest"]) < set(moved.tolist()) and len(moved) > len(groups["guest"])
    descriptors = BindingDescriptors(**groups).double()
    with torch.no_grad():
        before, after = (descriptors(torch.as_tensor(p)[None], ct)[0] for p in (pos, out))
    assert after[-1] > before[-1] + 1.0, (before[-1], after[-1])  # water in the cavity
    relaxed = unbound_start(parts, settings, OpenMMSettings(platform="CPU"))
    context = openmm.Context(parts.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    energies = []
    for x in (out, relaxed):
        context.setPositions(x / 10.0)
        energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert energies[0] > 0 > energies[1], energies  # the seams clash; 200 minimisation steps relax them
    assert np.abs(relaxed - out).max() < 4.0  # relaxed (a clashing water turns), not rearranged


def test_learned_cv_in_explicit_solvent_end_to_end(tmp_path, cb7_explicit):
    """A binding run of CB7–B2 in its TIP3P box (PME, Monte Carlo barostat) with the learned CV:
    the box equilibrated first (it shrinks from tleap's 0.72 g/cm³), the CV trained from short
    runs in both states on all seven descriptors, the colvar records the CV
    OpenMM biases (torch with the frame's box equals the OpenMM twin in the periodic context),
    and the trajectory carries the changing box."""
    from neuralmd.md.reporters import read_h5md
    from neuralmd.sampling.colvar import read_colvar

    parts, spec = cb7_complex(solvent="explicit")
    settings = build_settings(parts, spec, cv="learned", sigma=0.0, cv_train_ps=0.4, pace=50, equilibrate_ps=0.4)
    engine = OpenMMSettings(temperature_K=300.0, timestep_fs=2.0, report_every=50, checkpoint_every=1000,
                            platform="CPU")
    box_in = box_A(parts)
    run = start_binding(parts, settings, engine, tmp_path / "run")
    stored = stored_system(tmp_path / "run")  # the equilibrated box and positions are the run's start
    assert not np.allclose(box_A(stored), box_in) and np.linalg.det(box_A(stored)) < np.linalg.det(box_in)
    np.testing.assert_allclose(box_A(stored), np.array(stored.topology.getPeriodicBoxVectors().value_in_unit(
        unit.angstrom)), atol=1e-3)
    run.run(300)
    cv = load_binding_cv(tmp_path / "run" / "cv")
    assert cv.descriptors.names[-2:] == ["guest_water", "site_water"]
    frames = read_h5md(tmp_path / "run" / "traj_000.h5md")
    colvar = read_colvar(tmp_path / "run" / "colvar.csv")
    assert len(frames) == len(colvar["step"]) == 7 and all(f.pbc.all() for f in frames)
    volumes = [f.get_volume() for f in frames]
    assert volumes[0] != volumes[-1]  # the barostat moved the box (every 25 steps)
    log = np.genfromtxt(tmp_path / "run" / "log.csv", delimiter=",", names=True)  # the box in the log too
    np.testing.assert_allclose(log["volume_A3"], volumes, rtol=1e-9)
    mass = sum(stored.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(stored.system.getNumParticles()))
    np.testing.assert_allclose(log["density_g_cm3"], mass / np.array(volumes) * 1.66053906660, rtol=1e-6)
    assert log["density_g_cm3"][0] > mass / np.linalg.det(box_in) * 1.66053906660  # denser than tleap's box
    assert np.isfinite(log["pressure_bar"]).all()
    last = frames[-1]
    with torch.no_grad():
        value = float(cv(torch.as_tensor(last.positions)[None], torch.as_tensor(last.cell.array)[None])[0, 0])
    assert colvar["lda"][-1] == pytest.approx(value, abs=1e-6)
    energy, _ = _openmm(cv.openmm_force(), last.positions, last.cell.array)
    assert energy == pytest.approx(value, abs=1e-6)
