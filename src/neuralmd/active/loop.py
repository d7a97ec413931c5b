"""The active-learning loop (DP-GEN's scheme): train a committee, explore with committee MD at
several temperatures, select frames whose force disagreement lies between a lower and an upper
trust level (diverse by farthest-point sampling), label them on a Dask cluster, repeat.

Everything is persisted as it happens, so ``resume`` after a kill at any moment loses nothing
already computed and never stores a frame twice:

- labels: the :class:`~neuralmd.data.store.LabelStore` (one transaction per label, keyed by
  frame); labelling skips keys already stored;
- committee members: ordinary training run directories (``round_XX/member_M``) with
  bit-exact checkpoints; finished members are not retrained;
- exploration and selection: deterministic given the committee and the seed, written
  atomically to ``round_XX/candidates.xyz`` and ``selected.xyz``;
- ``state.json``: the rounds completed and the per-round history.

Round 0 labels randomly displaced copies of the starting structure. Rounds 1..N each train on
all labels of the earlier rounds (members warm-start from the previous round's), explore and
label. A final committee is trained on everything (``final/member_M/model.pt``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms

from ..config import load_config, save_config
from ..data.io import read_frames, write_frames
from ..data.store import LabelStore, frame_key
from ..errors import InputError
from ..io_utils import atomic_write_json
from ..models.neural import ARCHITECTURES
from ..reference.factory import make_labeler
from ..rundir import CHECKPOINT

PROJECT_FILE = "active.toml"
#: keys of active.toml files written before the unit suffixes were made one spelling
RENAMED_KEYS = {"trust_low_eV_A": "trust_low_eV_per_A", "trust_high_eV_A": "trust_high_eV_per_A"}


@dataclass
class ActiveSettings:
    """Options of ``neuralmd active`` (units in the names)."""

    structure: str = ""
    labeler: str = "xtb"  # xtb, gfn1, dft, hf
    functional: str = "PBE"
    basis: str = "def2-SVP"
    charge: int = 0
    spin: int = 0
    committee: int = 4
    temperatures_K: list[float] = field(default_factory=lambda: [300.0])
    rounds: int = 5
    initial_frames: int = 20
    rattle_A: float = 0.05
    replicas_per_temperature: int = 2
    md_steps: int = 2000
    timestep_fs: float = 0.5
    sample_every: int = 20
    trust_low_eV_per_A: float = 0.05
    trust_high_eV_per_A: float = 0.35
    #: explore under an OPES_EXPLORE bias on this CV (as ``neuralmd sample --cv``); "": plain MD
    explore_cv: str = ""
    explore_barrier_kjmol: float = 20.0
    max_select: int = 20
    train_steps: int = 1000
    #: the committee's network: "auto" (as TrainConfig.architecture: TensorNet for molecules,
    #: PaiNN for periodic frames) or one of neuralmd.models.neural.ARCHITECTURES; a warm start
    #: keeps the network of the model it starts from
    architecture: str = "auto"
    features: int = 32
    interactions: int = 2
    cutoff_A: float = 5.0
    workers: int = 1
    scheduler: str = ""
    store: str = ""  # default: labels.db in the run directory
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.labeler in ("xtb", "gfn1", "dft", "hf"), f"labeler: {self.labeler!r}; expected xtb, gfn1, dft or hf"),
            (self.committee >= 2, f"committee: {self.committee}; at least 2 members are needed"),
            (0 < self.trust_low_eV_per_A < self.trust_high_eV_per_A,
             f"trust levels: need 0 < low ({self.trust_low_eV_per_A}) < high ({self.trust_high_eV_per_A}) eV/Å"),
            (self.rounds >= 1 and self.initial_frames >= 4, "rounds must be >= 1 and initial_frames >= 4"),
            (self.md_steps >= self.sample_every >= 1, "md_steps must be >= sample_every >= 1"),
            (all(0 < t <= 1e5 for t in self.temperatures_K) and self.temperatures_K,
             f"temperatures: {self.temperatures_K}; expected values in (0, 100000] K"),
            (0 < self.explore_barrier_kjmol < float("inf"),
             f"explore_barrier_kjmol: {self.explore_barrier_kjmol}; expected > 0"),
            (self.replicas_per_temperature >= 1 and self.max_select >= 1 and self.train_steps >= 1,
             f"replicas {self.replicas_per_temperature}, max_select {self.max_select}, train_steps "
             f"{self.train_steps}: each must be >= 1"),
            (self.workers >= 1, f"workers: {self.workers}; expected >= 1"),
            (0 < self.timestep_fs <= 10 and 0 <= self.rattle_A < float("inf"),
             f"timestep_fs {self.timestep_fs}, rattle_A {self.rattle_A}: expected 0 < timestep <= 10 fs, rattle >= 0"),
            (self.architecture in ("auto", *ARCHITECTURES),
             f"architecture: {self.architecture!r}; expected auto or one of {', '.join(ARCHITECTURES)}"),
            (self.features >= 1 and self.interactions >= 1 and 0 < self.cutoff_A < float("inf"),
             "features and interactions must be >= 1, cutoff_A > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"active options: {message}")
        if not Path(self.structure).is_file():
            raise InputError(f"structure: {self.structure}: file not found")


def farthest_point_sampling(descriptors: np.ndarray, k: int, first: int = 0) -> list[int]:
    """``k`` diverse rows: start at ``first``, then repeatedly the row farthest from those chosen."""
    chosen = [first]
    dist = np.linalg.norm(descriptors - descriptors[first], axis=1)
    while len(chosen) < min(k, len(descriptors)):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(descriptors - descriptors[nxt], axis=1))
    return chosen


def inverse_distances(atoms: Atoms) -> np.ndarray:
    """1/r over all atom pairs: a smooth descriptor of a molecule's geometry (fixed atom order)."""
    d = atoms.get_all_distances()
    iu = np.triu_indices(len(atoms), 1)
    return 1.0 / d[iu]


