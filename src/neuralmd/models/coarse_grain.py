"""The coarse-grained potential of force matching (CGnet: Wang et al., ACS Cent. Sci. 2019).

A CG molecule of n beads has the energy

    E(x) = E_prior(x) + k_BT · net(z(features(x))) [+ C(φ, ψ)]

where ``features`` are all bead-pair distances (Å), the angles of consecutive bead triplets
(rad) and the cos/sin of the torsions of consecutive quadruplets (rotation and translation
invariant); ``z`` standardises them with the data's mean and spread; the prior holds harmonic
bonds and angles fitted by Boltzmann inversion of the mapped data plus a repulsion between
beads more than two bonds apart. The network is trained so that -∇E matches the mapped
all-atom forces in the least-squares sense, whose minimiser is the many-body potential of mean
force (Noid et al., J. Chem. Phys. 2008). The optional C(φ, ψ) is a 2D Fourier correction in
the first two torsions fitted afterwards by :mod:`~neuralmd.surrogates.cg_refine`. Data and
mappings live in :mod:`neuralmd.surrogates.coarse_grain`, training in
:mod:`neuralmd.surrogates.cg_training`. Energies in
eV, lengths in Å, forces in eV/Å.

:class:`CGPotential` is a :class:`~neuralmd.models.base.Potential`, so the native engine runs
CG Langevin dynamics with it exactly as with an all-atom model.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from ..errors import InputError
from ..geometry import angles, dihedrals, replica_positions
from ..io_utils import atomic_save
from ..state import AtomsBatch
from ..units import kT_eV
from .base import Potential

FORMAT = "neuralmd.cg-potential"
FORMAT_VERSION = 1


# --- features and prior ---------------------------------------------------------------
class CGFeatures(nn.Module):
    """Positions (B, n, 3) -> distances of all pairs (Å), angles of consecutive triplets
    (rad) and torsions of consecutive quadruplets (rad), concatenated: (B, F)."""

    def __init__(self, n_beads: int) -> None:
        super().__init__()
        self.n_beads = n_beads
        self.pairs = [(i, j) for i in range(n_beads) for j in range(i + 1, n_beads)]
        self.register_buffer("pair_idx", torch.tensor(self.pairs), persistent=False)
        self.register_buffer("triplets", torch.tensor([[i, i + 1, i + 2] for i in range(n_beads - 2)]), persistent=False)
        self.register_buffer("quadruplets", torch.tensor([[i, i + 1, i + 2, i + 3] for i in range(n_beads - 3)]),
                             persistent=False)
        self.n_pairs = len(self.pairs)
        self.n_angles = n_beads - 2
        self.n_torsions = n_beads - 3
        #: columns of the bonded pairs (i, i+1), of the pairs at least three bonds apart, and the
        #: first torsion column
        self.bond_columns = [self.pair_index(i, i + 1) for i in range(n_beads - 1)]
        self.far_columns = [self.pair_index(i, j) for i in range(n_beads) for j in range(i + 3, n_beads)]
        self.torsion_column = self.n_pairs + self.n_angles

    def pair_index(self, i: int, j: int) -> int:
        """Column of the distance between beads i < j."""
        return self.pairs.index((i, j))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.vector_norm(x[:, self.pair_idx[:, 1]] - x[:, self.pair_idx[:, 0]], dim=-1)
        return torch.cat([d, angles(x, self.triplets), dihedrals(x, self.quadruplets)], dim=-1)

    def network_input(self, raw: torch.Tensor) -> torch.Tensor:
        """Torsions replaced by their cos and sin (continuous across ±π)."""
        torsions = raw[:, self.torsion_column :]
        return torch.cat([raw[:, : self.torsion_column], torsions.cos(), torsions.sin()], dim=-1)


def fourier_basis(angle: torch.Tensor, order: int) -> torch.Tensor:
    """[cos φ, sin φ, cos 2φ, sin 2φ, ...] up to ``order``: (..., 2·order)."""
    m = torch.arange(1, order + 1, dtype=angle.dtype, device=angle.device)
    phase = angle.unsqueeze(-1) * m
    return torch.stack([phase.cos(), phase.sin()], dim=-1).flatten(-2)


#: Boltzmann inversion of torsion histograms: an empty bin is fitted as this fraction of one
#: sample (finite, but low enough that the fitted surface puts < 1 % of the probability where
#: the data have none); bins are weighted by √max(counts, 1).
EMPTY_BIN_COUNT = 0.05


def fit_series(values: np.ndarray, weights: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Weighted least-squares coefficients of ``basis`` (M, P) plus a free constant for
    ``values`` (M,); the constant is dropped (energies are defined up to one)."""
    basis = np.concatenate([np.ones((len(values), 1)), basis], axis=1)
    coef, *_ = np.linalg.lstsq(basis * weights[:, None], values * weights, rcond=None)
    return coef[1:]


