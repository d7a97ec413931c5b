"""NeuralPotential: a network's per-atom output turned into energies, plus its model file.

E_i = E0[Z_i] + shift + scale * network_i (+ a short-range repulsion R_i), with E0 the per-element reference energies (eV,
float64), ``shift`` the mean residual energy per atom (eV) and ``scale`` the RMS force (eV/Å
times 1 Å), so the network learns numbers of order one. The model file is self-contained:
format version, class, hyperparameters, element list, units, normalisation and weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from ase.data import chemical_symbols

from ..errors import InputError, ModelFormatError
from ..io_utils import atomic_save
from ..neighbors import NeighborCache
from ..state import AtomsBatch
from .base import Potential
from .equivariant import PaiNN
from .repulsion import ZBLRepulsion
from .tensornet import TensorNet

FORMAT = "neuralmd.potential"
#: 2: optional "baseline" (a Δ-learning correction); 3: optional "repulsion". Older files still load
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
#: native networks: (species, pair vectors, receivers, senders) -> one scalar per atom
ARCHITECTURES = {"painn": PaiNN, "tensornet": TensorNet}
#: short-range repulsions added to the network's energies
REPULSIONS = {"zbl": ZBLRepulsion}


class NeuralPotential(Potential):
    """A neural network potential over a fixed element set.

    Args:
        elements: atomic numbers the model knows, in the order of its species index.
        e0: per-element reference energies in eV, same order as ``elements``.
        scale: energy scale in eV; shift: energy per atom in eV.
        architecture: key of :data:`ARCHITECTURES`; hyperparameters: its keyword arguments.
        repulsion: ``{"name": key of :data:`REPULSIONS`, **its keyword arguments}`` (None: the
            network alone), e.g. ``{"name": "zbl", "switch_A": [[...]]}``.
    """

    def __init__(self, elements: Sequence[int], e0: Sequence[float] | None = None,
                 scale: float = 1.0, shift: float = 0.0, architecture: str = "painn",
                 repulsion: dict[str, Any] | None = None, **hyperparameters: Any) -> None:
        super().__init__()
        self.elements = [int(z) for z in elements]
        self.architecture = architecture
        self.hyperparameters = dict(hyperparameters)
        self.network = ARCHITECTURES[architecture](num_species=len(self.elements), **hyperparameters)
        self.repulsion_spec = dict(repulsion) if repulsion else None
        self.repulsion = None
        if repulsion:
            options = {k: v for k, v in repulsion.items() if k != "name"}
            self.repulsion = REPULSIONS[repulsion["name"]](self.elements, **options)
        self.cutoff = max(float(self.network.cutoff), self.repulsion.cutoff if self.repulsion else 0.0)
        #: Verlet-list cache for periodic and large systems (skin in Å; 0 disables it).
        self.neighbors = NeighborCache(self.cutoff, skin=1.0)
        lookup = torch.full((119,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("species_of", lookup, persistent=False)
        e0 = torch.zeros(len(self.elements)) if e0 is None else torch.as_tensor(e0)
        self.register_buffer("e0", e0.to(torch.float64))
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.register_buffer("shift", torch.tensor(float(shift), dtype=torch.float64))
        #: the baseline this network corrects (Δ-learning), as a model file records it; None: none
        self.baseline: dict[str, Any] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def check_elements(self, numbers: torch.Tensor | Sequence[int], where: str = "input") -> None:
        """Raise InputError if ``numbers`` holds an element the model was not trained on."""
        unknown = sorted(set(int(z) for z in torch.as_tensor(numbers).unique().tolist()) - set(self.elements))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise InputError(f"{where}: element(s) {names} not known to the model (trained on {known})")

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        i, j, vectors = self.neighbors.pairs(batch)
        return self.pair_energies(self.species_of[batch.numbers], vectors, i, j, self.network)

    def pair_energies(self, species: torch.Tensor, vectors: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                      network: torch.nn.Module) -> torch.Tensor:
        """Per-atom energies (eV, float64) of atoms of ``species`` (N,) with pair vectors (E, 3)
        in Å from receivers i to senders j, evaluated with ``network`` (this model's, or a
        compiled copy of it)."""
        energy = self.e0[species] + self.shift + self.scale * network(species, vectors, i, j).to(torch.float64)
        if self.repulsion is not None:
            energy = energy + self.repulsion(species, vectors, i, j)
        return energy

    # --- model file -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Everything but the weights needed to rebuild this model."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "repulsion": self.repulsion_spec,
            "elements": self.elements,
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "normalisation": {"e0": self.e0.tolist(), "scale": float(self.scale), "shift": float(self.shift)},
            "dtype": str(self.dtype).removeprefix("torch."),
            "baseline": self.baseline,
        }

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the self-contained model file atomically."""
        payload = {**self.metadata(), "state_dict": self.state_dict(), "extra": extra or {}}
        atomic_save(payload, path)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> "NeuralPotential":
        norm = meta["normalisation"]
        model = cls(meta["elements"], norm["e0"], norm["scale"], norm["shift"], meta["architecture"],
                    meta.get("repulsion"), **meta["hyperparameters"])
        model.baseline = meta.get("baseline")
        return model.to(getattr(torch, meta.get("dtype", "float32")))


def load_potential(path: str | os.PathLike, dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu") -> Potential:
    """Load any neuralmd model file (optionally cast to ``dtype``): a :class:`NeuralPotential`,
    a :class:`~.delta.DeltaPotential` when the network is a correction to a baseline (use
    :func:`load_network` for the network alone), or a coarse-grained
    :class:`~neuralmd.models.coarse_grain.CGPotential`."""
    from . import coarse_grain

    payload = _read_payload(path, device, (FORMAT, coarse_grain.FORMAT))
    if payload["format"] == coarse_grain.FORMAT:
        _check_version(path, payload, (coarse_grain.FORMAT_VERSION,))
        model = coarse_grain.CGPotential.from_payload(payload)
        return (model.to(dtype) if dtype is not None else model).to(device).eval()
    model = _network(path, payload, dtype, device)
    if model.baseline:
        from .delta import DeltaPotential, make_baseline

        return DeltaPotential(make_baseline(model.baseline), model).eval()
    return model


def load_network(path: str | os.PathLike, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> NeuralPotential:
    """The :class:`NeuralPotential` stored in a model file (without any baseline)."""
    return _network(path, _read_payload(path, device, (FORMAT,)), dtype, device)


def _read_payload(path: str | os.PathLike, device: str | torch.device, formats: Sequence[str]) -> dict[str, Any]:
    """The dict stored in a model file whose ``format`` is one of ``formats``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign formats
        # torch's own message is advice about weights_only, which does not apply to a foreign file
        raise ModelFormatError(f"{path}: not a readable neuralmd model file ({type(exc).__name__} when reading it; "
                               f"model files are written by `neuralmd train`)") from None
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ModelFormatError(f"{path}: field 'format': not a neuralmd model file (expected one of {list(formats)})")
    return payload


def _check_version(path: str | os.PathLike, payload: dict[str, Any], readable: Sequence[int]) -> None:
    version = payload.get("format_version")
    if version not in readable:
        raise ModelFormatError(
            f"{path}: field 'format_version': found {version!r}, this neuralmd reads versions {tuple(readable)}"
        )


def _network(path: str | os.PathLike, payload: dict[str, Any], dtype: torch.dtype | None,
             device: str | torch.device) -> NeuralPotential:
    _check_version(path, payload, READABLE_VERSIONS)
    model = NeuralPotential.from_metadata(payload)
    model.load_state_dict(payload["state_dict"])
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()
