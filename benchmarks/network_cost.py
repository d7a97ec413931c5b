"""Energy+forces cost of the two networks on periodic water boxes: time per call and peak memory.

    python benchmarks/network_cost.py --threads 1 --sizes 64,512,4096

Untrained models (``neuralmd train``'s hyperparameters: 64 features, 2 layers, 5 Å; weights do
not change the cost) built over the elements of ``../shared/data/deepmd_water/data_0``; its first
frame (64 waters) replicated to each size. Each (network, size) runs in its own process, so the
peak resident memory is its own; the time is the median of ``--calls`` calls after one warm-up.
Results: ``results/network_cost.json``. This is the measurement behind ``neuralmd train``'s
``--architecture auto`` (PaiNN for periodic frames).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "deepmd_water" / "data_0"


def child(architecture: str, waters: int, calls: int, threads: int) -> dict:
    """One (network, size) measurement, in this process."""
    import numpy as np
    import torch

    from neuralmd.data import FrameDataset, read_frames
    from neuralmd.state import AtomsBatch
    from neuralmd.threads import set_threads
    from neuralmd.training.trainer import TrainConfig, build_model

    set_threads(threads)
    frames = read_frames(DATA)[:2]
    model = build_model(TrainConfig(architecture=architecture), FrameDataset(frames)).eval()
    rep = round((waters / 64) ** (1 / 3))
    box = frames[0].repeat((rep, rep, rep))
    batch = AtomsBatch.from_atoms([box], dtype=torch.float64)
    model(batch, forces=True)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(batch, forces=True)
        times.append(time.perf_counter() - start)
    ms = float(np.median(times) * 1000)
    return {"architecture": architecture, "waters": waters, "atoms": len(box), "ms_per_call": round(ms, 1),
            "us_per_atom": round(1000 * ms / len(box), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", default="64,512,4096", help="waters per box (64 times a cube)")
    p.add_argument("--architectures", default="painn,tensornet")
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results" / "network_cost.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        arch, waters = args.child.split(":")
        print(json.dumps(child(arch, int(waters), args.calls, args.threads)))
        return 0
    rows = []
    for waters in (int(w) for w in args.sizes.split(",")):
        for arch in args.architectures.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", f"{arch}:{waters}", "--calls", str(args.calls),
                                   "--threads", str(args.threads)], capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"architecture": arch, "waters": waters, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "energy+forces cost per network on water boxes",
                                    "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
