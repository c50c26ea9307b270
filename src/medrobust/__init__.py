"""medrobust: find out how easily medical-imaging models can be fooled, see why, harden them.

The package is organised by idea: ``data`` (datasets), ``models`` (zoo, Classifier wrapper,
checkpoints), ``attacks``, ``analysis``, ``defences``, ``training``, ``store`` (SQLite run
store), ``report`` (HTML) and ``cli``.
"""

import os


def _wait_policy(loadavg: str, cores: int) -> str | None:
    """OpenMP's wait policy for this process: PASSIVE when other runnable threads hold at least
    half the cores right now (the 4th field of /proc/loadavg counts runnable threads, this one
    included), else None (OpenMP's default: spin briefly between kernels).

    Why: PyTorch's CPU kernels run on OpenMP threads. The cone engine issues many small kernels;
    spinning between them is fastest on cores of its own (a 64x64 map on 2 idle cores: 13.8 s
    spinning, 25.2 s sleeping, 21.5 s on one thread), but spinning threads starve each other
    when another process shares the cores (43.2 s spinning, 23.1 s sleeping beside one busy
    process; ``benchmarks/wait_policy.py``). The snapshot is taken once, at import."""
    try:
        running = int(loadavg.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return None
    return "PASSIVE" if running - 1 >= max(1, cores // 2) else None


def _choose_wait_policy(samples: int = 20, gap: float = 0.005) -> None:
    """Set ``_wait_policy``'s choice; only before torch is imported, and never over the user's
    own OMP_WAIT_POLICY. One quiet snapshot is enough; a busy one is checked again every 5 ms
    for up to 100 ms, so a process that merely starts beside this one (a Python reading a
    shell pipeline's output: ~50 ms) does not count, while a CPU-bound job is runnable in every
    snapshot. A quiet machine pays one read of /proc/loadavg."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    import time

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    policies = []
    for k in range(samples):
        try:
            with open("/proc/loadavg") as f:
                policies.append(_wait_policy(f.read(), cores or 1))
        except OSError:  # not Linux: leave OpenMP's default
            return
        if policies[-1] is None:
            return
        if k + 1 < samples:
            time.sleep(gap)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_choose_wait_policy()

from medrobust.errors import MedrobustError  # noqa: E402  (after the policy: torch comes later)

__version__ = "0.1.0"
__all__ = ["MedrobustError", "__version__"]
