"""A learned binding CV: Deep-LDA (Bonati, Rizzi & Parrinello 2020) on host–guest descriptors,
trained from short unbiased runs in the bound and the unbound state (as Rizzi et al., Nat.
Commun. 2021, for host–guest binding), and evaluated inside OpenMM without Python.

Descriptors (:class:`BindingDescriptors`): the guest's axial position ``z`` and distance from
the axis ``rho``; its contacts with the host's heavy atoms on the axis's near and far side,
Σ 1/(1 + (r/r₀)⁶) over guest–host heavy-atom pairs (r₀ = 4 Å); and its orientation, the cosine
between the guest's long axis and the host's. Each has an exact OpenMM twin (a custom bond or
centroid force), and the network (Linear/tanh layers, the normalisation and the LDA projection
folded in) is written out as one algebraic expression of them in a ``CustomCVForce``
(:class:`BindingCV`), so OPES on it runs at OpenMM's speed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import openmm
import torch

from ..errors import InputError
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem
from ..sampling.learned import LearnedCV, load_exported, train_deep_lda, train_lda
from ..units import NM_IN_A
from .funnel import HostGuestCV

CONTACT_R0_A = 4.0
SW_REG = 0.05  # Deep-LDA's regularisation of the within-state scatter (mlcolvar's default)
DESCRIPTORS = ["z", "rho", "contacts_near", "contacts_far", "orientation"]
_VECTOR_COS = ("((x4-x3)*(x2-x1)+(y4-y3)*(y2-y1)+(z4-z3)*(z2-z1))"
               "/sqrt(((x4-x3)^2+(y4-y3)^2+(z4-z3)^2)*((x2-x1)^2+(y2-y1)^2+(z2-z1)^2))")


class BindingDescriptors(HostGuestCV):
    """z, rho (Å), contacts with the host's near and far side, and the guest's orientation.

    Args:
        host, anchor, guest: the frame (as :class:`~.funnel.HostGuestCV`).
        near, far: host heavy atoms on the anchor's side of the host's centre and on the other.
        guest_heavy: the guest's heavy atoms.
        guest_tail, guest_head: two halves of the guest whose centroids span its long axis.
    """

    def __init__(self, host: Sequence[int], anchor: Sequence[int], guest: Sequence[int], near: Sequence[int],
                 far: Sequence[int], guest_heavy: Sequence[int], guest_tail: Sequence[int],
                 guest_head: Sequence[int]) -> None:
        super().__init__(host, anchor, guest)
        for name, group in (("near", near), ("far", far), ("guest_heavy", guest_heavy), ("guest_tail", guest_tail),
                            ("guest_head", guest_head)):
            if len(group) == 0:
                raise InputError(f"binding descriptors: the {name} group is empty")
            self.register_buffer(name, torch.tensor(list(group), dtype=torch.long))
        self.names = list(DESCRIPTORS)

    def groups(self) -> dict[str, list[int]]:
        """The atom groups (0-based), as stored with an exported CV."""
        return {name: [int(i) for i in getattr(self, name)] for name in
                ("host", "anchor", "guest", "near", "far", "guest_heavy", "guest_tail", "guest_head")}

    def _contacts(self, x: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        r = torch.cdist(x[:, self.guest_heavy], x[:, side])
        return (1.0 / (1.0 + (r / CONTACT_R0_A) ** 6)).sum(dim=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, rho = self.coordinates(x)
        _, u = self.frame(x)
        g = x[:, self.guest_head].mean(1) - x[:, self.guest_tail].mean(1)
        cos = (g * u).sum(-1) / torch.linalg.vector_norm(g, dim=-1)
        return torch.stack([z, rho, self._contacts(x, self.near), self._contacts(x, self.far), cos], dim=-1)

    def openmm_forces(self) -> list[openmm.Force]:
        """One OpenMM force per descriptor whose energy is its value (Å, counts, cosine)."""
        z = self.centroid_force(f"{NM_IN_A}*z")
        rho = self.centroid_force(f"{NM_IN_A}*rho")
        contacts = []
        for side in (self.near, self.far):
            force = openmm.CustomBondForce(f"1/(1+(r/{CONTACT_R0_A / NM_IN_A!r})^6)")
            for i in self.guest_heavy.tolist():
                for j in side.tolist():
                    force.addBond(i, j, [])
            contacts.append(force)
        orientation = openmm.CustomCentroidBondForce(4, _VECTOR_COS)
        for group in (self.host, self.anchor, self.guest_tail, self.guest_head):
            orientation.addGroup([int(i) for i in group], [1.0] * len(group))
        orientation.addBond([0, 1, 2, 3], [])
        return [z, rho, *contacts, orientation]


def descriptor_groups(positions: np.ndarray, numbers: np.ndarray, host: Sequence[int], anchor: Sequence[int],
                      guest: Sequence[int]) -> dict[str, list[int]]:
    """The groups of :class:`BindingDescriptors` for a complex at ``positions`` (Å): the host's
    heavy atoms split by the plane through its centre normal to its axis, the guest's heavy
    atoms, and the guest's heavy atoms split by the plane through its centre normal to its axis
    of largest spread."""
    host, guest = list(host), list(guest)
    c = positions[host].mean(0)
    u = positions[list(anchor)].mean(0) - c
    heavy_host = [i for i in host if numbers[i] > 1]
    side = (positions[heavy_host] - c) @ u
    heavy_guest = [i for i in guest if numbers[i] > 1] or guest
    if len(heavy_guest) < 2:
        raise InputError(f"the learned binding CV needs a guest of at least two heavy atoms (its orientation is a "
                         f"descriptor); this guest has {len(heavy_guest)}: use --cv axial or distance")
    r = positions[heavy_guest] - positions[heavy_guest].mean(0)
    long_axis = np.linalg.svd(r, full_matrices=False)[2][0]
    along = r @ long_axis
    tail, head = [i for i, p in zip(heavy_guest, along) if p < 0], [i for i, p in zip(heavy_guest, along) if p >= 0]
    return {"host": host, "anchor": list(anchor), "guest": guest,
            "near": [i for i, s in zip(heavy_host, side) if s > 0], "far": [i for i, s in zip(heavy_host, side) if s <= 0],
            "guest_heavy": heavy_guest, "guest_tail": tail, "guest_head": head}


def mlp_expression(state: dict[str, np.ndarray], inputs: Sequence[str]) -> str:
    """The CV network (``Normalise`` → Linear/tanh … → Linear → projection, as
    :class:`~neuralmd.sampling.learned.CVNetwork` stores them) as one OpenMM expression of the
    variables ``inputs``, the normalisation folded into the first layer and the (single-column)
    projection into the last."""
    linear = sorted({int(k.split(".")[1]) for k in state if k.startswith("network.") and k.endswith(".weight")})
    layers = [(np.asarray(state[f"network.{k}.weight"], dtype=float), np.asarray(state[f"network.{k}.bias"], dtype=float))
              for k in linear]
    mean, std = np.asarray(state["normalise.mean"], dtype=float), np.asarray(state["normalise.std"], dtype=float)
    projection = np.asarray(state["projection"], dtype=float)
    if projection.shape[1] != 1:
        raise InputError(f"binding CV: {projection.shape[1]} outputs; OPES in the funnel takes one")
    if not layers:  # a linear CV (LDA): the projection is the only layer
        layers = [(projection.T, np.zeros(1))]
        projection = np.eye(1)
    weight, bias = layers[0]
    layers[0] = (weight / std, bias - (weight / std) @ mean)
    weight, bias = layers[-1]
    layers[-1] = (projection.T @ weight, projection.T @ bias)

    def affine(w: np.ndarray, b: float, names: Sequence[str]) -> str:
        return repr(float(b)) + "".join(f"{'+' if v >= 0 else '-'}{abs(float(v))!r}*{n}" for v, n in zip(w, names))

    names, definitions = list(inputs), []
    for depth, (weight, bias) in enumerate(layers[:-1]):
        hidden = [f"h{depth}_{i}" for i in range(len(bias))]
        definitions.append([f"{h} = tanh({affine(weight[i], bias[i], names)})" for i, h in enumerate(hidden)])
        names = hidden
    weight, bias = layers[-1]
    out = affine(weight[0], float(bias[0]), names)
    # OpenMM reads definitions after the expression that uses them: the last layer first
    return "; ".join([out, *[d for layer in reversed(definitions) for d in layer]])


class BindingCV(LearnedCV):
    """A learned CV over :class:`BindingDescriptors` with its OpenMM twin: a ``CustomCVForce``
    whose energy is the network's output, evaluated by OpenMM (no Python per step)."""

    def openmm_force(self) -> openmm.CustomCVForce:
        state = {k: v.detach().double().numpy() for k, v in self.model.state_dict().items()}
        force = openmm.CustomCVForce(mlp_expression(state, [f"d{k}" for k in range(len(DESCRIPTORS))]))
        for k, f in enumerate(self.descriptors.openmm_forces()):
            force.addCollectiveVariable(f"d{k}", f)
        force.setName(f"neuralmd-cv-{self.names[0]}")
        return force


