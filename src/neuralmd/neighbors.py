"""Neighbour lists for an AtomsBatch.

One function, :func:`neighbor_list`, chooses the method: an all-pairs list built in torch for
molecules (fastest below ~100 atoms, and batched over all systems at once), and vesin's cell
list for periodic or large systems. Pairs are directed (both i→j and j→i appear) and the
integer cell shifts are returned so that the caller computes differentiable pair vectors
``r_ij = x_j - x_i + shift_ij @ cell`` in Å.
"""

from __future__ import annotations

import numpy as np
import torch
import vesin

from .state import AtomsBatch

#: Systems with more atoms than this use vesin even when not periodic.
DENSE_MAX_ATOMS = 200


def dense_pairs(positions: torch.Tensor, system: torch.Tensor, counts: torch.Tensor, cutoff: float):
    """All pairs i != j within each system closer than ``cutoff`` Å (non-periodic)."""
    n = positions.shape[0]
    starts = torch.cumsum(counts, 0) - counts
    per_atom = counts[system]  # partners of each atom, self included
    i = torch.repeat_interleave(torch.arange(n, device=positions.device), per_atom)
    first = torch.cumsum(per_atom, 0) - per_atom
    local = torch.arange(i.shape[0], device=positions.device) - torch.repeat_interleave(first, per_atom)
    j = starts[system[i]] + local
    keep = i != j
    i, j = i[keep], j[keep]
    d2 = (positions[j] - positions[i]).pow(2).sum(-1)
    keep = d2 < cutoff * cutoff
    return i[keep], j[keep]


def _vesin_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """Full neighbour list of one system from vesin: indices and integer shifts."""
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    periodic = bool(pbc.any())
    box = cell if periodic else np.zeros((3, 3))
    i, j, s = nl.compute(points=positions, box=box, periodic=periodic, quantities="ijS")
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64)


def uses_dense_list(batch: AtomsBatch) -> bool:
    """True when :func:`neighbor_list` takes the all-pairs path (molecules, none too large)."""
    return not batch.periodic and int(batch.counts.max()) <= DENSE_MAX_ATOMS