def _fit_free_energy(counts: np.ndarray, basis: np.ndarray, kT: float) -> np.ndarray:
    """Least-squares coefficients (without the constant) of -k_BT ln p on histogram bins."""
    free = -kT * np.log(np.maximum(counts, EMPTY_BIN_COUNT) / counts.sum()).ravel()
    return fit_series(free, np.sqrt(np.maximum(counts, 1.0)).ravel(), basis)


def fit_torsion_profile(torsion: np.ndarray, kT: float, order: int, bins: int = 36) -> np.ndarray:
    """Fourier coefficients (2·order,) in eV of -k_BT ln p(φ) for torsion samples φ (rad)."""
    counts, edges = np.histogram(torsion, bins=bins, range=(-np.pi, np.pi))
    return _fit_free_energy(counts, fourier_basis(torch.as_tensor(0.5 * (edges[1:] + edges[:-1])), order).numpy(), kT)


def torsion_pair_basis(phi: torch.Tensor, psi: torch.Tensor, order: int) -> torch.Tensor:
    """Products of the Fourier terms (1, cos mφ, sin mφ) and (1, cos nψ, sin nψ) up to ``order``,
    without the constant: (..., (2·order + 1)² - 1)."""
    one = torch.ones_like(phi).unsqueeze(-1)
    a = torch.cat([one, fourier_basis(phi, order)], dim=-1)
    b = torch.cat([one, fourier_basis(psi, order)], dim=-1)
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)[..., 1:]


