"""neuralmd (each native architecture) against MACE on rMD17 ethanol and 3BPA, in one script run,
at equal training budgets; in-distribution, transfer and extrapolation errors and call speed.

    python benchmarks/forcefield_rmd17.py --budgets 8,30 --threads 2 --resume   # ~4 h 10 min on 2 cores
    python benchmarks/forcefield_rmd17.py --budgets 0.05 --test-md-frames 50 --calls 5 --warmup 1 \\
        --work-dir /tmp/ffsmoke --out /tmp/ffsmoke.json                          # smoke run, ~1 min

Parts: one part is one (dataset, budget, model) training plus its evaluation, the model being each
neuralmd architecture of ``--architectures`` or ``mace``. All parts of the shortest budget run
first (ethanol, then 3BPA), then the next budget's, so a run cut short still holds complete
comparisons at the shorter budgets. After every part its record goes into the results JSON under
``runs`` (key ``ethanol/8min/painn``) with the CPU load of other processes during it, written
atomically; a last ``timing`` part times one energy+forces call of every model on ethanol and
3BPA. ``--resume`` skips the parts already in ``--out`` and rebuilds the summary from all parts;
a part interrupted mid-way starts over. Model files stay in ``--work-dir``
(``<dataset>/<budget>min/<architecture>/model.pt``, ``.../mace.model`` via torch.save).
``--mace-huber`` adds a model ``mace_huber`` (MACE trained with neuralmd's Huber force loss) to
every (dataset, budget). Run nothing else heavy meanwhile: a part during which other processes
used more than a quarter of a core is listed under ``machine.busy_parts``.

Data: ethanol trains on rmd17_ethanol/train.xyz and is evaluated on all of test_MD.xyz and on
the extrapolation sets test_norm_mode_874/3005 (scan profile, barrier, curvature), test_H_removal
(profile up to where the DFT curve flattens) and test_dimers (profile, sign of the short-range
energy); 3BPA trains on the first 400 frames of 3bpa/train_300K.xyz and is evaluated on its
other 100 (``3bpa_300K_test``) and on all of train_mixedT.xyz (``3bpa_mixedT``, the transfer
test, also binned by the distance of each frame's torsions from the training frames'). The
metrics are those of ``extrapolation.py``, reached through one ``predict(frames, forces)`` per
model.

Fairness rules (also written into each part's ``settings``):

- Split: neuralmd's Trainer split (valid_fraction 0.05, ``--seed``): 950/50 on ethanol, 380/20
  on 3BPA. It is built once per dataset; every neuralmd architecture's Trainer is checked to have
  made the very same split, and MACE trains on exactly those frames.
- Budget: as in neuralmd's Trainer, only the time spent in training steps counts (fetching the
  batch, forward, backward, optimiser and EMA update); validation, checkpoints and MACE's
  one-off neighbour-list preprocessing (reported as ``preprocess_seconds``) do not. Every model
  stops after the first step that reaches the budget, on the same ``--threads``.
- neuralmd hyperparameters: TrainConfig's defaults (those of ``neuralmd train``) apart from the
  architecture, the budget, the seed and the options given here.
- Model kept: the EMA weights with the lowest validation loss (neuralmd's model.pt rule),
  validated every ``--eval-every`` steps and after the last step.
- Energies: neuralmd adds its per-element reference energies in float64. MACE in float32 would
  round the ~-4200 eV total energy of ethanol to ~0.5 meV, so the MACE loss and the reported
  MACE energies use its ``interaction_energy`` output plus the E0 sum taken in float64
  (``energy_mae_mev_float32_total`` shows what the raw float32 ``energy`` output gives).
- Timing: each model trained for the longest budget on the molecule it is timed on; where a
  dataset was not trained (``--datasets``), an untrained model of the same architecture and
  hyperparameters over that molecule's elements (timing does not depend on the weights).

The summary keys (``neuralmd``, ``mace``, ``ratios``, ``timing``, ``extrapolation``) describe
the default architecture on molecules (``TrainConfig.architecture`` "auto") at the longest ethanol budget run so far;
``extrapolation_all`` holds every architecture and budget, ``targets`` the issue's targets per
budget and ``distance_to_published`` the longest budget against the converged MACE numbers
published for ethanol (0.4 meV, 2.1 meV/Å).

Needs mace-torch (``pip install -c constraints.txt -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import neuralmd
from neuralmd.data import FrameDataset, read_frames
from neuralmd.io_utils import atomic_save, atomic_write_json, atomic_write_text
from neuralmd.md.ase_calculator import NeuralCalculator
from neuralmd.models import load_potential
from neuralmd.models.neural import ARCHITECTURES
from neuralmd.state import AtomsBatch
from neuralmd.threads import set_threads
from neuralmd.training import TrainConfig, Trainer
from neuralmd.training.trainer import MAX_DEFAULT_BATCH, MOLECULE_ARCHITECTURE
from neuralmd.training.metrics import Predictions, error_metrics
from neuralmd.training.trainer import build_model, load_data, validation_loss

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extrapolation import (BPA, DATA, ETHANOL, ETHANOL_SCANS, bpa_split, ethanol_sets,  # noqa: E402, F401
                           evaluate_bpa, evaluate_ethanol, neuralmd_predictor)  # (DATA: md_speed.py reads ff.DATA)

BPA_FILE = BPA / "train_300K.xyz"
BPA_TRAIN_FRAMES = 400
DEFAULT_OUT = HERE / "results" / "forcefield_rmd17.json"
DEFAULT_ARCHITECTURE = MOLECULE_ARCHITECTURE  # what neuralmd train's "auto" trains on molecules
DATASETS = ("ethanol", "3bpa")
#: the in-distribution test set of each dataset, and its transfer / extrapolation sets with the
#: error the targets compare (force MAE where the set has forces, else the profile MAE)
IN_DISTRIBUTION = {"ethanol": "test_MD", "3bpa": "3bpa_300K_test"}
TRANSFER = {"ethanol": {"test_norm_mode_874": "energy_profile_mae_mev", "test_norm_mode_3005": "energy_profile_mae_mev",
                        "test_H_removal": "energy_profile_mae_mev", "test_dimers": "energy_profile_mae_mev"},
            "3bpa": {"3bpa_mixedT": "force_mae_mev_per_A"}}
#: converged MACE on rMD17 ethanol (Batatia et al., MACE, NeurIPS 2022, table 1)
PUBLISHED_MACE_ETHANOL = {"energy_mae_mev": 0.4, "force_mae_mev_per_A": 2.1}
TARGET_FORCE_RATIO, TARGET_BARRIER_REL, TARGET_SPEEDUP = 0.9, 0.15, 5.0
#: the part options a resumed run must share with the parts already in the file
SHARED_SETTINGS = ("threads", "seed", "eval_every", "features", "interactions", "nm_batch_size", "nm_lr",
                   "mace_batch_size", "mace_lr", "test_md_frames")

# MACE hyperparameters (MACE's own defaults of mace/tools/arg_parser.py where not given here)
MACE_SETTINGS: dict[str, Any] = {
    "model": "ScaleShiftMACE",
    "interaction": "RealAgnosticResidualInteractionBlock",
    "interaction_first": "RealAgnosticResidualInteractionBlock",
    "num_interactions": 2,
    "hidden_irreps": "32x0e+32x1o",
    "max_ell": 3,
    "correlation": 3,
    "r_max": 5.0,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "MLP_irreps": "16x0e",
    "radial_MLP": [64, 64, 64],
    "radial_type": "bessel",
    "gate": "silu",
    "scaling": "rms_forces_scaling",
    "E0s": "least squares on the training energies (mace.data.compute_average_E0s)",
    "dtype": "float32",
    "optimizer": "AdamW, MACE's parameter groups (mace.tools.scripts_utils.get_params_options), amsgrad",
    "weight_decay": 5e-7,
    "beta1": 0.9,
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "loss": "energy_weight * MSE(E/N) + forces_weight * MSE(F), MACE's 'weighted' loss",
    "ema_decay": 0.99,
    "ema": "torch_ema.ExponentialMovingAverage (MACE's; use_num_updates warm-up)",
    "clip_grad": 10.0,
    "scheduler": "ReduceLROnPlateau(factor=0.8, patience=50) on the validation loss, stepped per validation",
}


# --- small helpers ----------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "processor": processor_name()}
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


class LoadMonitor:
    """CPU used by *other* processes during each phase (cores on average), from /proc/stat minus
    this process's own CPU time and its finished children's (torch.compile's C++ compiler): two busy torch processes on the same 2 cores slow each other
    down many times over, so a benchmark run next to other work is not worth reading."""

    def __init__(self) -> None:
        self.phases: dict[str, float | None] = {}
        self._mark = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
        own = os.times()  # this process and the children it waited for (compilers)
        return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system

    def phase(self, name: str) -> None:
        now = self._read()
        if now is None or self._mark is None:
            self.phases[name] = None
        else:
            wall, busy, own = (a - b for a, b in zip(now, self._mark))
            self.phases[name] = round(max(0.0, busy - own) / wall, 2) if wall > 0 else None
        self._mark = now

    def busy(self, threshold: float = 0.25) -> list[str]:
        return [k for k, v in self.phases.items() if v is not None and v > threshold]


def versions() -> dict[str, str]:
    import ase
    from mace.__version__ import __version__ as mace_version

    out = {"python": platform.python_version(), "torch": torch.__version__, "ase": ase.__version__,
           "neuralmd": neuralmd.__version__, "mace": mace_version}
    try:
        import e3nn

        out["e3nn"] = e3nn.__version__
    except (ImportError, AttributeError):
        pass
    return out


def time_ef_calls(calc, atoms, calls: int, warmup: int, seed: int = 0) -> float:
    """Median milliseconds of ``get_potential_energy(); get_forces()`` with the atoms moved a
    little (0.01 Å rms) before each call, so no call is answered from the calculator's cache."""
    atoms = atoms.copy()
    atoms.calc = calc
    base = atoms.get_positions()
    rng = np.random.default_rng(seed)
    times = []
    for k in range(warmup + calls):
        atoms.set_positions(base + rng.normal(scale=0.01, size=base.shape))
        t0 = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
    return float(np.median(times) * 1000)


def time_direct(fn: Callable[[np.ndarray], Any], positions: np.ndarray, calls: int, warmup: int,
                seed: int = 0) -> float:
    """Median milliseconds of ``fn(moved positions)`` (a direct model call, no ASE)."""
    rng = np.random.default_rng(seed)
    times = []
    for k in range(warmup + calls):
        pos = positions + rng.normal(scale=0.01, size=positions.shape)
        t0 = time.perf_counter()
        fn(pos)
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
    return float(np.median(times) * 1000)


# --- neuralmd -----------------------------------------------------------------------------
def step_stats(cumulative: list[float]) -> dict[str, float]:
    """First and median step seconds from the cumulative training seconds after each step."""
    steps = np.diff([0.0, *cumulative])
    if len(steps) == 0:
        return {}
    return {"first_step_seconds": round(float(steps[0]), 3),
            "median_step_seconds": round(float(np.median(steps[1:] if len(steps) > 1 else steps)), 4)}


def nm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The neuralmd options given on the command line that differ from TrainConfig's defaults
    (only those are passed, so the defaults stay TrainConfig's own)."""
    given = {"features": args.features, "interactions": args.interactions, "batch_size": args.nm_batch_size,
             "lr": args.nm_lr}
    return {k: v for k, v in given.items() if v != getattr(TrainConfig, k)}


def train_config(args: argparse.Namespace, train_file: Path, architecture: str, budget_min: float) -> TrainConfig:
    return TrainConfig(train=str(train_file), valid_fraction=0.05, architecture=architecture,
                       time_budget_min=budget_min, eval_every=args.eval_every, checkpoint_every=10**9,
                       threads=args.threads, seed=args.seed, **nm_overrides(args))


def train_neuralmd(cfg: TrainConfig, run_dir: Path) -> tuple[Trainer, dict[str, Any], float, list[float]]:
    holder: list[Trainer] = []
    cumulative: list[float] = []  # Trainer.elapsed (training-step seconds) after each step
    trainer = Trainer(cfg, run_dir, progress=False, on_step=lambda _: cumulative.append(holder[0].elapsed))
    holder.append(trainer)
    t0 = time.perf_counter()
    results = trainer.run()
    return trainer, results, time.perf_counter() - t0, cumulative


def same_frames(a: list, b: list) -> bool:
    """Whether two frame lists hold the same structures and labels in the same order."""
    return len(a) == len(b) and all(
        np.array_equal(x.numbers, y.numbers) and np.array_equal(x.positions, y.positions)
        and x.info.get("energy") == y.info.get("energy") for x, y in zip(a, b))


# --- MACE ---------------------------------------------------------------------------------
class MaceData:
    """Frames as MACE graphs. ``energy`` of each graph is replaced by the interaction-energy
    target E - sum(E0), computed in float64 before the cast to float32. Frames without forces
    (the extrapolation scans) give graphs without forces and ``forces`` None."""

    def __init__(self, frames, z_table, r_max: float, e0: dict[int, float] | None) -> None:
        from mace.data import AtomicData, KeySpecification, config_from_atoms

        keyspec = KeySpecification(info_keys={"energy": "energy"}, arrays_keys={"forces": "forces"})
        self.configs = [config_from_atoms(a, key_specification=keyspec) for a in frames]
        self.graphs = [AtomicData.from_config(c, z_table=z_table, cutoff=r_max, heads=["Default"])
                       for c in self.configs]
        self.energy = np.array([float(a.info["energy"]) for a in frames])
        self.n_atoms = np.array([len(a) for a in frames])
        self.forces = ([np.asarray(a.arrays["forces"], dtype=float) for a in frames]
                       if all("forces" in a.arrays for a in frames) else None)
        self.e0_sum = (np.array([sum(e0[int(z)] for z in a.numbers) for a in frames])
                       if e0 is not None else None)

    def use_interaction_targets(self) -> None:
        for g, e, e0 in zip(self.graphs, self.energy, self.e0_sum):
            g.energy = torch.tensor(e - e0, dtype=torch.get_default_dtype())


def mace_loader(graphs, batch_size: int, shuffle: bool, seed: int = 0):
    from mace.tools.torch_geometric.dataloader import DataLoader

    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(graphs, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, generator=gen)


def build_mace(z_table, atomic_energies: np.ndarray, avg_num_neighbors: float, mean: float,
               std: float, seed: int) -> torch.nn.Module:
    """ScaleShiftMACE built as mace/tools/model_script_utils.py builds it for --model ScaleShiftMACE."""
    from e3nn import o3
    from mace import modules

    s = MACE_SETTINGS
    torch.manual_seed(seed)
    model = modules.ScaleShiftMACE(
        r_max=s["r_max"], num_bessel=s["num_bessel"], num_polynomial_cutoff=s["num_polynomial_cutoff"],
        max_ell=s["max_ell"], interaction_cls=modules.interaction_classes[s["interaction"]],
        interaction_cls_first=modules.interaction_classes[s["interaction_first"]],
        num_interactions=s["num_interactions"], num_elements=len(z_table),
        hidden_irreps=o3.Irreps(s["hidden_irreps"]), MLP_irreps=o3.Irreps(s["MLP_irreps"]),
        atomic_energies=atomic_energies, avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=z_table.zs, correlation=s["correlation"], gate=modules.gate_dict[s["gate"]],
        radial_MLP=list(s["radial_MLP"]), radial_type=s["radial_type"], heads=["Default"],
        atomic_inter_scale=std, atomic_inter_shift=mean,
    )
    return model.float()


def mace_param_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """MACE's parameter groups (mace.tools.scripts_utils.get_params_options, no freezing)."""
    decay, no_decay = [], []
    for name, p in model.interactions.named_parameters():
        (decay if ("linear.weight" in name or "skip_tp_full.weight" in name) else no_decay).append(p)
    return [
        {"name": "embedding", "params": list(model.node_embedding.parameters()), "weight_decay": 0.0, "lr": lr},
        {"name": "interactions_decay", "params": decay, "weight_decay": weight_decay, "lr": lr},
        {"name": "interactions_no_decay", "params": no_decay, "weight_decay": 0.0, "lr": lr},
        {"name": "products", "params": list(model.products.parameters()), "weight_decay": weight_decay, "lr": lr},
        {"name": "readouts", "params": list(model.readouts.parameters()), "weight_decay": 0.0, "lr": lr},
    ]


def mace_outputs(model: torch.nn.Module, data: MaceData, batch_size: int = 32,
                 forces: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Energies = float64 E0 sum + interaction energy (eV, per frame), the raw float32 ``energy``
    output, and the forces (eV/Å, (total atoms, 3); None unless ``forces``)."""
    model.eval()
    inter, total32, out_forces = [], [], []
    for batch in mace_loader(data.graphs, batch_size, shuffle=False):
        out = model(batch.to_dict(), training=False, compute_force=forces)
        inter.append(out["interaction_energy"].detach().double().numpy())
        total32.append(out["energy"].detach().double().numpy())
        if forces:
            out_forces.append(out["forces"].detach().double().numpy())
    return (data.e0_sum + np.concatenate(inter), np.concatenate(total32),
            np.concatenate(out_forces) if forces else None)


def mace_predict(model: torch.nn.Module, data: MaceData, batch_size: int = 32) -> tuple[Predictions, np.ndarray]:
    """Predictions with energies = float64 E0 sum + interaction energy; also the raw float32
    ``energy`` output."""
    energies, total32, forces = mace_outputs(model, data, batch_size)
    f_true = np.concatenate([f.ravel() for f in data.forces])
    return Predictions(data.energy, energies, data.n_atoms, f_true, forces.ravel()), total32


class MacePredictor:
    """``predict(frames, forces)`` of a trained MACE model for extrapolation.py's evaluations;
    keeps the raw float32 total energies of each frame list it was given (by ``id``)."""

    def __init__(self, model: torch.nn.Module, z_table, e0: dict[int, float]) -> None:
        self.model, self.z_table, self.e0 = model, z_table, e0
        self.total32: dict[int, np.ndarray] = {}

    def __call__(self, frames, forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        data = MaceData(frames, self.z_table, MACE_SETTINGS["r_max"], self.e0)
        energies, total32, out_forces = mace_outputs(self.model, data, forces=forces)
        self.total32[id(frames)] = total32
        return energies, out_forces


def mace_stats(train: MaceData, z_table, e0: dict[int, float]) -> tuple[np.ndarray, float, float, float]:
    from mace.modules.utils import compute_avg_num_neighbors, compute_mean_rms_energy_forces

    atomic_energies = np.array([e0[z] for z in z_table.zs])
    loader = mace_loader(train.graphs, 10, shuffle=False)  # graphs still hold the total energies
    avg_num_neighbors = compute_avg_num_neighbors(loader)
    mean, rms = compute_mean_rms_energy_forces(loader, atomic_energies)
    return atomic_energies, float(avg_num_neighbors), float(np.asarray(mean).item()), float(np.asarray(rms).item())


def train_mace(args: argparse.Namespace, train_frames, valid_frames, budget_s: float,
               huber_delta: float | None = None) -> dict[str, Any]:
    """MACE trained with its recipe (MSE force loss) or, given ``huber_delta`` (eV/Å), with the
    Huber force loss neuralmd uses (twice the Huber loss, as in neuralmd's Trainer)."""
    from mace.data import compute_average_E0s
    from mace.tools.utils import AtomicNumberTable
    from torch_ema import ExponentialMovingAverage

    s = MACE_SETTINGS
    t_pre = time.perf_counter()
    z_table = AtomicNumberTable(sorted({int(z) for a in train_frames for z in a.numbers}))
    train = MaceData(train_frames, z_table, s["r_max"], None)
    e0 = {int(z): float(v) for z, v in compute_average_E0s(train.configs, z_table).items()}
    train.e0_sum = np.array([sum(e0[int(z)] for z in a.numbers) for a in train_frames])
    valid = MaceData(valid_frames, z_table, s["r_max"], e0)
    atomic_energies, avg_nn, mean, std = mace_stats(train, z_table, e0)
    train.use_interaction_targets()
    preprocess_s = time.perf_counter() - t_pre

    model = build_mace(z_table, atomic_energies, avg_nn, mean, std, args.seed)
    optimizer = torch.optim.AdamW(mace_param_groups(model, args.mace_lr, s["weight_decay"]), lr=args.mace_lr,
                                  amsgrad=True, betas=(s["beta1"], 0.999))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.8, patience=50)
    ema = ExponentialMovingAverage(model.parameters(), decay=s["ema_decay"])
    loader = mace_loader(train.graphs, args.mace_batch_size, shuffle=True, seed=args.seed)
    ew, fw = s["energy_weight"], s["forces_weight"]

    def validate() -> dict[str, float]:
        nonlocal best, best_state
        with ema.average_parameters():
            metrics = error_metrics(mace_predict(model, valid, batch_size=64)[0])
            loss = validation_loss(metrics, ew, fw)
            if not math.isfinite(loss):
                raise RuntimeError(f"MACE training diverged at step {step} (non-finite validation loss)")
            if loss < best:
                best, best_state = loss, copy.deepcopy(model.state_dict())
        scheduler.step(loss)
        history.append({"step": step, "seconds": round(elapsed, 2), "valid_loss": loss,
                        "lr": optimizer.param_groups[0]["lr"], **metrics})
        return metrics

    step, elapsed, best, best_state = 0, 0.0, math.inf, None
    history: list[dict[str, Any]] = []
    cumulative: list[float] = []
    last_validated = -1
    t_wall = time.perf_counter()
    it = iter(loader)
    while elapsed < budget_s:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        model.train()
        out = model(batch.to_dict(), training=True, compute_force=True)
        e_mse = ((out["interaction_energy"] - batch.energy) / (batch.ptr[1:] - batch.ptr[:-1])).pow(2).mean()
        if huber_delta is None:
            f_term = (out["forces"] - batch.forces).pow(2).mean()
        else:
            f_term = 2 * torch.nn.functional.huber_loss(out["forces"], batch.forces, delta=huber_delta)
        loss = ew * e_mse + fw * f_term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["clip_grad"])
        optimizer.step()
        ema.update()
        step += 1
        elapsed += time.perf_counter() - t0
        cumulative.append(elapsed)
        if step % args.eval_every == 0:
            validate()
            last_validated = step
    if last_validated != step:
        validate()
    wall_s = time.perf_counter() - t_wall
    model.load_state_dict(best_state)  # best EMA weights
    model.eval()
    return {
        "model": model, "z_table": z_table, "e0": e0, "avg_num_neighbors": avg_nn, "mean": mean, "std": std,
        "steps": step, "train_seconds": round(elapsed, 2), "wall_seconds": round(wall_s + preprocess_s, 2),
        "preprocess_seconds": round(preprocess_s, 2), "history": history,
        "best_step": min(history, key=lambda r: r["valid_loss"])["step"],
        "parameters": sum(p.numel() for p in model.parameters()), **step_stats(cumulative),
    }


# --- timing -------------------------------------------------------------------------------
TIMING_METHOD = (
    "median ms of atoms.get_potential_energy(); atoms.get_forces() through each model's ASE calculator "
    "(neuralmd.NeuralCalculator; mace.calculators.MACECalculator(model_paths=<torch.saved model>, device='cpu', "
    "default_dtype='float32')), atoms moved by 0.01 Å rms before every call; ef_call_ms_direct: the same for a "
    "direct model call (graph building included, no ASE); ef_call_ms_compiled: neuralmd's ASE calculator with "
    "compile=True (the static all-pairs graph, torch.compile), compilation in the warm-up calls")
MACE_CALCULATOR_NOTE = ("MACECalculator always computes the stress too (compute_stress=True for model_type 'MACE'), "
                        "also for molecules without a cell")


def timing_molecules() -> dict[str, Any]:
    """One labelled structure per dataset: test_MD.xyz frame 0 (ethanol, 9 atoms), train_300K.xyz
    frame 0 (3BPA, 27 atoms)."""
    return {"ethanol": read_frames(ETHANOL / "test_MD.xyz")[0], "3bpa": read_frames(BPA_FILE)[0]}


def longest_part(runs: dict[str, Any], model: str, dataset: str | None = None) -> tuple[str, dict] | None:
    """The run record of ``model`` with the longest budget (on ``dataset``, or on any)."""
    found = [(r["budget_min"], k, r) for k, r in runs.items()
             if k != "timing" and r["model"] == model and (dataset is None or r["dataset"] == dataset)]
    return max(found, key=lambda t: (t[0], t[1]))[1:] if found else None


def timing_models(runs: dict[str, Any], model: str, molecules: dict[str, Any], work: Path,
                  seed: int) -> dict[str, tuple[Any, str]]:
    """Per molecule: the ASE calculator factory's input (a neuralmd model, or a MACE model file)
    and where it comes from: the model trained longest on that molecule's dataset, else an
    untrained one of the same architecture and hyperparameters over the molecule's elements."""
    out: dict[str, tuple[Any, str]] = {}
    for name, atoms in molecules.items():
        found = longest_part(runs, model, name)
        if found is not None:
            key, rec = found
            out[name] = ((Path(rec["model_file"]) if model.startswith("mace") else load_potential(rec["model_file"])),
                         f"{key} (trained)")
            continue
        other = longest_part(runs, model)
        if other is None:
            continue
        key, rec = other
        source = f"untrained, the architecture and hyperparameters of {key}, over the elements of {name}"
        if model.startswith("mace"):
            from mace.tools.utils import AtomicNumberTable

            st = rec["settings"]
            zs = sorted({int(z) for z in atoms.numbers} | {int(z) for z in st["E0s_eV"]})
            untrained = build_mace(AtomicNumberTable(zs), np.zeros(len(zs)), st["avg_num_neighbors"],
                                   st["atomic_inter_shift"], st["atomic_inter_scale"], seed)
            path = work / "timing" / f"{model}_{name}_untrained.model"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(untrained, path)
            out[name] = (path, source)
        else:
            fields = TrainConfig.__dataclass_fields__
            cfg = TrainConfig(**{k: v for k, v in rec["settings"].items() if k in fields})
            out[name] = (build_model(cfg, FrameDataset([atoms])).eval(), source)
    return out


def time_models(args: argparse.Namespace, runs: dict[str, Any], models: list[str], work: Path) -> dict[str, Any]:
    """E+F call times (ms) of every model on ethanol and 3BPA, through ASE and direct."""
    from mace.calculators import MACECalculator
    from mace.data import AtomicData, config_from_atoms
    from mace.tools.torch_geometric.batch import Batch as MaceBatch
    from mace.tools.utils import AtomicNumberTable

    molecules = timing_molecules()
    calls, warmup = args.calls, args.warmup
    out: dict[str, Any] = {"ef_call_ms": {}, "ef_call_ms_direct": {}, "ef_call_ms_compiled": {}, "models": {}}
    for model_name in models:
        chosen = timing_models(runs, model_name, molecules, work, args.seed)
        if not chosen:
            continue
        for key in ("ef_call_ms", "ef_call_ms_direct", "models") + (() if model_name.startswith("mace") else
                                                                    ("ef_call_ms_compiled",)):
            out[key][model_name] = {}
        for name, (model, source) in chosen.items():
            atoms = molecules[name]
            out["models"][model_name][name] = source
            if model_name.startswith("mace"):
                calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float32")
                mace_model = calc.models[0]
                z_table = AtomicNumberTable([int(z) for z in mace_model.atomic_numbers])

                def direct(pos: np.ndarray, model=mace_model, atoms=atoms, z_table=z_table) -> None:
                    a = atoms.copy()
                    a.positions = pos
                    graph = AtomicData.from_config(config_from_atoms(a), z_table=z_table, cutoff=float(model.r_max),
                                                   heads=["Default"])
                    model(MaceBatch.from_data_list([graph]).to_dict(), training=False, compute_force=True)
            else:
                calc = NeuralCalculator(model)

                def direct(pos: np.ndarray, model=model, atoms=atoms) -> None:
                    a = atoms.copy()
                    a.positions = pos
                    model(AtomsBatch.from_atoms([a], dtype=torch.float64), forces=True)

            out["ef_call_ms"][model_name][name] = time_ef_calls(calc, atoms, calls, warmup)
            out["ef_call_ms_direct"][model_name][name] = time_direct(direct, atoms.get_positions(), calls, warmup)
            if not model_name.startswith("mace"):  # the compiled calculator compiles in its first call
                out["ef_call_ms_compiled"][model_name][name] = time_ef_calls(NeuralCalculator(model, compile=True),
                                                                             atoms, calls, warmup)
            log(f"timing {model_name} on {name}: {out['ef_call_ms'][model_name][name]:.2f} ms per E+F call (ASE)")
    out.update(calls=calls, warmup=warmup, threads=torch.get_num_threads())
    return out


# --- parts --------------------------------------------------------------------------------
def budget_label(budget_min: float) -> str:
    return f"{budget_min:g}min"


def part_key(dataset: str, budget_min: float, model: str) -> str:
    return f"{dataset}/{budget_label(budget_min)}/{model}"


def first_frames_file(src: Path, dst: Path, n: int) -> Path:
    """Write the first ``n`` frames of the extended-XYZ file ``src`` to ``dst``, byte for byte."""
    lines = src.read_text().splitlines(keepends=True)
    end = 0
    for _ in range(n):
        end += int(lines[end]) + 2
    atomic_write_text("".join(lines[:end]), dst)
    return dst


class Context:
    """What the parts of one script run share: each dataset's training file, reference split and
    evaluation frames, read once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def train_file(self, dataset: str) -> Path:
        if dataset == "ethanol":
            return ETHANOL / "train.xyz"
        return self._once("3bpa_file", lambda: first_frames_file(
            BPA_FILE, self.args.work_dir / f"3bpa_train_300K_first{BPA_TRAIN_FRAMES}.xyz", BPA_TRAIN_FRAMES))

    def split(self, dataset: str) -> tuple[list, list]:
        """neuralmd's Trainer split of the default architecture's config (the split depends only
        on the file, valid_fraction and seed)."""
        def make() -> tuple[list, list]:
            cfg = train_config(self.args, self.train_file(dataset), DEFAULT_ARCHITECTURE, 0.0)
            train, valid = load_data(cfg)
            return train.frames, valid.frames
        return self._once(f"split/{dataset}", make)

    def eval_data(self, dataset: str) -> Any:
        if dataset == "ethanol":
            return self._once("eval/ethanol", lambda: ethanol_sets(self.args.test_md_frames))

        def make() -> tuple[list, list, list]:
            train, test, mixed = bpa_split(BPA_TRAIN_FRAMES)
            if not same_frames(train, read_frames(self.train_file(dataset))):
                raise RuntimeError("the 3BPA training file differs from bpa_split's training frames")
            return train, test, mixed
        return self._once("eval/3bpa", make)

    def evaluate(self, predict: Callable, dataset: str) -> dict[str, dict]:
        data = self.eval_data(dataset)
        return evaluate_ethanol(predict, data) if dataset == "ethanol" else evaluate_bpa(predict, *data)

    def labelled_sets(self, dataset: str) -> dict[str, list]:
        """The evaluation sets with forces, by stem (their frame lists as passed to ``predict``)."""
        data = self.eval_data(dataset)
        return {"test_MD": data["test_MD"]} if dataset == "ethanol" else {
            "3bpa_300K_test": data[1], "3bpa_mixedT": data[2]}


def part_machine(load: LoadMonitor, started: float) -> dict[str, Any]:
    info: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                            "wall_seconds": round(time.time() - started, 1)}
    try:
        info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    info["other_processes_cpu_cores"] = load.phases
    info["busy_phases"] = load.busy()
    return info


def in_distribution(record_sets: dict[str, dict], dataset: str) -> dict[str, Any]:
    test = record_sets[IN_DISTRIBUTION[dataset]]
    return {"energy_mae_mev": test["energy_mae_mev"], "force_mae_mev_per_A": test["force_mae_mev_per_A"],
            "test_set": IN_DISTRIBUTION[dataset], "test_frames": test["frames"]}


def neuralmd_part(ctx: Context, dataset: str, budget_min: float, arch: str) -> dict[str, Any]:
    args, started, load = ctx.args, time.time(), LoadMonitor()
    run_dir = args.work_dir / dataset / budget_label(budget_min) / arch
    if run_dir.exists():  # an interrupted earlier attempt: start over
        shutil.rmtree(run_dir)
    cfg = train_config(args, ctx.train_file(dataset), arch, budget_min)
    log(f"{part_key(dataset, budget_min, arch)}: training {budget_min:g} min on {args.threads} threads")
    trainer, res, wall, cumulative = train_neuralmd(cfg, run_dir)
    load.phase("training")
    train_frames, valid_frames = ctx.split(dataset)
    if not (same_frames(trainer.train_data.frames, train_frames) and same_frames(trainer.valid_data.frames,
                                                                                 valid_frames)):
        raise RuntimeError(f"{arch}: the Trainer's split differs from the reference split")
    log(f"{part_key(dataset, budget_min, arch)}: {res['steps']} steps in {res['train_seconds']} s "
        f"({res['stop_reason']}); evaluating")
    t0 = time.perf_counter()
    sets = ctx.evaluate(neuralmd_predictor(load_potential(run_dir / "model.pt")), dataset)
    load.phase("evaluation")
    return {
        "dataset": dataset, "budget_min": budget_min, "model": arch, "kind": "neuralmd",
        **in_distribution(sets, dataset),
        "train_seconds": res["train_seconds"], "threads": res["threads"], "steps": res["steps"],
        "parameters": res["parameters"], "valid": res["valid"],
        "best_step": min(trainer.history, key=lambda r: r["valid_loss"])["step"] if trainer.history else None,
        "stop_reason": res["stop_reason"], "wall_seconds": round(wall, 2), **step_stats(cumulative),
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "settings": {**res["config"], "model_kept": "best-validation EMA weights (model.pt)"},
        "model_file": str(run_dir / "model.pt"), "sets": sets, "machine": part_machine(load, started),
    }


def mace_part(ctx: Context, dataset: str, budget_min: float, model: str) -> dict[str, Any]:
    args, started, load = ctx.args, time.time(), LoadMonitor()
    huber_delta = TrainConfig.huber_delta if model == "mace_huber" else None
    train_frames, valid_frames = ctx.split(dataset)
    log(f"{part_key(dataset, budget_min, model)}: training {budget_min:g} min on {torch.get_num_threads()} threads")
    res = train_mace(args, train_frames, valid_frames, budget_min * 60, huber_delta=huber_delta)
    load.phase("training")
    path = args.work_dir / dataset / budget_label(budget_min) / f"{model}.model"
    atomic_save(res["model"], path)
    log(f"{part_key(dataset, budget_min, model)}: {res['steps']} steps in {res['train_seconds']} s; evaluating")
    t0 = time.perf_counter()
    predict = MacePredictor(res["model"], res["z_table"], res["e0"])
    sets = ctx.evaluate(predict, dataset)
    for stem, frames in ctx.labelled_sets(dataset).items():
        ref = np.array([a.info["energy"] for a in frames])
        sets[stem]["energy_mae_mev_float32_total"] = float(np.mean(np.abs(predict.total32[id(frames)] - ref)) * 1000)
    load.phase("evaluation")
    settings = {**MACE_SETTINGS, "batch_size": args.mace_batch_size, "lr": args.mace_lr,
                "eval_every": args.eval_every, "seed": args.seed, "avg_num_neighbors": res["avg_num_neighbors"],
                "atomic_inter_shift": res["mean"], "atomic_inter_scale": res["std"],
                "E0s_eV": {str(z): v for z, v in res["e0"].items()}, "model_kept": "best-validation EMA weights",
                "energies": "float64 E0 sum + float32 interaction_energy (loss and metrics)"}
    if huber_delta is not None:
        settings["loss"] = f"as MACE's, but the force term is 2 * Huber(δ = {huber_delta} eV/Å) like neuralmd's"
    return {
        "dataset": dataset, "budget_min": budget_min, "model": model, "kind": "mace",
        **in_distribution(sets, dataset),
        "train_seconds": res["train_seconds"], "threads": torch.get_num_threads(), "steps": res["steps"],
        "parameters": res["parameters"], "valid": min(res["history"], key=lambda r: r["valid_loss"]),
        "best_step": res["best_step"], "wall_seconds": res["wall_seconds"],
        "preprocess_seconds": res["preprocess_seconds"], "first_step_seconds": res.get("first_step_seconds"),
        "median_step_seconds": res.get("median_step_seconds"), "eval_seconds": round(time.perf_counter() - t0, 1),
        "settings": settings, "model_file": str(path), "sets": sets, "machine": part_machine(load, started),
    }


# --- summary ------------------------------------------------------------------------------
FLAT_FIELDS = ("energy_profile_mae_mev", "energy_mae_mev", "force_mae_mev_per_A", "barrier_pred_mev",
               "barrier_ref_mev", "curvature_ratio", "repulsive_sign_fraction", "by_torsion_distance")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def flat_sets(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A part's per-set metrics reduced to the fields the summary compares."""
    return {stem: {k: m[k] for k in FLAT_FIELDS if k in m} for stem, m in record["sets"].items()}


def parts(runs: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for k, r in runs.items() if k != "timing"]


def budgets_of(runs: dict[str, Any]) -> list[float]:
    return sorted({r["budget_min"] for r in parts(runs)})


def summary_budget(runs: dict[str, Any], dataset: str, model: str) -> float | None:
    """The longest budget with both ``model`` and MACE on ``dataset`` (else ``model`` alone)."""
    both = [b for b in budgets_of(runs) if part_key(dataset, b, model) in runs and part_key(dataset, b, "mace") in runs]
    alone = [b for b in budgets_of(runs) if part_key(dataset, b, model) in runs]
    return max(both or alone) if (both or alone) else None


def model_summary(record: dict[str, Any], timing: dict[str, Any] | None) -> dict[str, Any]:
    """A part's record in the layout of the summary's ``neuralmd`` / ``mace`` keys."""
    skip = ("sets", "machine", "dataset", "kind", "model", "budget_min", "test_set")
    out = {k: v for k, v in record.items() if k not in skip}
    out["test"] = record["sets"][record["test_set"]]
    timed = "mace" if record["model"] == "mace_huber" else record["model"]
    if timing is not None and timed in timing["ef_call_ms"]:
        out["ef_call_ms"] = timing["ef_call_ms"][timed]
        out["ef_call_ms_direct"] = timing["ef_call_ms_direct"][timed]
    return out


def targets_of(runs: dict[str, Any], budget: float, archs: list[str]) -> list[dict[str, Any]]:
    """The issue's targets at one budget, for every neuralmd architecture against MACE, from the
    parts present (``met`` is True/False; a barrier target applies only where MACE's barrier is
    within 15 % of DFT)."""
    out: list[dict[str, Any]] = []

    def add(target: str, arch: str, stem: str, metric: str, value: float | None, mace: float | None,
            threshold: float | None, met: bool | None, **extra: Any) -> None:
        out.append({"target": target, "model": arch, "set": stem, "metric": metric,
                    "value": None if value is None else round(value, 4),
                    "mace": None if mace is None else round(mace, 4),
                    "threshold": None if threshold is None else round(threshold, 4), "met": met, **extra})

    for arch in archs:
        for dataset in DATASETS:
            nm, mc = runs.get(part_key(dataset, budget, arch)), runs.get(part_key(dataset, budget, "mace"))
            if nm is None or mc is None:
                continue
            stem = IN_DISTRIBUTION[dataset]
            v, m = nm["sets"][stem]["force_mae_mev_per_A"], mc["sets"][stem]["force_mae_mev_per_A"]
            add(f"in-distribution force MAE <= {TARGET_FORCE_RATIO} x MACE's", arch, stem, "force_mae_mev_per_A",
                v, m, TARGET_FORCE_RATIO * m, v <= TARGET_FORCE_RATIO * m)
            for stem, metric in TRANSFER[dataset].items():
                v, m = nm["sets"][stem][metric], mc["sets"][stem][metric]
                add("transfer/extrapolation error <= MACE's", arch, stem, metric, v, m, m, v <= m)
            for stem in (s for s in ETHANOL_SCANS if s in nm["sets"]):
                rel = {}
                for name, rec in (("nm", nm), ("mace", mc)):
                    s = rec["sets"][stem]
                    rel[name] = abs(s["barrier_pred_mev"] - s["barrier_ref_mev"]) / s["barrier_ref_mev"]
                applies = rel["mace"] <= TARGET_BARRIER_REL
                add(f"scan barrier within {TARGET_BARRIER_REL:.0%} of DFT where MACE's is", arch, stem,
                    "barrier_relative_error", rel["nm"], rel["mace"], TARGET_BARRIER_REL,
                    (rel["nm"] <= TARGET_BARRIER_REL) if applies else True, applies=applies)
        timing = runs.get("timing")
        if timing is None or arch not in timing["ef_call_ms"] or "mace" not in timing["ef_call_ms"]:
            continue
        for name, eager in timing["ef_call_ms"][arch].items():
            mace_ms = timing["ef_call_ms"]["mace"].get(name)
            if mace_ms is None:
                continue
            compiled = timing.get("ef_call_ms_compiled", {}).get(arch, {}).get(name)
            ms, path = (compiled, "compiled") if compiled is not None and compiled < eager else (eager, "eager")
            add(f"E+F call >= {TARGET_SPEEDUP:g}x faster than MACE's (ASE calculator, each model's fastest; timing "
                f"is budget-independent)", arch, name, "ef_call_ms_mace_over_neuralmd", mace_ms / ms, None,
                TARGET_SPEEDUP, mace_ms / ms >= TARGET_SPEEDUP, neuralmd_ms=round(ms, 3), neuralmd_path=path,
                mace_ms=round(mace_ms, 3))
    return out


def build_summary(results: dict[str, Any], archs: list[str]) -> None:
    """(Re)derive every summary key of ``results`` from its ``runs``."""
    runs = results["runs"]
    timing = runs.get("timing")
    default = DEFAULT_ARCHITECTURE if any(r["model"] == DEFAULT_ARCHITECTURE for r in parts(runs)) else (
        archs[0] if archs else DEFAULT_ARCHITECTURE)
    nm_archs = sorted({r["model"] for r in parts(runs) if r["kind"] == "neuralmd"},
                      key=lambda a: (a not in archs, archs.index(a) if a in archs else 0, a))
    for key in ("budget_min", "neuralmd", "mace", "mace_huber", "ratios", "timing", "extrapolation",
                "extrapolation_budgets_min", "extrapolation_all", "targets", "targets_met", "distance_to_published"):
        results.pop(key, None)
    results["default_architecture"] = default
    budget = summary_budget(runs, "ethanol", default)
    if budget is not None:
        results["budget_min"] = budget
        for name in ("neuralmd", "mace", "mace_huber"):
            model = default if name == "neuralmd" else name
            if part_key("ethanol", budget, model) in runs:
                results[name] = model_summary(runs[part_key("ethanol", budget, model)], timing)
        nm, mc = results.get("neuralmd"), results.get("mace")
        if nm is not None and mc is not None:
            results["ratios"] = {
                "force_mae_neuralmd_over_mace": ratio(nm["force_mae_mev_per_A"], mc["force_mae_mev_per_A"]),
                "energy_mae_neuralmd_over_mace": ratio(nm["energy_mae_mev"], mc["energy_mae_mev"]),
            }
            for key in ("ef_call_ms", "ef_call_ms_direct"):
                if key in nm and key in mc:
                    results["ratios"][f"{key}_mace_over_neuralmd"] = {k: ratio(mc[key].get(k), v)
                                                                       for k, v in nm[key].items()}
            if "mace_huber" in results:
                results["ratios"]["force_mae_neuralmd_over_mace_huber"] = ratio(
                    nm["force_mae_mev_per_A"], results["mace_huber"]["force_mae_mev_per_A"])
    if timing is not None:
        results["timing"] = {"method": TIMING_METHOD, "calls": timing["calls"], "warmup": timing["warmup"],
                             "threads": timing["threads"], "ef_call_ms": timing["ef_call_ms"],
                             "ef_call_ms_direct": timing["ef_call_ms_direct"],
                             "ef_call_ms_compiled": timing.get("ef_call_ms_compiled", {}), "models": timing["models"],
                             "mace_calculator_note": MACE_CALCULATOR_NOTE}

    # extrapolation: the default architecture and MACE, each dataset at its longest common budget
    extrapolation: dict[str, dict] = {}
    ext_budgets: dict[str, float] = {}
    for dataset in DATASETS:
        b = summary_budget(runs, dataset, default)
        if b is None:
            continue
        ext_budgets[dataset] = b
        for name, model in (("neuralmd", default), ("mace", "mace")):
            if part_key(dataset, b, model) in runs:
                extrapolation.setdefault(name, {}).update(flat_sets(runs[part_key(dataset, b, model)]))
    if extrapolation:
        results["extrapolation"] = extrapolation
        results["extrapolation_budgets_min"] = ext_budgets
    every: dict[str, dict] = {}
    for r in sorted(parts(runs), key=lambda r: (r["budget_min"], DATASETS.index(r["dataset"]))):
        every.setdefault(budget_label(r["budget_min"]), {}).setdefault(r["model"], {}).update(flat_sets(r))
    results["extrapolation_all"] = every

    results["targets"] = {budget_label(b): targets_of(runs, b, nm_archs) for b in budgets_of(runs)}
    results["targets_met"] = {
        label: {arch: f"{sum(t['met'] for t in ts if t['model'] == arch)}/{sum(t['model'] == arch for t in ts)}"
                for arch in nm_archs if any(t["model"] == arch for t in ts)}
        for label, ts in results["targets"].items()}

    b = max((r["budget_min"] for r in parts(runs) if r["dataset"] == "ethanol"), default=None)
    if b is not None:
        dist: dict[str, Any] = {"budget_min": b, "published_mace": {
            **PUBLISHED_MACE_ETHANOL, "source": "Batatia et al., MACE, NeurIPS 2022 (rMD17 ethanol, converged)"},
            "model": default}
        for model in (*nm_archs, "mace"):
            rec = runs.get(part_key("ethanol", b, model))
            if rec is None:
                continue
            entry = {"energy_mae_mev": rec["energy_mae_mev"], "force_mae_mev_per_A": rec["force_mae_mev_per_A"],
                     "energy_ratio_to_published": ratio(rec["energy_mae_mev"], PUBLISHED_MACE_ETHANOL["energy_mae_mev"]),
                     "force_ratio_to_published": ratio(rec["force_mae_mev_per_A"],
                                                       PUBLISHED_MACE_ETHANOL["force_mae_mev_per_A"])}
            if model == default:
                dist.update(entry)
            dist.setdefault("by_model", {})[model] = entry
        results["distance_to_published"] = dist
    busy = {k: r["machine"]["busy_phases"] for k, r in runs.items() if r.get("machine", {}).get("busy_phases")}
    results["machine"]["busy_parts"] = busy


# --- table --------------------------------------------------------------------------------
TABLE_ROWS = (  # (label, set, metric; barrier_rel: (predicted - DFT) / DFT barrier)
    ("ethanol test_MD  F MAE (meV/Å)", "test_MD", "force_mae_mev_per_A"),
    ("ethanol test_MD  E MAE (meV)", "test_MD", "energy_mae_mev"),
    ("norm mode 874    profile (meV)", "test_norm_mode_874", "energy_profile_mae_mev"),
    ("norm mode 874    barrier err %", "test_norm_mode_874", "barrier_rel"),
    ("norm mode 874    curvature ratio", "test_norm_mode_874", "curvature_ratio"),
    ("norm mode 3005   profile (meV)", "test_norm_mode_3005", "energy_profile_mae_mev"),
    ("norm mode 3005   barrier err %", "test_norm_mode_3005", "barrier_rel"),
    ("norm mode 3005   curvature ratio", "test_norm_mode_3005", "curvature_ratio"),
    ("H removal        profile (meV)", "test_H_removal", "energy_profile_mae_mev"),
    ("H removal        barrier err %", "test_H_removal", "barrier_rel"),
    ("dimers           profile (meV)", "test_dimers", "energy_profile_mae_mev"),
    ("dimers           repulsive sign", "test_dimers", "repulsive_sign_fraction"),
    ("3BPA 300 K test  F MAE (meV/Å)", "3bpa_300K_test", "force_mae_mev_per_A"),
    ("3BPA 300 K test  E MAE (meV)", "3bpa_300K_test", "energy_mae_mev"),
    ("3BPA mixed T     F MAE (meV/Å)", "3bpa_mixedT", "force_mae_mev_per_A"),
    ("3BPA mixed T     E MAE (meV)", "3bpa_mixedT", "energy_mae_mev"),
)


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def print_table(results: dict[str, Any]) -> None:
    runs = results["runs"]
    for label, models in results["extrapolation_all"].items():
        names = list(models)
        print(f"\n{label} of training each, {results['settings']['threads']} threads")
        print(f"{'':34s}" + "".join(f"{n:>12s}" for n in names))
        for row, stem, metric in TABLE_ROWS:
            values = []
            for n in names:
                s = models[n].get(stem)
                if s is None:
                    values.append(None)
                elif metric == "barrier_rel":
                    values.append(100 * (s["barrier_pred_mev"] - s["barrier_ref_mev"]) / s["barrier_ref_mev"])
                else:
                    values.append(s.get(metric))
            if any(v is not None for v in values):
                print(f"{row:34s}" + "".join(f"{fmt(v):>12s}" for v in values))
        for dataset in DATASETS:
            steps = [runs.get(f"{dataset}/{label}/{n}", {}).get("steps") for n in names]
            if any(v is not None for v in steps):
                print(f"{'training steps ' + dataset:34s}" + "".join(f"{fmt(v):>12s}" for v in steps))
        met = results["targets_met"].get(label, {})
        if met:
            print("targets met: " + ", ".join(f"{a} {m}" for a, m in met.items()))
    timing = results.get("timing")
    if timing:
        print(f"\nE+F call through ASE (ms), {timing['threads']} threads")
        for name, per in timing["ef_call_ms"].items():
            print(f"{name:34s}" + "".join(f"{k:>8s} {fmt(v):>7s}" for k, v in per.items()))
        for name, per in timing["ef_call_ms_compiled"].items():
            print(f"{name + ' compiled':34s}" + "".join(f"{k:>8s} {fmt(v):>7s}" for k, v in per.items()))
    dist = results.get("distance_to_published")
    if dist and "energy_mae_mev" in dist:
        print(f"\n{dist['model']} at {dist['budget_min']:g} min against converged MACE (0.4 meV, 2.1 meV/Å): "
              f"{dist['energy_ratio_to_published']}x energy, {dist['force_ratio_to_published']}x forces")


# --- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budgets", default="8,30", help="training minutes per model, comma-separated")
    p.add_argument("--architectures", default="painn,tensornet",
                   help=f"neuralmd architectures, comma-separated (of {', '.join(ARCHITECTURES)})")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of ethanol, 3bpa")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every model")
    p.add_argument("--features", type=int, default=TrainConfig.features, help="neuralmd features")
    p.add_argument("--interactions", type=int, default=TrainConfig.interactions, help="neuralmd interaction layers")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-ff-bench"),
                   help="run directories and model files of every part (kept)")
    p.add_argument("--resume", action="store_true", help="skip the parts already in --out")
    p.add_argument("--test-md-frames", type=int, default=None,
                   help="evaluate on only the first N frames of test_MD.xyz (smoke tests; default all)")
    p.add_argument("--nm-batch-size", type=int, default=MAX_DEFAULT_BATCH,
                   help="neuralmd frames per step (what neuralmd train's default gives these molecules)")
    p.add_argument("--nm-lr", type=float, default=TrainConfig.lr, help="neuralmd learning rate")
    p.add_argument("--mace-batch-size", type=int, default=5, help="MACE batch size")
    p.add_argument("--mace-lr", type=float, default=1e-2, help="MACE learning rate")
    p.add_argument("--eval-every", type=int, default=100, help="validate every N training steps (every model)")
    p.add_argument("--calls", type=int, default=50, help="timed E+F calls per model and molecule")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before those")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mace-huber", action="store_true",
                   help="also train MACE with neuralmd's Huber force loss (model mace_huber, same budgets)")
    return p.parse_args(argv)


def comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budgets = sorted({float(b) for b in comma_list(args.budgets)})
    archs = comma_list(args.architectures)
    datasets = [d for d in DATASETS if d in comma_list(args.datasets)]
    unknown = ([a for a in archs if a not in ARCHITECTURES]
               + [d for d in comma_list(args.datasets) if d not in DATASETS])
    if unknown or not budgets or min(budgets) <= 0 or not datasets:
        print(f"--budgets/--architectures/--datasets: {unknown or args.budgets}: not valid", file=sys.stderr)
        return 2
    # e3nn/MACE print hundreds of TorchScript annotation warnings when the model is built
    warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    threads = set_threads(args.threads)  # before any parallel torch work, so interop threads = 1 sticks
    torch.set_default_dtype(torch.float32)
    try:
        import mace  # noqa: F401  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in os.environ on import)
    except ImportError:
        print("mace-torch is not installed: pip install -c constraints.txt -e '.[bench]'", file=sys.stderr)
        return 2
    for f in (ETHANOL / "train.xyz", ETHANOL / "test_MD.xyz", BPA_FILE, BPA / "train_mixedT.xyz"):
        if not f.is_file():
            print(f"{f}: data file not found (expected the project's ../shared/data)", file=sys.stderr)
            return 2

    settings = {k: getattr(args, k) for k in SHARED_SETTINGS}
    results: dict[str, Any] = {"runs": {}}
    if args.resume and args.out.exists():
        import json

        results = json.loads(args.out.read_text())
        if not results.get("runs"):  # a file of the one-budget version of this script, or no part yet
            log(f"{args.out}: no parts to resume from, starting afresh")
            results = {"runs": {}}
        stored = results.get("settings", settings)
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            print(f"--resume: {args.out} was run with other settings (stored, now): {changed}; use another --out "
                  "or the same options", file=sys.stderr)
            return 2
    runs: dict[str, Any] = results.setdefault("runs", {})
    results.update({
        "benchmark": "neuralmd (native architectures) vs MACE on rMD17 ethanol and 3BPA: same training "
                     "wall-clock budgets and threads; in-distribution, transfer and extrapolation sets",
        "command": "python benchmarks/forcefield_rmd17.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": settings,
        "data": {"ethanol": {"train": "rmd17_ethanol/train.xyz (950 train / 50 validation, neuralmd's split, seed "
                                      f"{args.seed})",
                             "test": "rmd17_ethanol/test_MD.xyz (" + (f"first {args.test_md_frames} frames)"
                                                                    if args.test_md_frames else "all frames)"),
                             "extrapolation": "test_norm_mode_874, test_norm_mode_3005, test_H_removal, test_dimers"},
                 "3bpa": {"train": f"3bpa/train_300K.xyz, first {BPA_TRAIN_FRAMES} frames (380 train / 20 "
                                   f"validation, neuralmd's split, seed {args.seed})",
                          "test": "3bpa/train_300K.xyz, the other frames (3bpa_300K_test)",
                          "transfer": "3bpa/train_mixedT.xyz, all frames (3bpa_mixedT)"},
                 "timing": "test_MD.xyz frame 0 (ethanol, 9 atoms), train_300K.xyz frame 0 (3BPA, 27 atoms)"},
        "machine": machine_info(), "versions": versions(),
    })
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args)
    models = [*archs, "mace", *(["mace_huber"] if args.mace_huber else [])]
    plan = [(d, b, m) for b in budgets for d in datasets for m in models]
    failed: dict[str, str] = {}

    def save() -> None:
        build_summary(results, archs)
        if failed:
            results["failed_parts"] = failed
        else:
            results.pop("failed_parts", None)
        results["runs"] = results.pop("runs")  # the parts last, after the summary
        atomic_write_json(results, args.out)

    for dataset, budget, model in plan:
        key = part_key(dataset, budget, model)
        if key in runs:
            log(f"{key}: already in {args.out}, skipped")
            continue
        torch.set_num_threads(threads)
        try:
            runs[key] = (mace_part if model.startswith("mace") else neuralmd_part)(ctx, dataset, budget, model)
        except (RuntimeError, ValueError) as exc:  # a diverged or broken part: record it, go on
            failed[key] = f"{type(exc).__name__}: {exc}"
            log(f"{key}: FAILED ({failed[key]})")
            continue
        r = runs[key]
        log(f"{key}: {r['test_set']} E {r['energy_mae_mev']:.3g} meV, F {r['force_mae_mev_per_A']:.3g} meV/Å "
            f"({r['steps']} steps, evaluation {r['eval_seconds']} s)")
        save()

    timed = [*archs, "mace"]  # mace_huber is MACE's architecture: the same call time
    timing = runs.get("timing")
    if timing is None or not set(timed) <= set(timing["ef_call_ms"]) or "ef_call_ms_compiled" not in timing:
        torch.set_num_threads(threads)
        log(f"timing E+F calls ({args.calls} after {args.warmup} warm-up)")
        started, load = time.time(), LoadMonitor()
        runs["timing"] = time_models(args, runs, timed, args.work_dir)
        load.phase("timing")
        runs["timing"]["machine"] = part_machine(load, started)
    else:
        log(f"timing: already in {args.out}, skipped")
    try:
        results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    save()
    print_table(results)
    busy = results["machine"]["busy_parts"]
    if busy:
        print(f"\nWARNING: other processes used CPU during {', '.join(f'{k} ({v})' for k, v in busy.items())}; "
              "step counts and timings of those parts are not comparable: rerun them on an idle machine")
    if failed:
        print(f"\nFAILED parts (rerun with --resume): {failed}")
    print(f"\nwrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
