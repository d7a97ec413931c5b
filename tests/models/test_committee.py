"""Committee: mean energy and conservative forces of its members, the DP-GEN force deviation,
and the calibration of that deviation against true force errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.stats import spearmanr

from neuralmd.errors import InputError
from neuralmd.models import NeuralPotential
from neuralmd.models.committee import Committee, calibrate, committee_deviation
from neuralmd.state import AtomsBatch


def _member(seed: int, cutoff: float = 4.0) -> NeuralPotential:
    """An untrained float64 PaiNN over H, C, O (like conftest's ``float64_model``), weights from ``seed``."""
    torch.manual_seed(seed)
    return NeuralPotential([1, 6, 8], e0=[-13.6, -1025.0, -2035.0], scale=1.3, shift=0.1,
                           features=16, interactions=2, cutoff=cutoff, num_basis=8).double()


@pytest.fixture(scope="module")
def members() -> list[NeuralPotential]:
    return [_member(0), _member(1)]


def _frames(n: int, seed: int = 0, scale: float = 0.1):
    """Rattled ethanol and water molecules, alternating."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = molecule("CH3CH2OH" if k % 2 == 0 else "H2O")
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        out.append(atoms)
    return out


def _member_outputs(members, batch):
    outs = [m(batch) for m in members]
    return (np.stack([o["energy"].detach().numpy() for o in outs]),
            np.stack([o["forces"].detach().numpy() for o in outs]))


def test_fewer_than_two_members_is_an_input_error(members):
    with pytest.raises(InputError, match="at least two"):
        Committee(members[:1])
    with pytest.raises(InputError):
        Committee([])


def test_committee_takes_the_largest_cutoff_and_checks_elements_in_every_member():
    committee = Committee([_member(0, cutoff=4.0), _member(1, cutoff=5.0)])
    assert committee.cutoff == 5.0
    assert committee.dtype == torch.float64
    committee.check_elements([1, 6, 8])
    with pytest.raises(InputError, match="N"):
        committee.check_elements([1, 7])


def test_energy_is_the_members_mean_and_forces_its_negative_gradient(members):
    committee = Committee(members)
    batch = AtomsBatch.from_atoms(_frames(2))
    energies, forces = _member_outputs(members, batch)
    out = committee(batch)
    np.testing.assert_allclose(out["energy"].detach().numpy(), energies.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["forces"].detach().numpy(), forces.mean(0), rtol=0, atol=1e-10)
    assert abs(energies[0] - energies[1]).min() > 1e-3  # the members really differ

    # central finite differences of the committee energy of the first system (ethanol, 9 atoms)
    h = 1e-5
    pos = batch.positions.clone()
    fd = np.zeros((9, 3))
    for i in range(9):
        for k in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[i, k] += h
            minus[i, k] -= h
            e_plus = committee(batch.replace(positions=plus), forces=False)["energy"][0].item()
            e_minus = committee(batch.replace(positions=minus), forces=False)["energy"][0].item()
            fd[i, k] = -(e_plus - e_minus) / (2 * h)
    np.testing.assert_allclose(out["forces"][:9].detach().numpy(), fd, rtol=0, atol=1e-6)


def test_predict_gives_the_max_atom_rms_force_deviation_per_system(members):
    committee = Committee(members)
    frames = _frames(3)
    batch = AtomsBatch.from_atoms(frames)
    energies, forces = _member_outputs(members, batch)
    pred = committee.predict(batch)

    mean_f = forces.mean(0)
    rms = np.sqrt(((forces - mean_f) ** 2).sum(-1).mean(0))  # (N,): RMS over members of |F_i^m - <F_i>|
    # two members: the RMS deviation is half the distance between their forces
    np.testing.assert_allclose(rms, 0.5 * np.linalg.norm(forces[0] - forces[1], axis=-1), rtol=1e-12)
    starts = np.cumsum([0] + [len(a) for a in frames])
    expected = [rms[starts[b] : starts[b + 1]].max() for b in range(len(frames))]
    np.testing.assert_allclose(pred["force_deviation"].numpy(), expected, rtol=1e-12)
    assert pred["force_deviation"].shape == (3,) and (pred["force_deviation"] > 0).all()

    np.testing.assert_allclose(pred["energy"].numpy(), energies.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(pred["forces"].numpy(), mean_f, rtol=0, atol=1e-10)
    sizes = np.array([len(a) for a in frames])
    np.testing.assert_allclose(pred["energy_std_per_atom"].numpy(), energies.std(0, ddof=1) / sizes, rtol=1e-10)
    for value in pred.values():
        assert not value.requires_grad


def test_identical_members_do_not_disagree():
    committee = Committee([_member(3), _member(3)])
    pred = committee.predict(AtomsBatch.from_atoms(_frames(2)))
    assert pred["force_deviation"].abs().max() == 0.0
    assert pred["energy_std_per_atom"].abs().max() == 0.0


def test_committee_deviation_in_batches_matches_one_predict(members):
    committee = Committee(members)
    frames = _frames(7, seed=2)
    whole = committee.predict(AtomsBatch.from_atoms(frames))["force_deviation"].numpy()
    np.testing.assert_allclose(committee_deviation(committee, frames, batch_size=3), whole, rtol=1e-12)
    assert committee_deviation(committee, []).shape == (0,)


def test_calibrate_on_labels_of_one_member_gives_scale_one(members):
    """With labels from member A, the mean's force error at each atom is |F_B - F_A| / 2, which is
    exactly the two-member RMS deviation: error = deviation frame by frame, scale 1, rank order 1."""
    committee = Committee(members)
    frames = _frames(8, seed=4, scale=0.15)
    forces = members[0](AtomsBatch.from_atoms(frames))["forces"].detach().numpy()
    starts = np.cumsum([0] + [len(a) for a in frames])
    for b, atoms in enumerate(frames):
        atoms.arrays["forces"] = forces[starts[b] : starts[b + 1]]
    cal = calibrate(committee, frames, batch_size=3)
    assert cal["frames"] == 8
    assert cal["scale_factor"] == pytest.approx(1.0, rel=1e-9)
    assert cal["spearman"] == pytest.approx(1.0)
    assert cal["mean_max_force_error_eV_per_A"] == pytest.approx(cal["mean_deviation_eV_per_A"], rel=1e-9)


def test_calibrate_against_unrelated_labels_matches_numpy_and_scipy(members):
    committee = Committee(members)
    frames = _frames(9, seed=5, scale=0.15)
    rng = np.random.default_rng(6)
    for atoms in frames:
        atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
    batch = AtomsBatch.from_atoms(frames)
    _, forces = _member_outputs(members, batch)
    mean_f = forces.mean(0)
    dev_atom = np.sqrt(((forces - mean_f) ** 2).sum(-1).mean(0))
    err_atom = np.linalg.norm(mean_f - np.concatenate([a.arrays["forces"] for a in frames]), axis=-1)
    starts = np.cumsum([0] + [len(a) for a in frames])
    d = np.array([dev_atom[s:e].max() for s, e in zip(starts[:-1], starts[1:])])
    e = np.array([err_atom[s:e].max() for s, e in zip(starts[:-1], starts[1:])])
    scale = np.linalg.lstsq(d[:, None], e, rcond=None)[0][0]  # error ≈ s · deviation, no intercept

    cal = calibrate(committee, frames, batch_size=4)
    assert cal["frames"] == 9
    assert cal["scale_factor"] == pytest.approx(scale, rel=1e-9)
    assert cal["spearman"] == pytest.approx(spearmanr(d, e)[0], abs=1e-12)
    assert cal["mean_deviation_eV_per_A"] == pytest.approx(d.mean(), rel=1e-9)
    assert cal["mean_max_force_error_eV_per_A"] == pytest.approx(e.mean(), rel=1e-9)
