"""The ZBL short-range repulsion: the screened Coulomb law, switched off smoothly, and atoms
pushed together repel in trained models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.data import covalent_radii

from neuralmd.models.repulsion import COULOMB_EV_A, ZBLRepulsion


def _pair_energy(zbl: ZBLRepulsion, species: list[int], r: torch.Tensor) -> torch.Tensor:
    """Energy (eV) of two atoms of ``species`` at distances ``r`` (one pair per entry)."""
    n = r.shape[0]
    vectors = torch.stack([r, torch.zeros_like(r), torch.zeros_like(r)], -1)
    i = torch.arange(2 * n).view(n, 2)
    receivers = torch.cat([i[:, 0], i[:, 1]])
    senders = torch.cat([i[:, 1], i[:, 0]])
    pair_vectors = torch.cat([vectors, -vectors])
    atom_species = torch.tensor(species).repeat(n)
    return zbl(atom_species, pair_vectors, receivers, senders).view(n, 2).sum(1)


def test_zbl_is_screened_coulomb_and_switches_off_smoothly_at_the_covalent_radii():
    zbl = ZBLRepulsion([1, 8])
    r_max = covalent_radii[1] + covalent_radii[8]
    # far inside, screening vanishes: the bare Coulomb repulsion of the nuclei
    tiny = torch.tensor([1e-4], dtype=torch.float64)
    assert float(_pair_energy(zbl, [0, 1], tiny)) / (COULOMB_EV_A * 8 / 1e-4) == pytest.approx(1.0, abs=2e-3)
    r = torch.linspace(0.2, 1.2, 201, dtype=torch.float64, requires_grad=True)
    energy = _pair_energy(zbl, [0, 1], r)
    force = -torch.autograd.grad(energy.sum(), r, create_graph=True)[0]
    curvature = -torch.autograd.grad(force.sum(), r)[0]
    energy, force, curvature = energy.detach(), force.detach(), curvature.detach()
    inside, outside = r.detach() < r_max, r.detach() >= r_max
    assert bool((energy[outside] == 0).all())
    assert bool((force[inside] > 0).all()) and bool((torch.diff(energy[inside]) < 0).all())  # repulsive throughout
    # energy, force and curvature all vanish at the switch (continuous MD forces)
    edge = torch.argmax(outside.to(torch.int)) - 1
    assert float(energy[edge]) < 1e-6 * float(energy[0])
    assert float(force[edge]) < 1e-4 * float(force[0])
    assert abs(float(curvature[edge])) < 1e-2 * float(curvature[0])


def _dimer(z1: int, z2: int, r: float) -> Atoms:
    return Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [r, 0, 0]])


PAIRS = [(1, 1), (1, 6), (1, 8), (6, 6), (6, 8), (8, 8)]


@pytest.mark.parametrize("architecture", ["painn", "tensornet"])
def test_atoms_pushed_together_repel_below_the_training_range(tmp_path, ethanol_xyz, architecture):
    """A model trained on ethanol: its repulsion ends, per pair of elements, at the shortest
    distance of that pair in the training frames (the covalent radii for O-O, which ethanol
    lacks); every pair, alone or as a hydrogen pushed into its own molecule's heavy atom, rises
    monotonically in energy from 0.7 of that distance down to 0.5 Å. (Above 0.7 the envelope has
    taken the repulsion below half its strength and the untrained network's meV-scale shape can
    show through: an H-H dimer of this model wiggles by 3 meV at 0.78 of its 1.48 Å.)"""
    from neuralmd.data import read_frames, write_frames
    from neuralmd.md.ase_calculator import NeuralCalculator
    from neuralmd.models import load_potential
    from neuralmd.training import TrainConfig, Trainer

    frames = read_frames(ethanol_xyz)[:100]
    write_frames(frames, tmp_path / "train.xyz")
    cfg = TrainConfig(train=str(tmp_path / "train.xyz"), architecture=architecture, features=16, interactions=2,
                      batch_size=8, max_steps=300, eval_every=100, checkpoint_every=300, threads=1)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    model = load_potential(tmp_path / "run" / "model.pt")
    species = {z: k for k, z in enumerate(model.elements)}
    switch = model.repulsion.switch.numpy()
    for z1, z2 in PAIRS:
        seen = [d for a in frames for d in _pair_distances(a, z1, z2)]
        expected = min(seen) if seen else covalent_radii[z1] + covalent_radii[z2]
        assert switch[species[z1], species[z2]] == pytest.approx(expected, abs=1e-4), (z1, z2)
    calc = NeuralCalculator(model)

    def energies(structures):
        out = []
        for atoms in structures:
            atoms.calc = calc
            out.append(atoms.get_potential_energy())
        return np.array(out)

    for z1, z2 in PAIRS:
        grid = np.linspace(0.5, 0.7 * switch[species[z1], species[z2]], 25)
        e = energies([_dimer(z1, z2, r) for r in grid])
        assert np.all(np.diff(e) < 0), f"{z1}-{z2}: {e}"
    # each hydrogen pushed along its bond into its heavy atom
    ethanol = frames[0]
    for h in (k for k in range(len(ethanol)) if ethanol.numbers[k] == 1):
        heavy = int(np.argsort(ethanol.get_distances(h, range(len(ethanol))))[1])
        bond = ethanol.positions[h] - ethanol.positions[heavy]
        grid = np.linspace(0.5, 0.7 * switch[species[1], species[int(ethanol.numbers[heavy])]], 25)
        pushed = []
        for r in grid:
            atoms = ethanol.copy()
            atoms.positions[h] = ethanol.positions[heavy] + bond / np.linalg.norm(bond) * r
            pushed.append(atoms)
        e = energies(pushed)
        assert np.all(np.diff(e) < 0), f"H {h} into atom {heavy}: {e}"


def _pair_distances(atoms: Atoms, z1: int, z2: int) -> list[float]:
    d = atoms.get_all_distances()
    a, b = np.flatnonzero(atoms.numbers == z1), np.flatnonzero(atoms.numbers == z2)
    return [d[i, j] for i in a for j in b if i != j]
