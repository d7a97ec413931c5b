"""Plots a person would rather look at than read: learning curves, parity plots and energy
profiles along scans (PNG)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io_utils import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from .scan import Profile


class MeasuredTarget(Protocol):
    """What a target plot reads (``neuralmd.refine.targets.Target`` has it): the measurement
    ``reference`` (K,) with ``error`` (K,), ``axis`` (K,) x values of a curve or None, a name and
    unit."""

    name: str
    unit: str
    reference: Sequence[float]
    error: Sequence[float]
    axis: np.ndarray | None


class Predictions(Protocol):
    """What a parity plot reads (``neuralmd.training.metrics.Predictions`` has it): energies (eV
    per structure) and atom counts per frame, force components (eV/Å, flattened) or None."""

    energy_true: np.ndarray
    energy_pred: np.ndarray
    n_atoms: np.ndarray
    forces_true: np.ndarray | None
    forces_pred: np.ndarray | None


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure as PNG (atomically) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_learning_curve(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Training loss, validation force MAE (meV/Å) and energy MAE (meV/atom) against step."""
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].semilogy(steps, [h["train_loss"] for h in history], label="train (batch)")
    axes[0].semilogy(steps, [h["valid_loss"] for h in history], label="validation")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].semilogy(steps, [h["force_mae_mev_per_A"] for h in history], color="C2")
    axes[1].set_ylabel("validation force MAE (meV/Å)")
    axes[2].semilogy(steps, [h["energy_mae_mev_per_atom"] for h in history], color="C3")
    axes[2].set_ylabel("validation energy MAE (meV/atom)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("learning curve")
    fig.tight_layout()
    save_figure(fig, path)


def plot_parity(preds: Predictions, metrics: dict[str, float], path: str | os.PathLike, title: str = "") -> None:
    """Predicted against reference for one set of frames: see :func:`plot_parity_sets`."""
    plot_parity_sets([("", preds, metrics)], path, title or f"parity ({metrics['frames']} frames)")


def plot_parity_sets(sets: Sequence[tuple[str, Predictions, dict[str, float]]], path: str | os.PathLike,
                     title: str = "") -> None:
    """Predicted against reference, one row per ``(label, predictions, error_metrics)`` set:
    energy per atom (eV, shifted by the set's reference mean) and, where the set has forces,
    force components (eV/Å), with MAEs in the legends."""
    columns = 2 if any(preds.forces_true is not None for _, preds, _ in sets) else 1
    fig, axes = plt.subplots(len(sets), columns, figsize=(5 * columns, 4.6 * len(sets)), squeeze=False)
    for (label, preds, metrics), (ax_e, *ax_f) in zip(sets, axes):
        _energy_parity(ax_e, preds, metrics)
        ax_e.set_title(label)
        if preds.forces_true is not None:
            _force_parity(ax_f[0], preds, metrics)
        elif ax_f:
            ax_f[0].set_axis_off()
            ax_f[0].text(0.5, 0.5, "no forces in these frames", ha="center", va="center", transform=ax_f[0].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _energy_parity(ax, preds: Predictions, metrics: dict[str, float]) -> None:
    """Energy per atom (eV/atom, both shifted by the mean reference) on ``ax``."""
    e_t, e_p = preds.energy_true / preds.n_atoms, preds.energy_pred / preds.n_atoms
    offset = e_t.mean()
    ax.scatter(e_t - offset, e_p - offset, s=6, alpha=0.6, label=f"MAE {metrics['energy_mae_mev_per_atom']:.2f} meV/atom")
    ax.set_xlabel(f"reference E/N (eV/atom, minus its mean {offset:.3f})")
    ax.set_ylabel("predicted E/N (eV/atom, same offset)")
    _parity_frame(ax)


def _force_parity(ax, preds: Predictions, metrics: dict[str, float]) -> None:
    """Force components (eV/Å) on ``ax``."""
    ax.scatter(preds.forces_true, preds.forces_pred, s=3, alpha=0.4, color="C1",
               label=f"MAE {metrics['force_mae_mev_per_A']:.1f} meV/Å")
    ax.set_xlabel("reference force component (eV/Å)")
    ax.set_ylabel("predicted force component (eV/Å)")
    _parity_frame(ax)


def _parity_frame(ax) -> None:
    """Equal square limits covering the data, the diagonal, legend and grid."""
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)


def plot_scan(profiles: Sequence[Profile], path: str | os.PathLike, title: str = "") -> None:
    """One panel per energy profile: reference and predicted energy relative to the profile's
    first frame against the scan coordinate (sorted), in meV, or in eV where a profile spans
    1 eV or more; the legend gives both barriers and the profile MAE."""
    columns = min(len(profiles), 3)
    rows = -(-len(profiles) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax, profile in zip(axes.flat, profiles):
        _scan_panel(ax, profile)
    for ax in axes.flat[len(profiles):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _scan_panel(ax, profile: Profile) -> None:
    """Reference and predicted profile (energies in eV on the Profile) on ``ax``."""
    m = profile.metrics()
    large = max(np.abs(profile.reference).max(), np.abs(profile.predicted).max()) >= 1.0
    unit, per_ev = ("eV", 1.0) if large else ("meV", 1000.0)
    order = np.argsort(profile.coordinate, kind="stable")
    x = profile.coordinate[order]
    ax.plot(x, profile.reference[order] * per_ev, "o-", ms=3, color="k",
            label=f"reference: barrier {m['barrier_ref_mev'] / 1000 * per_ev:.4g} {unit}")
    ax.plot(x, profile.predicted[order] * per_ev, "s--", ms=3, color="C1",
            label=f"predicted: barrier {m['barrier_pred_mev'] / 1000 * per_ev:.4g} {unit}, "
                  f"MAE {m['energy_profile_mae_mev'] / 1000 * per_ev:.3g} {unit}")
    ax.set_xlabel(profile.key)
    ax.set_ylabel(f"E - E(first frame) ({unit})")
    ax.set_title(f"{profile.name} ({m['frames']} frames)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_md_log(log_csv: str | os.PathLike, path: str | os.PathLike) -> None:
    """Temperature (K) and total energy drift (eV) of every replica against time (ps), from an
    MD log written by :class:`~neuralmd.md.reporters.LogReporter`."""
    data = np.genfromtxt(log_csv, delimiter=",", names=True)
    data = np.atleast_1d(data)
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 3.8))
    replicas = np.unique(data["replica"]).astype(int)
    for r in replicas[:16]:
        rows = data[data["replica"] == r]
        ax_t.plot(rows["time_ps"], rows["temperature_K"], lw=0.8, alpha=0.7)
        ax_e.plot(rows["time_ps"], rows["total_energy_eV"] - rows["total_energy_eV"][0], lw=0.8, alpha=0.7)
    ax_t.set_ylabel("temperature (K)")
    ax_e.set_ylabel("total energy - initial (eV)")
    for ax in (ax_t, ax_e):
        ax.set_xlabel("time (ps)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"MD: {len(replicas)} replica(s)" + (" (first 16 shown)" if len(replicas) > 16 else ""))
    fig.tight_layout()
    save_figure(fig, path)


def plot_fes(centres: Sequence[np.ndarray], free_energy: np.ndarray, names: Sequence[str],
             path: str | os.PathLike, title: str = "free-energy surface") -> None:
    """A 1D profile or 2D map of a free-energy surface in kJ/mol (from ``sampling.fes.fes``)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if len(centres) == 1:
        ax.plot(centres[0], free_energy, color="C0")
        ax.set_xlabel(names[0])
        ax.set_ylabel("F (kJ/mol)")
    else:
        mesh = ax.contourf(centres[0], centres[1], free_energy.T, levels=20, cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="F (kJ/mol)")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_convergence(times: np.ndarray, delta_f: np.ndarray, path: str | os.PathLike, time_label: str = "time (ns)",
                     reference: float | None = None, verdict: str = "") -> None:
    """ΔF (kJ/mol) against simulated time, with an optional reference line and the verdict
    (e.g. "converged" or "UNCONVERGED: ...") as the title."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(times, delta_f, marker="o", ms=3)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=0.8, label="reference")
        ax.legend()
    if verdict:
        ax.set_title(verdict if len(verdict) < 70 else verdict[:67] + "...", fontsize=9,
                     color="k" if verdict == "converged" else "C3")
    ax.set_xlabel(time_label)
    ax.set_ylabel("ΔF (kJ/mol)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_cg_learning_curve(history: Sequence[dict], prior_rmse: float, path: str | os.PathLike) -> None:
    """Force-matching RMSE (eV/Å) per epoch, training batches and held-out frames, against the
    prior alone."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(epochs, [h["train_force_rmse"] for h in history], label="train (batches)")
    ax.plot(epochs, [h["valid_force_rmse"] for h in history], label="held-out")
    ax.axhline(prior_rmse, color="k", ls="--", lw=0.8, label="prior alone (held-out)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("force RMSE (eV/Å)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("CG force matching (the noise of mapped forces sets the floor)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_fes_comparison(centres: Sequence[np.ndarray], surfaces: dict[str, np.ndarray], names: Sequence[str],
                        path: str | os.PathLike, title: str = "") -> None:
    """2D free-energy surfaces (kJ/mol) side by side on one colour scale, e.g. CG model vs data."""
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.8 * len(surfaces), 4.0), squeeze=False)
    top = max(float(np.nanmax(f)) for f in surfaces.values())
    for ax, (label, f) in zip(axes[0], surfaces.items()):
        mesh = ax.contourf(centres[0], centres[1], f.T, levels=np.linspace(0, top, 21), cmap="viridis")
        ax.set_title(label)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    fig.colorbar(mesh, ax=axes[0].tolist(), label="F (kJ/mol)")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_rdfs(rdfs: dict[str, dict], path: str | os.PathLike, title: str = "radial distribution functions") -> None:
    """Partial RDFs (``observables.rdf`` results by pair) with their block errors as bands."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for pair, data in rdfs.items():
        r, g, err = (np.asarray(data[k]) for k in ("r_A", "g", "g_err"))
        ax.plot(r, g, lw=1.2, label=pair)
        ax.fill_between(r, g - err, g + err, alpha=0.25)
    ax.axhline(1.0, color="0.6", lw=0.6)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title)
    save_figure(fig, path)


def plot_msd(lags_ps: np.ndarray, msd_A2: np.ndarray, fit_ps: Sequence[float], diffusion_1e9: float,
             path: str | os.PathLike, label: str) -> None:
    """Mean-squared displacement (Å²) against lag (ps), with the fitted 6Dt over its window."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(lags_ps, msd_A2, lw=1.2, label=f"MSD {label}")
    t = np.linspace(*fit_ps, 20)
    slope = diffusion_1e9 / 10.0 * 6  # Å²/ps
    anchor = np.interp(fit_ps[0], lags_ps, msd_A2)
    ax.plot(t, anchor + slope * (t - fit_ps[0]), "--", label=f"6Dt, D = {diffusion_1e9:.3g}e-9 m²/s")
    ax.set_xlabel("lag (ps)")
    ax.set_ylabel("MSD (Å²)")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_refine_targets(targets: Sequence[MeasuredTarget], before: dict[str, Sequence[float]],
                        after: dict[str, Sequence[float]] | None, path: str | os.PathLike) -> None:
    """One panel per target: the measurement with its error bars, the simulated average before
    refinement and, with ``after``, that of the refined model's check simulation."""
    fig, axes = plt.subplots(1, len(targets), figsize=(4.8 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        ref, err = np.asarray(target.reference, dtype=float), np.asarray(target.error, dtype=float)
        curves = [("before", before), ("after", after)]
        if target.axis is not None:
            x = np.asarray(target.axis)
            ax.fill_between(x, ref - err, ref + err, color="0.75", label="experiment ± error")
            ax.plot(x, ref, color="k", lw=1.0)
            for (label, values), style in zip(curves, ("--", "-")):
                if values is not None:
                    ax.plot(x, values[target.name], style, lw=1.3, label=label)
            ax.set_xlabel("r (Å)" if target.name.startswith("rdf:") else "")
        else:
            ax.errorbar(range(len(ref)), ref, yerr=err, fmt="ks", capsize=4, label="experiment")
            for k, (label, values) in enumerate(curves):
                if values is not None:
                    ax.plot(np.arange(len(ref)) + 0.15 * (k + 1), values[target.name], "o", label=label)
            ax.set_xticks(range(len(ref)))
            ax.set_xlim(-0.5, len(ref) - 0.3)
        ax.set_title(target.name)
        ax.set_ylabel(target.unit or "value")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_refine_history(history: Sequence[dict], names: Sequence[str], path: str | os.PathLike) -> None:
    """χ² per target, the QM loss ratio (where fused) and the effective sample size against the
    update, resamplings marked."""
    updates = [h["update"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in names:
        axes[0].semilogy(updates, [max(h[f"chi2 {name}"], 1e-12) for h in history], label=f"χ² {name}")
    if "qm_loss_ratio" in history[0]:
        axes[0].semilogy(updates, [h["qm_loss_ratio"] for h in history], "k:", label="QM loss / before")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    axes[1].plot(updates, [h["ess_fraction"] for h in history], color="C4")
    for h in history:
        if h["resampled"]:
            axes[1].axvline(h["update"], color="0.7", lw=0.6)
    axes[1].set_ylabel("N_eff / N (grey: resampled)")
    for ax in axes:
        ax.set_xlabel("update")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def plot_binding(report: dict, path: str | os.PathLike, reference_kjmol: float | None = None) -> None:
    """A binding run at a glance (``binding.analysis.binding_report``): the PMF along the funnel
    axis (kJ/mol, zero on the unbound plateau) with the bound and unbound regions shaded, and
    ΔG°bind against simulated time."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    z = np.array(report["pmf"]["z_A"])
    w = np.array([np.nan if v is None else v for v in report["pmf"]["W_kjmol"]], dtype=float)
    left.plot(z, w, color="C0")
    left.axvspan(z.min(), report["bound_z_A"], color="C2", alpha=0.15, label="bound")
    left.axvspan(*report["unbound_z_A"], color="C1", alpha=0.15, label="unbound")
    left.set_xlabel("z along the host axis (Å)")
    left.set_ylabel("W(z) (kJ/mol)")
    left.legend()
    left.grid(alpha=0.3)
    curve = np.array(report["curve"], dtype=float)
    right.plot(curve[:, 0], curve[:, 1], marker="o", ms=3)
    if reference_kjmol is not None:
        right.axhline(reference_kjmol, color="k", ls="--", lw=0.8, label="reference")
        right.legend()
    right.set_xlabel("simulated time (ns)")
    right.set_ylabel("ΔG°bind (kJ/mol)")
    right.grid(alpha=0.3)
    verdict = "converged" if report["converged"] else f"UNCONVERGED: {report['reason']}"
    right.set_title(verdict if len(verdict) < 70 else verdict[:67] + "...", fontsize=9,
                    color="k" if report["converged"] else "C3")
    fig.suptitle(f"ΔG°bind = {report['dG_kjmol']:.1f} ± {report['dG_err_kjmol']:.1f} kJ/mol", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
