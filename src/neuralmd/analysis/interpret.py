"""Interpretability: which input descriptors a learned CV depends on.

Relevance of descriptor i to CV component k (mlcolvar's sensitivity analysis): the mean over
samples of |∂CV_k/∂d_i| times the standard deviation of d_i, normalised to sum to one, so a
descriptor that barely varies or barely moves the CV scores low.

Steepness of CV component k: the 99th percentile over samples of |∇_d CV_k| / std(CV_k), in
1/Å for distance descriptors: how many of the CV's own standard deviations it moves per Å of
descriptor change. A bias of a few kT across the CV's spread exerts forces that scale with it;
torsion-like slow CVs stay at a few per Å, a CV steeper than ~10 per Å makes a 2 fs MD step
unstable under a bias.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch


def _gradients(model: torch.nn.Module, descriptors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each CV component k: its values (n,) and its gradient ∂CV_k/∂d (n, m) on the samples."""
    x = torch.as_tensor(descriptors, dtype=torch.float32).requires_grad_(True)
    s = model(x)
    out = []
    for k in range(s.shape[1]):
        (grad,) = torch.autograd.grad(s[:, k].sum(), x, retain_graph=k < s.shape[1] - 1)
        out.append((s[:, k].detach().numpy(), grad.numpy()))
    return out


def cv_relevance(model: torch.nn.Module, descriptors: np.ndarray, component: int = 0) -> np.ndarray:
    """Relevance (sums to 1) of each descriptor column to CV ``component`` of ``model``
    (descriptors (n, m) -> CVs (n, k))."""
    grad = _gradients(model, descriptors)[component][1]
    score = np.abs(grad).mean(0) * np.asarray(descriptors).std(0)
    total = score.sum()
    return score / total if total > 0 else score


def cv_steepness(model: torch.nn.Module, descriptors: np.ndarray) -> np.ndarray:
    """Steepness (1/descriptor unit) of every CV component of ``model`` (descriptors (n, m) ->
    CVs (n, k)) on the sample ``descriptors``: see the module docstring."""
    return np.asarray([np.percentile(np.linalg.norm(grad, axis=1), 99) / max(float(values.std()), 1e-12)
                       for values, grad in _gradients(model, descriptors)])


def plot_relevance(relevance: np.ndarray, names: Sequence[str], path: str | os.PathLike, top: int = 20) -> None:
    """Horizontal bar chart of the ``top`` most relevant descriptors (PNG)."""
    from .plots import save_figure, plt

    order = np.argsort(relevance)[::-1][:top]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    ax.barh([names[i] for i in order][::-1], relevance[order][::-1], color="C0")
    ax.set_xlabel("relevance (fraction)")
    ax.set_title("descriptor relevance to the CV")
    fig.tight_layout()
    save_figure(fig, path)
