"""The native E(3)-equivariant message-passing network (PaiNN, Schütt et al., ICML 2021).

Each atom carries scalar features s (N, F) and vector features v (N, 3, F). Messages along
pairs within the cutoff mix neighbours' scalars with a radial filter and rotate neighbours'
vectors and the unit pair direction into the receiver, so that s is invariant and v rotates
with the molecule. The network maps (species, pair vectors) to one scalar per atom; turning
that into an energy with element references and forces by autograd is the job of
:class:`neuralmd.models.neural.NeuralPotential`.
"""

from __future__ import annotations

import torch
from torch import nn
from .blocks import Chunks, in_blocks, plan
from .radial import BesselBasis, PolynomialCutoff


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class PaiNNMessage(nn.Module):
    """Equivariant message: neighbours' scalars, vectors and directions summed per receiver."""

    def __init__(self, features: int, num_basis: int) -> None:
        super().__init__()
        self.features = features
        self.phi = _mlp(features, features, 3 * features)
        self.filter = nn.Linear(num_basis, 3 * features)

    def forward(self, s, v, i, j, rbf, envelope, unit, chunks: Chunks | None = None):
        """New (s, v); ``v`` None stands for all-zero vector features (the first layer, whose
        messages then skip them). ``chunks``: receiver blocks (:mod:`neuralmd.models.blocks`)."""
        phi_s = self.phi(s)
        ds, dv = in_blocks(self._block, (phi_s, v), (i, j, rbf, envelope, unit), s.shape[0], chunks)
        return s + ds, dv if v is None else v + dv

    def _block(self, phi_s, v, i, j, rbf, envelope, unit, lo: int, hi: int):
        """Messages into receivers lo..hi-1 along edges (i, j), all of whose i lie in that range."""
        x = phi_s[j] * self.filter(rbf) * envelope.unsqueeze(-1)
        a_vv, a_s, a_vs = torch.split(x, self.features, dim=-1)
        dv_pair = a_vs.unsqueeze(1) * unit.unsqueeze(-1)
        if v is not None:
            dv_pair = dv_pair + a_vv.unsqueeze(1) * v[j]
        local = i - lo
        ds = phi_s.new_zeros(hi - lo, self.features).index_add_(0, local, a_s)
        dv = phi_s.new_zeros(hi - lo, 3, self.features).index_add_(0, local, dv_pair)
        return ds, dv


class PaiNNUpdate(nn.Module):
    """Per-atom update coupling scalars and vector norms / inner products."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.U = nn.Linear(features, features, bias=False)
        self.V = nn.Linear(features, features, bias=False)
        self.mlp = _mlp(2 * features, features, 3 * features)

    def forward(self, s, v):
        uv, vv = self.U(v), self.V(v)
        norm = torch.sqrt(vv.pow(2).sum(1) + 1e-8)
        a_vv, a_sv, a_ss = torch.split(self.mlp(torch.cat([s, norm], -1)), self.features, dim=-1)
        return s + a_sv * (uv * vv).sum(1) + a_ss, v + a_vv.unsqueeze(1) * uv


class PaiNN(nn.Module):
    """PaiNN representation plus a per-atom scalar readout.

    Args:
        num_species: number of element types (indices 0..num_species-1).
        features: width F of scalar and vector features.
        interactions: number of message+update blocks.
        cutoff: radial cutoff in Å.
        num_basis: number of Bessel radial functions.

    Graphs of more than :attr:`chunk_above_edges` edges are evaluated in blocks of receivers whose
    per-edge tensors stay in the CPU's cache and are recomputed, not stored, for the backward
    pass: time and memory then grow linearly with the number of atoms instead of falling out of
    cache (measured in ``benchmarks/water.py``). Energies and forces are the same.
    """

    #: edges per block of receivers, used for graphs of more than ``chunk_above_edges`` edges
    #: (None: never). On a GPU one big graph is what is fast, so blocks are used on CPUs only.
    #: Measured on a 2-core CPU (water, 64 features): 8,192-edge blocks 10-25 % faster than
    #: 32,768; a graph of 10,000 edges is 20 % faster whole (it fits in cache as it is).
    edges_per_chunk: int | None = 8192
    chunk_above_edges: int = 32768

    def __init__(self, num_species: int, features: int = 64, interactions: int = 3,
                 cutoff: float = 5.0, num_basis: int = 16) -> None:
        super().__init__()
        self.features = features
        self.cutoff = cutoff
        self.embedding = nn.Embedding(num_species, features)
        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.messages = nn.ModuleList(PaiNNMessage(features, num_basis) for _ in range(interactions))
        self.updates = nn.ModuleList(PaiNNUpdate(features) for _ in range(interactions))
        self.readout = _mlp(features, features // 2, 1)

    def forward(self, species: torch.Tensor, vectors: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """species (N,) indices, pair vectors r_ij = x_j - x_i (E, 3) in Å, receivers i and
        senders j (E,) -> one scalar per atom (N,), dimensionless (scaled by the caller)."""
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf, env = self.basis(r), self.envelope(r)
        s = self.embedding(species)
        v = None  # zero vector features until the first message
        (i, j, rbf, env, unit), chunks = plan((i, j, rbf, env, unit), s.shape[0], self.edges_per_chunk,
                                              self.chunk_above_edges)
        for message, update in zip(self.messages, self.updates):
            s, v = message(s, v, i, j, rbf, env, unit, chunks)
            s, v = update(s, v)
        return self.readout(s).squeeze(-1)
