"""Differentiable trajectory reweighting (DiffTRe; Thaler & Zavadlav, Nat. Commun. 12, 6884
(2021)): refine a potential until its simulated averages match measurements, without
backpropagating through the MD.

Each sampling runs batched replicas with the current parameters θ_s (a normal neuralmd MD run
in ``samples/sample_XXX/``; its first ``equilibration_ps`` are discarded) and keeps the frames
x_t with their energies U_s(x_t). While the parameters move, an average is reweighted,

    ⟨O⟩_θ = Σ_t w_t O(x_t),   w_t = softmax_t(−β (U_θ(x_t) − U_s(x_t))),

which is exact for NVT and for NPT alike (the PV term of the isothermal-isobaric weight does not
depend on θ and cancels between U_θ and U_s), and its gradient reaches θ by autograd through
U_θ. The loss is Σ_targets χ² per point, each point's error the measurement's and the sampled
average's own (from blocks of frames) in quadrature (a finite sampling cannot resolve a curve
better than its own noise, and points measured far more precisely than that would otherwise
pull the fit away from the rest), plus ``qm_weight`` times the usual energy/force loss on
QM frames (divided by its value before refinement, so 1 means "as good as before"). Each update
is one Adam step; the trajectory is reused while the effective sample size
N_eff = exp(−Σ w ln w) (DiffTRe's) stays above ``ess_threshold`` × N, and resampled otherwise.

The gradient is computed in two passes so that memory stays bounded for any number of frames:
U_θ of every frame without a graph gives the weights, the loss and ∂L/∂U_t; then frames are
evaluated again in chunks with a graph and ∂L/∂U_t is pulled back to θ.

Units: Å, eV, K, ps; densities g/cm³.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms

from ..config import save_config
from ..data.dataset import FrameDataset
from ..errors import InputError, NeuralMDError
from ..io_utils import atomic_save, atomic_write_json
from ..md.integrators import check_pressure, check_temperature, check_timestep
from ..md.reporters import read_h5md
from ..md.simulation import MDSettings, Simulation, SimulationUnstable
from ..models.base import Potential
from ..progress import progress_bar
from ..rundir import CHECKPOINT, MD_SETTINGS, RESULTS, RunLock, read_checkpoint
from ..state import AtomsBatch
from ..training.metrics import evaluate
from ..training.trainer import TrainConfig, batch_indices, loss_fn
from ..units import kT_eV
from .targets import Frames, Target

CHECKPOINT_FORMAT = "neuralmd.refine-checkpoint"
CHECKPOINT_VERSION = 1
SETTINGS = "refine.toml"
HISTORY = "history.json"
SAMPLES = "samples"
CHECK_RUN = "check-md"
MODEL = "model.pt"
#: blocks of frames the statistical error of a sampled average comes from
SAMPLING_BLOCKS = 5
#: atoms per chunk of the gradient pass (its graph is what costs memory)
ATOMS_PER_CHUNK = 4096


class RefinementUnstable(NeuralMDError):
    """A sampling blew up; the last model that ran stably was kept as model.pt."""


@dataclass
class RefineSettings:
    """What defines a refinement (stored in ``refine.toml``). Units in the names."""

    #: the model to refine (a neuralmd model file; empty for a potential passed from Python)
    model_path: str = ""
    #: starting structure (one frame, copied to every replica, or one frame per replica)
    structure: str = ""
    #: targets in their command-line form (see :func:`~.targets.parse_target`)
    targets: list[str] = field(default_factory=list)
    rdf_unit: str = "A"
    rdf_error: float = 0.05
    #: r range (Å) of the RDF targets: [start, end], or empty for the file's range cut below
    #: half the box
    rdf_range: list[float] = field(default_factory=list)
    ensemble: str = "npt"
    thermostat: str = "csvr"
    temperature_K: float = 298.0
    pressure_bar: float = 1.0
    timestep_fs: float = 0.5
    friction_per_ps: float = 1.0
    tau_ps: float = 0.1
    tau_p_ps: float = 2.0
    compressibility_per_bar: float = 4.5e-5
    barostat: str = "isotropic"
    replicas: int = 1
    #: production per replica per sampling (ps) and what is discarded before it (ps); each
    #: sampling starts where the previous one ended
    sample_ps: float = 5.0
    equilibration_ps: float = 1.0
    #: time between kept frames (fs)
    frame_every_fs: float = 50.0
    updates: int = 30
    #: Adam's learning rate, decayed by a cosine to ``lr_final_fraction`` × lr over ``updates``
    #: (momentum overshoots the optimum under noisy gradients otherwise)
    lr: float = 1e-4
    lr_final_fraction: float = 0.1
    #: resample when N_eff / N falls below this (chemtrain's default 0.9)
    ess_threshold: float = 0.9
    #: QM frames (files or DeePMD folders) fused into the loss, their weight, frames per update,
    #: and how many of them (a fixed random subset) the before/after errors are measured on.
    #: The QM term is the QM loss over its value before refinement, so at weight 100 a 10 % rise
    #: of the QM loss weighs as much as χ² of 10 per point: experiment is followed while QM
    #: accuracy is kept
    qm_data: list[str] = field(default_factory=list)
    qm_weight: float = 100.0
    qm_batch: int = 2
    qm_eval_frames: int = 100
    #: production of the check simulation with the refined model (ps per replica; 0: none)
    check_ps: float = 5.0
    seed: int = 0

    def validate(self) -> None:
        check_timestep(self.timestep_fs)
        check_temperature(self.temperature_K)
        check_pressure(self.pressure_bar)
        checks = [
            (self.ensemble in ("nvt", "npt"), f"ensemble {self.ensemble!r}: expected nvt or npt"),
            (self.replicas >= 1, f"replicas {self.replicas}: expected >= 1"),
            (self.sample_ps > 0 and self.equilibration_ps >= 0 and self.check_ps >= 0,
             f"sample_ps {self.sample_ps}, equilibration_ps {self.equilibration_ps}, check_ps {self.check_ps}: "
             f"expected > 0, >= 0, >= 0 ps"),
            (self.frame_every_fs >= self.timestep_fs, f"frame_every_fs {self.frame_every_fs}: expected at least "
                                                      f"the timestep ({self.timestep_fs} fs)"),
            (self.sample_ps * 1000 >= 2 * self.frame_every_fs, "sample_ps / frame_every_fs: fewer than 2 frames "
                                                               "per replica"),
            (self.updates >= 0, f"updates {self.updates}: expected >= 0"),
            (self.lr > 0 and 0 < self.lr_final_fraction <= 1,
             f"lr {self.lr}, lr_final_fraction {self.lr_final_fraction}: expected > 0 and in (0, 1]"),
            (0 < self.ess_threshold < 1, f"ess_threshold {self.ess_threshold}: expected in (0, 1)"),
            (self.qm_weight >= 0 and self.qm_batch >= 1 and self.qm_eval_frames >= 1,
             f"qm_weight {self.qm_weight}, qm_batch {self.qm_batch}, qm_eval_frames {self.qm_eval_frames}: "
             f"expected >= 0, >= 1, >= 1"),
            (self.rdf_error > 0 and self.rdf_unit in ("A", "nm"),
             f"rdf_error {self.rdf_error}, rdf_unit {self.rdf_unit!r}: expected an uncertainty > 0 and A or nm"),
            (not self.rdf_range or (len(self.rdf_range) == 2 and 0 <= self.rdf_range[0] < self.rdf_range[1]),
             f"rdf_range {self.rdf_range}: expected START,END in Å with 0 <= START < END"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"refine options: {message}")
        self.md_settings(self.seed, self.sample_ps)  # the samplings' MD settings (thermostat, barostat) are valid

    def md_settings(self, seed: int, production_ps: float) -> MDSettings:
        """The MD settings of one sampling of ``production_ps`` after the equilibration."""
        every = max(1, round(self.frame_every_fs / self.timestep_fs))
        steps = every * math.ceil((self.equilibration_ps + production_ps) * 1000 / self.timestep_fs / every)
        md = MDSettings(ensemble=self.ensemble, thermostat=self.thermostat, timestep_fs=self.timestep_fs,
                        friction_per_ps=self.friction_per_ps, tau_ps=self.tau_ps, tau_p_ps=self.tau_p_ps,
                        compressibility_per_bar=self.compressibility_per_bar, barostat=self.barostat,
                        pressure_bar=[self.pressure_bar], temperature_K=[self.temperature_K], seed=seed,
                        report_every=every, checkpoint_every=every * max(1, 2000 // every), total_steps=steps,
                        structure=self.structure, replicas=self.replicas)
        md.validate()
        return md


def reweighting(u_new: torch.Tensor, u_ref: torch.Tensor, kT: float) -> torch.Tensor:
    """Normalised weights softmax(−(U_new − U_ref)/kT) of frames sampled with U_ref (eV)."""
    return torch.softmax(-(u_new - u_ref) / kT, 0)


def effective_fraction(weights: torch.Tensor) -> float:
    """DiffTRe's effective sample size exp(−Σ w ln w) as a fraction of the number of frames."""
    w = weights.clamp_min(1e-300)
    return float(torch.exp(-(w * torch.log(w)).sum()) / len(w))


