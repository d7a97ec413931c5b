"""TensorNet: O(3)-equivariant message passing with rank-2 Cartesian tensors (Simeon & De
Fabritiis, NeurIPS 2023).

Each atom carries, per feature channel, a 3×3 tensor X = I + A + S: a scalar times the
identity (L = 0), an antisymmetric part (L = 1) and a symmetric traceless part (L = 2). Messages
are neighbours' tensors scaled by learned radial filters; the update multiplies the atom's
tensor by its message (Y·M + M·Y) and squares the result (X + dX + dX·dX), so each layer
raises the body order, as MACE's symmetric contractions do, with 3×3 matrix products instead
of Clebsch-Gordan tensor products. Tensors are normalised by 1 + ||X||² before every
product, which keeps energies bounded and smooth far from the training data.

Tensors are stored by their irreducible parts, channels last, (N, 10, F): the scalar t of
t·1, the axial vector a of A = [a]×, and the six components (xx, yy, zz, xy, xz, yz) of S;
channel mixing is then an ``nn.Linear`` per part, and per-edge work (gathering neighbours'
tensors, scattering messages) moves 10 numbers per channel instead of 9 per part.
Layout follows neuralmd's PaiNN: edges (i, j) with i the receiver, pair vectors r_ij = x_j - x_i
in Å, one dimensionless scalar per atom out (scaled to eV by
:class:`neuralmd.models.neural.NeuralPotential`).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import Chunks, in_blocks, plan
from .radial import BesselBasis, PolynomialCutoff

#: part (0: scalar, 1: antisymmetric, 2: symmetric traceless) of each of the 10 components
_PARTS = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
#: weights of the squared components in the squared Frobenius norm of the full tensor
_NORM = torch.tensor([3.0, 2, 2, 2, 1, 1, 1, 2, 2, 2])


def _to_full_matrix() -> torch.Tensor:
    """(9, 10): the full tensor X[3r + c] from the 10 components."""
    m = torch.zeros(9, 10, dtype=torch.float64)
    m[[0, 4, 8], 0] = 1.0  # t on the diagonal
    for (r, c), (k, sign) in {(0, 1): (3, -1), (0, 2): (2, 1), (1, 0): (3, 1), (1, 2): (1, -1), (2, 0): (2, -1),
                              (2, 1): (1, 1)}.items():
        m[3 * r + c, k] = sign  # [a]x
    for k, (r, c) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        m[3 * r + c, 4 + k] = m[3 * c + r, 4 + k] = 1.0
    return m


def _from_full_matrix() -> torch.Tensor:
    """(10, 9): the components of a full tensor X[3r + c]: t = tr X / 3, a from (X - Xᵀ) / 2,
    S = (X + Xᵀ) / 2 - t·1."""
    m = torch.zeros(10, 9, dtype=torch.float64)
    m[0, [0, 4, 8]] = 1.0 / 3.0
    for k, (r, c) in enumerate([(2, 1), (0, 2), (1, 0)]):  # a_x = (X_zy - X_yz) / 2, ...
        m[1 + k, 3 * r + c], m[1 + k, 3 * c + r] = 0.5, -0.5
    for k in range(3):
        m[4 + k, [0, 4, 8]] = -1.0 / 3.0
        m[4 + k, 4 * k] += 1.0
    for k, (r, c) in enumerate([(0, 1), (0, 2), (1, 2)]):
        m[7 + k, 3 * r + c] = m[7 + k, 3 * c + r] = 0.5
    return m


def _product_matrix(symmetric: bool) -> torch.Tensor:
    """(10, 100): the components of the matrix product X·Y (or of X·Y + Y·X) from the 100
    products x_a y_b of the two tensors' components (index 10 a + b)."""
    to_full, from_full = _to_full_matrix(), _from_full_matrix()
    basis = to_full.T.reshape(10, 3, 3)  # the tensor of each unit component
    products = basis.unsqueeze(1) @ basis.unsqueeze(0)  # (10, 10, 3, 3): E_a E_b
    if symmetric:
        products = products + products.transpose(0, 1)
    return from_full @ products.reshape(100, 9).T


