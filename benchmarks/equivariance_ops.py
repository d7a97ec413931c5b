"""The many-body product at the heart of TensorNet, done our way (per-channel 3×3 matrix
products of Cartesian tensors) and through e3nn (the channel-wise tensor product of the same
L ≤ 2 irreps, which MACE builds on): which is faster on this CPU (issue 21: use e3nn only if it
is the faster path).

    python benchmarks/equivariance_ops.py --threads 2

Both compute, for N atoms and F channels, the L = 0, 1, 2 parts of the product of two tensors
of L = 0 + 1 + 2 features (forward and backward, as training and forces need). Results in
``results/equivariance_ops.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from neuralmd.io_utils import atomic_write_json
from neuralmd.models.tensornet import _product
from neuralmd.threads import set_threads

HERE = Path(__file__).resolve().parent


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=Path, default=HERE / "results" / "equivariance_ops.json")
    args = p.parse_args(argv)
    set_threads(args.threads)
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn's stored constants (as MACE sets it)
    from e3nn import o3

    results = {"benchmark": "per-atom L<=2 product, forward+backward, median ms", "threads": args.threads,
               "command": "python benchmarks/equivariance_ops.py " + " ".join(sys.argv[1:]), "cases": []}
    for n_atoms, features in ((72, 64), (216, 64), (72, 32)):
        a = torch.randn(n_atoms, 10, features, requires_grad=True)
        b = torch.randn(n_atoms, 10, features, requires_grad=True)

        def ours() -> None:
            _product(a, b, "symmetric_product").pow(2).sum().backward()

        irreps = o3.Irreps(f"{features}x0e+{features}x1o+{features}x2e")
        tp = o3.ElementwiseTensorProduct(irreps, irreps, ["0e", "1o", "2e"])
        x = torch.randn(n_atoms, irreps.dim, requires_grad=True)
        y = torch.randn(n_atoms, irreps.dim, requires_grad=True)

        def e3nn_tp() -> None:
            tp(x, y).pow(2).sum().backward()

        case = {"atoms": n_atoms, "features": features, "ours_ms": median_ms(ours, args.repeats),
                "e3nn_ms": median_ms(e3nn_tp, args.repeats), "e3nn_output_irreps": str(tp.irreps_out.simplify())}
        case["e3nn_over_ours"] = case["e3nn_ms"] / case["ours_ms"]
        results["cases"].append(case)
        print(f"{n_atoms} atoms, {features} channels: ours {case['ours_ms']:.2f} ms, e3nn {case['e3nn_ms']:.2f} ms "
              f"({case['e3nn_over_ours']:.1f}x)", flush=True)
    atomic_write_json(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