def block_error(values: torch.Tensor, blocks: int = SAMPLING_BLOCKS) -> torch.Tensor:
    """Standard error (K,) of the mean of per-frame ``values`` (T, K) from ``blocks`` contiguous
    blocks of frames (correlated frames: the blocks, not the frames, are independent)."""
    means = torch.stack([part.mean(0) for part in torch.tensor_split(values, blocks)])
    return means.std(0) / math.sqrt(blocks)


def frame_energies(potential: Potential, frames: Frames, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Potential energies (eV, float64) of frames ``start:stop``, differentiable w.r.t. the
    potential's parameters where autograd is on."""
    stop = len(frames) if stop is None else stop
    t, n = stop - start, len(frames.numbers)
    dtype = potential.dtype
    batch = AtomsBatch(positions=frames.positions[start:stop].reshape(-1, 3).to(dtype),
                       numbers=frames.numbers.repeat(t), system=torch.arange(t).repeat_interleave(n),
                       cell=frames.cell[start:stop].to(dtype), pbc=frames.pbc.expand(t, 3),
                       masses=frames.masses.repeat(t).to(dtype)).to(device=potential.device)
    return potential(batch, forces=False)["energy"]


def read_frames_of(run: Path, replicas: int, skip_ps: float, timestep_fs: float, masses: torch.Tensor,
                   pbc: torch.Tensor) -> Frames:
    """The frames of every replica's trajectory in the MD run ``run`` after ``skip_ps``."""
    positions, cells, numbers = [], [], None
    for replica in range(replicas):
        for atoms in read_h5md(run / f"traj_{replica:03d}.h5md"):
            if atoms.info["step"] * timestep_fs / 1000 < skip_ps - 1e-9:
                continue
            positions.append(atoms.positions)
            cells.append(atoms.cell.array)
            numbers = atoms.numbers
    return Frames(torch.as_tensor(np.array(positions), dtype=torch.float64),
                  torch.as_tensor(np.array(cells), dtype=torch.float64),
                  torch.as_tensor(numbers, dtype=torch.long), masses, pbc)


class Refinement:
    """A DiffTRe refinement of ``potential`` (its parameters are changed in place).

    Args:
        potential: the potential to refine (any :class:`Potential` whose energy depends on its
            parameters); a :class:`~neuralmd.models.neural.NeuralPotential` is also saved as
            ``model.pt``.
        structure: starting frames (one, copied to every replica, or one per replica).
        targets: the measurements (:mod:`.targets`).
        settings: a :class:`RefineSettings`.
        run_dir: where samples, checkpoints, history, plots and results go.
        qm_data: QM frames fused into the loss (None: experiment only).
        progress: progress bars.
    """

    def __init__(self, potential: Potential, structure: Sequence[Atoms], targets: Sequence[Target],
                 settings: RefineSettings, run_dir: str | Path, qm_data: FrameDataset | None = None,
                 progress: bool = False) -> None:
        settings.validate()
        if not targets:
            raise InputError("refine: no target; give at least one --target")
        frames = list(structure)
        if len(frames) == 1:
            frames = [frames[0].copy() for _ in range(settings.replicas)]
        if len(frames) != settings.replicas or len({len(a) for a in frames}) != 1:
            raise InputError(f"structure: {len(frames)} frame(s) for {settings.replicas} replica(s); give one frame or "
                             f"one per replica, all of the same atoms")
        potential.check_elements(frames[0].numbers, where=settings.structure or "structure")
        for target in targets:
            target.check(frames[0].numbers, frames[0].cell.array, settings.ensemble)
        self.potential, self.targets, self.settings = potential, list(targets), settings
        self.run_dir, self.qm, self.progress = Path(run_dir), qm_data, progress
        self.start = AtomsBatch.from_atoms(frames)
        self.kT = kT_eV(settings.temperature_K)
        self.optimizer = torch.optim.Adam(potential.parameters(), lr=settings.lr)
        self.qm_config = TrainConfig()
        self.qm_eval = None
        if qm_data is not None:
            order = np.random.default_rng(settings.seed).permutation(len(qm_data))[:settings.qm_eval_frames]
            self.qm_eval = FrameDataset([qm_data.frames[k] for k in sorted(order)])
        # the state a checkpoint holds
        self.update = 0
        self.sample_index = -1
        self.history: list[dict[str, Any]] = []
        self.frames: Frames | None = None
        self.u_ref: torch.Tensor | None = None
        self.values: dict[str, torch.Tensor] = {}
        self.sampling_errors: dict[str, torch.Tensor] = {}
        self.before: dict[str, list[float]] = {}
        self.qm_before: dict[str, float] | None = None
        self.qm_loss0 = 1.0
        self.last_good = {"update": 0, "state": self._state_copy()}
        self.md_ps = 0.0
        self.wall_seconds = 0.0

    # --- sampling ------------------------------------------------------------------------
    def _state_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.potential.state_dict().items()}

    def _run_md(self, run: Path, seed: int, production_ps: float) -> None:
        """Sample into ``run`` with the current parameters (continuing the previous sampling's
        end state, or resuming the run itself after a kill); SimulationUnstable if it blows up."""
        if (run / RESULTS).is_file():
            return
        if (run / CHECKPOINT).is_file():
            sim = Simulation.resume(run, self.potential, progress=self.progress)
        else:
            shutil.rmtree(run, ignore_errors=True)
            settings = self.settings.md_settings(seed, production_ps)
            previous = self.run_dir / SAMPLES / f"sample_{self.sample_index:03d}"
            batch = (AtomsBatch(**Simulation.read_checkpoint(previous)["batch"]) if self.sample_index >= 0
                     else self.start)
            run.mkdir(parents=True)
            if hasattr(self.potential, "save"):
                self.potential.save(run / MODEL, extra={"refine_update": self.update})
                settings.model_path = str((run / MODEL).resolve())
            sim = Simulation(self.potential, batch, settings, run_dir=run, progress=self.progress)
            save_config(settings, run / MD_SETTINGS)
        sim.run()
        self.potential.train()  # the engine put it in eval mode; the QM loss trains

    def _frames(self, run: Path) -> Frames:
        s = self.settings
        n = self.start.n_atoms // s.replicas
        return read_frames_of(run, s.replicas, s.equilibration_ps, s.timestep_fs, self.start.masses[:n], self.start.pbc[0])

    def _sample(self) -> None:
        """A new sampling with the current parameters: frames, their energies and observables."""
        index = self.sample_index + 1
        run = self.run_dir / SAMPLES / f"sample_{index:03d}"
        self._guarded_md(run, self.settings.seed + 1009 * index, self.settings.sample_ps)
        self.frames = self._frames(run)
        self.sample_index = index
        self.md_ps += self.settings.replicas * (self.settings.equilibration_ps + self.settings.sample_ps)
        self.last_good = {"update": self.update, "state": self._state_copy()}
        with torch.no_grad():
            self.u_ref = self._energies()
        self.values = {t.name: t.frame_values(self.frames) for t in self.targets}
        self.sampling_errors = {name: block_error(v) for name, v in self.values.items()}
        if index == 0:
            self.before = {t.name: self.values[t.name].mean(0).tolist() for t in self.targets}

    def _guarded_md(self, run: Path, seed: int, production_ps: float) -> None:
        try:
            self._run_md(run, seed, production_ps)
        except SimulationUnstable as exc:
            kept = self.last_good
            self.potential.load_state_dict(kept["state"])
            if hasattr(self.potential, "save"):
                self.potential.save(self.run_dir / MODEL, extra={"refine_update": kept["update"]})
            message = (f"the model after update {self.update} is unstable in MD ({run}: {exc}); model.pt is the model "
                       f"of update {kept['update']}, the last one that ran stably (try a smaller --lr)")
            atomic_write_json({"stop_reason": message, "updates": self.update, "history": self.history},
                              self.run_dir / RESULTS)
            raise RefinementUnstable(message) from None

    def _chunks(self) -> list[tuple[int, int]]:
        """(start, stop) of the chunks of frames of about :data:`ATOMS_PER_CHUNK` atoms."""
        chunk, total = max(1, ATOMS_PER_CHUNK // len(self.frames.numbers)), len(self.frames)
        return [(s, min(s + chunk, total)) for s in range(0, total, chunk)]

    def _energies(self) -> torch.Tensor:
        """U_θ (T,) eV of the current frames, in chunks, without a graph."""
        return torch.cat([frame_energies(self.potential, self.frames, s, e) for s, e in self._chunks()]).detach()

    # --- one update ------------------------------------------------------------------------
    def experimental_loss(self, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Σ χ² of the targets reweighted to energies ``u`` (T,) eV, each target's average and
        the weights."""
        w = reweighting(u, self.u_ref, self.kT)
        means = {t.name: w @ self.values[t.name] for t in self.targets}
        loss = sum(t.chi2(means[t.name], self.sampling_errors[t.name]) for t in self.targets)
        return loss, means, w

    def _step(self) -> dict[str, Any]:
        with torch.no_grad():
            u = self._energies()
        ess = effective_fraction(reweighting(u, self.u_ref, self.kT))
        resampled = ess < self.settings.ess_threshold
        if resampled:
            self._sample()
            u, ess = self.u_ref.clone(), 1.0
        u_leaf = u.clone().requires_grad_(True)
        loss, means, _ = self.experimental_loss(u_leaf)
        (du,) = torch.autograd.grad(loss, u_leaf)
        self.optimizer.zero_grad(set_to_none=True)
        for s, stop in self._chunks():
            frame_energies(self.potential, self.frames, s, stop).backward(du[s:stop])
        entry: dict[str, Any] = {"update": self.update + 1, "sample": self.sample_index, "resampled": resampled,
                                 "ess_fraction": round(ess, 6), "experiment_loss": float(loss.detach()),
                                 "lr": self._lr()}
        for t in self.targets:
            entry[f"chi2 {t.name}"] = float(t.chi2(means[t.name], self.sampling_errors[t.name]).detach())
            entry[f"rms {t.name}"] = t.rms(means[t.name].detach())
        if self.qm is not None and self.settings.qm_weight > 0:
            batch = self.qm.collate(batch_indices(self.update, len(self.qm), self.settings.qm_batch, self.settings.seed),
                                    dtype=self.potential.dtype)
            qm_loss, _ = loss_fn(self.potential, batch, self.qm_config)
            (self.settings.qm_weight * qm_loss / self.qm_loss0).backward()
            entry["qm_loss_ratio"] = float(qm_loss.detach()) / self.qm_loss0
        for group in self.optimizer.param_groups:
            group["lr"] = entry["lr"]
        self.optimizer.step()
        self.update += 1
        return entry

    def _lr(self) -> float:
        """The learning rate of the coming update: a cosine from lr to lr_final_fraction × lr."""
        s = self.settings
        progress = self.update / max(s.updates - 1, 1)
        return s.lr * (s.lr_final_fraction + (1 - s.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1))))

    # --- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Refine up to ``settings.updates`` updates, check with a fresh simulation, write
        model.pt, history, plots and results.json; returns the results."""
        lock = RunLock(self.run_dir).acquire()
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> dict[str, Any]:
        s = self.settings
        self.potential.train()
        if self.sample_index < 0:
            if self.qm_eval is not None:
                self.qm_before = self._qm_errors()
                self.qm_loss0 = self._qm_loss()
            self._sample()
            self.save_checkpoint()
        if self.update < s.updates:  # a check run of an earlier, shorter refinement checks another model
            shutil.rmtree(self.run_dir / CHECK_RUN, ignore_errors=True)
        with progress_bar("refine update", self.progress) as bar:
            task = bar.add_task("refine", total=s.updates, completed=self.update, status="")
            while self.update < s.updates:
                t0 = time.perf_counter()
                entry = self._step()
                self.wall_seconds += time.perf_counter() - t0
                entry.update({"md_ps": round(self.md_ps, 4), "wall_s": round(self.wall_seconds, 2)})
                self.history.append(entry)
                self.save_checkpoint()
                atomic_write_json(self.history, self.run_dir / HISTORY)
                bar.update(task, completed=self.update, status=f"χ² {entry['experiment_loss']:.3g} | N_eff "
                                                                f"{entry['ess_fraction']:.2f} | {self.sample_index + 1} "
                                                                f"samplings")
        return self._finish()

    def _qm_loss(self) -> float:
        """The QM loss of the current model over the evaluation frames (eV², as training's)."""
        self.potential.eval()
        losses = [float(loss_fn(self.potential, batch, self.qm_config)[0].detach()) * len(batch.energy)
                  for batch in self.qm_eval.batches(8, dtype=self.potential.dtype)]
        self.potential.train()
        return max(sum(losses) / len(self.qm_eval), 1e-12)

    def _qm_errors(self) -> dict[str, float]:
        self.potential.eval()
        metrics, _ = evaluate(self.potential, self.qm_eval, batch_size=8)
        self.potential.train()
        return metrics

    def _finish(self) -> dict[str, Any]:
        from ..analysis.plots import plot_refine_history, plot_refine_targets

        s = self.settings
        after = None
        if s.check_ps > 0:
            run = self.run_dir / CHECK_RUN
            self._guarded_md(run, s.seed + 999_983, s.check_ps)
            frames = self._frames(run)
            after = {t.name: t.frame_values(frames).mean(0).tolist() for t in self.targets}
        if hasattr(self.potential, "save"):
            self.potential.save(self.run_dir / MODEL, extra={"refined_from": s.model_path, "refine_updates": self.update})
        results: dict[str, Any] = {
            "updates": self.update, "samplings": self.sample_index + 1, "resamples": self.sample_index,
            "md_ps": self.md_ps, "md_ps_per_update": self.md_ps / max(self.update, 1),
            "wall_seconds": round(self.wall_seconds, 2),
            "wall_s_per_update": round(self.wall_seconds / max(self.update, 1), 2),
            "targets": {t.name: self._target_summary(t, after) for t in self.targets},
            "settings": asdict(s),
        }
        if self.qm_eval is not None:
            results["qm_errors"] = {"before": self.qm_before, "after": self._qm_errors()}
        plot_refine_targets(self.targets, self.before, after, self.run_dir / "targets.png")
        if self.history:
            plot_refine_history(self.history, [t.name for t in self.targets], self.run_dir / "history.png")
        atomic_write_json(results, self.run_dir / RESULTS)
        return results

    def _target_summary(self, target: Target, after: dict[str, list[float]] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": target.reference.tolist(), "error": target.error.tolist()}
        if target.axis is not None:
            out["axis"] = np.asarray(target.axis).tolist()
        for label, values in (("before", self.before), ("after", after)):
            if values is not None:
                mean = torch.tensor(values[target.name], dtype=torch.float64)
                out[label] = {"mean": values[target.name], "chi2": float(target.chi2(mean)), "rms": target.rms(mean)}
        return out

    # --- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Everything needed to continue the same sequence of updates, written atomically."""
        atomic_save({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "settings": asdict(self.settings),
            "model": self.potential.state_dict(), "optimizer": self.optimizer.state_dict(), "update": self.update,
            "sample_index": self.sample_index, "history": self.history,
            "frames": asdict(self.frames) if self.frames is not None else None, "u_ref": self.u_ref,
            "values": self.values, "sampling_errors": self.sampling_errors, "before": self.before,
            "qm_before": self.qm_before, "qm_loss0": self.qm_loss0,
            "last_good": self.last_good, "md_ps": self.md_ps, "wall_seconds": self.wall_seconds,
        }, self.run_dir / CHECKPOINT)

    def restore(self) -> None:
        """Continue from the checkpoint in ``run_dir`` (InputError naming it if it is not this
        refinement's)."""
        ckpt = read_checkpoint(self.run_dir, CHECKPOINT_FORMAT, "refinement")
        self.potential.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.update, self.sample_index, self.history = ckpt["update"], ckpt["sample_index"], ckpt["history"]
        self.frames = Frames(**ckpt["frames"]) if ckpt["frames"] is not None else None
        self.u_ref, self.values, self.before = ckpt["u_ref"], ckpt["values"], ckpt["before"]
        self.sampling_errors = ckpt["sampling_errors"]
        self.qm_before, self.qm_loss0, self.last_good = ckpt["qm_before"], ckpt["qm_loss0"], ckpt["last_good"]
        self.md_ps, self.wall_seconds = ckpt["md_ps"], ckpt["wall_seconds"]
