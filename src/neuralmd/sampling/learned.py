"""Learned collective variables: autoencoder, Deep-LDA and Deep-TICA, written natively (mlcolvar
pins pydantic<2) in mlcolvar's block style: descriptors -> normalise -> network -> projection.

A :class:`LearnedCV` is itself a CV module (positions (B, n, 3) -> (B, k)), so it drives any
bias. :meth:`LearnedCV.export` writes the TorchScript model in the form PLUMED's PYTORCH module
and mlcolvar use (descriptors in, CVs out) plus a JSON description of the descriptors.

Training (:func:`train_autoencoder`, :func:`train_deep_lda`, :func:`train_deep_tica`) works on
descriptor arrays; a validation split picks the best epoch. Descriptors are centred and each
divided by its standard deviation, but by no less than ``scale_floor`` times the RMS of all of
them: for distances (all in Å) plain per-descriptor scaling blows a bond length that vibrates
by 0.03 Å up to the size of a torsion-driven distance that changes by 1 Å, and a network that
keeps any weight on it gives a CV with gradients of tens per Å, which a bias then turns into
forces that blow an MD run up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..io_utils import atomic_path, atomic_write_json
from .cvs import CV, PairwiseDistances


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with tanh in between (smooth, as CV networks need)."""
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Normalise(nn.Module):
    """(x - mean) / std with statistics fixed from training data."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp(min=1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class CVNetwork(nn.Module):
    """descriptors -> normalise -> network -> projection (the part that is exported)."""

    def __init__(self, normalise: Normalise, network: nn.Module, projection: torch.Tensor) -> None:
        super().__init__()
        self.normalise = normalise
        self.network = network
        self.register_buffer("projection", projection.float())

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(descriptors)) @ self.projection


class LearnedCV(CV):
    """A CV from a descriptor CV (e.g. PairwiseDistances) and a trained :class:`CVNetwork`."""

    def __init__(self, descriptors: CV, model: CVNetwork, method: str, names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.descriptors = descriptors
        self.model = model
        self.method = method
        k = model.projection.shape[1]
        self.names = list(names) if names else [f"{method}_{i}" for i in range(k)]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        d = self.descriptors(x, cell)
        return self.model(d.to(self.model.projection.dtype)).to(x.dtype)

    def export(self, folder: str | Path, meta: dict | None = None) -> Path:
        """Write ``cv.pt`` (TorchScript: descriptors (n, m) -> CVs (n, k)), ``descriptors.json``
        (the descriptor definition, plus ``meta``) and a PLUMED input snippet ``plumed.dat``;
        returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        scripted = torch.jit.script(self.model.cpu().float())
        desc = {"type": type(self.descriptors).__name__, "names": self.descriptors.names,
                "method": self.method, "cv_names": self.names, "units": "Angstrom (distances), radians (angles)",
                **(meta or {})}
        distances = isinstance(self.descriptors, PairwiseDistances)
        if distances:
            desc["atoms_0based"] = self.descriptors.atoms
            desc["pairs_0based"] = self.descriptors.pairs.tolist()
        lines = []
        if distances:
            for (a, b), name in zip(self.descriptors.pairs.tolist(), self.descriptors.names):
                lines.append(f"{name.replace('-', '_')}: DISTANCE ATOMS={a + 1},{b + 1}")
            args = ",".join(n.replace("-", "_") for n in self.descriptors.names)
            lines.append(f"cv: PYTORCH_MODEL FILE=cv.pt ARG={args}")
        with atomic_path(folder / "plumed.dat") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        atomic_write_json(desc, folder / "descriptors.json")
        with atomic_path(folder / "cv.pt") as tmp:  # last: its presence marks a complete export
            torch.jit.save(scripted, str(tmp))
        return folder


def _split(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(valid_fraction * n)))
    return order[n_valid:], order[:n_valid]