#: the components (xx, yy, zz, xy, xz, yz) of a flattened 3×3 tensor
_SYMMETRIC = torch.tensor([0, 4, 8, 1, 2, 5])
_CONSTANTS = {"norm": _NORM.double(), "product": _product_matrix(False), "symmetric_product": _product_matrix(True),
              "part_norms": torch.nn.functional.one_hot(_PARTS, 3).T.double() * _NORM.double(),
              "third": torch.tensor([1 / 3, 1 / 3, 1 / 3, 0, 0, 0], dtype=torch.float64)}
_CACHE: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}


def _constant(name: str, like: torch.Tensor) -> torch.Tensor:
    """The constant ``name`` in ``like``'s dtype and device (converted once, then cached)."""
    key = (name, like.dtype, like.device)
    if key not in _CACHE:
        _CACHE[key] = _CONSTANTS[name].to(like)
    return _CACHE[key]


def _square_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of each part: (N, 10, F) -> (N, 3, F)."""
    return torch.matmul(_constant("part_norms", x), x.pow(2))


def _square_norm(x: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of the whole tensor per channel: (N, 10, F) -> (N, 1, F)."""
    return (x.pow(2) * _constant("norm", x).view(1, 10, 1)).sum(1, keepdim=True)


def _product(x: torch.Tensor, y: torch.Tensor, kind: str = "product") -> torch.Tensor:
    """Per-atom, per-channel matrix product X·Y (``kind`` "product") or X·Y + Y·X
    ("symmetric_product") of (N, 10, F) tensors, as components."""
    n, _, f = x.shape
    return torch.matmul(_constant(kind, x), (x.unsqueeze(2) * y.unsqueeze(1)).reshape(n, 100, f))


def _per_part(w: torch.Tensor) -> torch.Tensor:
    """(M, 3, F) one value per part -> (M, 10, F) the same value on each of its components."""
    return w.index_select(1, _PARTS.to(w.device))


class TensorMix(nn.Module):
    """Channel mixing of each part by its own bias-free linear map (a bias would break
    equivariance), each part optionally scaled per channel by ``factors`` (N, 3, F)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(nn.Linear(features, features, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor, factors: torch.Tensor | None = None) -> torch.Tensor:
        # one batched product over the 10 components, each with its part's weights
        weights = torch.stack([w.weight for w in self.parts]).index_select(0, _PARTS.to(x.device))
        out = torch.bmm(x.transpose(0, 1), weights.transpose(1, 2)).transpose(0, 1)
        return out if factors is None else out * _per_part(factors)


class TensorEmbedding(nn.Module):
    """First tensors from the pair directions: X_i = Σ_j c_ij (f_I 1 + f_A [r̂]× + f_S (r̂r̂ᵀ - 1/3)),
    c_ij a learned function of both species times the cutoff envelope, f radial filters; then
    each part rescaled per channel by an MLP of the tensor norms."""

    def __init__(self, num_species: int, features: int, num_basis: int) -> None:
        super().__init__()
        self.features = features
        self.embedding = nn.Embedding(num_species, features)
        self.pair_receiver = nn.Linear(features, features)
        self.pair_sender = nn.Linear(features, features, bias=False)
        self.filter = nn.Linear(num_basis, 3 * features)
        self.norm = nn.LayerNorm(features)
        self.scalars = nn.Sequential(nn.Linear(features, 2 * features), nn.SiLU(),
                                     nn.Linear(2 * features, 3 * features), nn.SiLU())
        self.mix = TensorMix(features)

    def forward(self, species, i, j, rbf, envelope, unit, chunks: Chunks | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> atom tensors (N, 10, F) and the species embedding (N, F); ``chunks``: receiver
        blocks (:mod:`neuralmd.models.blocks`)."""
        z = self.embedding(species)
        n, f = z.shape
        (x,) = in_blocks(self._block, (self.pair_receiver(z), self.pair_sender(z)), (i, j, rbf, envelope, unit), n,
                         chunks)
        factors = self.scalars(self.norm(_square_norm(x).squeeze(1))).view(n, 3, f)
        return self.mix(x, factors), z

    def _block(self, z_receiver, z_sender, i, j, rbf, envelope, unit, lo: int, hi: int) -> tuple[torch.Tensor]:
        """First tensors of receivers lo..hi-1 from edges (i, j), all of whose i lie in that range."""
        pair = (z_receiver.index_select(0, i) + z_sender.index_select(0, j)) * envelope.unsqueeze(-1)
        w = self.filter(rbf).view(-1, 3, self.features) * pair.unsqueeze(1)
        outer = (unit.unsqueeze(2) * unit.unsqueeze(1)).reshape(-1, 9)[:, _SYMMETRIC.to(unit.device)]
        basis = torch.cat([torch.ones_like(unit[:, :1]), unit, outer - _constant("third", unit)], 1)
        return (z_receiver.new_zeros(hi - lo, 10, self.features).index_add_(0, i - lo, basis.unsqueeze(-1) * _per_part(w)),)


