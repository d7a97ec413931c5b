"""A neural potential specialised to MD of fixed molecules and compiled once.

For a batch of molecules every intra-molecular pair becomes an edge, not only those inside the
cutoff. That is exact, since the radial envelope is zero beyond the cutoff, and it makes every
tensor shape constant for the whole run, so ``torch.compile`` (inductor: fused C++ kernels on
a CPU, Triton kernels replayed as CUDA graphs on a GPU) compiles the network once instead of
re-tracing as pairs cross the cutoff. On small molecules the network's forward and backward are
dominated by per-operation overhead (launches), which fusion removes (measured in
``benchmarks/md_speed.py``). Compilation takes tens of seconds and needs a C++ compiler on a
CPU; molecules of up to :data:`STATIC_MAX_ATOMS` atoms (all-pairs edges grow as n²).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..neighbors import dense_pairs
from ..state import AtomsBatch
from .base import Potential
from .neural import NeuralPotential

#: largest molecule (atoms) for which all pairs are taken as edges
STATIC_MAX_ATOMS = 64


def compiled(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` compiled for fixed shapes on ``device``.

    On a CPU the fused C++ kernels run on one thread: on graphs this small, OpenMP
    synchronisation costs more than the second core saves (32 copies of a 27-atom molecule: 67
    ms/step on 1 thread, 97 on 2). On a GPU the forward and backward kernels are replayed as CUDA
    graphs ("reduce-overhead"): one launch instead of hundreds, which is what a small molecule's
    step is otherwise made of."""
    if device.type == "cuda":
        return torch.compile(network, dynamic=False, mode="reduce-overhead")
    return torch.compile(network, dynamic=False, options={"cpp.threads": 1})


class StaticGraphPotential(Potential):
    """``model`` evaluated on all intra-molecular pairs of ``batch``'s molecules (same
    energies and forces as ``model``), its network compiled with ``torch.compile``.

    Args:
        model: a :class:`~neuralmd.models.neural.NeuralPotential`.
        batch: the molecules this potential will see (same atoms and order at every call;
            positions may change).
        compile: compile the network (False: the same static graph, eager).
    """

    max_atoms_per_chunk = None  # one fixed-shape call for the whole batch

    def __init__(self, model: Potential, batch: AtomsBatch, compile: bool = True) -> None:
        super().__init__()
        if not isinstance(model, NeuralPotential):
            raise InputError(f"compile: supported for neural potentials, not {type(model).__name__} "
                             f"(a Δ-learning, committee or coarse-grained model)")
        if batch.periodic:
            raise InputError("compile: molecules only (in a periodic box the pairs within the cutoff change)")
        largest = int(batch.counts.max())
        if largest > STATIC_MAX_ATOMS:
            raise InputError(f"compile: molecules of up to {STATIC_MAX_ATOMS} atoms (all pairs are edges); "
                             f"this batch has one of {largest}")
        model.check_elements(batch.numbers, where="structure")
        self.model = model
        self.cutoff = model.cutoff
        i, j = dense_pairs(batch.positions.detach(), batch.system, batch.counts, float("inf"))
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        self.register_buffer("numbers", batch.numbers.clone(), persistent=False)
        self.register_buffer("species", model.species_of[batch.numbers], persistent=False)
        self.network = compiled(model.network, batch.positions.device) if compile else model.network

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def check_elements(self, numbers, where: str = "input") -> None:
        self.model.check_elements(numbers, where)

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        if batch.n_atoms != self.numbers.shape[0] or not torch.equal(batch.numbers, self.numbers):
            raise InputError("compiled potential: called on other atoms than the batch it was built for")
        vectors = batch.positions[self.j] - batch.positions[self.i]
        return self.model.pair_energies(self.species, vectors, self.i, self.j, self.network)
