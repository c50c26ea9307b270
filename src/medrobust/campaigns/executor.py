"""Where a campaign's work runs: in this process (the default) or on Ray workers.

Every store-writing campaign declares its work once, as a ``Work``:

* ``compute(ctx, job, emit) -> (results, note)``: a module-level, pure function of a per-worker
  context and one job (a chunk of items, or a map tile) returning its store rows (or the tile's
  numbers); ``emit`` is given only in process, for campaigns that commit each item the moment it
  finishes;
* ``local()``: the context built from the objects already in memory (the model, the dataset,
  the attack): the in-process executor uses it, so nothing is reloaded and nothing changes;
* ``remote(model, data, params)``: a module-level function building the same context on a worker
  from the checkpoint (loaded by the worker itself), the data (shipped once through the object
  store) and plain JSON-able ``params`` (the attack is rebuilt from them, never pickled).

The executor hands out the jobs and calls ``on_result(job, results, note)`` on the driver, which
alone writes the store. ``LocalExecutor`` runs the jobs in order (today's behaviour, bit for bit);
``RayExecutor`` keeps a bounded number of jobs in flight over N actors and reports them in
completion order, so a killed driver loses at most the jobs in flight and the same command
resumes. Results are identical either way because every random stream is keyed by dataset
index and every job is computed the same way whatever worker runs it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrobust.errors import ConfigError

#: ``compute(ctx, job, emit)`` -> (results, note); ``emit(item, row)`` commits one item at once
Compute = Callable[[Any, Any, Callable[[Any, Any], None] | None], tuple[Any, Any]]

INSTALL_RAY = "--executor ray needs Ray: pip install 'medrobust[ray]'"
#: the checkpoint files a worker needs (see models/checkpoint.py)
CHECKPOINT_FILES = ("model.safetensors", "meta.json")


@dataclass
class Work:
    """One campaign's work, as any executor runs it (see the module docstring)."""

    compute: Compute
    local: Callable[[], Any]
    remote: Callable[[Any, Any, dict[str, Any]], Any]
    params: dict[str, Any]
    model_dir: str | Path
    data: Any
    emit: Callable[[Any, Any], None] | None = None
    trust_model_code: bool = False


class Executor:
    """Runs a ``Work``'s jobs and reports each to the driver's ``on_result``."""

    name = "executor"

    def run(self, work: Work, jobs: Sequence[Any],
            on_result: Callable[[Any, Any, Any], None]) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}


class LocalExecutor(Executor):
    """Every job in this process, in order, on the context built from the objects in memory."""

    name = "local"

    def run(self, work: Work, jobs: Sequence[Any],
            on_result: Callable[[Any, Any, Any], None]) -> None:
        if not jobs:
            return
        ctx = work.local()
        for job in jobs:
            results, note = work.compute(ctx, job, work.emit)
            on_result(job, results, note)


def is_remote(executor: Executor | None) -> bool:
    """Whether ``executor`` runs jobs outside this process."""
    return executor is not None and not isinstance(executor, LocalExecutor)


def check_remote(executor: Executor | None, model_dir: str | Path | None) -> None:
    """Workers load the checkpoint themselves: refuse, before a run opens, a remote executor
    without a checkpoint folder to load."""
    if not is_remote(executor):
        return
    if not model_dir or not (Path(model_dir) / "meta.json").is_file():
        raise ConfigError(f"--executor {executor.name}: workers load the model from its "
                          f"checkpoint folder, and {model_dir or 'none'} is not one")
    if isinstance(executor, RayExecutor):
        import_ray()


def import_ray() -> Any:
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_RAY) from None
    return ray