def sample_state(parts: OpenMMSystem, engine: OpenMMSettings, terms: Sequence, positions_nm: np.ndarray, steps: int,
                 every: int) -> np.ndarray:
    """Positions (frames, n, 3) Å every ``every`` steps of an unbiased run of a copy of ``parts``
    from ``positions_nm`` with ``terms`` (the funnel) added; nothing is written."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(parts.system))
    copy = OpenMMSystem(parts.topology, system, positions_nm, parts.numbers)
    probe = OpenMMRun(dataclasses.replace(engine, walkers=1), None, copy, terms)  # one context: the probe runs one
    probe.sample_positions(max(every, steps // 5))  # equilibration, discarded
    return probe.sample_positions(steps, every)


def train_binding_cv(bound: np.ndarray, unbound: np.ndarray, groups: dict[str, list[int]], method: str = "lda",
                     seed: int = 0, epochs: int = 300) -> tuple[BindingCV, dict]:
    """A discriminant CV between frames of the bound and the unbound state (positions
    (n, atoms, 3) Å), ``lda`` (linear) or ``deep-lda``: the CV, scaled to one unit from the
    bound state's mean to the unbound state's, and its statistics (mean and std per state)."""
    descriptors = BindingDescriptors(**groups).double()
    with torch.no_grad():
        x = torch.cat([descriptors(torch.as_tensor(bound)), descriptors(torch.as_tensor(unbound))]).numpy()
    labels = np.r_[np.zeros(len(bound), dtype=int), np.ones(len(unbound), dtype=int)]
    if method == "lda":
        network = train_lda(x, labels)
    elif method == "deep-lda":
        network, _ = train_deep_lda(x, labels, n_cv=1, hidden=(16, 8), epochs=epochs, seed=seed, sw_reg=SW_REG,
                                    lorentzian=2.0 / SW_REG)
    else:
        raise InputError(f"binding CV method: {method!r}; expected lda or deep-lda")
    cv = BindingCV(descriptors, network.double(), method.replace("-", "_"), names=["lda"])
    with torch.no_grad():
        values = cv.model(torch.as_tensor(x)).numpy()[:, 0]
        # one unit from the bound state's mean to the unbound state's, unbound at larger values as z and d
        scale = values[labels == 1].mean() - values[labels == 0].mean()
        cv.model.projection.div_(scale)
        values = values / scale
    stats = {f"{name}_{what}": float(fn(values[labels == k])) for k, name in enumerate(("bound", "unbound"))
             for what, fn in (("mean", np.mean), ("std", np.std))}
    return cv, stats


def load_binding_cv(folder: str | Path) -> BindingCV:
    """The learned binding CV exported by :meth:`~neuralmd.sampling.learned.LearnedCV.export`
    into ``folder`` (cv.pt and descriptors.json with the atom groups)."""
    model, meta = load_exported(folder)
    if "groups" not in meta:
        raise InputError(f"{Path(folder) / 'descriptors.json'}: no 'groups'; not a binding CV")
    descriptors = BindingDescriptors(**meta["groups"]).double()
    return BindingCV(descriptors, model.double(), meta.get("method", "lda"), names=meta.get("cv_names", ["lda"]))
