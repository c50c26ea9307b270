"""OpenMP's wait policy: spin on cores of one's own, sleep beside a busy process."""

from __future__ import annotations

import os
import subprocess
import sys

import medrobust


def test_policy_follows_the_runnable_threads_of_others():
    # /proc/loadavg: 1-, 5-, 15-minute loads, runnable/total threads, last pid
    assert medrobust._wait_policy("0.10 0.20 0.30 1/77 20724", cores=2) is None  # only us
    assert medrobust._wait_policy("0.10 0.20 0.30 2/77 20724", cores=2) == "PASSIVE"
    assert medrobust._wait_policy("3.10 2.20 2.30 5/300 1", cores=16) is None
    assert medrobust._wait_policy("9.10 8.20 8.30 9/300 1", cores=16) == "PASSIVE"
    assert medrobust._wait_policy("garbled", cores=2) is None


def _policy_in_a_fresh_process(env: dict[str, str]) -> str:
    code = "import os, medrobust; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_the_users_own_setting_wins():
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}
    assert _policy_in_a_fresh_process(env) == "ACTIVE"


def test_a_busy_core_makes_the_threads_sleep():
    """With CPU-bound processes on every core, the policy is PASSIVE (spinning threads would
    starve each other and them)."""
    if not sys.platform.startswith("linux"):
        return
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cores = len(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(max(1, cores // 2) + 1)]
    try:
        assert _policy_in_a_fresh_process(env) == "PASSIVE"
    finally:
        for h in hogs:
            h.kill()
            h.wait()
