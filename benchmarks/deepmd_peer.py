"""DeePMD-kit 3.2.0 (TensorFlow backend) as a peer, run in its own virtual environment.

DeePMD's PyTorch wheel is built against a different torch than ours (see /work/shared/PEERS.md), so
the TensorFlow backend runs in a separate venv and everything that imports ``deepmd`` happens in a
child process started with that venv's python; this module itself imports nothing from DeePMD.
Arguments go to the children as a JSON file and results come back as one. Units: Å, eV, eV/Å,
fs, K, seconds (ASE's).

Thread counts: ``threads`` sets OMP_NUM_THREADS and the intra-op pools of TensorFlow and DeePMD
(TF_/DP_INTRA_OP_PARALLELISM_THREADS); the inter-op pools get 1 thread so that a run never uses
more than ``threads`` cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from neuralmd.io_utils import atomic_write_json

PIP_REQUIREMENTS = ["deepmd-kit[cpu]==3.2.0", "mpich", "ase==3.29.0"]  # ase: the same version as ours
CALIBRATION_STEPS = 200  # training steps timed to measure seconds per step (discarded)
KILL_FACTOR = 1.2  # a training run still going at KILL_FACTOR * budget is killed; its last checkpoint is used
EXAMPLE_STEPS_PER_DECAY = 1_000_000 / 5000  # examples/water/se_e2_a: numb_steps / decay_steps


def ensure_venv(venv: Path) -> Path:
    """Create the peer venv at ``venv`` unless ``<venv>/bin/dp`` exists; return its python.

    Installs ``PIP_REQUIREMENTS`` with python3.11 (~30 s from PyPI). Raises RuntimeError carrying
    the last lines of pip's output if creating or installing fails.
    """
    venv = Path(venv)
    if not (venv / "bin" / "dp").exists():
        for cmd in (["python3.11", "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *PIP_REQUIREMENTS]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
                raise RuntimeError(f"setting up the DeePMD venv failed: {' '.join(cmd)}\n{tail}")
    return venv / "bin" / "python"


def se_e2_a_input(train_dirs: list[Path], valid_dir: Path, numb_steps: int, decay_steps: int,
                  seed: int) -> dict[str, Any]:
    """DeePMD-kit's input for the se_e2_a water model (a dict to write as input.json).

    Settings are those of DeePMD-kit's own ``examples/water/se_e2_a/input.json``
    (github.com/deepmodeling/deepmd-kit, read at commit 1f8f8d2b4c18): type_map O, H; descriptor
    se_e2_a, sel [46, 92], rcut_smth 0.50 Å, rcut 6.00 Å, neuron [25, 50, 100], resnet_dt false,
    axis_neuron 16; fitting_net neuron [240, 240, 240], resnet_dt true; exponential learning rate
    0.001 -> 3.51e-8; ener loss with prefactors e 0.02 -> 1, f 1000 -> 1, v 0 -> 0; training
    batch_size "auto"; validation batch_size 1, numb_btch 3. Changed here: ``numb_steps`` and
    ``decay_steps`` (the example has 1,000,000 and 5000), every seed set to ``seed`` (the example
    uses 1 for the networks and 10 for training), the data paths, and disp_freq/save_freq scaled to
    the run (at most 100 and 1000, the example's values; DeePMD's TF trainer only saves at a
    display step, so save_freq is a multiple of disp_freq).
    """
    disp_freq = min(100, max(1, numb_steps // 4))
    return {
        "model": {
            "type_map": ["O", "H"],
            "descriptor": {"type": "se_e2_a", "sel": [46, 92], "rcut_smth": 0.50, "rcut": 6.00,
                           "neuron": [25, 50, 100], "resnet_dt": False, "axis_neuron": 16, "seed": seed},
            "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "seed": seed},
        },
        "learning_rate": {"type": "exp", "decay_steps": decay_steps, "start_lr": 0.001, "stop_lr": 3.51e-8},
        "loss": {"type": "ener", "start_pref_e": 0.02, "limit_pref_e": 1, "start_pref_f": 1000, "limit_pref_f": 1,
                 "start_pref_v": 0, "limit_pref_v": 0},
        "training": {
            "training_data": {"systems": [str(Path(d).resolve()) for d in train_dirs], "batch_size": "auto"},
            "validation_data": {"systems": [str(Path(valid_dir).resolve())], "batch_size": 1, "numb_btch": 3},
            "numb_steps": numb_steps,
            "seed": seed,
            "disp_file": "lcurve.out",
            "disp_freq": disp_freq,
            "save_freq": disp_freq * max(1, min(1000, numb_steps // 10) // disp_freq),
        },
    }


def _env(threads: int) -> dict[str, str]:
    """The environment for a DeePMD child on ``threads`` cores (no PYTHONPATH of ours)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads),
               TF_INTRA_OP_PARALLELISM_THREADS=str(threads), TF_INTER_OP_PARALLELISM_THREADS="1",
               DP_INTRA_OP_PARALLELISM_THREADS=str(threads), DP_INTER_OP_PARALLELISM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _dp_train(venv: Path, folder: Path, settings: dict[str, Any], threads: int,
              timeout_s: float | None) -> tuple[float, bool, str]:
    """Run ``dp --tf train input.json`` in ``folder``, killed after ``timeout_s`` seconds.

    Returns (wall seconds, whether it was killed, its log).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / "checkpoint", *folder.glob("model.ckpt*")]:
        stale.unlink(missing_ok=True)
    (folder / "input.json").write_text(json.dumps(settings, indent=2))
    with open(folder / "train.log", "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([str(Path(venv) / "bin" / "dp"), "--tf", "train", "input.json"], cwd=folder,
                                env=_env(threads), stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout_s)
            killed = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed = True
        wall = time.perf_counter() - start
    text = (folder / "train.log").read_text(errors="replace")
    if proc.returncode != 0 and not killed:
        raise RuntimeError(f"dp train failed in {folder}:\n" + "\n".join(text.splitlines()[-20:]))
    return wall, killed, text


def train(venv: Path, train_dirs: list[Path], valid_dir: Path, work: Path, budget_s: float, threads: int,
          seed: int = 1) -> dict[str, Any]:
    """Train the se_e2_a water model for a wall-clock budget of ``budget_s`` seconds; freeze it.

    A first run of CALIBRATION_STEPS steps (in ``work/calibrate``, discarded) measures seconds per
    step (from DeePMD's per-interval wall times, first interval left out) and the fixed cost of a
    run (start-up, data statistics, graph building: its wall time minus the intervals). The real
    run then gets numb_steps = (budget_s - fixed cost) / (s per step), decay_steps in the example's
    proportion (numb_steps / 200), so the learning rate reaches stop_lr at the end of the budget. It
    runs in ``work``; past KILL_FACTOR * budget_s it is killed and its last checkpoint is frozen.

    Returns {"model": path of frozen_model.pb, "train_seconds": wall time of the real run (s),
    "steps": steps in the frozen checkpoint, "calibration_s_per_step", "calibration_fixed_s",
    "killed", "settings": the input dict}; also written to ``work/train_result.json``, which a
    later call returns without training while the model file exists.
    """
    work = Path(work)
    result_path = work / "train_result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if Path(result["model"]).exists():
            return result
    cal_settings = se_e2_a_input(train_dirs, valid_dir, CALIBRATION_STEPS, 1, seed)
    cal_wall, _, cal_log = _dp_train(venv, work / "calibrate", cal_settings, threads, None)
    intervals = [float(x) for x in re.findall(r"total wall time = ([0-9.]+) s", cal_log)]
    s_per_step = sum(intervals[1:]) / (len(intervals) - 1) / cal_settings["training"]["disp_freq"]
    fixed_s = cal_wall - sum(intervals)
    numb_steps = max(1, int((budget_s - fixed_s) / s_per_step))
    settings = se_e2_a_input(train_dirs, valid_dir, numb_steps,
                             max(1, round(numb_steps / EXAMPLE_STEPS_PER_DECAY)), seed)
    train_s, killed, _ = _dp_train(venv, work, settings, threads, KILL_FACTOR * budget_s)
    if not (work / "checkpoint").exists():
        raise RuntimeError(f"dp train in {work} was killed after {train_s:.0f} s, before its first checkpoint")
    checkpoint = re.search(r'model_checkpoint_path: ".*-(\d+)"', (work / "checkpoint").read_text())
    subprocess.run([str(Path(venv) / "bin" / "dp"), "--tf", "freeze", "-o", "frozen_model.pb"], cwd=work,
                   env=_env(threads), check=True, capture_output=True)
    result = {"model": str((work / "frozen_model.pb").resolve()), "train_seconds": train_s,
              "steps": int(checkpoint.group(1)), "calibration_s_per_step": s_per_step,
              "calibration_fixed_s": fixed_s, "killed": killed, "settings": settings}
    atomic_write_json(result, result_path)
    return result


# The child: run by the peer venv's python as `child.py TASK args.json out.json`.
_CHILD = r'''
import json, os, resource, sys, time
from pathlib import Path
import numpy as np

FORCE_LIMIT = 50.0  # eV/A: a larger force on any atom marks an MD run unstable


def write_json(obj, path):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def test(a):
    from deepmd.infer import DeepPot
    dp = DeepPot(a["model"])
    data = Path(a["data_dir"])
    names = (data / "type_map.raw").read_text().split()
    model_types = dp.get_type_map()
    types = [model_types.index(names[t]) for t in np.loadtxt(data / "type.raw", dtype=int, ndmin=1)]
    de, df = [], []
    for s in sorted(data.glob("set.*")):
        coord, box = np.load(s / "coord.npy"), np.load(s / "box.npy")
        e, f, _ = dp.eval(coord, box, types)
        de.append(e.reshape(-1) - np.load(s / "energy.npy").reshape(-1))
        df.append(f.reshape(len(coord), -1) - np.load(s / "force.npy"))
    de, df = np.concatenate(de), np.concatenate(df)
    return {"energy_mae_mev_per_atom": 1000 * float(np.mean(np.abs(de))) / len(types),
            "force_mae_mev_per_A": 1000 * float(np.mean(np.abs(df))),
            "force_rmse_mev_per_A": 1000 * float(np.sqrt(np.mean(df ** 2))),
            "frames": int(len(de))}


def thermostat(atoms, a, rng):
    from ase import units
    try:
        from ase.md.bussi import Bussi
        return Bussi(atoms, a["timestep_fs"] * units.fs, a["temperature_K"], taut=100 * units.fs, rng=rng)
    except ImportError:
        from ase.md.langevin import Langevin
        return Langevin(atoms, a["timestep_fs"] * units.fs, temperature_K=a["temperature_K"],
                        friction=0.01 / units.fs, rng=rng)


def start(a):
    from ase.io import read
    from deepmd.calculator import DP
    atoms = read(a["structure"], 0)
    atoms.calc = DP(model=a["model"])
    return atoms


def maxwell(atoms, a, seed):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    MaxwellBoltzmannDistribution(atoms, temperature_K=a["temperature_K"], rng=np.random.default_rng(seed))
    Stationary(atoms)


def md_speed(a):
    atoms = start(a)
    maxwell(atoms, a, 0)
    dyn = thermostat(atoms, a, np.random.default_rng(0))
    dyn.run(a["warmup"])
    t0 = time.perf_counter()
    dyn.run(a["steps"])
    dt = time.perf_counter() - t0
    return {"steps_per_s": a["steps"] / dt, "atom_steps_per_s": a["steps"] * len(atoms) / dt,
            "ms_per_step": 1000 * dt / a["steps"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "atoms": len(atoms)}


def md_run(a):
    from ase import Atoms
    from ase.io import write
    out = Path(a["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    state_path, traj = out / "state.json", out / "traj.extxyz"
    every = max(1, round(a["frame_every_fs"] / a["timestep_fs"]))
    chunk = every * max(1, round(a["chunk_ps"] * 1000 / a["timestep_fs"] / every))
    total = round(a["total_ps"] * 1000 / a["timestep_fs"])
    atoms = start(a)
    if state_path.exists():
        state = json.loads(state_path.read_text())
        atoms.set_positions(np.array(state["positions"]))
        atoms.set_momenta(np.array(state["momenta"]))
    else:
        maxwell(atoms, a, a["seed"])
        state = {"step": 0, "frames": 0, "seconds": 0.0, "stable": True, "traj_bytes": 0}
    with open(traj, "ab") as fh:
        fh.truncate(state["traj_bytes"])  # frames of an interrupted chunk
    while state["stable"] and state["step"] < total:
        dyn = thermostat(atoms, a, np.random.default_rng([a["seed"], state["step"]]))
        step, t0 = state["step"], time.perf_counter()
        with open(traj, "a") as fh:
            while step < min(state["step"] + chunk, total):
                dyn.step()
                step += 1
                f = atoms.get_forces()
                if not (np.isfinite(f).all() and np.isfinite(atoms.positions).all()
                        and np.linalg.norm(f, axis=1).max() <= FORCE_LIMIT):
                    state["stable"] = False
                    break
                if step % every == 0:
                    frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                    frame.info["time_fs"] = step * a["timestep_fs"]
                    write(fh, frame, format="extxyz")
                    state["frames"] += 1
            fh.flush()
            os.fsync(fh.fileno())
        state.update(step=step, seconds=state["seconds"] + time.perf_counter() - t0, traj_bytes=traj.stat().st_size)
        if state["stable"]:
            state.update(positions=atoms.positions.tolist(), momenta=atoms.get_momenta().tolist())
        write_json(state, state_path)
    return {"frames": state["frames"], "ps_done": state["step"] * a["timestep_fs"] / 1000,
            "seconds": state["seconds"], "stable": state["stable"]}


if __name__ == "__main__":
    task, args, out = sys.argv[1:]
    write_json(globals()[task](json.loads(Path(args).read_text())), out)
'''


def _child(venv: Path, task: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run ``task`` of the child script with the peer venv's python; return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="deepmd-peer-") as tmp:
        script, args_path, out_path = Path(tmp, "child.py"), Path(tmp, "args.json"), Path(tmp, "out.json")
        script.write_text(_CHILD)
        args_path.write_text(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in args.items()}))
        proc = subprocess.run([str(Path(venv) / "bin" / "python"), str(script), task, str(args_path), str(out_path)],
                              env=_env(threads), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise RuntimeError(f"DeePMD child '{task}' failed:\n{tail}")
        return json.loads(out_path.read_text())


def test(venv: Path, model: Path, data_dir: Path, threads: int) -> dict[str, Any]:
    """Errors of a frozen model on every frame of the DeePMD system ``data_dir`` (eV, eV/Å data).

    Returns {"energy_mae_mev_per_atom": mean over frames of |E_pred - E_ref| / N_atoms (meV/atom),
    "force_mae_mev_per_A", "force_rmse_mev_per_A": over all force components (meV/Å), "frames"},
    computed with ``deepmd.infer.DeepPot`` in a child.
    """
    return _child(venv, "test", {"model": model, "data_dir": data_dir}, threads)


def md_speed(venv: Path, model: Path, structure: Path, steps: int, warmup: int, threads: int,
             temperature_K: float = 300.0, timestep_fs: float = 0.5) -> dict[str, Any]:
    """Speed of NVT MD through ASE with DeePMD's calculator (``deepmd.calculator.DP``) in a child.

    Starts from the first frame of ``structure`` (extxyz with cell) with Maxwell-Boltzmann velocities
    at ``temperature_K`` (K); ASE's Bussi thermostat (taut 100 fs; Langevin, 0.01/fs, if absent),
    ``timestep_fs`` (fs); times ``steps`` steps after ``warmup`` untimed ones. Returns
    {"steps_per_s", "atom_steps_per_s", "ms_per_step", "peak_rss_mb" (child's peak RSS, MiB), "atoms"}.
    """
    return _child(venv, "md_speed", {"model": model, "structure": structure, "steps": steps, "warmup": warmup,
                                     "temperature_K": temperature_K, "timestep_fs": timestep_fs}, threads)


def md_run(venv: Path, model: Path, structure: Path, out_dir: Path, total_ps: float, timestep_fs: float,
           temperature_K: float, frame_every_fs: float, threads: int, seed: int,
           chunk_ps: float = 1.0) -> dict[str, Any]:
    """NVT production run (Bussi, taut 100 fs) with DeePMD's ASE calculator, resumable in chunks.

    Frames (extxyz with cell, positions unwrapped, info ``time_fs``) every ``frame_every_fs`` fs go
    to ``out_dir/traj.extxyz``. After each chunk of ``chunk_ps`` ps, ``out_dir/state.json`` is
    written atomically with the step, positions (Å) and momenta (float64, exact), so a later call
    continues from there (dropping frames of an interrupted chunk) until ``total_ps`` ps are done.
    Velocities start Maxwell-Boltzmann at ``temperature_K`` (K) from ``seed``; each chunk's
    thermostat noise is seeded by (seed, its first step), so a resumed run is reproducible. A
    non-finite value or a force over 50 eV/Å stops the run for good (stable false; frames up to
    the last good step are kept). Returns {"frames", "ps_done", "seconds" (MD wall time over all
    calls, s), "stable"}.
    """
    return _child(venv, "md_run", {"model": model, "structure": structure, "out_dir": Path(out_dir).resolve(),
                                   "total_ps": total_ps, "timestep_fs": timestep_fs, "temperature_K": temperature_K,
                                   "frame_every_fs": frame_every_fs, "seed": seed, "chunk_ps": chunk_ps}, threads)

