"""The contracts an MD engine relies on, declared as ``typing.Protocol``s: what an extra energy
term, an adaptive term (a bias that learns as the run goes) and a reporter must provide. The
engines check them structurally (``isinstance`` on a ``runtime_checkable`` protocol), so
anything with these members plugs in, a neuralmd class or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ..state import AtomsBatch

if TYPE_CHECKING:
    from .integrators import MDState
    from .run import MDRun


@runtime_checkable
class EnergyTerm(Protocol):
    """An extra energy term of the native engine (a bias, a restraint): a batch of replicas ->
    energy per replica (B,) in eV, differentiable with respect to the positions (its forces come
    from autograd)."""

    def __call__(self, batch: AtomsBatch) -> torch.Tensor: ...

    def check_atoms(self, n_atoms: int) -> None:
        """InputError if the term refers to atoms beyond ``n_atoms``."""


@runtime_checkable
class AdaptiveTerm(Protocol):
    """A term that learns as the run goes (OPES, metadynamics): the engine calls
    :meth:`update` with the state every ``pace`` steps (after the frame of that step was
    reported, so a frame records the bias it felt) and keeps :meth:`get_state` in every
    checkpoint, so a resumed run continues with the very same bias."""

    pace: int

    def update(self, state: MDState) -> None: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Reporter(Protocol):
    """Writes what a run produces (OpenMM's reporter shape): the engine calls :meth:`report`
    every ``interval`` steps; a resumed run first calls :meth:`truncate` with the checkpoint's
    step (drop what was written after it); :meth:`close` at the end or when the run stops."""

    interval: int

    def report(self, run: MDRun, state: MDState) -> None: ...

    def truncate(self, step: int) -> None: ...

    def close(self) -> None: ...