def _train_member(cfg_dict: dict, run_dir: str) -> dict:
    """Train (or finish training) one committee member; runs on a worker."""
    from ..threads import set_threads
    from ..training.trainer import TrainConfig, Trainer

    set_threads(1)
    run = Path(run_dir)
    if (run / "results.json").exists():
        return json.loads((run / "results.json").read_text())
    if (run / CHECKPOINT).exists():
        return Trainer.resume(run, progress=False).run()
    return Trainer(TrainConfig(**cfg_dict), run, progress=False).run()


def label_missing(client, labeler, frames: list[Atoms], store: LabelStore, round_: int = 0) -> dict[str, int]:
    """Label, on the Dask ``client``, the ``frames`` whose key ``store`` does not hold yet, and
    store each label (or its failure and reason) as it arrives, with ``round_`` and its index in
    ``frames``: a stopped job loses no finished label and a rerun labels only what is missing."""
    from ..parallel import label_as_completed

    known = store.keys()
    todo = [(k, a) for k, a in enumerate(frames) if frame_key(a) not in known]
    failed = 0
    if todo:
        for j, labelled, reason in label_as_completed(client, labeler, [a for _, a in todo]):
            k, atoms = todo[j]
            store.add(labelled if labelled is not None else atoms, frame_key(atoms), round_, labeler.settings(),
                      reason, index=k)
            failed += reason is not None
    return {"labelled_now": len(todo) - failed, "failed_now": failed}


