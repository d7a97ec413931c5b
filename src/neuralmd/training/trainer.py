"""Training a NeuralPotential on energies and forces.

Loss: ``energy_weight * MSE(E/N) + force_weight * L(F)`` in eV and eV/Å, where L is twice the
Huber loss (quadratic below ``huber_delta``, linear above: it equals the MSE for small errors
and lets a few large ones pull less) or the MSE (``force_loss``). AdamW, an
exponential moving average (EMA) of the weights that is what gets validated and saved,
and a learning-rate schedule: cosine decay over a time budget (or max_steps) or
ReduceLROnPlateau on the validation loss; early stopping, checkpoints every N steps.

Exact resume: the order of frames at step ``s`` is a function of the seed and ``s`` only (one
seeded permutation per epoch), and the checkpoint holds weights, EMA, optimiser, scheduler and
history, so a run killed and resumed reaches the same step with identical weights as one that
was never interrupted.
"""

from __future__ import annotations

import copy
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import load_config, save_config
from ..data.dataset import Batch, FrameDataset, reference_energies, virial_per_atom
from ..data.io import read_frames
from ..errors import InputError, TrainingError
from ..io_utils import atomic_save, atomic_write_json
from ..models.neural import ARCHITECTURES, REPULSIONS, NeuralPotential
from ..models.repulsion import covalent_switch
from ..progress import progress_bar
from ..rundir import CHECKPOINT, refuse_existing
from ..threads import set_threads
from .metrics import baseline_metrics, evaluate

MODEL = "model.pt"


