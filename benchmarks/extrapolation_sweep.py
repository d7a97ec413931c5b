"""Short neuralmd trainings on rMD17 ethanol compared on the extrapolation sets: the sweep that
chooses the default architecture and loss balance (issue 21; results in RESULTS.md).

    python benchmarks/extrapolation_sweep.py --budget-min 3 \\
        --run painn:architecture=painn --run tensornet:architecture=tensornet,features=32 --resume

Each ``--run NAME:KEY=VALUE,...`` is a :class:`~neuralmd.training.TrainConfig` override on top of
``neuralmd train``'s defaults, trained for the same minutes of training-step time on the same
threads and split, then evaluated on every set of :mod:`extrapolation` (all of test_MD). Results
are saved after each run; ``--resume`` skips the runs already in the output file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extrapolation import ETHANOL, ethanol_sets, evaluate_ethanol, neuralmd_predictor  # noqa: E402

from neuralmd.io_utils import atomic_write_json  # noqa: E402
from neuralmd.models import load_potential  # noqa: E402
from neuralmd.threads import set_threads  # noqa: E402
from neuralmd.training import TrainConfig, Trainer  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse_run(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    fields = TrainConfig.__dataclass_fields__
    overrides = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--run {text}: {key!r} is not a TrainConfig option")
        kind = type(getattr(TrainConfig(), key))
        overrides[key] = kind(value)
    return name, overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", action="append", required=True, help="NAME:KEY=VALUE,... (TrainConfig overrides)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "extrapolation_sweep_3min.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-extrapolation-sweep"))
    p.add_argument("--resume", action="store_true", help="skip runs already in --out")
    p.add_argument("--reevaluate", action="store_true",
                   help="with --resume: evaluate the runs already in --out again from their model files")
    args = p.parse_args(argv)
    set_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {
        "benchmark": "extrapolation_sweep", "budget_min": args.budget_min, "threads": args.threads,
        "command": "python benchmarks/extrapolation_sweep.py " + " ".join(sys.argv[1:]), "runs": {}}
    sets = ethanol_sets()
    for name, overrides in map(parse_run, args.run):
        run_dir = args.work_dir / name
        if name in results["runs"] and not (args.reevaluate and (run_dir / "model.pt").is_file()):
            print(f"{name}: already in {args.out}, skipped")
            continue
        if name not in results["runs"]:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            cfg = TrainConfig(train=str(ETHANOL / "train.xyz"), time_budget_min=args.budget_min,
                              threads=args.threads, checkpoint_every=10**9, **overrides)
            trained = Trainer(cfg, run_dir, progress=False).run()
            results["runs"][name] = {"overrides": overrides, "steps": trained["steps"]}
        model = load_potential(run_dir / "model.pt")
        t0 = time.perf_counter()
        metrics = evaluate_ethanol(neuralmd_predictor(model), sets)
        results["runs"][name].update(parameters=sum(q.numel() for q in model.parameters()),
                                     eval_seconds=round(time.perf_counter() - t0, 1), sets=metrics)
        atomic_write_json(results, args.out)
        md, nm874, nm3005, hr, dm = (metrics[k] for k in ("test_MD", "test_norm_mode_874", "test_norm_mode_3005",
                                                           "test_H_removal", "test_dimers"))
        print(f"{name}: {results['runs'][name]['steps']} steps | test_MD E {md['energy_mae_mev']:.2f} meV F "
              f"{md['force_mae_mev_per_A']:.2f} meV/A | nm874 {nm874['energy_profile_mae_mev']:.0f} meV "
              f"(barrier {nm874['barrier_pred_mev']:.0f}/{nm874['barrier_ref_mev']:.0f}) | nm3005 "
              f"{nm3005['energy_profile_mae_mev']:.0f} ({nm3005['barrier_pred_mev']:.0f}/"
              f"{nm3005['barrier_ref_mev']:.0f}) | H removal {hr['energy_profile_mae_mev']:.0f} "
              f"({hr['barrier_pred_mev']:.0f}/{hr['barrier_ref_mev']:.0f}) | dimers sign "
              f"{dm['repulsive_sign_fraction']:.2f}", flush=True)
        torch.set_num_threads(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
