"""Active learning vs random selection: ethanol with GFN2-xTB (tblite) or PBE/def2-SVP (PySCF) labels.

Test set: 500 frames from 300 K and 600 K xTB Langevin MD. Random selection: models trained on
n random frames of independent 300 K + 600 K xTB MD trajectories. Both sets are labelled with
the chosen reference (the MD that generates them is always xTB). Active: ``neuralmd active``
from one structure (committee MD at 300 and 600 K, trust window, farthest-point diversity,
labels from the same reference); each round's committee is scored on the same test set. Every
model (random or committee member) gets the same training recipe and step budget. Also: labels
per minute through the Dask executor with 1 and 2 workers.

Reference labels of the test set and the pool are kept in ``WORK/reference_labels.db`` as they
arrive; ``--resume`` after a stop reuses them (and the active loop's own store and state), so a
DFT run (~1.5 h on 2 cores) never pays for a label twice.

    python benchmarks/active_learning.py [--scale 1.0]      # -> benchmarks/results/active_learning.json
    python benchmarks/active_learning.py --labeler dft      # -> benchmarks/results/active_learning_dft.json
    python benchmarks/active_learning.py --labeler dft --resume   # continue a stopped run
    python benchmarks/active_learning.py --cold-control-only   # only the from-scratch control
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from ase.build import molecule

from neuralmd.active.loop import ActiveLearning, ActiveSettings, _train_member, label_missing
from neuralmd.data.dataset import FrameDataset
from neuralmd.data.io import write_frames
from neuralmd.data.store import LabelStore, frame_key
from neuralmd.demo import sample_geometries
from neuralmd.models.committee import load_committee
from neuralmd.parallel import connect, disconnect, label_as_completed, map_tasks
from neuralmd.reference import PySCFLabeler
from neuralmd.reference.xtb import XTBLabeler
from neuralmd.threads import set_threads
from neuralmd.training.metrics import evaluate
from neuralmd.training.trainer import TrainConfig

HERE = Path(__file__).resolve().parent


LABELERS = {"xtb": lambda: XTBLabeler(), "dft": lambda: PySCFLabeler("PBE", "def2-SVP", True, 0, 0, 1)}


def label_all(client, frames, labeler=None) -> list:
    out = [None] * len(frames)
    for k, labelled, reason in label_as_completed(client, labeler or XTBLabeler(), frames):
        if reason is None:
            out[k] = labelled
    return [a for a in out if a is not None]


def label_stored(client, frames, labeler, store: LabelStore) -> tuple[list, float | None]:
    """The labelled frames (input order, failures left out) and the labels per minute of this
    call (None if every label came from ``store``); new labels are stored as they arrive."""
    t0 = time.perf_counter()
    done = label_missing(client, labeler, frames, store)
    n = done["labelled_now"] + done["failed_now"]
    rate = n / (time.perf_counter() - t0) * 60 if n else None
    if n:
        print(f"  {n} frames labelled, {rate:.1f} labels/min")
    stored = {a.info["key"]: a for a in store.frames("ok")}
    out = []
    for a in frames:
        if frame_key(a) in stored:
            b = stored[frame_key(a)]
            b.info = {"energy": b.info["energy"]}
            out.append(b)
    return out, rate


def test_geometries() -> list:
    """500 frames of 300 K and 600 K xTB MD (seeded: the same frames in every run)."""
    start = molecule("CH3CH2OH")
    return sample_geometries(start, 250, 300.0, 10, seed=100) + sample_geometries(start, 250, 600.0, 10, seed=101)


def labels_per_minute(frames, workers: int, labeler=None) -> float:
    client = connect(workers=workers)
    try:
        label_all(client, frames[:workers], labeler)  # warm-up: imports on the workers
        t0 = time.perf_counter()
        n = len(label_all(client, frames, labeler))
        return n / (time.perf_counter() - t0) * 60
    finally:
        disconnect(client)


def force_mae(model, test) -> float:
    metrics, _ = evaluate(model, FrameDataset(test), batch_size=64)
    return metrics["force_mae_mev_per_A"]


def cold_control(work: Path, steps: int, labeler_name: str, sizes=(180, 300)) -> list[list[float]]:
    """Single models trained from scratch, with the random models' recipe and step budget, on the
    first n labels the active loop chose: separates the value of the labels from the committee
    averaging and the warm starts the loop's own curve also contains."""
    from neuralmd.models.neural import load_potential

    store = LabelStore(work / "active" / "labels.db", project="neuralmd-active:active")
    frames = sorted(store.frames("ok"), key=lambda a: (a.info["round"], a.info["index"]))
    client = connect(workers=2)
    try:
        test, _ = label_stored(client, test_geometries(), LABELERS[labeler_name](), reference_store(work))
    finally:
        disconnect(client)
    curve = []
    for n in sizes:
        folder = work / f"active_cold_{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        write_frames(frames[:n], folder / "train.xyz")
        cfg = TrainConfig(train=str(folder / "train.xyz"), valid_fraction=0.1, features=32, interactions=2, batch_size=8,
                          lr=2e-3, max_steps=steps, eval_every=max(steps // 10, 1), checkpoint_every=steps,
                          patience=1000, seed=0, threads=1)
        _train_member(asdict(cfg), str(folder / "model"))
        curve.append([n, force_mae(load_potential(folder / "model" / "model.pt"), test)])
        print("active labels, single model from scratch:", curve[-1])
    return curve


def reference_store(work: Path) -> LabelStore:
    return LabelStore(work / "reference_labels.db", project="neuralmd-benchmark:active_learning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply trajectory lengths and training steps")
    parser.add_argument("--labeler", choices=sorted(LABELERS), default="xtb",
                        help="reference labels: GFN2-xTB or PBE/def2-SVP with density fitting")
    parser.add_argument("--work", type=Path, help="work folder (default /tmp/neuralmd-al-bench[-dft])")
    parser.add_argument("--resume", action="store_true", help="continue a stopped run in the same work folder")
    parser.add_argument("--cold-control-only", action="store_true",
                        help="only add the from-scratch control on an existing run's labels to the results")
    args = parser.parse_args()
    set_threads(1)
    suffix = "" if args.labeler == "xtb" else f"_{args.labeler}"
    work = args.work or Path(f"/tmp/neuralmd-al-bench{suffix.replace('_', '-')}")
    out = HERE / "results" / f"active_learning{suffix}.json"
    labeler = LABELERS[args.labeler]()
    if args.cold_control_only:
        results = json.loads(out.read_text())
        results["active_labels_single_model_from_scratch"] = {
            "curve": cold_control(work, int(1500 * args.scale), args.labeler)}
        out.write_text(json.dumps(results, indent=1))
        return
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    store = reference_store(work)
    steps = int(1500 * args.scale)
    start = molecule("CH3CH2OH")
    t0 = time.perf_counter()
    print(f"xTB MD: test set and random-selection pool (300 and 600 K), labelled with {labeler.name}")
    test_geoms = test_geometries()
    n_pool = int(1000 * min(args.scale, 1.0))
    pool = sample_geometries(start, n_pool // 2, 300.0, 10, seed=200) + sample_geometries(start, n_pool // 2, 600.0, 10,
                                                                                          seed=201)
    order = np.random.default_rng(0).permutation(len(pool))
    pool = [pool[k] for k in order]
    client = connect(workers=2)
    try:
        test, _ = label_stored(client, test_geoms, labeler, store)
        labelled_pool, pool_rate = label_stored(client, pool, labeler, store)
        print(f"{len(test)} test frames, {len(labelled_pool)} pool frames labelled ({time.perf_counter() - t0:.0f} s)")
        sizes = [n for n in (50, 100, 200, 300, 600, 1000) if n <= len(labelled_pool)]
        jobs = []
        for n in sizes:
            data = work / f"random_{n}" / "train.xyz"
            data.parent.mkdir(parents=True, exist_ok=True)
            write_frames(labelled_pool[:n], data)
            cfg = TrainConfig(train=str(data), valid_fraction=0.1, features=32, interactions=2, batch_size=8, lr=2e-3,
                              max_steps=steps, eval_every=max(steps // 10, 1), checkpoint_every=steps, patience=1000,
                              seed=0, threads=1)
            jobs.append((asdict(cfg), str(work / f"random_{n}" / "model")))
        print(f"training {len(jobs)} random-selection models")
        map_tasks(client, _train_member, jobs)
    finally:
        disconnect(client)
    from neuralmd.models.neural import load_potential

    random_curve = [[n, force_mae(load_potential(work / f"random_{n}" / "model" / "model.pt"), test)]
                    for n in sizes]
    print("random:", random_curve)

    structure = work / "ethanol.xyz"
    write_frames([start], structure)
    settings = ActiveSettings(structure=str(structure), committee=2, temperatures_K=[300.0, 600.0], rounds=7,
                              initial_frames=20, replicas_per_temperature=4, md_steps=int(2000 * args.scale),
                              sample_every=20, trust_low_eV_per_A=0.05, trust_high_eV_per_A=0.5, max_select=40,
                              train_steps=steps, features=32, interactions=2, workers=2, seed=0,
                              labeler=args.labeler)
    loop = ActiveLearning(settings, work / "active", report=lambda row: print("active round", row))
    summary = loop.run()
    history = summary["history"]
    active_curve = []
    for r in range(1, settings.rounds + 2):
        folder = work / "active" / (f"round_{r:02d}" if r <= settings.rounds else "final")
        committee = load_committee([folder / f"member_{m}" / "model.pt" for m in range(settings.committee)])
        n_labels = history[r - 1]["labels"] if r <= settings.rounds else history[-1]["labels"]
        active_curve.append([n_labels, force_mae(committee, test)])
    print("active:", active_curve)
    target = dict(random_curve).get(1000)
    match = next((n for n, mae in active_curve if target is not None and mae <= target), None)
    results = {"active": {"curve": active_curve}, "random": {"curve": random_curve},
               "labels_to_match_random_1000": match}
    if args.labeler == "xtb":
        rates = {str(w): labels_per_minute(test_geoms[:120], w) for w in (1, 2)}
        dft = LABELERS["dft"]()
        rates_dft = {str(w): labels_per_minute(test_geoms[200:212], w, dft) for w in (1, 2)}
        print("labels/min xTB", rates, "PBE/def2-SVP", rates_dft)
        results.update({"labels_per_min": rates, "labels_per_min_dft_pbe_def2svp": rates_dft})
    else:  # the pool's own labelling rate (2 workers), when it was labelled in this run
        results["labels_per_min"] = {"2": round(pool_rate, 2)} if pool_rate else {}
    results.update({
        "settings": {"labeler": labeler.name, "md": "GFN2-xTB Langevin (test set and pool)",
                     "test_frames": len(test), "train_steps_per_model": steps,
                     "model": "PaiNN 32 features, 2 interactions", "committee": settings.committee,
                     "active": asdict(settings)},
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one thread per Dask worker",
        "versions": {"torch": torch.__version__, "neuralmd": __import__("neuralmd").__version__},
    })
    results["active_labels_single_model_from_scratch"] = {"curve": cold_control(work, steps, args.labeler)}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("active", "random", "labels_to_match_random_1000", "labels_per_min")},
                     indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