def neighbor_list(batch: AtomsBatch, cutoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Directed pairs (i, j) with |r_ij| < ``cutoff`` Å, and their cell shifts.

    Returns ``(i, j, shifts)`` with shifts of shape (E, 3) in units of lattice vectors, in the
    batch's floating dtype. No gradient flows through this function; compute the pair vectors
    from the returned indices to keep forces exact.
    """
    pos = batch.positions.detach()
    counts = batch.counts
    dtype, device = pos.dtype, pos.device
    if uses_dense_list(batch):
        i, j = dense_pairs(pos, batch.system, counts, cutoff)
        return i, j, torch.zeros(i.shape[0], 3, dtype=dtype, device=device)

    starts = (torch.cumsum(counts, 0) - counts).tolist()
    pos_np = pos.cpu().double().numpy()
    cell_np = batch.cell.detach().cpu().double().numpy()
    pbc_np = batch.pbc.cpu().numpy()
    ii, jj, ss = [], [], []
    for b, (start, n) in enumerate(zip(starts, counts.tolist())):
        if pbc_np[b].any() and not pbc_np[b].all():
            raise NotImplementedError("mixed periodic/non-periodic directions are not supported yet")
        i, j, s = _vesin_pairs(pos_np[start : start + n], cell_np[b], pbc_np[b], cutoff)
        ii.append(i + start)
        jj.append(j + start)
        ss.append(s)
    cat = lambda xs: torch.as_tensor(np.concatenate(xs), device=device)  # noqa: E731
    return cat(ii), cat(jj), cat(ss).to(dtype)


def pair_vectors(batch: AtomsBatch, i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Pair vectors r_ij = x_j - x_i + shift_ij @ cell (E, 3) in Å, differentiable w.r.t. the
    batch's positions and cell."""
    vectors = batch.positions[j] - batch.positions[i]
    if batch.periodic:
        vectors = vectors + torch.einsum("ek,ekl->el", shifts.to(vectors.dtype), batch.cell[batch.system[i]])
    return vectors


def canonical_order(i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The pairs sorted by receiver, sender and cell shift: an order that does not depend on the
    positions the list was built from, so that sums over pairs (and so a trajectory) are the same
    bit for bit whenever the list was last rebuilt (a resumed run rebuilds at its restart)."""
    n = int(torch.maximum(i.max(), j.max())) + 1 if i.numel() else 1
    code = (shifts.round().to(torch.int64) + 50).clamp(0, 100)
    key = ((i * n + j) * 101 + code[:, 0]) * 101 ** 2 + code[:, 1] * 101 + code[:, 2]
    order = torch.argsort(key)
    return i[order], j[order], shifts[order]


class NeighborCache:
    """A neighbour list with a skin (Verlet list): built for ``cutoff + skin`` Å and reused while
    no pair outside it can have come inside ``cutoff``; :meth:`pairs` then drops the pairs beyond
    ``cutoff``, so a network sees exactly the pairs a fresh list would give.

    The list survives a changing cell (NPT): positions are compared with the reference positions
    carried along by the cell's affine deformation A = cell_ref⁻¹ cell. A pair at least
    ``cutoff + skin`` apart at the build is then at least σ_min(A)(cutoff + skin) − 2 max|d|
    apart, with d the atoms' non-affine displacements and σ_min(A) the smallest singular value of
    A; the list is rebuilt when that bound drops below ``cutoff``. For a fixed cell this is the
    usual "some atom moved more than skin/2". The integer cell shifts of the stored pairs stay
    right under any deformation. The stored pairs are in :func:`canonical_order`. Molecules on
    the dense path are cheaper to rebuild than to check, so they bypass the cache.
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        self.cutoff = cutoff
        self.skin = skin
        self.rebuilds = 0
        self._pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._positions: torch.Tensor | None = None
        self._cell: torch.Tensor | None = None
        self._numbers: torch.Tensor | None = None
        self._pbc: torch.Tensor | None = None

    def _valid(self, batch: AtomsBatch) -> bool:
        if self._pairs is None or self._numbers is None or self._numbers.shape != batch.numbers.shape:
            return False
        if not (torch.equal(self._numbers, batch.numbers) and torch.equal(self._pbc, batch.pbc)):
            return False
        cell = batch.cell.detach()
        positions = batch.positions.detach()
        if torch.equal(self._cell, cell):
            moved = (positions - self._positions).pow(2).sum(-1).max().sqrt()
            return bool(2 * moved <= self.skin)
        periodic = batch.pbc.any(-1)
        eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell)
        deform = eye.clone()
        if periodic.any():
            deform[periodic] = torch.linalg.solve(self._cell[periodic], cell[periodic])
        carried = torch.einsum("ni,nij->nj", self._positions, deform[batch.system])
        moved = (positions - carried).pow(2).sum(-1).sqrt()
        worst = torch.zeros(batch.n_systems, dtype=moved.dtype, device=moved.device)
        worst = worst.scatter_reduce(0, batch.system, moved, "amax", include_self=True)
        stretch = torch.linalg.svdvals(deform)[:, -1]
        return bool((stretch * (self.cutoff + self.skin) - 2 * worst >= self.cutoff).all())

    def __call__(self, batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs (i, j, shifts) as :func:`neighbor_list`, possibly reaching ``cutoff + skin``."""
        if self.skin <= 0 or uses_dense_list(batch):
            return neighbor_list(batch, self.cutoff)
        if not self._valid(batch):
            self._pairs = canonical_order(*neighbor_list(batch, self.cutoff + self.skin))
            self._positions = batch.positions.detach().clone()
            self._cell = batch.cell.detach().clone()
            self._numbers = batch.numbers.clone()
            self._pbc = batch.pbc.clone()
            self.rebuilds += 1
        return self._pairs

    def pairs(self, batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Receivers i, senders j and pair vectors (E, 3) in Å of the pairs closer than
        ``cutoff``, the vectors differentiable w.r.t. the batch's positions and cell. Pairs in
        the skin are dropped here: they would cost as much as real ones in a network."""
        i, j, shifts = self(batch)
        vectors = pair_vectors(batch, i, j, shifts)
        if self.skin > 0 and not uses_dense_list(batch):
            keep = vectors.detach().pow(2).sum(-1) < self.cutoff**2
            i, j, vectors = i[keep], j[keep], vectors[keep]
        return i, j, vectors