@dataclass
class TrainConfig:
    """Options of ``neuralmd train`` (units in the names; energies eV, forces eV/Å).

    The defaults are the best settings measured (benchmarks/forcefield_rmd17.py, rMD17 ethanol,
    see benchmarks/RESULTS.md): TensorNet, 64 features, 2 interactions, batch 8, learning rate
    3e-3, the Huber force loss, a ZBL repulsion below the training data's shortest distances; the
    command line and the benchmarks all take them from here."""

    #: training frames: one path or several (files or DeePMD folders), read in this order
    train: str | list[str] = field(default_factory=list)
    #: weight of each ``train`` path's frames in the loss (empty: all 1): per-system weighting
    train_weights: list[float] = field(default_factory=list)
    valid: str | list[str] = field(default_factory=list)
    valid_fraction: float = 0.05
    energy_unit: str = ""  # "" = the format's own unit (eV for extxyz, DeePMD, ase.db)
    force_unit: str = ""
    isolated_atoms: str = ""
    #: network: "tensornet", "painn" (neuralmd.models.neural.ARCHITECTURES) or "auto"
    #: (:func:`default_architecture`: TensorNet for molecules, PaiNN for periodic frames). On rMD17
    #: ethanol after 3 minutes on 2 threads (benchmarks/extrapolation_sweep.py) TensorNet's test
    #: force MAE was 10.1 meV/Å against PaiNN's 13.6-16.2 and its normal-mode scans were closer
    #: to DFT; PaiNN's energy+forces call is 2-3x cheaper on a molecule and 3x on water boxes of
    #: 192-12,288 atoms, with less than half the memory (TensorNet's per-edge 3x3 tensors;
    #: benchmarks/network_cost.py), and it is what benchmarks/water.py measured
    architecture: str = "auto"
    #: short-range repulsion added to the network: "zbl" or "none"; a Δ-learning model
    #: (``baseline``) never gets one, its baseline already repels
    repulsion: str = "zbl"
    #: where the repulsion of each pair of elements ends: "data", at the shortest distance of
    #: that pair in the training frames (the sum of covalent radii for pairs closer than 3 Å in
    #: none), so it covers what the data never saw; or "covalent", at the sum of covalent radii
    repulsion_range: str = "data"
    features: int = 64
    interactions: int = 2
    cutoff_A: float = 5.0
    num_basis: int = 16
    dtype: str = "float32"
    #: frames per training step; 0: from the frames' size (:func:`default_batch_size`: 8 for
    #: molecules, fewer for large periodic frames)
    batch_size: int = 0
    lr: float = 3e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.0
    energy_weight: float = 1.0
    force_weight: float = 100.0
    #: weight of the virial-per-atom MSE (eV²) on frames that carry a stress; as DeePMD-kit's
    #: limit_pref_v = limit_pref_e, the same scale as the energy per atom
    virial_weight: float = 1.0
    #: "huber" or "mse". On rMD17 ethanol (3-minute budget, test force MAE) Huber with δ 0.02 eV/Å
    #: gave 13.9 meV/Å against 16.4 for the MSE (δ 0.01: 14.5, δ 0.05: 15.1)
    force_loss: str = "huber"
    huber_delta: float = 0.02  # eV/Å
    ema_decay: float = 0.99
    max_steps: int = 200_000
    time_budget_min: float = 0.0
    eval_every: int = 100
    checkpoint_every: int = 100
    lr_schedule: str = "auto"  # "plateau", "cosine", or "auto": cosine over a time budget, else plateau
    lr_patience: int = 5
    #: plateau schedule: evaluations without improvement before early stopping. A cosine schedule
    #: runs its planned course (its learning rate is high on purpose early on, where the
    #: validation error stalls for a while: a 40-minute budget stopped after 3.5 minutes)
    patience: int = 25
    seed: int = 0
    threads: int = 0
    init_model: str = ""  # warm start: begin from this model file's weights and normalisation
    baseline: str = ""  # Δ-learning: xtb, gfn1 or openmm:FILE; the network learns labels minus baseline

    def validate(self) -> None:
        checks = [
            (self.batch_size >= 0, f"batch_size {self.batch_size}: expected frames per step >= 1, or 0 to "
                                   f"choose from the frames' size"),
            (self.architecture in ("auto", *ARCHITECTURES),
             f"architecture {self.architecture!r}: expected auto or one of {', '.join(ARCHITECTURES)}"),
            (self.repulsion in ("none", *REPULSIONS), f"repulsion {self.repulsion!r}: expected none or "
                                                      f"{', '.join(REPULSIONS)}"),
            (self.repulsion_range in ("data", "covalent"),
             f"repulsion_range {self.repulsion_range!r}: expected data or covalent"),
            (self.features >= 1 and self.interactions >= 1 and self.num_basis >= 1,
             f"features {self.features}, interactions {self.interactions}, num_basis {self.num_basis}: each must be >= 1"),
            (0 < self.valid_fraction < 1 or bool(self.valid), f"valid_fraction {self.valid_fraction}: expected in (0, 1)"),
            (self.energy_weight >= 0 and self.force_weight >= 0 and self.energy_weight + self.force_weight > 0,
             "energy_weight and force_weight must be >= 0, not both 0"),
            (self.virial_weight >= 0, "virial_weight must be >= 0"),
            (not self.train_weights or len(self.train_weights) == len(paths(self.train)),
             f"{len(self.train_weights)} train weights for {len(paths(self.train))} train paths; give one per "
             f"--train or none"),
            (all(0 < w < float("inf") for w in self.train_weights),
             f"train weights {self.train_weights}: each must be > 0 and finite"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.cutoff_A > 0, "cutoff_A must be > 0"),
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.eval_every >= 1 and self.checkpoint_every >= 1, "eval_every and checkpoint_every must be >= 1"),
            (self.dtype in ("float32", "float64"), f"dtype must be float32 or float64, not {self.dtype!r}"),
            (self.time_budget_min >= 0, "time_budget_min must be >= 0"),
            (self.force_loss in ("huber", "mse"), f"force_loss must be huber or mse, not {self.force_loss!r}"),
            (self.huber_delta > 0, "huber_delta must be > 0"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.lr_schedule in ("auto", "plateau", "cosine"),
             f"lr_schedule must be auto, plateau or cosine, not {self.lr_schedule!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"train options: {message}")


def paths(value: str | list[str]) -> list[str]:
    """The paths of a ``train``/``valid`` setting: one path or a list (empty: none)."""
    if isinstance(value, str):
        return [value] if value else []
    return [v for v in value if v]


def read_sets(value: str | list[str], cfg: TrainConfig, weights: list[float] | None = None) -> list | None:
    """All frames of a ``train``/``valid`` setting, each file with the config's units and, with a
    baseline, labels minus the baseline's; each path's frames carry its weight in
    ``info["weight"]`` when ``weights`` are given. None when no path is given."""
    units = {"energy_unit": cfg.energy_unit or None, "force_unit": cfg.force_unit or None}
    frames = []
    for k, path in enumerate(paths(value)):
        read = read_frames(path, **units)
        read = residual_labels(read, cfg.baseline, path) if cfg.baseline else read
        if weights:
            for atoms in read:
                atoms.info["weight"] = float(weights[k])
        frames += read
    return frames or None


def load_data(cfg: TrainConfig) -> tuple[FrameDataset, FrameDataset]:
    """Training and validation sets from the config (split off when no valid file is given);
    with a baseline, their labels minus the baseline's."""
    data = FrameDataset(read_sets(cfg.train, cfg, cfg.train_weights) or [])
    valid = read_sets(cfg.valid, cfg)
    if valid is not None:
        return data, FrameDataset(valid)
    return data.split(cfg.valid_fraction, cfg.seed)


def residual_labels(frames: list, baseline: str, source: str) -> list:
    """Copies of ``frames`` whose energy and forces are the labels minus the baseline's
    (``baseline`` as :func:`~neuralmd.models.delta.baseline_from_spec` reads it)."""
    from ..models.delta import baseline_from_spec

    labeler = baseline_from_spec(baseline)
    result = labeler.label(frames, progress=True)
    if result.failures:
        f = result.failures[0]
        raise InputError(f"{source}: frame {f.index}: the {baseline} baseline failed ({f.reason}); "
                         f"{len(result.failures)} frame(s) in all")
    out = []
    for atoms, base in zip(frames, result.frames):
        residual = atoms.copy()
        residual.info["energy"] = atoms.info["energy"] - base.info["energy"]
        residual.arrays["forces"] = atoms.arrays["forces"] - base.arrays["forces"]
        out.append(residual)
    return out


def repulsion_spec(cfg: TrainConfig, train: FrameDataset) -> dict[str, Any]:
    """The repulsion a new model gets (see ``TrainConfig.repulsion_range``)."""
    if cfg.repulsion_range == "covalent":
        return {"name": cfg.repulsion}
    elements = train.elements
    shortest = train.shortest_distances(elements)
    switch = np.where(np.isfinite(shortest), shortest, covalent_switch(elements).numpy())
    return {"name": cfg.repulsion, "switch_A": np.round(switch, 4).tolist()}


def build_model(cfg: TrainConfig, train: FrameDataset) -> NeuralPotential:
    """A fresh model with reference energies, shift and scale fitted to the training set (the
    architecture ``auto`` resolved by :func:`default_architecture`)."""
    architecture = default_architecture(train) if cfg.architecture == "auto" else cfg.architecture
    elements = train.elements
    isolated = read_frames(cfg.isolated_atoms, require_labels=False) if cfg.isolated_atoms else None
    e0 = reference_energies(train.frames, elements, isolated, source=cfg.isolated_atoms)
    shift = train.mean_residual_per_atom(elements, e0)
    torch.manual_seed(cfg.seed)
    repulsion = None if cfg.repulsion == "none" or cfg.baseline else repulsion_spec(cfg, train)
    model = NeuralPotential(elements, e0, scale=train.force_rms(), shift=shift, architecture=architecture,
                            repulsion=repulsion, features=cfg.features, interactions=cfg.interactions,
                            cutoff=cfg.cutoff_A, num_basis=cfg.num_basis)
    return model.to(getattr(torch, cfg.dtype))


def distributed_context() -> tuple[int, int]:
    """(world size, rank): under ``torchrun`` (WORLD_SIZE > 1) the gloo process group is
    started here; otherwise (1, 0)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return world, dist.get_rank()


def warm_start(cfg: TrainConfig, train: FrameDataset) -> NeuralPotential:
    """The model in ``cfg.init_model`` (weights, elements, normalisation), to train further."""
    from ..models.neural import load_network

    model = load_network(cfg.init_model, dtype=getattr(torch, cfg.dtype))
    for atoms in train.frames:
        model.check_elements(atoms.numbers, where=f"{', '.join(paths(cfg.train))} (warm start from {cfg.init_model})")
    return model


def loss_fn(model: NeuralPotential, batch: Batch, cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Energy-per-atom MSE + force MSE or Huber loss (+ virial-per-atom MSE on the frames that
    carry a stress), each a mean weighted by the frames' weights, and its parts (RMSEs)."""
    with_stress = batch.has_stress is not None and cfg.virial_weight > 0
    out = model(batch.atoms, stress=with_stress, create_graph=model.training)
    n = batch.atoms.counts.to(torch.float64)
    w = batch.weight.to(out["energy"].device)
    w_atom = w[batch.atoms.system].unsqueeze(-1)  # each force component weighs as its frame

    def weighted(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        weights = weights.expand_as(values).to(torch.float64)
        return (weights * values.to(torch.float64)).sum() / weights.sum()

    e_mse = weighted(((out["energy"] - batch.energy) / n).pow(2), w)
    f_mse = weighted((out["forces"] - batch.forces).pow(2), w_atom)
    if cfg.force_loss == "huber":  # 2x: equal to the MSE for errors below huber_delta
        huber = torch.nn.functional.huber_loss(out["forces"], batch.forces, delta=cfg.huber_delta, reduction="none")
        f_term = 2 * weighted(huber, w_atom)
    else:
        f_term = f_mse
    loss = cfg.energy_weight * e_mse + cfg.force_weight * f_term
    d = lambda t: float(t.detach())  # noqa: E731
    parts = {"energy_rmse_per_atom": math.sqrt(d(e_mse)), "force_rmse": math.sqrt(d(f_mse))}
    if with_stress:
        v_mse = virial_per_atom_mse(out["stress"], batch)
        loss = loss + cfg.virial_weight * v_mse
        parts["virial_rmse_per_atom"] = math.sqrt(d(v_mse))
    return loss, {"loss": d(loss), **parts}


def virial_per_atom_mse(stress: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean squared error of the virial per atom, V σ / N (eV), over the components of the
    frames that carry a stress, weighted by the frames' weights: the energy-per-atom scale, so
    one loss weight suits both."""
    mask = batch.has_stress
    squared = virial_per_atom(stress.to(torch.float64) - batch.stress, batch.atoms)[mask].pow(2)
    weights = batch.weight[mask].view(-1, 1, 1).expand_as(squared)
    return (weights * squared).sum() / weights.sum()


def validation_loss(metrics: dict[str, float], energy_weight: float, force_weight: float,
                    virial_weight: float = 0.0) -> float:
    """The validation loss in the units of the training loss (RMSE-based, eV and eV/Å) from
    :func:`~neuralmd.training.metrics.error_metrics` output (the virial term where the
    metrics have one)."""
    loss = (energy_weight * (metrics["energy_rmse_mev_per_atom"] / 1000) ** 2
            + force_weight * (metrics["force_rmse_mev_per_A"] / 1000) ** 2)
    if "virial_rmse_mev_per_atom" in metrics:
        loss += virial_weight * (metrics["virial_rmse_mev_per_atom"] / 1000) ** 2
    return loss


#: atoms per training step that the frames-per-step default aims at, at most
#: :data:`MAX_DEFAULT_BATCH` frames: at equal wall-clock time one 192-atom water frame per step
#: trained better than 2 or 4 (benchmarks/water.py --only batch), 8 frames of 9-27-atom molecules
#: are the rMD17 benchmarks' setting
ATOMS_PER_STEP = 192
MAX_DEFAULT_BATCH = 8


#: what ``architecture = "auto"`` trains on molecules and on periodic frames
MOLECULE_ARCHITECTURE, PERIODIC_ARCHITECTURE = "tensornet", "painn"


def default_architecture(data: FrameDataset) -> str:
    """The network for ``data``: :data:`PERIODIC_ARCHITECTURE` if any frame is periodic, else
    :data:`MOLECULE_ARCHITECTURE`."""
    periodic = any(bool(frame.pbc.any()) for frame in data.frames)
    return PERIODIC_ARCHITECTURE if periodic else MOLECULE_ARCHITECTURE


def default_batch_size(data: FrameDataset) -> int:
    """Frames per training step for ``data``: ATOMS_PER_STEP / mean atoms per frame, rounded,
    within 1 and MAX_DEFAULT_BATCH."""
    mean_atoms = sum(len(frame) for frame in data.frames) / max(len(data), 1)
    return max(1, min(MAX_DEFAULT_BATCH, round(ATOMS_PER_STEP / max(mean_atoms, 1.0))))


def batch_indices(step: int, n_frames: int, batch_size: int, seed: int) -> list[int]:
    """Frame indices of training step ``step``: epoch-wise seeded permutations, so resuming at
    any step sees the same data as an uninterrupted run."""
    per_epoch = math.ceil(n_frames / batch_size)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_frames, generator=gen)
    return order[k * batch_size : (k + 1) * batch_size].tolist()


class Trainer:
    """Trains into a run directory: config.toml, checkpoint.pt, model.pt (best EMA weights),
    history.json, results.json, learning_curve.png.

    Args:
        run_dir: output folder. ``resume=True`` continues from its checkpoint.
        progress: show a live progress bar.
        on_step: optional hook called with the step number after each step (tests use it).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 on_step: Callable[[int], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.on_step = on_step
        self.threads = set_threads(cfg.threads or None)
        # data parallel under torchrun: each rank takes its share of every batch, DDP averages
        # the gradients, rank 0 alone writes files
        self.world, self.rank = distributed_context()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.train_data, self.valid_data = load_data(cfg)
        if cfg.batch_size == 0:  # stored resolved in config.toml, so a resume uses the same
            per_rank = math.ceil(default_batch_size(self.train_data) / self.world)  # torchrun: a share per rank
            cfg.batch_size = per_rank * self.world
        checkpoint_path = self.run_dir / CHECKPOINT
        if resume:
            if not checkpoint_path.is_file():
                raise InputError(f"{checkpoint_path}: no checkpoint to resume from")
            ckpt = torch.load(checkpoint_path, weights_only=True)
            self.model = NeuralPotential.from_metadata(ckpt["model_metadata"])
        else:
            refuse_existing(self.run_dir, "a training run")
            self.model = warm_start(cfg, self.train_data) if cfg.init_model else build_model(cfg, self.train_data)
            cfg.architecture = self.model.architecture  # "auto" or a warm start's network, stored as built
            if cfg.baseline:
                from ..models.delta import baseline_from_spec, baseline_settings

                self.model.baseline = baseline_settings(baseline_from_spec(cfg.baseline))
            ckpt = None
        self.ddp = None
        if self.world > 1:
            if cfg.batch_size % self.world:
                raise InputError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} torchrun processes")
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.ema = copy.deepcopy(self.model)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=True)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=cfg.lr_patience, min_lr=cfg.min_lr)
        schedule = cfg.lr_schedule
        if schedule == "auto":
            schedule = "cosine" if cfg.time_budget_min > 0 else "plateau"
        self.cosine = schedule == "cosine"
        self.step = 0
        self.elapsed = 0.0
        self.best = math.inf
        self.bad_evals = 0
        self.history: list[dict[str, float]] = []
        if ckpt is not None:
            self._restore(ckpt)
        elif self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.toml")

    @classmethod
    def resume(cls, run_dir: str | Path, progress: bool = True, **overrides: Any) -> "Trainer":
        """Continue the run in ``run_dir`` with its stored config (``overrides`` replace options,
        e.g. a longer ``max_steps``). A run stopped before its first checkpoint starts over from
        that config (it had nothing else to keep)."""
        path = Path(run_dir) / "config.toml"
        cfg = load_config(TrainConfig, path)
        stored = tomllib.loads(path.read_text())
        if "force_loss" not in stored:  # runs from before the Huber loss used the MSE
            cfg.force_loss = "mse"
        if "repulsion" not in stored:  # and those from before the repulsion had none
            cfg.repulsion = "none"
        if "architecture" not in stored:  # and those from before TensorNet were PaiNNs
            cfg.architecture = "painn"
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cls(cfg, run_dir, resume=(Path(run_dir) / CHECKPOINT).is_file(), progress=progress)

    # --- state ------------------------------------------------------------------------
    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.elapsed = ckpt["step"], ckpt["elapsed"]
        self.best, self.bad_evals, self.history = ckpt["best"], ckpt["bad_evals"], ckpt["history"]

    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        atomic_save({
            "model_metadata": self.model.metadata(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "elapsed": self.elapsed, "best": self.best,
            "bad_evals": self.bad_evals, "history": self.history,
        }, self.run_dir / CHECKPOINT)

    # --- loop -------------------------------------------------------------------------
    def _update_ema(self) -> None:
        d = self.cfg.ema_decay
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - d)

    def _cosine_lr(self) -> float:
        """Cosine decay from lr to min_lr over the time budget (or max_steps without one)."""
        cfg = self.cfg
        if cfg.time_budget_min > 0:
            progress = self.elapsed / (cfg.time_budget_min * 60)
        else:
            progress = self.step / cfg.max_steps
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _train_step(self) -> dict[str, float]:
        cfg = self.cfg
        if self.cosine:
            for group in self.optimizer.param_groups:
                group["lr"] = self._cosine_lr()
        idx = batch_indices(self.step, len(self.train_data), cfg.batch_size, cfg.seed)[self.rank :: self.world]
        batch = self.train_data.collate(idx, dtype=self.model.dtype)
        self.model.train()
        loss, parts = loss_fn(self.ddp or self.model, batch, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self._update_ema()
        return parts

    def _validate(self, train_parts: dict[str, float]) -> dict[str, float]:
        self.ema.eval()
        metrics, _ = evaluate(self.ema, self.valid_data, batch_size=64)
        if not all(math.isfinite(metrics[k]) for k in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_A")):
            raise TrainingError(f"training diverged: non-finite validation error at step {self.step}; "
                                f"lower the learning rate (now {self.optimizer.param_groups[0]['lr']:.1e})")
        val_loss = validation_loss(metrics, self.cfg.energy_weight, self.cfg.force_weight, self.cfg.virial_weight)
        if not self.cosine:
            self.scheduler.step(val_loss)
        record = {"step": self.step, "seconds": round(self.elapsed, 2), "lr": self.optimizer.param_groups[0]["lr"],
                  "train_loss": train_parts["loss"], "valid_loss": val_loss, **metrics}
        self.history.append(record)
        if val_loss < self.best:
            self.best, self.bad_evals = val_loss, 0
            if self.is_main:
                self.ema.save(self.run_dir / MODEL, extra={"step": self.step, "valid": metrics})
        else:
            self.bad_evals += 1
        return record

    def _should_stop(self) -> str | None:
        """The stop reason, or None; under torchrun rank 0's decision holds for every rank
        (time budgets are measured per process)."""
        reason = self._stop_reason()
        if self.world > 1:
            import torch.distributed as dist

            flag = torch.tensor([reason is not None], dtype=torch.int32)
            dist.broadcast(flag, 0)
            if bool(flag) and reason is None:
                reason = "stopped with rank 0"
            elif not bool(flag):
                reason = None
        return reason

    def _stop_reason(self) -> str | None:
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            return "max_steps reached"
        if cfg.time_budget_min and self.elapsed >= cfg.time_budget_min * 60:
            return "time budget reached"
        if not self.cosine and self.bad_evals >= cfg.patience:
            return f"early stopping (no improvement in {cfg.patience} evaluations)"
        return None

    def run(self) -> dict[str, Any]:
        """Train until a stop condition; return (and write) the results."""
        cfg = self.cfg
        # with a time budget the bar shows the budget spent; otherwise steps out of max_steps
        budget_s = cfg.time_budget_min * 60
        parts = {"loss": float("nan")}
        with progress_bar("training step {task.fields[step]}", self.progress, counts=False) as bar:
            progress_of = (lambda: min(self.elapsed, budget_s)) if budget_s else (lambda: self.step)
            task = bar.add_task("train", total=budget_s or cfg.max_steps, completed=progress_of(),
                                step=self.step, status="")
            reason = self._should_stop()
            while reason is None:
                t0 = time.perf_counter()
                parts = self._train_step()
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                if self.step % cfg.eval_every == 0:
                    rec = self._validate(parts)
                    status = (f"loss {parts['loss']:.4g} | valid E {rec['energy_mae_mev_per_atom']:.2f} meV/atom"
                              f" F {rec['force_mae_mev_per_A']:.1f} meV/Å | lr {rec['lr']:.1e}")
                    bar.update(task, status=status)
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                bar.update(task, completed=progress_of(), step=self.step)
                if self.on_step is not None:
                    self.on_step(self.step)
                reason = self._should_stop()
        if not self.history or self.history[-1]["step"] != self.step:
            self._validate(parts)
        self.save_checkpoint()
        results = self._finish(reason) if self.is_main else {"stop_reason": reason, "steps": self.step,
                                                              "rank": self.rank}
        if self.world > 1:  # leave together: a rank exiting with gloo threads alive can abort
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
        return results

    def _finish(self, reason: str) -> dict[str, Any]:
        from ..analysis.plots import plot_learning_curve
        from ..models.neural import load_network

        best = load_network(self.run_dir / MODEL)  # a Δ-model's network, scored on the residual labels
        metrics, _ = evaluate(best, self.valid_data, batch_size=64)
        baseline = baseline_metrics(self.train_data, self.valid_data, best.elements, best.e0.numpy())
        results = {
            "stop_reason": reason, "steps": self.step, "train_seconds": round(self.elapsed, 2),
            "threads": self.threads, "train_frames": len(self.train_data), "valid_frames": len(self.valid_data),
            "parameters": sum(p.numel() for p in best.parameters()),
            "valid": metrics, "baseline_valid": baseline, "config": asdict(self.cfg),
        }
        atomic_write_json(self.history, self.run_dir / "history.json")
        atomic_write_json(results, self.run_dir / "results.json")
        plot_learning_curve(self.history, self.run_dir / "learning_curve.png")
        return results

