"""A learned binding CV: Deep-LDA (Bonati, Rizzi & Parrinello 2020) on host–guest descriptors,
trained from short unbiased runs in the bound and the unbound state (as Rizzi et al., Nat.
Commun. 2021, for host–guest binding), and evaluated inside OpenMM without Python.

Descriptors (:class:`BindingDescriptors`): the guest's axial position ``z`` and distance from
the axis ``rho``; its contacts with the host's heavy atoms on the axis's near and far side,
Σ 1/(1 + (r/r₀)⁶) over guest–host heavy-atom pairs (r₀ = 4 Å); and its orientation, the cosine
between the guest's long axis and the host's. In explicit solvent two water descriptors join
them (as Rizzi et al. include water): the guest's water coordination, Σ s(r) over guest
heavy-atom–water-oxygen pairs, and the binding site's, Σ s(r) over water oxygens around the
host's centroid, with s(r) = S(r)/(1 + (r/r₀)⁶), r₀ = 4 Å, switched off smoothly by S from 6 to
7 Å (minimum images in the periodic box). Each has an exact OpenMM twin (a custom bond or
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
from ..geometry import displacement, narrowest_box
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem
from ..sampling.learned import LearnedCV, load_exported, train_deep_lda, train_lda
from ..units import NM_IN_A
from .funnel import HostGuestCV

CONTACT_R0_A = 4.0
WATER_SWITCH_A = (6.0, 7.0)  # the water coordinations' s(r) goes smoothly to zero over this range
SW_REG = 0.05  # Deep-LDA's regularisation of the within-state scatter (mlcolvar's default)
DESCRIPTORS = ["z", "rho", "contacts_near", "contacts_far", "orientation"]
WATER_DESCRIPTORS = ["guest_water", "site_water"]
_VECTOR_COS = ("((x4-x3)*(x2-x1)+(y4-y3)*(y2-y1)+(z4-z3)*(z2-z1))"
               "/sqrt(((x4-x3)^2+(y4-y3)^2+(z4-z3)^2)*((x2-x1)^2+(y2-y1)^2+(z2-z1)^2))")


def water_switch(r: torch.Tensor) -> torch.Tensor:
    """s(r) = S(r)/(1 + (r/r₀)⁶) of the water coordinations (r in Å; :data:`WATER_SWITCH_A`)."""
    on, off = WATER_SWITCH_A
    t = ((r - on) / (off - on)).clamp(0.0, 1.0)
    return (1.0 - t ** 3 * (10.0 - 15.0 * t + 6.0 * t ** 2)) / (1.0 + (r / CONTACT_R0_A) ** 6)


def _water_switch_expression() -> str:
    """:func:`water_switch` in OpenMM's expression language (r in nm)."""
    on, off = (v / NM_IN_A for v in WATER_SWITCH_A)
    return (f"(1-t^3*(10-15*t+6*t^2))/(1+(r/{CONTACT_R0_A / NM_IN_A!r})^6); "
            f"t=min(1, max(0, (r-{on!r})/{off - on!r}))")


