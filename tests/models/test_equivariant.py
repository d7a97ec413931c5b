"""The native networks (PaiNN, TensorNet): exact forces, symmetries, periodic boxes, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from neuralmd.state import AtomsBatch


def energy_forces(model, atoms):
    out = model(AtomsBatch.from_atoms([atoms]))
    return float(out["energy"][0].detach()), out["forces"].detach().numpy()


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    return atoms


def test_forces_match_finite_differences(any_float64_model, ethanol):
    _, forces = energy_forces(any_float64_model, ethanol)
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(ethanol)):
        for k in range(3):
            e = []
            for sign in (1, -1):
                displaced = ethanol.copy()
                displaced.positions[i, k] += sign * h
                e.append(energy_forces(any_float64_model, displaced)[0])
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    assert np.abs(fd - forces).max() / np.abs(forces).max() < 1e-6


@pytest.mark.parametrize("reflect", [False, True])
def test_energy_invariant_and_forces_equivariant(any_float64_model, ethanol, reflect):
    """Rotations, translations and (O(3)) reflections, to 1e-10 eV and eV/Å."""
    e0, f0 = energy_forces(any_float64_model, ethanol)
    rot = Rotation.random(random_state=7).as_matrix() @ np.diag([-1.0 if reflect else 1.0, 1.0, 1.0])
    moved = ethanol.copy()
    moved.positions = ethanol.positions @ rot.T + np.array([3.0, -1.5, 7.25])
    e1, f1 = energy_forces(any_float64_model, moved)
    assert abs(e1 - e0) < 1e-10
    np.testing.assert_allclose(f1, f0 @ rot.T, rtol=0, atol=1e-10)


def test_energy_invariant_under_permutation_of_like_atoms(any_float64_model, ethanol):
    e0, f0 = energy_forces(any_float64_model, ethanol)
    hydrogens = [k for k, z in enumerate(ethanol.numbers) if z == 1]
    perm = list(range(len(ethanol)))
    perm[hydrogens[0]], perm[hydrogens[-1]] = perm[hydrogens[-1]], perm[hydrogens[0]]
    e1, f1 = energy_forces(any_float64_model, ethanol[perm])
    assert abs(e1 - e0) < 1e-10
    np.testing.assert_allclose(f1, f0[perm], rtol=0, atol=1e-10)


def test_batch_equals_single_evaluations(any_float64_model, ethanol):
    water = molecule("H2O")
    batch = AtomsBatch.from_atoms([ethanol, water, ethanol])
    out = any_float64_model(batch)
    singles = [energy_forces(any_float64_model, a) for a in (ethanol, water, ethanol)]
    np.testing.assert_allclose(out["energy"].detach().numpy(), [s[0] for s in singles], rtol=1e-12)
    np.testing.assert_allclose(out["forces"].detach().numpy(), np.concatenate([s[1] for s in singles]), atol=1e-10)
    atom_sum = torch.zeros(3, dtype=torch.float64).index_add(0, batch.system, out["atom_energy"])
    np.testing.assert_allclose(atom_sum.detach().numpy(), out["energy"].detach().numpy(), rtol=1e-12)


def _water_box(n_molecules: int = 8, box: float = 6.2):
    from ase import Atoms

    rng = np.random.default_rng(0)
    water = molecule("H2O")
    atoms = Atoms(cell=[box, box, box * 1.1], pbc=True)
    grid = [(x, y, z) for x in range(2) for y in range(2) for z in range(2)]
    for g in grid[:n_molecules]:
        w = water.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate(np.array(g) * box / 2 + rng.uniform(0.2, 0.8, 3))
        atoms += w
    return atoms


def test_periodic_energy_invariant_under_lattice_shifts(any_float64_model):
    atoms = _water_box()
    e0, f0 = energy_forces(any_float64_model, atoms)
    shifted = atoms.copy()
    shifted.positions += atoms.cell[0] - 2 * atoms.cell[2]
    e1, f1 = energy_forces(any_float64_model, shifted)
    assert abs(e1 - e0) < 1e-9 * abs(e0)
    np.testing.assert_allclose(f1, f0, atol=1e-9)
    one_wrapped = atoms.copy()
    one_wrapped.positions[4] += atoms.cell[1]
    e2, _ = energy_forces(any_float64_model, one_wrapped)
    assert abs(e2 - e0) < 1e-9 * abs(e0)
    # periodic images interact: the same molecules without the box give another energy
    isolated = atoms.copy()
    isolated.pbc = False
    assert abs(energy_forces(any_float64_model, isolated)[0] - e0) > 1e-4


def test_periodic_forces_and_stress_match_finite_differences(any_float64_model):
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    from neuralmd.md.ase_calculator import NeuralCalculator

    atoms = _water_box()
    atoms.calc = NeuralCalculator(any_float64_model)
    forces = atoms.get_forces()
    # h = 1e-4 Å: the ~1e4 eV total energy makes round-off of smaller steps the larger error. The
    # ZBL switch (sum of covalent radii, 0.97 Å for O-H) sits at these O-H bonds, where its third
    # derivative jumps: the central difference's error h² E‴/6 is then ~3e-6 eV/Å
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    tolerance = 1e-6 if any_float64_model.repulsion is None else 1e-5
    assert np.abs(numeric - forces).max() / np.abs(forces).max() < tolerance
    stress = atoms.get_stress()
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numeric_stress, atol=1e-5 * np.abs(numeric_stress).max())
    assert np.abs(stress).max() > 1e-4


def test_model_file_roundtrip_and_format_version(any_float64_model, ethanol, tmp_path):
    from neuralmd.errors import InputError, ModelFormatError
    from neuralmd.models import load_potential

    path = tmp_path / "model.pt"
    any_float64_model.save(path)
    loaded = load_potential(path)
    assert loaded.dtype == torch.float64
    assert energy_forces(loaded, ethanol)[0] == energy_forces(any_float64_model, ethanol)[0]

    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelFormatError, match="future.pt: field 'format_version': found 99"):
        load_potential(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="junk.pt"):
        load_potential(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="element\\(s\\) N not known"):
        loaded.check_elements([1, 6, 7], where="x.xyz: frame 0")


def test_receiver_blocks_give_the_same_energy_forces_stress_and_training_gradients(any_float64_model, monkeypatch):
    """Large graphs are evaluated in blocks of receivers recomputed in the backward pass (both
    networks): the energy, forces and stress are those of one stored graph, and a force loss can
    still be differentiated with respect to the weights (create_graph, as in training)."""
    network = type(any_float64_model.network)
    batch = AtomsBatch.from_atoms([_water_box().repeat((2, 1, 1))], dtype=torch.float64)

    def evaluate(edges_per_chunk):
        monkeypatch.setattr(network, "edges_per_chunk", edges_per_chunk)
        monkeypatch.setattr(network, "chunk_above_edges", 0)
        out = any_float64_model(batch, forces=True, stress=True, create_graph=True)
        loss = out["forces"].pow(2).sum()
        weights = [w for name, w in any_float64_model.named_parameters() if name != "network.readout.2.bias"]
        return out, torch.autograd.grad(loss, weights)  # (the last bias shifts energies, not forces)

    whole, whole_grads = evaluate(None)
    blocks, block_grads = evaluate(100)  # about 30 blocks of whole receivers
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(blocks[key], whole[key], rtol=1e-12, atol=1e-12)
    for a, b in zip(block_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