def _fit(params, loss_of: Callable[[np.ndarray], torch.Tensor], n: int, epochs: int, lr: float,
         valid_fraction: float, seed: int, batch_size: int, modules: Sequence[nn.Module], progress: bool) -> list[dict]:
    """Adam on ``loss_of(indices)``; keeps the weights of the best validation loss."""
    from rich.progress import track

    train_idx, valid_idx = _split(n, valid_fraction, seed)
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    best, best_state, history = float("inf"), None, []
    for epoch in track(range(epochs), description="training CV", disable=not progress):
        order = rng.permutation(train_idx)
        for start in range(0, len(order), batch_size):
            loss = loss_of(order[start : start + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            valid = float(loss_of(valid_idx))
        history.append({"epoch": epoch, "train_loss": float(loss.detach()), "valid_loss": valid})
        if valid < best:
            best = valid
            best_state = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    for m, state in zip(modules, best_state):
        m.load_state_dict(state)
    return history


def _normaliser(x: torch.Tensor, scale_floor: float) -> Normalise:
    """Centre each column and divide it by its standard deviation or, if larger, by
    ``scale_floor`` times the RMS of all columns' standard deviations (0: mlcolvar's plain
    per-column scaling)."""
    std = x.std(0)
    return Normalise(x.mean(0), std.clamp(min=scale_floor * float(std.pow(2).mean().sqrt())))


def train_autoencoder(descriptors: np.ndarray, n_cv: int = 1, hidden: Sequence[int] = (32, 16), epochs: int = 200,
                      lr: float = 1e-3, valid_fraction: float = 0.1, seed: int = 0, batch_size: int = 256,
                      scale_floor: float = 0.5, progress: bool = False) -> tuple[CVNetwork, list[dict]]:
    """Encoder of an autoencoder trained to reconstruct the normalised descriptors
    (``scale_floor``: see :func:`_normaliser`)."""
    x = torch.as_tensor(descriptors, dtype=torch.float32)
    torch.manual_seed(seed)
    norm = _normaliser(x, scale_floor)
    encoder = mlp([x.shape[1], *hidden, n_cv])
    decoder = mlp([n_cv, *reversed(hidden), x.shape[1]])
    xn = norm(x)

    def loss_of(idx):
        return (decoder(encoder(xn[idx])) - xn[idx]).pow(2).mean()

    history = _fit([*encoder.parameters(), *decoder.parameters()], loss_of, len(x), epochs, lr, valid_fraction,
                   seed, batch_size, [encoder, decoder], progress)
    return CVNetwork(norm, encoder, torch.eye(n_cv)), history


def _generalised_eig(a: torch.Tensor, b: torch.Tensor, reg: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and vectors of a v = λ b v for symmetric a, b (b regularised)."""
    b = b + reg * torch.eye(b.shape[0], dtype=b.dtype)
    lower = torch.linalg.cholesky(b)
    inv = torch.linalg.inv(lower)
    vals, vecs = torch.linalg.eigh(inv @ a @ inv.T)
    vecs = inv.T @ vecs
    order = torch.argsort(vals, descending=True)
    return vals[order], vecs[:, order]


def train_deep_lda(descriptors: np.ndarray, labels: np.ndarray, n_cv: int = 1, hidden: Sequence[int] = (24, 12),
                   epochs: int = 200, lr: float = 1e-3, valid_fraction: float = 0.1, seed: int = 0,
                   batch_size: int = 512, scale_floor: float = 0.5, sw_reg: float = 1e-5, lorentzian: float = 0.0,
                   progress: bool = False) -> tuple[CVNetwork, list[dict]]:
    """Deep-LDA (Bonati, Rizzi & Parrinello 2020): a network whose outputs maximise the Fisher
    ratio between labelled states; the CV is their LDA projection.

    ``sw_reg`` is added to the within-state scatter (bounding the Fisher ratio) and
    ``lorentzian`` (α) adds -α / (1 + (⟨|h|²⟩ - 1)²) to the loss, holding the network's outputs
    h at unit size, as the paper and mlcolvar (sw_reg 0.05, α = 2/sw_reg) regularise it for
    states that a descriptor alone already separates."""
    x = torch.as_tensor(descriptors, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    classes = torch.unique(y)
    if len(classes) < 2:
        raise InputError(f"Deep-LDA needs at least two labelled states, found {classes.tolist()}")
    torch.manual_seed(seed)
    norm = _normaliser(x, scale_floor)
    net = mlp([x.shape[1], *hidden])
    xn = norm(x)

    def scatter(h, yy):
        mu = h.mean(0)
        sw = torch.zeros(h.shape[1], h.shape[1])
        sb = torch.zeros_like(sw)
        for c in classes:
            hc = h[yy == c]
            if len(hc) < 2:
                continue
            d = hc - hc.mean(0)
            sw = sw + d.T @ d / len(hc)
            m = (hc.mean(0) - mu).unsqueeze(-1)
            sb = sb + m @ m.T
        return sb, sw

    def loss_of(idx):
        h = net(xn[idx])
        vals, _ = _generalised_eig(*scatter(h, y[idx]), reg=sw_reg)
        size = h.pow(2).sum() / len(h)
        return -vals[:n_cv].sum() - lorentzian / (1 + (size - 1) ** 2)

    history = _fit(net.parameters(), loss_of, len(x), epochs, lr, valid_fraction, seed, batch_size, [net], progress)
    with torch.no_grad():
        _, vecs = _generalised_eig(*scatter(net(xn), y), reg=sw_reg)
    return CVNetwork(norm, net, vecs[:, :n_cv].contiguous()), history


def train_lda(descriptors: np.ndarray, labels: np.ndarray, scale_floor: float = 0.5) -> CVNetwork:
    """Fisher's linear discriminant of two labelled states: the linear CV w·x̂ of the normalised
    descriptors x̂ with w ∝ (Σ₀ + Σ₁)⁻¹ (μ₁ − μ₀), scaled to one unit between the states'
    means. Linear, so it changes inside the states as well as between them, which a bias needs
    to push a system out of a state (Deep-LDA flattens the CV inside each state). The harmonic
    variant (HLDA, Σ₀⁻¹ + Σ₁⁻¹) was tried for binding and put its weight on a descriptor that
    is constant in one state (host–guest contacts of an unbound guest), flattening the CV there."""
    x = torch.as_tensor(descriptors, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    classes = torch.unique(y)
    if len(classes) != 2:
        raise InputError(f"LDA takes two labelled states, found {classes.tolist()}")
    norm = _normaliser(x, scale_floor).double()
    xn = norm(x)
    n = x.shape[1]
    pooled = sum(torch.cov(xn[y == c].T).reshape(n, n) for c in classes) + 1e-6 * torch.eye(n, dtype=torch.float64)
    gap = xn[y == classes[1]].mean(0) - xn[y == classes[0]].mean(0)
    w = torch.linalg.solve(pooled, gap)
    return CVNetwork(norm, nn.Sequential(), (w / (w @ gap)).unsqueeze(-1)).double()


def _mean_squared_gradient(s: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean over samples of |∂s_k/∂d|² summed over components k, where x = (d - mean) / scale
    (differentiable: it enters a loss)."""
    total = s.new_zeros(())
    for k in range(s.shape[1]):
        (grad,) = torch.autograd.grad(s[:, k].sum(), x, create_graph=True)
        total = total + (grad / scale).pow(2).sum(1).mean()
    return total


def train_deep_tica(descriptors: np.ndarray, lag: int, n_cv: int = 1, weights: np.ndarray | None = None,
                    hidden: Sequence[int] = (24, 12), epochs: int = 200, lr: float = 1e-3,
                    valid_fraction: float = 0.1, seed: int = 0, batch_size: int = 512,
                    segments: np.ndarray | None = None, scale_floor: float = 0.5, smoothness: float = 1e-3,
                    progress: bool = False) -> tuple[CVNetwork, list[dict]]:
    """Deep-TICA (Bonati, Piccini & Parrinello 2021): network outputs whose time-lagged
    autocorrelations (TICA eigenvalues at ``lag`` frames) are maximal; the CV is the leading
    TICA projection. The network ends in ``n_cv`` outputs (mlcolvar's layout): TICA on a wider
    output whitens directions of tiny variance and can make the CV arbitrarily steep.
    ``weights`` (exp(βV) of biased frames) reweight the correlation matrices; ``segments`` (one
    id per frame) marks separate trajectories, which lagged pairs never span. The last history
    entry carries the CVs' ``tica_eigenvalues`` (autocorrelations at the lag, on all pairs).

    ``smoothness`` (descriptor unit², Å² for distances) weighs a penalty on the mean squared
    gradient of the unit-variance CVs with respect to the descriptors: without it the network
    is free to follow the small, slow drifts of stiff descriptors (a bond length that differs
    by 0.005 Å between two conformers) with gradients of 20-70 per Å, too steep to bias."""
    x = torch.as_tensor(descriptors, dtype=torch.float32)
    seg = np.zeros(len(x), dtype=int) if segments is None else np.asarray(segments)
    pairs = np.nonzero(seg[:-lag] == seg[lag:])[0] if lag > 0 else np.zeros(0, dtype=int)
    if lag < 1 or len(pairs) < 20:
        longest = int(np.bincount(seg).max())
        raise InputError(f"lag: {lag} frames leaves {len(pairs)} time-lagged pairs; the longest trajectory has "
                         f"{longest} frames (need lag >= 1 and at least 20 pairs: a longer run or a shorter lag)")
    w = torch.ones(len(x)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    torch.manual_seed(seed)
    norm = _normaliser(x, scale_floor)
    net = mlp([x.shape[1], *hidden, n_cv])
    xn = norm(x)

    def correlations(h0, ht, wt):
        wt = wt / wt.sum()
        mean = (wt[:, None] * 0.5 * (h0 + ht)).sum(0)
        a, b = h0 - mean, ht - mean
        c0 = 0.5 * ((wt[:, None] * a).T @ a + (wt[:, None] * b).T @ b)
        ct = 0.5 * ((wt[:, None] * a).T @ b + (wt[:, None] * b).T @ a)
        return ct, c0

    def loss_of(idx):
        idx = pairs[idx]
        with torch.enable_grad():  # the penalty differentiates, also for the validation loss
            x0 = xn[idx].requires_grad_(smoothness > 0)
            h0 = net(x0)
            ct, c0 = correlations(h0, net(xn[idx + lag]), w[idx])
            vals, vecs = _generalised_eig(ct, c0)
            loss = -vals[:n_cv].pow(2).sum()
            if smoothness > 0:
                loss = loss + smoothness * _mean_squared_gradient(h0 @ vecs[:, :n_cv], x0, norm.std)
        return loss

    history = _fit(net.parameters(), loss_of, len(pairs), epochs, lr, valid_fraction, seed, batch_size, [net],
                   progress)
    with torch.no_grad():
        vals, vecs = _generalised_eig(*correlations(net(xn[pairs]), net(xn[pairs + lag]), w[pairs]))
    history[-1]["tica_eigenvalues"] = [float(v) for v in vals[:n_cv]]  # of the kept weights, on all pairs
    return CVNetwork(norm, net, vecs[:, :n_cv].contiguous()), history


def load_exported(folder: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """The TorchScript model and descriptor description written by :meth:`LearnedCV.export`."""
    folder = Path(folder)
    if not (folder / "cv.pt").is_file():
        raise InputError(f"{folder / 'cv.pt'}: exported CV not found")
    try:
        model = torch.jit.load(str(folder / "cv.pt"))
    except Exception as exc:  # truncated or foreign files fail inside TorchScript in many ways
        raise InputError(f"{folder / 'cv.pt'}: not a readable TorchScript CV ({type(exc).__name__})") from None
    path = folder / "descriptors.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; an exported CV needs its descriptors.json beside cv.pt")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object with 'atoms_0based' and 'pairs_0based'")
    return model, meta
