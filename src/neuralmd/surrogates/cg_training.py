"""Force-matching training of a :class:`~.coarse_grain.CGPotential` on mapped all-atom data.

The data are split in time: the last ``valid_fraction`` of the frames is held out (consecutive
frames are correlated, so a random split would leak). The prior is fitted on the training part
by Boltzmann inversion, then the network learns the rest of the mapped forces. Each epoch ends
with a checkpoint, so a killed run resumes where it stopped; the model with the lowest held-out
force error is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import load_config, save_config
from ..errors import InputError
from ..io_utils import atomic_save, atomic_write_json
from ..progress import progress_bar
from ..rundir import CHECKPOINT
from ..threads import set_threads
from ..units import force_factor
from ..models.coarse_grain import CGFeatures, CGPotential, Prior
from .coarse_grain import CGData, Mapping, load_cg_data

SETTINGS = "cg.toml"


@dataclass
class CGTrainSettings:
    """What defines a CG training run (stored as cg.toml). Units in the names."""

    coords: str
    forces: str
    force_unit: str = "kcal/mol/A"
    mapping: str = ""
    bead_elements: list[str] = field(default_factory=list)
    #: names of the torsions of consecutive bead quadruplets (0-1-2-3, 1-2-3-4, ...), for analysis
    torsion_names: list[str] = field(default_factory=list)
    temperature_K: float = 300.0
    #: Fourier order of the torsion terms of the prior (Boltzmann inversion of each torsion's
    #: distribution); 0: CGnet's prior of bonds, angles and repulsion only
    prior_torsion_order: int = 4
    #: one 2D Fourier surface -k_BT ln p(t0, t1) for the first two torsions instead of two 1D series
    prior_torsion_pair: bool = False
    valid_fraction: float = 0.2
    hidden: list[int] = field(default_factory=lambda: [128, 128, 128])
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10
    seed: int = 0
    threads: int = 0
    start_frames: int = 64

    def validate(self) -> None:
        if not 0 < self.valid_fraction < 1:
            raise InputError(f"valid_fraction: {self.valid_fraction}; expected between 0 and 1")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise InputError("epochs, batch_size and patience must be >= 1")
        if self.prior_torsion_order < 0:
            raise InputError(f"prior_torsion_order: {self.prior_torsion_order}; expected >= 0")
        if not self.temperature_K > 0:
            raise InputError(f"temperature_K: {self.temperature_K}; expected > 0")
        force_factor(self.force_unit)

    def load_data(self) -> CGData:
        mapping = Mapping.from_toml(self.mapping) if self.mapping else None
        return load_cg_data(self.coords, self.forces, self.force_unit, mapping, self.bead_elements or None)

    def torsions(self, n_beads: int) -> dict[str, list[int]]:
        """Named quadruplets: ``torsion_names`` in order, else phi/psi for the 5-bead backbone
        mapping of a dipeptide (C, N, CA, C, N), else t0, t1, ..."""
        quads = [[i, i + 1, i + 2, i + 3] for i in range(n_beads - 3)]
        names = self.torsion_names or (["phi", "psi"] if n_beads == 5 else [f"t{i}" for i in range(len(quads))])
        if len(names) > len(quads):
            raise InputError(f"torsion_names: {len(names)} names for {len(quads)} torsions of {n_beads} beads")
        return dict(zip(names, quads))


def split(n_frames: int, valid_fraction: float) -> tuple[slice, slice]:
    """Training frames first, the last ``valid_fraction`` held out."""
    n_valid = max(1, int(round(n_frames * valid_fraction)))
    if n_frames - n_valid < 2:
        raise InputError(f"{n_frames} frames: too few to hold out {valid_fraction:.0%} for validation")
    return slice(0, n_frames - n_valid), slice(n_frames - n_valid, n_frames)


def build_model(settings: CGTrainSettings, data: CGData, train: slice) -> CGPotential:
    """Prior fitted to the training frames, network input standardised on them."""
    features = CGFeatures(data.coords.shape[1])
    prior = Prior.fit(features, data.coords[train], settings.temperature_K, settings.prior_torsion_order,
                      settings.prior_torsion_pair)
    with torch.no_grad():
        z = features.network_input(features(torch.as_tensor(data.coords[train], dtype=torch.float64)))
    torch.manual_seed(settings.seed)
    return CGPotential(data.elements, prior.settings(), z.mean(0).tolist(), z.std(0).clamp_min(1e-6).tolist(),
                       settings.hidden, settings.temperature_K, settings.torsions(data.coords.shape[1]))


def force_rmse(model: CGPotential, coords: torch.Tensor, forces: torch.Tensor, batch_size: int = 1024) -> float:
    """Root-mean-square force error (eV/Å) over all components."""
    sq = 0.0
    for start in range(0, len(coords), batch_size):
        pred = model.forces(coords[start : start + batch_size]).detach()
        sq += float((pred - forces[start : start + batch_size]).pow(2).sum())
    return (sq / forces.numel()) ** 0.5


class CGTrainer:
    """Force matching with Adam and a cosine learning rate, one checkpoint per epoch."""

    def __init__(self, settings: CGTrainSettings, run_dir: str | Path, progress: bool = True) -> None:
        settings.validate()
        set_threads(settings.threads or None)
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.progress = progress
        data = settings.load_data()
        train, valid = split(len(data.coords), settings.valid_fraction)
        self.model = build_model(settings, data, train)
        dtype = self.model.dtype
        self.train_x = torch.as_tensor(data.coords[train], dtype=dtype)
        self.train_f = torch.as_tensor(data.forces[train], dtype=dtype)
        self.valid_x = torch.as_tensor(data.coords[valid], dtype=dtype)
        self.valid_f = torch.as_tensor(data.forces[valid], dtype=dtype)
        rng = np.random.default_rng(settings.seed)
        picks = rng.choice(len(self.train_x), size=min(settings.start_frames, len(self.train_x)), replace=False)
        self.model.start_positions = data.coords[train][np.sort(picks)]
        self.optimizer = torch.optim.Adam(self.model.net.parameters(), lr=settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"valid_rmse": float("inf"), "epoch": 0, "state": None}
        self.seconds = 0.0
        with self.model.prior_only():
            self.prior_rmse = force_rmse(self.model, self.valid_x, self.valid_f)

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True) -> "CGTrainer":
        """Continue the run in ``run_dir`` from its last epoch checkpoint."""
        run_dir = Path(run_dir)
        path = run_dir / CHECKPOINT
        if not path.is_file():
            raise InputError(f"{path}: no CG training checkpoint to resume from")
        trainer = cls(load_config(CGTrainSettings, run_dir / SETTINGS), run_dir, progress)
        ckpt = torch.load(path, weights_only=True)
        trainer.model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.generator.set_state(ckpt["generator"])
        trainer.epoch, trainer.history, trainer.best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        trainer.seconds = ckpt["seconds"]
        return trainer

    def _lr(self) -> float:
        return self.settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * self.epoch / self.settings.epochs)))

    def _epoch(self) -> float:
        """One pass over the training frames; returns the mean batch force RMSE (eV/Å)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        order = torch.randperm(len(self.train_x), generator=self.generator)
        losses = []
        self.model.train()
        for start in range(0, len(order), self.settings.batch_size):
            idx = order[start : start + self.settings.batch_size]
            loss = (self.model.forces(self.train_x[idx], create_graph=True) - self.train_f[idx]).pow(2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.model.eval()
        return float(np.mean(losses)) ** 0.5

    def _save_checkpoint(self) -> None:
        atomic_save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "generator": self.generator.get_state(), "epoch": self.epoch, "history": self.history,
                     "best": self.best, "seconds": self.seconds}, self.run_dir / CHECKPOINT)

    def run(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``patience`` epochs without improvement; write model.pt
        (the best epoch), prior.pt (its prior alone), history.json, learning_curve.png and
        results.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.settings, self.run_dir / SETTINGS)
        s = self.settings
        with progress_bar("CG force matching", self.progress) as bar:
            task = bar.add_task("cg", total=s.epochs, completed=self.epoch, status="")
            while self.epoch < s.epochs and self.epoch - self.best["epoch"] < s.patience:
                t0 = time.perf_counter()
                train_rmse = self._epoch()
                valid_rmse = force_rmse(self.model, self.valid_x, self.valid_f)
                self.epoch += 1
                self.seconds += time.perf_counter() - t0
                self.history.append({"epoch": self.epoch, "train_force_rmse": train_rmse, "valid_force_rmse": valid_rmse})
                if valid_rmse < self.best["valid_rmse"]:
                    self.best = {"valid_rmse": valid_rmse, "epoch": self.epoch,
                                 "state": {k: v.clone() for k, v in self.model.state_dict().items()}}
                self._save_checkpoint()
                bar.update(task, completed=self.epoch,
                           status=f"valid force RMSE {valid_rmse:.4f} eV/Å (prior alone {self.prior_rmse:.4f})")
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        from ..analysis.plots import plot_cg_learning_curve

        self.model.load_state_dict(self.best["state"])
        unit = self.settings.force_unit
        to_unit = 1.0 / force_factor(unit)
        results = {
            "epochs": self.epoch, "best_epoch": self.best["epoch"], "train_seconds": round(self.seconds, 1),
            "train_frames": len(self.train_x), "valid_frames": len(self.valid_x),
            "valid_force_rmse_eV_per_A": {"prior": self.prior_rmse, "model": self.best["valid_rmse"]},
            f"valid_force_rmse_{unit.replace('/', '_per_')}": {"prior": self.prior_rmse * to_unit,
                                                               "model": self.best["valid_rmse"] * to_unit},
            "settings": asdict(self.settings),
        }
        self.model.save(self.run_dir / "model.pt", extra={"results": results})
        with self.model.prior_only():  # the prior alone, as a model file: the baseline to compare with
            self.model.save(self.run_dir / "prior.pt", extra={"results": results})
        atomic_write_json(self.history, self.run_dir / "history.json")
        plot_cg_learning_curve(self.history, self.prior_rmse, self.run_dir / "learning_curve.png")
        atomic_write_json(results, self.run_dir / "results.json")
        return results
