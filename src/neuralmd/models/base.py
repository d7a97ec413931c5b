"""Potential: the one interface the engine, the ASE calculator and training rely on.

A Potential maps an :class:`~neuralmd.state.AtomsBatch` to per-atom energies; this base class
turns them into per-system energies (accumulated in float64), forces as the exact negative
gradient of that energy, and stress by the strain derivative. Subclasses implement
:meth:`atomic_energies` only, so forces can never be non-conservative.

The contract every caller (the engines, the ASE calculator, the OpenMM force, active learning)
relies on, and nothing more: :meth:`forward`, :attr:`implemented_properties`, :attr:`cutoff`,
:attr:`dtype`, :attr:`device` and :meth:`check_elements`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..state import AtomsBatch


class Potential(nn.Module):
    """Base class of all potentials. Energies in eV, forces in eV/Å, stress in eV/Å³."""

    #: What :meth:`forward` computes (as ASE's ``Calculator.implemented_properties``): every
    #: potential gives energies, per-atom energies and forces; stress needs a periodic cell.
    implemented_properties: tuple[str, ...] = ("energy", "atom_energy", "forces", "stress")
    #: Cutoff radius in Å (0 for potentials that need no neighbour list).
    cutoff: float = 0.0
    #: Large batches of molecules are evaluated in chunks of whole systems of about this many
    #: atoms: on a CPU the per-edge tensors of one huge graph fall out of cache and cost more
    #: than the extra calls (measured in benchmarks/md_speed.py). None: never chunk. Batches on
    #: a GPU are never chunked: there one big graph is what is fast.
    max_atoms_per_chunk: int | None = 256

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        """Per-atom energies (N,) in eV, float64, differentiable w.r.t. batch.positions/cell."""
        raise NotImplementedError

    def check_elements(self, numbers: torch.Tensor | Sequence[int], where: str = "input") -> None:
        """InputError naming ``where`` if ``numbers`` holds an element the potential cannot
        evaluate. The base accepts every element (analytic potentials); trained models override
        it with the elements they were trained on."""

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the potential computes in."""
        for p in self.parameters():
            return p.dtype
        return torch.float64

    @property
    def device(self) -> torch.device:
        """Device of the potential's weights (and so of the batches it takes)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def forward(self, batch: AtomsBatch, forces: bool = True, stress: bool = False,
                create_graph: bool = False) -> dict[str, torch.Tensor]:
        """Evaluate the batch.

        Returns ``energy`` (B,) float64 eV and ``atom_energy`` (N,) eV; ``forces`` (N, 3) eV/Å
        when ``forces``; ``stress`` (B, 3, 3) eV/Å³ (ASE sign: (1/V) dE/dε) when ``stress``.
        ``create_graph`` keeps the graph of the forces so a loss on them can be trained.
        """
        chunk = self.max_atoms_per_chunk
        if (chunk and batch.positions.device.type == "cpu" and not create_graph and not batch.periodic
                and batch.n_atoms > 2 * chunk and batch.n_systems > 1):
            return self._chunked(batch, forces, stress, chunk)
        dtype = self.dtype
        pos = batch.positions.detach().to(dtype).requires_grad_(forces or stress)
        cell = batch.cell.detach().to(dtype)
        inputs = [pos]
        if stress:
            strain = torch.zeros_like(cell).requires_grad_(True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym[batch.system])
            cell = cell + torch.bmm(cell, sym)
            inputs.append(strain)
        atom_energy = self.atomic_energies(batch.replace(positions=pos, cell=cell))
        energy = torch.zeros(batch.n_systems, dtype=torch.float64, device=pos.device)
        energy = energy.index_add(0, batch.system, atom_energy.to(torch.float64))
        out = {"energy": energy, "atom_energy": atom_energy}
        if forces or stress:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
            if forces:
                out["forces"] = -grads[0]
            if stress:
                volume = torch.linalg.det(batch.cell.to(dtype)).abs()
                out["stress"] = grads[1] / volume.view(-1, 1, 1)
        return out

    def _chunked(self, batch: AtomsBatch, forces: bool, stress: bool, chunk: int) -> dict[str, torch.Tensor]:
        """Evaluate groups of whole systems of about ``chunk`` atoms and concatenate."""
        counts = batch.counts.tolist()
        outs, start, atom_start = [], 0, 0
        while start < len(counts):
            stop, atom_stop = start, atom_start
            while stop < len(counts) and (stop == start or atom_stop - atom_start + counts[stop] <= chunk):
                atom_stop += counts[stop]
                stop += 1
            outs.append(self.forward(batch.slice_systems(start, stop, atom_start, atom_stop), forces, stress))
            start, atom_start = stop, atom_stop
        return {key: torch.cat([o[key] for o in outs]) for key in outs[0]}