class ActiveLearning:
    """The loop in ``run_dir``; ``report`` receives each finished round's history row."""

    def __init__(self, settings: ActiveSettings, run_dir: str | Path,
                 report: Callable[[dict], None] | None = None) -> None:
        settings.validate()
        self.s = settings
        self.run_dir = Path(run_dir)
        self.report = report or (lambda row: None)
        self.labeler = make_labeler(settings.labeler, settings.functional, settings.basis, True, settings.charge,
                                    settings.spin, threads=1)
        self.start = read_frames(settings.structure, require_labels=False)[0]
        self.labeler.check_frame(self.start, settings.structure)  # an impossible charge or spin: before any work
        self._check_explore_cv()
        self._client = None
        if settings.scheduler:  # an unreachable scheduler is an error before anything is written
            from ..parallel import connect

            self._client = connect(self.s.workers, self.s.scheduler)
        store = settings.store or str(self.run_dir / "labels.db")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(store, project=f"neuralmd-active:{self.run_dir.resolve().name}")
        if not (self.run_dir / PROJECT_FILE).exists():
            save_config(settings, self.run_dir / PROJECT_FILE)
        self.state = self._load_state()

    def _check_explore_cv(self) -> None:
        """InputError now, before any labelling or training, if ``explore_cv`` does not fit the
        structure; for a stored run it says where to correct it."""
        if not self.s.explore_cv:
            return
        from ..sampling.spec import parse_cv

        try:
            parse_cv(self.s.explore_cv, self.start.numbers)
        except InputError as exc:
            stored = self.run_dir / PROJECT_FILE
            hint = f"; correct explore_cv in {stored} and --resume {self.run_dir}" if stored.exists() else ""
            raise InputError(f"explore_cv: {exc}{hint}") from None

    @classmethod
    def resume(cls, run_dir: str | Path, report=None) -> "ActiveLearning":
        path = Path(run_dir) / PROJECT_FILE
        if not path.is_file():
            raise InputError(f"{path}: not found; is {run_dir} an active-learning run directory?")
        return cls(load_config(ActiveSettings, path, RENAMED_KEYS), run_dir, report)

    # --- persistence --------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = self.run_dir / "state.json"
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: unreadable loop state ({exc})") from None
        return {"completed_rounds": -1, "history": []}

    def _save_state(self) -> None:
        atomic_write_json(self.state, self.run_dir / "state.json")

    @property
    def client(self):
        if self._client is None:
            from ..parallel import connect

            self._client = connect(self.s.workers, self.s.scheduler or None)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            from ..parallel import disconnect

            disconnect(self._client)
            self._client = None

    # --- stages -------------------------------------------------------------------------
    def label(self, frames: list[Atoms], round_: int) -> dict[str, int]:
        """Label the frames not yet stored; each label is stored as it arrives."""
        return label_missing(self.client, self.labeler, frames, self.store, round_)

    def training_set(self, max_round: int) -> list[Atoms]:
        """Labelled frames of rounds <= ``max_round`` in a fixed order (round, index)."""
        frames = self.store.frames("ok", max_round=max_round)
        return sorted(frames, key=lambda a: (a.info["round"], a.info["index"], a.info["key"]))

    def train(self, round_dir: Path, max_round: int, previous: Path | None) -> list[dict]:
        """Train the committee of ``round_dir`` on labels up to ``max_round``, members in parallel."""
        from ..parallel import map_tasks
        from ..training.trainer import TrainConfig

        round_dir.mkdir(parents=True, exist_ok=True)
        data = round_dir / "train.xyz"
        if not data.exists():
            write_frames(self.training_set(max_round), data)
        jobs = []
        for m in range(self.s.committee):
            init = previous / f"member_{m}" / "model.pt" if previous is not None else None
            cfg = TrainConfig(train=str(data), valid_fraction=0.1, architecture=self.s.architecture,
                              features=self.s.features,
                              interactions=self.s.interactions, cutoff_A=self.s.cutoff_A, lr=2e-3,
                              max_steps=self.s.train_steps, eval_every=max(self.s.train_steps // 10, 1),
                              checkpoint_every=max(self.s.train_steps // 10, 1), patience=1000,
                              seed=self.s.seed * 1000 + m, threads=1,
                              init_model=str(init) if init is not None and init.exists() else "")
            jobs.append((asdict(cfg), str(round_dir / f"member_{m}")))
        return map_tasks(self.client, _train_member, jobs)

    def explore(self, round_dir: Path, round_: int) -> tuple[list[Atoms], list[Atoms], dict]:
        """Committee MD from the starting structure at each temperature; returns (candidates,
        selected, statistics). Replicas stop at the upper trust level."""
        from ..md.simulation import MDSettings, Simulation, SimulationUnstable
        from ..models.committee import load_committee
        from ..state import AtomsBatch

        if (round_dir / "explore.json").exists():  # written last: exploration is done
            stats = json.loads((round_dir / "explore.json").read_text())
            read = lambda name, n: read_frames(round_dir / name, require_labels=False) if n else []  # noqa: E731
            return read("candidates.xyz", stats["candidates"]), read("selected.xyz", stats["selected"]), stats
        committee = load_committee([round_dir / f"member_{m}" / "model.pt" for m in range(self.s.committee)])
        n_rep = self.s.replicas_per_temperature
        temps = [t for t in self.s.temperatures_K for _ in range(n_rep)]
        batch = AtomsBatch.from_atoms([self.start] * len(temps))
        md = MDSettings(temperature_K=temps, timestep_fs=self.s.timestep_fs, friction_per_ps=2.0,
                        seed=self.s.seed * 7919 + round_, report_every=self.s.sample_every, max_force_eV_per_A=50.0)
        bias = self.exploration_bias(committee, batch, md)
        sim = Simulation(committee, batch, md, terms=[bias] if bias is not None else [])
        active = np.ones(len(temps), dtype=bool)
        candidates, deviations, stopped_high = [], [], 0
        steps = 0
        while steps < self.s.md_steps and active.any():
            try:
                state = sim.run(self.s.sample_every)
            except SimulationUnstable:
                break
            steps += self.s.sample_every
            dev = committee.predict(state.batch)["force_deviation"].numpy()
            frames = state.batch.to_atoms()
            for b in np.nonzero(active)[0]:
                if dev[b] >= self.s.trust_high_eV_per_A:
                    active[b] = False
                    stopped_high += 1
                elif dev[b] >= self.s.trust_low_eV_per_A:
                    atoms = Atoms(frames[b].numbers, frames[b].positions)
                    atoms.info.update({"force_deviation": float(dev[b]), "temperature_K": temps[b], "step": steps})
                    candidates.append(atoms)
                    deviations.append(float(dev[b]))
        selected = []
        if candidates:
            desc = np.stack([inverse_distances(a) for a in candidates])
            order = farthest_point_sampling(desc, self.s.max_select, first=int(np.argmax(deviations)))
            selected = [candidates[k] for k in sorted(order)]
        stats = {"candidates": len(candidates), "selected": len(selected), "stopped_above_high": stopped_high,
                 "bias_kernels": len(bias.heights) if bias is not None else 0,
                 "md_steps": steps, "mean_deviation": float(np.mean(deviations)) if deviations else 0.0,
                 "max_deviation": float(np.max(deviations)) if deviations else 0.0}
        if candidates:
            write_frames(candidates, round_dir / "candidates.xyz")
            write_frames(selected, round_dir / "selected.xyz")
        atomic_write_json(stats, round_dir / "explore.json")  # last: marks exploration as done
        # continue with the frames as stored, so a resumed run sees bit-identical geometries
        return self.explore(round_dir, round_)

    def exploration_bias(self, committee, batch, md):
        """OPES_EXPLORE on ``explore_cv`` shared by all exploration replicas (deposition every
        ``sample_every`` steps, at the first temperature; widths from a short probe), or None."""
        if not self.s.explore_cv:
            return None
        from ..sampling.bias_factory import BiasSettings
        from ..sampling.runs import native_bias
        from ..sampling.spec import parse_cv

        cv = parse_cv(self.s.explore_cv, self.start.numbers)
        settings = BiasSettings(cv=self.s.explore_cv, bias="opes-explore", barrier_kjmol=self.s.explore_barrier_kjmol,
                                pace=self.s.sample_every, probe_steps=max(100, self.s.md_steps // 10))
        return native_bias(committee, batch, md, settings, cv)

    # --- the loop -----------------------------------------------------------------------
    def initial_frames(self) -> list[Atoms]:
        rng = np.random.default_rng(self.s.seed)
        frames = []
        for _ in range(self.s.initial_frames):
            atoms = Atoms(self.start.numbers, self.start.positions + rng.normal(scale=self.s.rattle_A,
                                                                                size=self.start.positions.shape))
            frames.append(atoms)
        return frames

    def run(self) -> dict[str, Any]:
        """Run (or continue) all rounds and the final committee; returns the summary."""
        try:
            if self.state["completed_rounds"] < 0:
                counts = self.label(self.initial_frames(), 0)
                self._finish_round(0, {"candidates": self.s.initial_frames, "selected": self.s.initial_frames,
                                       **counts}, None)
            for r in range(self.state["completed_rounds"] + 1, self.s.rounds + 1):
                t0 = time.perf_counter()
                round_dir = self.run_dir / f"round_{r:02d}"
                previous = self.run_dir / f"round_{r - 1:02d}" if r > 1 else None
                members = self.train(round_dir, r - 1, previous)
                _, selected, stats = self.explore(round_dir, r)
                counts = self.label(selected, r)
                stats.update(self.calibration(round_dir, r))
                self._finish_round(r, {**stats, **counts, "seconds": round(time.perf_counter() - t0, 1)}, members)
            final = self.train(self.run_dir / "final", self.s.rounds, self.run_dir / f"round_{self.s.rounds:02d}")
        finally:
            self.close()
        summary = {"labels": self.store.count("ok"), "failed": self.store.count("failed"),
                   "final_valid_force_mae_mev_per_A": float(np.mean([m["valid"]["force_mae_mev_per_A"] for m in final])),
                   "models": [str(self.run_dir / "final" / f"member_{m}" / "model.pt") for m in range(self.s.committee)],
                   "history": self.state["history"]}
        atomic_write_json(summary, self.run_dir / "results.json")
        self._plot()
        return summary

    def calibration(self, round_dir: Path, r: int) -> dict[str, float]:
        """The round's committee against the labels it just asked for (frames it never trained
        on): its disagreement's scale factor to the true force error and their Spearman rank
        correlation."""
        from ..models.committee import calibrate, load_committee

        new = self.store.frames("ok", max_round=r)
        new = [a for a in new if a.info["round"] == r]
        if len(new) < 3:
            return {}
        committee = load_committee([round_dir / f"member_{m}" / "model.pt" for m in range(self.s.committee)])
        cal = calibrate(committee, new)
        return {"calibration_scale": cal["scale_factor"], "calibration_spearman": cal["spearman"]}

    def _finish_round(self, r: int, stats: dict, members: list[dict] | None) -> None:
        row = {"round": r, "labels": self.store.count("ok"), "failed_total": self.store.count("failed"), **stats}
        if members:
            row["valid_force_mae_mev_per_A"] = float(np.mean([m["valid"]["force_mae_mev_per_A"] for m in members]))
        self.state["history"].append(row)
        self.state["completed_rounds"] = r
        self._save_state()
        self.report(row)

    def _plot(self) -> None:
        from ..analysis.plots import save_figure, plt

        rows = [h for h in self.state["history"] if "valid_force_mae_mev_per_A" in h]
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        # a round's committee was trained on the labels that existed before that round
        labels = [self.state["history"][k - 1]["labels"] for k in (h["round"] for h in rows)]
        ax.plot(labels, [h["valid_force_mae_mev_per_A"] for h in rows], marker="o")
        ax.set_xlabel("labels used for training")
        ax.set_ylabel("committee validation force MAE (meV/Å)")
        ax.set_title("active learning")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, self.run_dir / "error_vs_labels.png")