class TensorInteraction(nn.Module):
    """One interaction: messages of neighbours' (mixed) tensors weighted per part by radial
    filters, the O(3)-equivariant products Y·M + M·Y, and the update X + dX + dX·dX."""

    def __init__(self, features: int, num_basis: int) -> None:
        super().__init__()
        self.features = features
        self.radial = nn.Sequential(nn.Linear(num_basis, features), nn.SiLU(), nn.Linear(features, 2 * features),
                                    nn.SiLU(), nn.Linear(2 * features, 3 * features), nn.SiLU())
        self.mix_in = TensorMix(features)
        self.mix_out = TensorMix(features)

    def forward(self, x, i, j, rbf, envelope, chunks: Chunks | None = None) -> torch.Tensor:
        x = x / (1.0 + _square_norm(x))
        y = self.mix_in(x)
        (m,) = in_blocks(self._messages, (y,), (i, j, rbf, envelope), y.shape[0], chunks)
        b = _product(y, m, "symmetric_product")
        dx = self.mix_out(b / (1.0 + _square_norm(b)))
        return x + dx + _product(dx, dx)

    def _messages(self, y, i, j, rbf, envelope, lo: int, hi: int) -> tuple[torch.Tensor]:
        """Messages into receivers lo..hi-1 along edges (i, j), all of whose i lie in that range."""
        w = (self.radial(rbf) * envelope.unsqueeze(-1)).view(-1, 3, self.features)
        return (y.new_zeros(hi - lo, 10, self.features).index_add_(0, i - lo, y.index_select(0, j) * _per_part(w)),)


class TensorNet(nn.Module):
    """TensorNet representation plus a per-atom scalar readout.

    Args:
        num_species: number of element types (indices 0..num_species-1).
        features: channels F of the per-atom 3×3 tensors.
        interactions: number of interaction layers.
        cutoff: radial cutoff in Å.
        num_basis: number of Bessel radial functions.

    The readout sees each part's squared norm per channel (invariant under rotations and
    reflections) and the atom's species embedding. Graphs of more than
    :attr:`chunk_above_edges` edges are evaluated in receiver blocks
    (:mod:`neuralmd.models.blocks`), as PaiNN's.
    """

    #: edges per block of receivers for graphs of more than ``chunk_above_edges`` edges (None:
    #: never); PaiNN's measured setting
    edges_per_chunk: int | None = 8192
    chunk_above_edges: int = 32768

    def __init__(self, num_species: int, features: int = 64, interactions: int = 2,
                 cutoff: float = 5.0, num_basis: int = 16) -> None:
        super().__init__()
        self.features = features
        self.cutoff = cutoff
        self.basis = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff)
        self.embed = TensorEmbedding(num_species, features, num_basis)
        self.layers = nn.ModuleList(TensorInteraction(features, num_basis) for _ in range(interactions))
        self.out_norm = nn.LayerNorm(3 * features)
        self.readout = nn.Sequential(nn.Linear(4 * features, features), nn.SiLU(), nn.Linear(features, 1))

    def forward(self, species: torch.Tensor, vectors: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """species (N,) indices, pair vectors r_ij = x_j - x_i (E, 3) in Å, receivers i and
        senders j (E,) -> one scalar per atom (N,), dimensionless (scaled by the caller)."""
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf, env = self.basis(r), self.envelope(r)
        (i, j, rbf, env, unit), chunks = plan((i, j, rbf, env, unit), species.shape[0], self.edges_per_chunk,
                                              self.chunk_above_edges)
        x, z = self.embed(species, i, j, rbf, env, unit, chunks)
        for layer in self.layers:
            x = layer(x, i, j, rbf, env, chunks)
        norms = self.out_norm(_square_norms(x).flatten(1))
        return self.readout(torch.cat([norms, z], -1)).squeeze(-1)
