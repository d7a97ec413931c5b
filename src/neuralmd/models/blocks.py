"""Receiver blocks: a large graph's per-edge work done in blocks of whole receivers whose
per-edge tensors are recomputed in the backward pass instead of stored, so they stay in the
CPU's cache and memory grows with the atoms, not with the edges times the layers (measured in
``benchmarks/water.py`` and ``benchmarks/network_cost.py``). Energies, forces, stress and
training gradients are those of the whole graph (tests/models/test_equivariant.py)."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

Chunks = list[tuple[int, int, int, int]]


def receiver_chunks(i: torch.Tensor, n_atoms: int, edges_per_chunk: int) -> Chunks:
    """Blocks of whole receivers of about ``edges_per_chunk`` edges each, for edges sorted by
    receiver ``i``: (first receiver, end, first edge, end)."""
    ptr = torch.zeros(n_atoms + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(i.cpu(), minlength=n_atoms).cumsum(0)
    ends = torch.searchsorted(ptr, torch.arange(edges_per_chunk, int(ptr[-1]), edges_per_chunk), right=True) - 1
    cuts = sorted(set([0, *ends.tolist(), n_atoms]))
    return [(lo, hi, int(ptr[lo]), int(ptr[hi])) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]


def plan(edges: tuple[torch.Tensor, ...], n_atoms: int, edges_per_chunk: int | None, chunk_above_edges: int
         ) -> tuple[tuple[torch.Tensor, ...], Chunks | None]:
    """The edge tensors (receivers ``edges[0]`` first) sorted by receiver and their blocks, for a
    graph on a CPU of more than ``chunk_above_edges`` edges; else unchanged and None (one block:
    on a GPU one big graph is what is fast)."""
    i = edges[0]
    if not edges_per_chunk or i.device.type != "cpu" or i.shape[0] <= max(chunk_above_edges, edges_per_chunk):
        return edges, None
    if bool((i[1:] < i[:-1]).any()):
        order = torch.argsort(i, stable=True)
        edges = tuple(t[order] for t in edges)
    return edges, receiver_chunks(edges[0], n_atoms, edges_per_chunk)


def in_blocks(block: Callable[..., tuple[torch.Tensor, ...]], shared: tuple, edges: tuple[torch.Tensor, ...],
              n_atoms: int, chunks: Chunks | None) -> tuple[torch.Tensor, ...]:
    """``block(*shared, *edges, lo, hi)`` -> per-receiver tensors of receivers lo..hi-1, over the
    whole graph (``chunks`` None) or block by block, checkpointed, and concatenated."""
    if chunks is None:
        return block(*shared, *edges, 0, n_atoms)
    sizes = [e1 - e0 for _, _, e0, e1 in chunks]  # one split: its backward is one cat, not a zero tensor per slice
    split = zip(*(t.split(sizes) for t in edges))
    parts = [checkpoint(block, *shared, *edge, lo, hi, use_reentrant=False) for (lo, hi, _, _), edge in zip(chunks, split)]
    return tuple(torch.cat(p) for p in zip(*parts))