def torsion_grid_basis(bins: int, order: int) -> np.ndarray:
    """:func:`torsion_pair_basis` at the centres of a bins × bins grid over [-π, π)² (φ-major)."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    c1, c2 = np.meshgrid(0.5 * (edges[1:] + edges[:-1]), 0.5 * (edges[1:] + edges[:-1]), indexing="ij")
    return torsion_pair_basis(torch.as_tensor(c1.ravel()), torch.as_tensor(c2.ravel()), order).numpy()


def fit_torsion_surface(phi: np.ndarray, psi: np.ndarray, kT: float, order: int, bins: int = 24) -> np.ndarray:
    """Coefficients ((2·order + 1)² - 1,) in eV of -k_BT ln p(φ, ψ) for torsion samples (rad):
    the 2D analogue of :func:`fit_torsion_profile` (a CMAP-like surface)."""
    counts, _, _ = np.histogram2d(phi, psi, bins=bins, range=[(-np.pi, np.pi)] * 2)
    return _fit_free_energy(counts, torsion_grid_basis(bins, order), kT)


class Prior(nn.Module):
    """Physical prior on the raw :class:`CGFeatures` columns, in eV: harmonic bonds (i, i+1)
    and angles (i, i+1, i+2), a repulsion k_BT (σ/r)^6 between beads at least three bonds apart,
    and (optionally) a Fourier series in each torsion, or a 2D Fourier surface in the first two
    torsions (``pair_coef``; CHARMM's CMAP idea) with 1D series for any further torsions."""

    def __init__(self, features: CGFeatures, bond_k: Sequence[float], bond_r0: Sequence[float],
                 angle_k: Sequence[float], angle_t0: Sequence[float], repulsion_sigma: Sequence[float],
                 temperature_K: float, torsion_coef: Sequence[Sequence[float]] = (),
                 pair_coef: Sequence[float] = ()) -> None:
        super().__init__()
        self.register_buffer("bond_cols", torch.tensor(features.bond_columns), persistent=False)
        self.register_buffer("angle_cols", torch.arange(features.n_pairs, features.torsion_column), persistent=False)
        self.register_buffer("repulsion_cols", torch.tensor(features.far_columns, dtype=torch.long), persistent=False)
        for name, values in (("bond_k", bond_k), ("bond_r0", bond_r0), ("angle_k", angle_k), ("angle_t0", angle_t0),
                             ("repulsion_sigma", repulsion_sigma)):
            self.register_buffer(name, torch.tensor(list(values), dtype=torch.float64), persistent=False)
        coef = torch.tensor([list(c) for c in torsion_coef], dtype=torch.float64) if len(torsion_coef) else torch.zeros(0, 0)
        self.register_buffer("torsion_coef", coef.to(torch.float64), persistent=False)
        self.register_buffer("pair_coef", torch.tensor(list(pair_coef), dtype=torch.float64), persistent=False)
        self.pair_order = (round(math.sqrt(len(pair_coef) + 1)) - 1) // 2
        #: the 1D series start after the torsions the 2D surface covers
        self.torsion_start = features.torsion_column + (2 if len(pair_coef) else 0)
        self.kT = kT_eV(temperature_K)

    @classmethod
    def fit(cls, features: CGFeatures, coords: np.ndarray, temperature_K: float, torsion_order: int = 0,
            torsion_pair: bool = False) -> "Prior":
        """Boltzmann inversion of the mapped data at ``temperature_K``: a harmonic term of the
        observed mean and k = k_BT / variance for each bond and angle; the repulsion's σ is the
        0.1 % quantile of each far pair's distance (the repulsion is 1 k_BT there); with
        ``torsion_order`` > 0, -k_BT ln p(φ) of each torsion as a Fourier series of that order
        (with ``torsion_pair``, -k_BT ln p(φ, ψ) of the first two as one 2D series)."""
        raw = features(torch.as_tensor(coords, dtype=torch.float64)).numpy()
        kT = kT_eV(temperature_K)
        bonds = raw[:, features.bond_columns]
        angles = raw[:, features.n_pairs : features.torsion_column]
        far = raw[:, features.far_columns]
        torsions = raw[:, features.torsion_column :]
        pair = torsion_pair and torsion_order > 0 and torsions.shape[1] >= 2
        pair_coef = fit_torsion_surface(torsions[:, 0], torsions[:, 1], kT, torsion_order).tolist() if pair else []
        coef = [fit_torsion_profile(torsions[:, k], kT, torsion_order).tolist()
                for k in range(2 if pair else 0, torsions.shape[1])] if torsion_order > 0 else []
        return cls(features, kT / bonds.var(0), bonds.mean(0), kT / angles.var(0), angles.mean(0),
                   np.quantile(far, 0.001, axis=0) if far.size else [], temperature_K, coef, pair_coef)

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k).tolist()
                for k in ("bond_k", "bond_r0", "angle_k", "angle_t0", "repulsion_sigma", "torsion_coef", "pair_coef")}

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        r = raw[:, self.bond_cols]
        t = raw[:, self.angle_cols]
        e = 0.5 * (self.bond_k * (r - self.bond_r0) ** 2).sum(-1) + 0.5 * (self.angle_k * (t - self.angle_t0) ** 2).sum(-1)
        if len(self.repulsion_cols):
            e = e + self.kT * ((self.repulsion_sigma / raw[:, self.repulsion_cols]) ** 6).sum(-1)
        if len(self.pair_coef):
            first = self.torsion_start - 2
            basis = torsion_pair_basis(raw[:, first], raw[:, first + 1], self.pair_order)
            e = e + basis @ self.pair_coef.to(basis.dtype)
        if len(self.torsion_coef):
            basis = fourier_basis(raw[:, self.torsion_start : self.torsion_start + len(self.torsion_coef)],
                                  self.torsion_coef.shape[1] // 2)
            e = e + (basis * self.torsion_coef).sum((-1, -2))
        return e


# --- the potential -----------------------------------------------------------------------
class CGPotential(Potential):
    """Prior plus network for one CG molecule of ``len(elements)`` beads.

    Args:
        elements: bead elements (their masses drive the dynamics; numbers label the beads).
        prior_settings: :meth:`Prior.settings` of a fitted prior.
        feature_mean, feature_std: standardisation of the network input.
        hidden: widths of the network's hidden layers (tanh).
        temperature_K: temperature of the data (sets the network's energy unit k_BT).
        torsions: named bead quadruplets to analyse, e.g. {"phi": [0, 1, 2, 3]}.
        torsion_correction: coefficients (eV) of a 2D Fourier surface in the first two named
            torsions added by :mod:`~neuralmd.surrogates.cg_refine` (empty: none); part of the
            learned model, so :meth:`prior_only` leaves it out.
    """

    max_atoms_per_chunk = None  # one small MLP over all replicas: chunking only adds calls

    def __init__(self, elements: Sequence[str], prior_settings: dict[str, Any], feature_mean: Sequence[float],
                 feature_std: Sequence[float], hidden: Sequence[int] = (128, 128, 128), temperature_K: float = 300.0,
                 torsions: dict[str, list[int]] | None = None, torsion_correction: Sequence[float] = ()) -> None:
        super().__init__()
        self.elements = list(elements)
        self.hidden = [int(h) for h in hidden]
        self.temperature_K = float(temperature_K)
        self.torsions = dict(torsions or {})
        self.features = CGFeatures(len(self.elements))
        self.prior = Prior(self.features, temperature_K=temperature_K, **prior_settings)
        self.register_buffer("numbers", torch.tensor([atomic_numbers[e] for e in self.elements]), persistent=False)
        self.register_buffer("feature_mean", torch.tensor(list(feature_mean), dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(list(feature_std), dtype=torch.float32))
        layers: list[nn.Module] = []
        width = len(feature_mean)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.kT = kT_eV(temperature_K)
        self.set_torsion_correction(torsion_correction)
        #: set to False to evaluate the prior alone (the baseline a CG model must beat)
        self.use_network = True
        #: bead positions (S, n, 3) Å that CG MD starts from, stored in the model file
        self.start_positions: np.ndarray | None = None

    @contextmanager
    def prior_only(self) -> Iterator["CGPotential"]:
        """Within the block the model is its prior alone."""
        self.use_network = False
        try:
            yield self
        finally:
            self.use_network = True

    def set_torsion_correction(self, coef: Sequence[float]) -> None:
        """Set the 2D torsion correction's coefficients (eV; ``(2·order + 1)² - 1`` of them)."""
        coef = torch.tensor(list(coef), dtype=torch.float64)
        order = (round(math.sqrt(len(coef) + 1)) - 1) // 2
        if len(coef) and ((2 * order + 1) ** 2 - 1 != len(coef) or len(self.torsions) < 2):
            raise InputError(f"torsion_correction: {len(coef)} coefficients for {len(self.torsions)} named torsions; "
                             f"expected (2·order + 1)² - 1 and two torsions")
        # a buffer, so it travels in the state dict and in the checkpoints' model fingerprint
        self.register_buffer("correction_coef", coef.to(self.feature_mean.dtype))
        self.correction_order = order

    @property
    def dtype(self) -> torch.dtype:
        return self.net[0].weight.dtype

    def check_elements(self, numbers: torch.Tensor | Sequence[int], where: str = "input") -> None:
        """InputError unless ``numbers`` is this molecule's bead sequence, once per replica."""
        numbers = torch.as_tensor(numbers).reshape(-1)
        n = len(self.elements)
        if numbers.numel() % n or not (numbers.view(-1, n) == self.numbers.to(numbers.device)).all():
            got = " ".join(chemical_symbols[int(z)] for z in numbers[: 2 * n])
            raise InputError(f"{where}: beads {got}... do not match the CG model's {' '.join(self.elements)} "
                             f"(repeated once per replica)")

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energy (B,) in eV of bead positions x (B, n, 3) in Å."""
        raw = self.features(x)
        e = self.prior(raw.to(torch.float64))
        if self.use_network:
            z = (self.features.network_input(raw) - self.feature_mean.to(raw.dtype)) / self.feature_std.to(raw.dtype)
            e = e + self.kT * self.net(z.to(self.dtype)).squeeze(-1).to(torch.float64)
            if len(self.correction_coef):  # the first two torsions: those of beads 0-1-2-3 and 1-2-3-4
                t = raw[:, self.features.torsion_column : self.features.torsion_column + 2].to(torch.float64)
                e = e + torsion_pair_basis(t[:, 0], t[:, 1], self.correction_order) @ self.correction_coef.double()
        return e

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        e = self.energy(replica_positions(batch))
        n = len(self.elements)
        return (e / n).repeat_interleave(n)

    def forces(self, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """-∇E (B, n, 3) in eV/Å at x (B, n, 3) Å; ``create_graph`` to train on them."""
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.energy(x).sum(), x, create_graph=create_graph)
        return -grad

    # --- model file ------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "elements": self.elements,
                "prior": self.prior.settings(), "feature_mean": self.feature_mean.tolist(),
                "feature_std": self.feature_std.tolist(), "hidden": self.hidden, "temperature_K": self.temperature_K,
                "torsions": self.torsions, "dtype": str(self.dtype).removeprefix("torch."),
                "use_network": self.use_network,
                "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"}}

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the self-contained model file atomically, with :attr:`start_positions`."""
        if self.start_positions is None:
            raise ValueError("CGPotential.save: start_positions (bead positions for CG MD) are not set")
        atomic_save({**self.metadata(), "state_dict": self.state_dict(),
                     "start_positions": torch.as_tensor(self.start_positions, dtype=torch.float64),
                     "extra": extra or {}}, path)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "CGPotential":
        model = cls(payload["elements"], payload["prior"], payload["feature_mean"], payload["feature_std"],
                    payload["hidden"], payload["temperature_K"], payload["torsions"],
                    payload["state_dict"].get("correction_coef", torch.zeros(0)).tolist())
        model.load_state_dict({"correction_coef": model.correction_coef, **payload["state_dict"]})  # older files
        model.use_network = bool(payload.get("use_network", True))
        model.start_positions = payload["start_positions"].numpy()
        return model.to(getattr(torch, payload.get("dtype", "float32")))

    def start_batch(self, positions: np.ndarray | torch.Tensor) -> AtomsBatch:
        """An AtomsBatch of CG replicas at bead positions (R, n, 3) Å."""
        from ase import Atoms

        frames = [Atoms(symbols=self.elements, positions=np.asarray(p, dtype=np.float64)) for p in positions]
        return AtomsBatch.from_atoms(frames)


def torsion_angles(coords: np.ndarray, quadruplets: dict[str, Sequence[int]]) -> np.ndarray:
    """Torsions (T, k) in rad (IUPAC sign) of bead coordinates (T, n, 3), one column per entry."""
    x = torch.as_tensor(np.asarray(coords), dtype=torch.float64)
    return dihedrals(x, torch.tensor([list(q) for q in quadruplets.values()])).numpy()