class BindingDescriptors(HostGuestCV):
    """z, rho (Å), contacts with the host's near and far side, and the guest's orientation; with
    ``water``, the guest's and the binding site's water coordination.

    Args:
        host, anchor, guest: the frame (as :class:`~.funnel.HostGuestCV`).
        near, far: host heavy atoms on the anchor's side of the host's centre and on the other.
        guest_heavy: the guest's heavy atoms.
        guest_tail, guest_head: two halves of the guest whose centroids span its long axis.
        water: the water oxygens (explicit solvent; the descriptors then need the periodic cell).
    """

    def __init__(self, host: Sequence[int], anchor: Sequence[int], guest: Sequence[int], near: Sequence[int],
                 far: Sequence[int], guest_heavy: Sequence[int], guest_tail: Sequence[int],
                 guest_head: Sequence[int], water: Sequence[int] = ()) -> None:
        super().__init__(host, anchor, guest)
        for name, group in (("near", near), ("far", far), ("guest_heavy", guest_heavy), ("guest_tail", guest_tail),
                            ("guest_head", guest_head)):
            if len(group) == 0:
                raise InputError(f"binding descriptors: the {name} group is empty")
            self.register_buffer(name, torch.tensor(list(group), dtype=torch.long))
        self.register_buffer("water", torch.tensor(list(water), dtype=torch.long))
        self.names = list(DESCRIPTORS) + (list(WATER_DESCRIPTORS) if len(water) else [])

    def groups(self) -> dict[str, list[int]]:
        """The atom groups (0-based), as stored with an exported CV."""
        names = ["host", "anchor", "guest", "near", "far", "guest_heavy", "guest_tail", "guest_head"]
        return {name: [int(i) for i in getattr(self, name)] for name in names + (["water"] if self.water.numel() else [])}

    def _contacts(self, x: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        r = torch.cdist(x[:, self.guest_heavy], x[:, side])
        return (1.0 / (1.0 + (r / CONTACT_R0_A) ** 6)).sum(dim=(1, 2))

    def _water_coordination(self, sites: torch.Tensor, x: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Σ s(r) over sites (B, S, 3) × water oxygens (B,), minimum images."""
        d = displacement(sites.unsqueeze(2), x[:, self.water].unsqueeze(1), cell)
        return water_switch(torch.linalg.vector_norm(d, dim=-1)).sum(dim=(1, 2))

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        z, rho = self.coordinates(x)
        _, u = self.frame(x)
        g = x[:, self.guest_head].mean(1) - x[:, self.guest_tail].mean(1)
        cos = (g * u).sum(-1) / torch.linalg.vector_norm(g, dim=-1)
        values = [z, rho, self._contacts(x, self.near), self._contacts(x, self.far), cos]
        if self.water.numel():
            if cell is None:
                raise InputError("binding descriptors: the water coordinations need the periodic cell")
            narrow = narrowest_box(cell, WATER_SWITCH_A[1])
            if narrow is not None:
                raise InputError(f"binding descriptors: a box {narrow[1]:.2f} Å high; the water coordinations "
                                 f"need at least {2 * WATER_SWITCH_A[1]} Å (twice their cutoff)")
            values += [self._water_coordination(x[:, self.guest_heavy], x, cell),
                       self._water_coordination(x[:, self.host].mean(1, keepdim=True), x, cell)]
        return torch.stack(values, dim=-1)

    def openmm_forces(self) -> list[openmm.Force]:
        """One OpenMM force per descriptor whose energy is its value (Å, counts, cosine); the
        water coordinations periodic (minimum images, as :meth:`forward`)."""
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
        forces = [z, rho, *contacts, orientation]
        if self.water.numel():
            guest_water = openmm.CustomBondForce(_water_switch_expression())
            for i in self.guest_heavy.tolist():
                for j in self.water.tolist():
                    guest_water.addBond(i, j, [])
            site_water = openmm.CustomCentroidBondForce(2, f"{_water_switch_expression()}; r=distance(g1,g2)")
            site_water.addGroup([int(i) for i in self.host], [1.0] * len(self.host))
            for k, j in enumerate(self.water.tolist()):
                site_water.addGroup([j], [1.0])
                site_water.addBond([0, k + 1], [])
            for force in (guest_water, site_water):
                force.setUsesPeriodicBoundaryConditions(True)
            forces += [guest_water, site_water]
        return forces


def descriptor_groups(positions: np.ndarray, numbers: np.ndarray, host: Sequence[int], anchor: Sequence[int],
                      guest: Sequence[int], water: Sequence[int] = ()) -> dict[str, list[int]]:
    """The groups of :class:`BindingDescriptors` for a complex at ``positions`` (Å): the host's
    heavy atoms split by the plane through its centre normal to its axis, the guest's heavy
    atoms, and the guest's heavy atoms split by the plane through its centre normal to its axis
    of largest spread; ``water``, the water oxygens in explicit solvent."""
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
            "guest_heavy": heavy_guest, "guest_tail": tail, "guest_head": head,
            **({"water": [int(i) for i in water]} if len(water) else {})}


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
        force = openmm.CustomCVForce(mlp_expression(state, [f"d{k}" for k in range(len(self.descriptors.names))]))
        for k, f in enumerate(self.descriptors.openmm_forces()):
            force.addCollectiveVariable(f"d{k}", f)
        force.setName(f"neuralmd-cv-{self.names[0]}")
        return force


def sample_state(parts: OpenMMSystem, engine: OpenMMSettings, terms: Sequence, positions_nm: np.ndarray, steps: int,
                 every: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions (frames, n, 3) Å every ``every`` steps of an unbiased run of a copy of ``parts``
    from ``positions_nm`` with ``terms`` (the funnel) added, and the cells (frames, 3, 3) Å of a
    periodic system (else None). Nothing is written."""
    probe = OpenMMRun(dataclasses.replace(engine, walkers=1), None, parts.copy(positions_nm), terms)  # one context
    probe.sample_positions(max(every, steps // 5))  # equilibration, discarded
    return probe.sample_positions(steps, every)


def descriptor_values(descriptors: BindingDescriptors, positions: np.ndarray, cells: np.ndarray | None = None,
                      chunk: int = 64) -> np.ndarray:
    """The descriptors (n, d) of frames ``positions`` (n, atoms, 3) Å in ``cells`` (n, 3, 3) Å
    (explicit solvent), ``chunk`` frames at a time (the water terms hold frames × guest atoms ×
    waters displacements)."""
    out = []
    with torch.no_grad():
        for k in range(0, len(positions), chunk):
            cell = None if cells is None else torch.as_tensor(cells[k:k + chunk], dtype=torch.float64)
            out.append(descriptors(torch.as_tensor(positions[k:k + chunk], dtype=torch.float64), cell).numpy())
    return np.concatenate(out)


def train_binding_cv(bound: tuple[np.ndarray, np.ndarray | None], unbound: tuple[np.ndarray, np.ndarray | None],
                     groups: dict[str, list[int]], method: str = "lda", seed: int = 0, epochs: int = 300
                     ) -> tuple[BindingCV, dict]:
    """A discriminant CV between frames of the bound and the unbound state (each positions
    (n, atoms, 3) Å and cells (n, 3, 3) Å or None, as :func:`sample_state` gives them), ``lda``
    (linear) or ``deep-lda``: the CV, scaled to one unit from the bound state's mean to the
    unbound state's, and its statistics (mean and std per state)."""
    descriptors = BindingDescriptors(**groups).double()
    x = np.concatenate([descriptor_values(descriptors, *bound), descriptor_values(descriptors, *unbound)])
    labels = np.r_[np.zeros(len(bound[0]), dtype=int), np.ones(len(unbound[0]), dtype=int)]
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
