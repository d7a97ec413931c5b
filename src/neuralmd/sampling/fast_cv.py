"""NumPy value and gradient of a learned pairwise-distance CV, for per-step callbacks.

Inside OpenMM a learned CV is evaluated in a ``PythonForce`` at every step; there torch's
per-operation overhead (forward + autograd, ~0.4 ms) dominates a 22-atom system. The network
of :mod:`.learned` is small and fixed (distances -> normalise -> Linear/tanh ... -> Linear ->
projection), so its forward and backward pass are written out here in NumPy (float64).
"""

from __future__ import annotations

import numpy as np
import openmm
from openmm import unit

from ..units import NM_IN_A
from .cvs import CV, PairwiseDistances


#: last evaluation per learned CV (positions bytes, values, gradients): OpenMM asks each output
#: of a CV separately in the same step, so the second output reuses the first one's pass
_LAST: dict[str, tuple[bytes, np.ndarray, np.ndarray]] = {}


class MLPDistanceCV:
    """Output ``component`` of a learned CV over pairwise distances (Å), with its gradient.

    Args:
        pairs: (P, 2) atom pairs; n_atoms: atoms in the system.
        mean, std: descriptor normalisation; layers: (weight, bias) per Linear layer, with tanh
            between them; projection: (h, k) matrix applied to the last layer's output.
            Stored folded: the normalisation into the first layer, the projection into the last.
        component: the output this callback reports; token: shared by the outputs of one CV.
    """

    def __init__(self, pairs: np.ndarray, n_atoms: int, mean: np.ndarray, std: np.ndarray,
                 layers: list[tuple[np.ndarray, np.ndarray]], projection: np.ndarray, component: int,
                 token: str) -> None:
        first, first_bias = layers[0]
        first = first / std
        layers = [(first, first_bias - first @ mean), *layers[1:]]
        last, last_bias = layers[-1]
        self.layers = [*layers[:-1], (projection.T @ last, projection.T @ last_bias)]
        self.component, self.token = component, token
        self.incidence = np.zeros((n_atoms, len(pairs)))  # +1 at the pair's second atom, -1 at its first
        self.incidence[pairs[:, 1], np.arange(len(pairs))] += 1.0
        self.incidence[pairs[:, 0], np.arange(len(pairs))] -= 1.0

    @classmethod
    def components(cls, cv: CV, n_atoms: int) -> list[MLPDistanceCV] | None:
        """One NumPy callback per output of a learned CV (ExportedCV or LearnedCV over
        PairwiseDistances), or None if ``cv`` is not of that form."""
        import uuid

        from .learned import LearnedCV
        from .spec import ExportedCV

        if not isinstance(cv, (ExportedCV, LearnedCV)) or not isinstance(cv.descriptors, PairwiseDistances):
            return None
        model, pairs = cv.model, cv.descriptors.pairs
        state = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
        linear = sorted({int(k.split(".")[1]) for k in state if k.startswith("network.") and k.endswith(".weight")})
        if not linear or "normalise.mean" not in state or "projection" not in state:
            return None
        if linear != list(range(0, 2 * len(linear), 2)):  # Linear, Tanh, Linear, ... as mlp() builds
            return None
        layers = [(state[f"network.{k}.weight"], state[f"network.{k}.bias"]) for k in linear]
        token = uuid.uuid4().hex
        return [cls(pairs.numpy(), n_atoms, state["normalise.mean"], state["normalise.std"], layers,
                    state["projection"], k, token) for k in range(state["projection"].shape[1])]

    def values_and_grads(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All CV outputs (k,) and their gradients (k, n, 3) per Å at positions ``x`` (n, 3) Å."""
        r = self.incidence.T @ x  # (P, 3): second minus first atom of each pair, exactly
        d = np.sqrt((r * r).sum(-1))
        h, hidden = d, []
        for weight, bias in self.layers[:-1]:
            h = np.tanh(weight @ h + bias)
            hidden.append(h)
        weight, bias = self.layers[-1]
        s = weight @ h + bias
        g = weight.T  # (h, k): ds/dh of the last hidden layer; after the loop ds/dd (normalisation folded in)
        for (weight, _), h in zip(reversed(self.layers[:-1]), reversed(hidden)):
            g = weight.T @ (g * (1.0 - h * h)[:, None])
        coef = (g / d[:, None]).T[:, :, None] * r  # (k, P, 3): ds/dd times the unit vector of each pair
        return s, self.incidence @ coef

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """This output's value and gradient (n, 3) per Å."""
        s, grads = self.values_and_grads(x)
        return float(s[self.component]), grads[self.component]

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        """``PythonForce`` callback: the value as 'energy', minus the gradient per nm as 'forces'."""
        x = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        key = x.tobytes()
        last = _LAST.get(self.token)
        if last is None or last[0] != key:
            last = _LAST[self.token] = (key, *self.values_and_grads(x))
        return float(last[1][self.component]), -last[2][self.component] * NM_IN_A
