"""Executors: a Dask cluster that labels frames and trains committee members in parallel.

``connect(workers=N)`` starts a local cluster of N single-threaded worker processes (each
limits OpenMP/torch to one thread, so N workers use N cores); ``connect(scheduler=ADDRESS)``
joins an existing cluster (e.g. one started by dask-jobqueue's SLURMCluster). A worker that
dies mid-task has its tasks rerun on another worker by the Dask scheduler; results reach the
caller exactly once per task, as they complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ase import Atoms

from .errors import InputError

#: Environment of every local worker: one thread for OpenMP, BLAS and torch.
WORKER_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def connect(workers: int = 1, scheduler: str | None = None, timeout_s: float = 20.0):
    """A ``distributed.Client`` on a new LocalCluster or on ``scheduler``."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=timeout_s)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"scheduler {scheduler}: unreachable ({type(exc).__name__}: {exc})") from None
    if workers < 1:
        raise InputError(f"workers: {workers}; expected >= 1")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           env=WORKER_ENV, silence_logs=40)
    return Client(cluster)


def disconnect(client) -> None:
    """Close ``client`` and the local cluster it started (a cluster joined by address keeps running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def _label_task(labeler, atoms: Atoms) -> tuple[Atoms | None, str | None]:
    """Label one frame on a worker; a failure comes back as its reason."""
    from .threads import set_threads

    set_threads(1)
    try:
        return labeler.label_one(atoms), None
    except Exception as exc:  # a QM code fails in many ways; each is recorded with its frame
        return None, f"{type(exc).__name__}: {exc}".strip()


def label_as_completed(client, labeler, frames: Sequence[Atoms], retries: int = 2
                       ) -> Iterator[tuple[int, Atoms | None, str | None]]:
    """(index, labelled frame or None, failure reason or None) for every frame, in completion
    order. Tasks lost with a dead worker are rerun elsewhere (up to ``retries`` extra times
    for tasks that raise)."""
    from distributed import as_completed

    futures = {client.submit(_label_task, labeler, atoms, retries=retries, pure=False): k
               for k, atoms in enumerate(frames)}
    for future in as_completed(futures):
        k = futures[future]
        try:
            labelled, reason = future.result()
        except Exception as exc:  # KilledWorker after repeated worker deaths, or a lost connection
            labelled, reason = None, f"task lost: {type(exc).__name__}: {exc}"
        yield k, labelled, reason


def map_tasks(client, function: Callable[..., Any], arguments: Sequence[tuple]) -> list[Any]:
    """Run ``function(*args)`` for each argument tuple on the cluster; results in input order."""
    futures = [client.submit(function, *args, pure=False) for args in arguments]
    return client.gather(futures)


def worker_pids(client) -> list[int]:
    """Process ids of the cluster's workers (tests kill one to show tasks survive)."""
    return list(client.run(os.getpid).values())