@dataclass
class RayExecutor(Executor):
    """Jobs on Ray actors; only the driver (this process) writes the store.

    ``address``: ``local`` starts a private Ray instance on this machine (``workers`` x
    ``threads_per_worker`` CPUs), ``auto`` joins the cluster this node belongs to, anything else
    is passed to ``ray.init`` (``HOST:PORT`` or ``ray://HOST:PORT``). A Ray already initialised in
    this process is used as it is. ``workers``: actors (default: the cluster's CPUs divided by
    ``threads_per_worker``). Each actor sets ``torch.set_num_threads(threads_per_worker)`` itself
    (Ray's OMP_NUM_THREADS does not hold across reused worker processes), takes
    ``gpus_per_worker`` GPUs from Ray and runs on ``device``. ``inflight``: jobs queued per actor
    (2: one computing, one waiting, so no actor idles while the driver records). ``retries``:
    restarts of a killed actor and retries of its job (the job's result is unchanged).
    ``ship_checkpoint``: send the checkpoint's bytes through the object store instead of its
    folder path (default: on for any cluster but a private local one, whose workers share this
    machine's files).
    """

    address: str = "local"
    workers: int | None = None
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    device: str = "cpu"
    inflight: int = 2
    retries: int = 3
    ship_checkpoint: bool | None = None
    #: measured by the last ``run``: workers, jobs done, seconds
    stats: dict[str, Any] = field(default_factory=dict)
    #: live actors, kept between runs (a campaign of many passes starts them once; each
    #: rebuilds its context when the work changes); ``close`` ends them
    _actors: list[Any] = field(default_factory=list, repr=False)

    name = "ray"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be at least 1, got "
                              f"{self.threads_per_worker}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be at least 0, got {self.gpus_per_worker}")
        if self.inflight < 1:
            raise ConfigError(f"inflight must be at least 1, got {self.inflight}")

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "address": self.address, "workers": self.workers,
                "threads_per_worker": self.threads_per_worker,
                "gpus_per_worker": self.gpus_per_worker, "device": self.device}

    def _init(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        if self.address == "local":
            cpus = (self.workers or os.cpu_count() or 1) * self.threads_per_worker
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except ConnectionError as exc:
                raise ConfigError(f"--address {self.address}: no Ray cluster there ({exc})"
                                  ) from None

    def n_workers(self, ray: Any) -> int:
        if self.workers is not None:
            return self.workers
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(1, cpus // self.threads_per_worker)

    def run(self, work: Work, jobs: Sequence[Any],
            on_result: Callable[[Any, Any, Any], None]) -> None:
        if not jobs:
            return
        ray = import_ray()
        self._init(ray)
        ship = self.ship_checkpoint if self.ship_checkpoint is not None else \
            self.address != "local"
        source: dict[str, Any] = {"dir": str(Path(work.model_dir).resolve()),
                                  "trust_model_code": work.trust_model_code}
        if ship:
            source["files"] = read_checkpoint(work.model_dir)
        # The images (and the checkpoint's bytes when shipped) go to the object store once. Each
        # job carries only the reference, unresolved, and an actor builds its context from it on
        # its first job: a restarted actor (after a kill) rebuilds it the same way.
        setup = {"setup": ray.put({"source": source, "data": work.data, "remote": work.remote,
                                   "compute": work.compute, "params": work.params,
                                   "device": self.device})}
        n = min(self.n_workers(ray), len(jobs))
        actor_cls = ray.remote(Worker).options(
            num_cpus=self.threads_per_worker, num_gpus=self.gpus_per_worker,
            max_restarts=self.retries, max_task_retries=self.retries)
        began = time.perf_counter()
        while len(self._actors) < n:
            self._actors.append(actor_cls.remote(self.threads_per_worker))
        actors = self._actors[:n]
        queue = list(range(len(jobs)))
        queue.reverse()
        running: dict[Any, tuple[int, int]] = {}  # ref -> (job index, actor index)
        load = [0] * n
        done = 0
        try:
            while queue or running:
                while queue and min(load) < self.inflight:
                    a = load.index(min(load))
                    j = queue.pop()
                    running[actors[a].run.remote(setup, jobs[j])] = (j, a)
                    load[a] += 1
                ready, _ = ray.wait(list(running), num_returns=1)
                j, a = running.pop(ready[0])
                load[a] -= 1
                results, note = ray.get(ready[0])
                on_result(jobs[j], results, note)  # the driver records, in completion order
                done += 1
        except BaseException:
            self.close()  # stop the work in flight: the driver is going away or failed
            raise
        self.stats = {"workers": n, "jobs": done, "seconds": time.perf_counter() - began}


    def close(self) -> None:
        """End the live actors (they also end with the Ray session)."""
        if self._actors:
            ray = import_ray()
            if ray.is_initialized():
                for actor in self._actors:
                    ray.kill(actor)
        self._actors = []


def read_checkpoint(model_dir: str | Path) -> dict[str, bytes]:
    """A checkpoint's files as bytes (for workers on other machines)."""
    folder = Path(model_dir)
    return {name: (folder / name).read_bytes() for name in CHECKPOINT_FILES
            if (folder / name).is_file()}


class Worker:
    """One Ray actor: on its first job it loads the checkpoint itself and builds the campaign's
    context from the shipped setup, then runs jobs. Made a Ray actor by ``RayExecutor`` (Ray is
    imported only there)."""

    def __init__(self, threads: int) -> None:
        import torch

        self.threads = int(threads)
        torch.set_num_threads(self.threads)
        self.key: Any = None
        self.ctx: Any = None
        self.compute: Compute | None = None

    def _build(self, setup: dict[str, Any]) -> None:
        import ray

        from medrobust.models.loading import load_model
        from medrobust.models.registry import trusting_model_code
        from medrobust.utils.device import resolve_device

        spec = ray.get(setup["setup"])
        source, device = spec["source"], resolve_device(spec["device"])
        with trusting_model_code(bool(source.get("trust_model_code"))):
            if "files" in source:
                with tempfile.TemporaryDirectory(prefix="medrobust-ckpt-") as tmp:
                    for name, blob in source["files"].items():
                        (Path(tmp) / name).write_bytes(blob)
                    model = load_model(tmp, device)
            else:
                model = load_model(source["dir"], device)
        self.ctx = spec["remote"](model, spec["data"], spec["params"])
        self.compute = spec["compute"]
        self.key = setup["setup"]

    def run(self, setup: dict[str, Any], job: Any) -> tuple[Any, Any]:
        import torch

        torch.set_num_threads(self.threads)  # every job: a library may have changed it
        if self.key != setup["setup"]:
            self._build(setup)
        assert self.compute is not None
        return self.compute(self.ctx, job, None)
