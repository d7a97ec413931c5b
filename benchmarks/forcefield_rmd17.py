"""neuralmd's native PaiNN potential against MACE on rMD17 ethanol, in one run.

Both models are trained on the same 950 frames (the 50 others validate) for the same
wall-clock training budget on the same number of torch threads, both in float32, then
evaluated on all 1000 frames of ``test_MD.xyz``; one energy+forces call through each model's
ASE calculator is timed on ethanol and on 3BPA (27 atoms).

    python benchmarks/forcefield_rmd17.py --budget-min 8 --threads 2

Fairness rules (also written into the JSON under each model's ``settings``):

- Split: the neuralmd Trainer makes it (valid_fraction 0.05, seed 0) and MACE trains on the
  very same ``Trainer.train_data`` / ``valid_data`` frames.
- Budget: as in neuralmd's Trainer, only the time spent in training steps counts (fetching the
  batch, forward, backward, optimiser and EMA update); validation, checkpoints and MACE's
  one-off neighbour-list preprocessing (reported as ``preprocess_seconds``) do not. Both stop
  after the first step that reaches the budget.
- Model kept: the EMA weights with the lowest validation loss (neuralmd's model.pt rule),
  validated every ``--eval-every`` steps and after the last step.
- Energies: neuralmd adds its per-element reference energies in float64. MACE in float32 would
  round the ~-4200 eV total energy of ethanol to ~0.5 meV, so the MACE loss and the reported
  MACE energies use its ``interaction_energy`` output plus the E0 sum taken in float64
  (``energy_mae_mev_float32_total`` shows what the raw float32 ``energy`` output gives).
- 3BPA contains N, which neither ethanol model knows: its timing uses untrained models of the
  same architecture and hyperparameters over H, C, N, O. Timing does not depend on the weights.

Needs mace-torch (``pip install -c constraints.txt -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import neuralmd
from neuralmd.data import FrameDataset, read_frames
from neuralmd.io_utils import atomic_write_json
from neuralmd.md.ase_calculator import NeuralCalculator
from neuralmd.models import NeuralPotential, load_potential
from neuralmd.state import AtomsBatch
from neuralmd.threads import set_threads
from neuralmd.training import TrainConfig, Trainer, evaluate
from neuralmd.training.metrics import Predictions, error_metrics
from neuralmd.training.trainer import validation_loss

HERE = Path(__file__).resolve().parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ETHANOL = DATA / "rmd17_ethanol"
BPA_FILE = DATA / "3bpa" / "train_300K.xyz"
DEFAULT_OUT = HERE / "results" / "forcefield_rmd17.json"

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


def train_neuralmd(args: argparse.Namespace, run_dir: Path) -> tuple[Trainer, dict[str, Any], float, list[float]]:
    cfg = TrainConfig(train=str(ETHANOL / "train.xyz"), valid_fraction=0.05, features=args.features,
                      interactions=args.interactions, batch_size=args.nm_batch_size, lr=args.nm_lr,
                      time_budget_min=args.budget_min, eval_every=args.eval_every,
                      checkpoint_every=10**9, threads=args.threads, seed=args.seed)
    holder: list[Trainer] = []
    cumulative: list[float] = []  # Trainer.elapsed (training-step seconds) after each step
    trainer = Trainer(cfg, run_dir, progress=False, on_step=lambda _: cumulative.append(holder[0].elapsed))
    holder.append(trainer)
    t0 = time.perf_counter()
    results = trainer.run()
    return trainer, results, time.perf_counter() - t0, cumulative


# --- MACE ---------------------------------------------------------------------------------
class MaceData:
    """Frames as MACE graphs. ``energy`` of each graph is replaced by the interaction-energy
    target E - sum(E0), computed in float64 before the cast to float32."""

    def __init__(self, frames, z_table, r_max: float, e0: dict[int, float] | None) -> None:
        from mace.data import AtomicData, KeySpecification, config_from_atoms

        keyspec = KeySpecification(info_keys={"energy": "energy"}, arrays_keys={"forces": "forces"})
        self.configs = [config_from_atoms(a, key_specification=keyspec) for a in frames]
        self.graphs = [AtomicData.from_config(c, z_table=z_table, cutoff=r_max, heads=["Default"])
                       for c in self.configs]
        self.energy = np.array([float(a.info["energy"]) for a in frames])
        self.n_atoms = np.array([len(a) for a in frames])
        self.forces = [np.asarray(a.arrays["forces"], dtype=float) for a in frames]
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


def mace_predict(model: torch.nn.Module, data: MaceData, batch_size: int = 32) -> tuple[Predictions, np.ndarray]:
    """Predictions with energies = float64 E0 sum + interaction energy; also the raw float32
    ``energy`` output."""
    model.eval()
    inter, total32, forces = [], [], []
    for batch in mace_loader(data.graphs, batch_size, shuffle=False):
        out = model(batch.to_dict(), training=False, compute_force=True)
        inter.append(out["interaction_energy"].detach().double().numpy())
        total32.append(out["energy"].detach().double().numpy())
        forces.append(out["forces"].detach().double().numpy().ravel())
    e_pred = data.e0_sum + np.concatenate(inter)
    f_true = np.concatenate([f.ravel() for f in data.forces])
    preds = Predictions(data.energy, e_pred, data.n_atoms, f_true, np.concatenate(forces))
    return preds, np.concatenate(total32)


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
def time_models(args, nm_model_path: Path, mace_res: dict[str, Any], work: Path) -> dict[str, Any]:
    from ase.io import read
    from mace.calculators import MACECalculator
    from mace.tools.utils import AtomicNumberTable

    ethanol = read_frames(ETHANOL / "test_MD.xyz")[0]
    ethanol.calc = None
    bpa = read(BPA_FILE, index=0)
    bpa.calc = None
    calls, warmup = args.calls, args.warmup

    # neuralmd: the trained model for ethanol, an untrained one of the same architecture over
    # the elements of 3BPA
    trained = load_potential(nm_model_path)
    bpa_elements = sorted({int(z) for z in bpa.numbers} | set(trained.elements))
    nm_bpa = NeuralPotential(bpa_elements, None, float(trained.scale), float(trained.shift),
                             trained.architecture, **trained.hyperparameters).to(trained.dtype).eval()
    nm_models = {"ethanol": trained, "3bpa": nm_bpa}

    # MACE: the trained model (saved whole with torch.save, loaded by MACECalculator) and an
    # untrained one over H, C, N, O
    mace_file = work / "mace_ethanol.model"
    torch.save(mace_res["model"], mace_file)
    z_bpa = AtomicNumberTable(sorted({int(z) for z in bpa.numbers} | set(mace_res["z_table"].zs)))
    mace_bpa = build_mace(z_bpa, np.zeros(len(z_bpa)), mace_res["avg_num_neighbors"], mace_res["mean"],
                          mace_res["std"], args.seed)
    mace_bpa_file = work / "mace_3bpa_untrained.model"
    torch.save(mace_bpa, mace_bpa_file)
    mace_files = {"ethanol": mace_file, "3bpa": mace_bpa_file}

    out: dict[str, Any] = {"neuralmd": {"ase": {}, "direct": {}}, "mace": {"ase": {}, "direct": {}}}
    for name, atoms in (("ethanol", ethanol), ("3bpa", bpa)):
        model = nm_models[name]
        out["neuralmd"]["ase"][name] = time_ef_calls(NeuralCalculator(model), atoms, calls, warmup)

        def nm_direct(pos: np.ndarray, model=model, atoms=atoms) -> None:
            a = atoms.copy()
            a.positions = pos
            model(AtomsBatch.from_atoms([a], dtype=torch.float64), forces=True)

        out["neuralmd"]["direct"][name] = time_direct(nm_direct, atoms.get_positions(), calls, warmup)

        calc = MACECalculator(model_paths=str(mace_files[name]), device="cpu", default_dtype="float32")
        out["mace"]["ase"][name] = time_ef_calls(calc, atoms, calls, warmup)
        mace_model = calc.models[0]
        from mace.data import AtomicData, config_from_atoms
        from mace.tools.torch_geometric.batch import Batch as MaceBatch

        z_table = AtomicNumberTable([int(z) for z in mace_model.atomic_numbers])

        def mace_direct(pos: np.ndarray, model=mace_model, atoms=atoms, z_table=z_table) -> None:
            a = atoms.copy()
            a.positions = pos
            graph = AtomicData.from_config(config_from_atoms(a), z_table=z_table, cutoff=float(model.r_max),
                                           heads=["Default"])
            batch = MaceBatch.from_data_list([graph])
            model(batch.to_dict(), training=False, compute_force=True)

        out["mace"]["direct"][name] = time_direct(mace_direct, atoms.get_positions(), calls, warmup)
    return out


# --- main ---------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def print_table(res: dict[str, Any]) -> None:
    nm, mc, r = res["neuralmd"], res["mace"], res["ratios"]
    rows = [
        ("energy MAE (meV/structure)", nm["energy_mae_mev"], mc["energy_mae_mev"], r["energy_mae_neuralmd_over_mace"]),
        ("force MAE (meV/Å)", nm["force_mae_mev_per_A"], mc["force_mae_mev_per_A"], r["force_mae_neuralmd_over_mace"]),
        ("training steps", nm["steps"], mc["steps"], None),
        ("training seconds", nm["train_seconds"], mc["train_seconds"], None),
        ("median step (s)", nm.get("median_step_seconds"), mc.get("median_step_seconds"), None),
        ("parameters", nm["parameters"], mc["parameters"], None),
        ("E+F call ethanol, ASE (ms)", nm["ef_call_ms"]["ethanol"], mc["ef_call_ms"]["ethanol"],
         r["ef_call_ms_mace_over_neuralmd"]["ethanol"]),
        ("E+F call 3BPA, ASE (ms)", nm["ef_call_ms"]["3bpa"], mc["ef_call_ms"]["3bpa"],
         r["ef_call_ms_mace_over_neuralmd"]["3bpa"]),
        ("E+F direct ethanol (ms)", nm["ef_call_ms_direct"]["ethanol"], mc["ef_call_ms_direct"]["ethanol"], None),
        ("E+F direct 3BPA (ms)", nm["ef_call_ms_direct"]["3bpa"], mc["ef_call_ms_direct"]["3bpa"], None),
    ]

    def fmt(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, int):
            return f"{x:,}"
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.1f}"

    print(f"\nrMD17 ethanol, {res['budget_min']} min training each, {nm['threads']} threads, "
          f"test_MD.xyz ({nm['test_frames']} frames)")
    print(f"{'':30s} {'neuralmd':>12s} {'MACE':>12s} {'neuralmd/MACE':>14s}")
    for name, a, b, q in rows[:6]:
        print(f"{name:30s} {fmt(a):>12s} {fmt(b):>12s} {fmt(q):>14s}")
    print(f"{'':30s} {'':>12s} {'':>12s} {'MACE/neuralmd':>14s}")
    for name, a, b, q in rows[6:]:
        print(f"{name:30s} {fmt(a):>12s} {fmt(b):>12s} {fmt(q):>14s}")
    if "mace_huber" in res:
        h = res["mace_huber"]
        print(f"MACE with neuralmd's Huber force loss: {h['energy_mae_mev']:.3g} meV, {h['force_mae_mev_per_A']:.3g} "
              f"meV/Å ({h['steps']:,} steps); neuralmd / MACE-Huber force MAE "
              f"{r['force_mae_neuralmd_over_mace_huber']:.3g}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget-min", type=float, default=10.0, help="training minutes per model")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both models")
    p.add_argument("--features", type=int, default=TrainConfig.features, help="neuralmd PaiNN features")
    p.add_argument("--interactions", type=int, default=TrainConfig.interactions,
                   help="neuralmd PaiNN interaction layers (2: tuned, see RESULTS.md)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    p.add_argument("--nm-batch-size", type=int, default=TrainConfig.batch_size, help="neuralmd batch size")
    p.add_argument("--nm-lr", type=float, default=TrainConfig.lr, help="neuralmd learning rate")
    p.add_argument("--mace-batch-size", type=int, default=5, help="MACE batch size")
    p.add_argument("--mace-lr", type=float, default=1e-2, help="MACE learning rate")
    p.add_argument("--eval-every", type=int, default=100, help="validate every N training steps (both)")
    p.add_argument("--calls", type=int, default=50, help="timed E+F calls per model and molecule")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before those")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mace-huber", action="store_true",
                   help="also train MACE with neuralmd's Huber force loss (same budget; reported as mace_huber)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the run directories and model files here (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    for f in (ETHANOL / "train.xyz", ETHANOL / "test_MD.xyz", BPA_FILE):
        if not f.is_file():
            print(f"{f}: data file not found (expected the project's ../shared/data)", file=sys.stderr)
            return 2
    machine = machine_info()
    load = LoadMonitor()
    budget_s = args.budget_min * 60

    with tempfile.TemporaryDirectory(prefix="ff_rmd17_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_dir = work / "neuralmd_run"
        if (run_dir / "checkpoint.pt").exists():
            print(f"{run_dir}: already holds a run; choose an empty --work-dir", file=sys.stderr)
            return 2

        log(f"neuralmd: training {args.budget_min} min on {threads} threads")
        trainer, nm_results, nm_wall, nm_cumulative = train_neuralmd(args, run_dir)
        log(f"neuralmd: {nm_results['steps']} steps in {nm_results['train_seconds']} s ({nm_results['stop_reason']})")
        load.phase("neuralmd_training")
        train_frames, valid_frames = trainer.train_data.frames, trainer.valid_data.frames

        log(f"MACE: training {args.budget_min} min on {torch.get_num_threads()} threads")
        mace_res = train_mace(args, train_frames, valid_frames, budget_s)
        log(f"MACE: {mace_res['steps']} steps in {mace_res['train_seconds']} s")
        load.phase("mace_training")

        mace_huber = None
        if args.mace_huber:
            delta = nm_results["config"]["huber_delta"]
            log(f"MACE with the Huber force loss (δ {delta} eV/Å): training {args.budget_min} min")
            mace_huber = train_mace(args, train_frames, valid_frames, budget_s, huber_delta=delta)
            log(f"MACE (Huber): {mace_huber['steps']} steps in {mace_huber['train_seconds']} s")
            load.phase("mace_huber_training")

        log("evaluating on test_MD.xyz")
        test_frames = read_frames(ETHANOL / "test_MD.xyz")
        nm_model = load_potential(run_dir / "model.pt")
        nm_test, _ = evaluate(nm_model, FrameDataset(test_frames))
        test = MaceData(test_frames, mace_res["z_table"], MACE_SETTINGS["r_max"], mace_res["e0"])
        mace_preds, mace_total32 = mace_predict(mace_res["model"], test)
        mace_test = error_metrics(mace_preds)
        mace_test["energy_mae_mev_float32_total"] = float(np.mean(np.abs(mace_total32 - test.energy)) * 1000)
        huber_test = error_metrics(mace_predict(mace_huber["model"], test)[0]) if mace_huber else None
        load.phase("evaluation")

        log(f"timing E+F calls ({args.calls} after {args.warmup} warm-up)")
        timing = time_models(args, run_dir / "model.pt", mace_res, work)
        load.phase("timing")

    nm_best_step = min(trainer.history, key=lambda r: r["valid_loss"])["step"] if trainer.history else None
    result: dict[str, Any] = {
        "benchmark": "rMD17 ethanol: neuralmd PaiNN vs MACE, same training wall-clock budget and threads",
        "budget_min": args.budget_min,
        "data": {"train": "rmd17_ethanol/train.xyz (950 train / 50 validation, neuralmd's split, seed "
                          f"{args.seed})", "test": "rmd17_ethanol/test_MD.xyz (all frames)",
                 "timing_3bpa": "3bpa/train_300K.xyz frame 0 (27 atoms)"},
        "machine": machine,
        "versions": versions(),
        "neuralmd": {
            "energy_mae_mev": nm_test["energy_mae_mev"],
            "force_mae_mev_per_A": nm_test["force_mae_mev_per_A"],
            "train_seconds": nm_results["train_seconds"],
            "threads": nm_results["threads"],
            "ef_call_ms": timing["neuralmd"]["ase"],
            "ef_call_ms_direct": timing["neuralmd"]["direct"],
            "steps": nm_results["steps"],
            "parameters": nm_results["parameters"],
            "test": nm_test,
            "test_frames": nm_test["frames"],
            "valid": nm_results["valid"],
            "best_step": nm_best_step,
            "stop_reason": nm_results["stop_reason"],
            "wall_seconds": round(nm_wall, 2),
            **step_stats(nm_cumulative),
            "settings": {**nm_results["config"], "architecture": "PaiNN (neuralmd native)",
                         "model_kept": "best-validation EMA weights (model.pt)"},
        },
        "mace": {
            "energy_mae_mev": mace_test["energy_mae_mev"],
            "force_mae_mev_per_A": mace_test["force_mae_mev_per_A"],
            "train_seconds": mace_res["train_seconds"],
            "threads": torch.get_num_threads(),
            "ef_call_ms": timing["mace"]["ase"],
            "ef_call_ms_direct": timing["mace"]["direct"],
            "steps": mace_res["steps"],
            "parameters": mace_res["parameters"],
            "test": mace_test,
            "test_frames": mace_test["frames"],
            "valid": min(mace_res["history"], key=lambda r: r["valid_loss"]),
            "best_step": mace_res["best_step"],
            "wall_seconds": mace_res["wall_seconds"],
            "preprocess_seconds": mace_res["preprocess_seconds"],
            "first_step_seconds": mace_res.get("first_step_seconds"),
            "median_step_seconds": mace_res.get("median_step_seconds"),
            "settings": {**MACE_SETTINGS, "batch_size": args.mace_batch_size, "lr": args.mace_lr,
                         "eval_every": args.eval_every, "seed": args.seed,
                         "avg_num_neighbors": mace_res["avg_num_neighbors"],
                         "atomic_inter_shift": mace_res["mean"], "atomic_inter_scale": mace_res["std"],
                         "E0s_eV": {str(z): v for z, v in mace_res["e0"].items()},
                         "model_kept": "best-validation EMA weights",
                         "energies": "float64 E0 sum + float32 interaction_energy (loss and metrics)"},
        },
        "timing": {
            "method": "median ms of atoms.get_potential_energy(); atoms.get_forces() through each model's ASE "
                      "calculator (neuralmd.NeuralCalculator; mace.calculators.MACECalculator(model_paths=<torch.save"
                      "d model>, device='cpu', default_dtype='float32')), atoms moved by 0.01 Å rms before every "
                      "call; ef_call_ms_direct: the same for a direct model call (graph building included, no ASE)",
            "calls": args.calls, "warmup": args.warmup, "threads": torch.get_num_threads(),
            "3bpa_models": "untrained models with the same architecture and hyperparameters over H, C, N, O "
                           "(the ethanol models do not know N); timing does not depend on the weights",
            "mace_calculator_note": "MACECalculator always computes the stress too (compute_stress=True for "
                                    "model_type 'MACE'), also for molecules without a cell",
        },
    }
    if huber_test is not None:
        result["mace_huber"] = {
            "energy_mae_mev": huber_test["energy_mae_mev"], "force_mae_mev_per_A": huber_test["force_mae_mev_per_A"],
            "train_seconds": mace_huber["train_seconds"], "steps": mace_huber["steps"], "test": huber_test,
            "settings": "as mace, but the force loss is 2 * Huber(δ = neuralmd's huber_delta) like neuralmd's"}
    nm, mc = result["neuralmd"], result["mace"]
    result["ratios"] = {
        "force_mae_neuralmd_over_mace": ratio(nm["force_mae_mev_per_A"], mc["force_mae_mev_per_A"]),
        "energy_mae_neuralmd_over_mace": ratio(nm["energy_mae_mev"], mc["energy_mae_mev"]),
        "ef_call_ms_mace_over_neuralmd": {k: ratio(mc["ef_call_ms"][k], nm["ef_call_ms"][k]) for k in nm["ef_call_ms"]},
        "ef_call_ms_direct_mace_over_neuralmd": {k: ratio(mc["ef_call_ms_direct"][k], nm["ef_call_ms_direct"][k])
                                                 for k in nm["ef_call_ms_direct"]},
    }
    if huber_test is not None:
        result["ratios"]["force_mae_neuralmd_over_mace_huber"] = ratio(nm["force_mae_mev_per_A"],
                                                                       huber_test["force_mae_mev_per_A"])
    try:
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    busy = load.busy()
    result["machine"]["other_processes_cpu_cores"] = load.phases
    result["machine"]["busy_phases"] = busy
    atomic_write_json(result, args.out)
    print_table(result)
    if busy:
        print(f"\nWARNING: other processes used CPU during {', '.join(busy)} "
              f"(cores on average: {load.phases}); step counts and timings of those phases are not "
              "comparable: rerun on an idle machine")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
