"""OpenMP wait policy and threads for the CLI's confidence maps: idle cores against shared ones.

Runs ``medrobust map`` on one BCCD test image (64x64 RGB, step 51: 884,736 scores) with the
cached SmallCNN of ``onepixel_vs_peers.py`` under four settings, on idle cores and beside one
CPU-bound process, in interleaved rounds (medians):

* ``default``: medrobust's own choice (spin, unless others hold half the cores; see
  ``medrobust/__init__.py``);
* ``spin``: ``OMP_WAIT_POLICY=ACTIVE``;  ``sleep``: ``OMP_WAIT_POLICY=PASSIVE``;
* ``one thread``: ``OMP_NUM_THREADS=1``.

    python benchmarks/wait_policy.py --data-dir ../shared/data --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE, DEFAULT_DATA_DIR, cached_model

SETTINGS = {"default": {}, "spin": {"OMP_WAIT_POLICY": "ACTIVE"},
            "sleep": {"OMP_WAIT_POLICY": "PASSIVE"}, "one thread": {"OMP_NUM_THREADS": "1"}}


def map_seconds(ckpt: Path, data_dir: str, env: dict[str, str], busy: bool) -> float:
    """The map's own seconds (as the CLI reports them), optionally beside a busy process."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, "-m", "medrobust.cli.main", "map", "--model", str(ckpt),
                 "--dataset", "bccd", "--data-dir", data_dir, "--index", "0", "--step", "51",
                 "--out", tmp, "--store", str(Path(tmp) / "s.db"), "--json"],
                env={**base, **env}, capture_output=True, text=True, check=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return float(json.loads(out.stdout.strip().splitlines()[-1])["maps"][0]["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    _, summary = cached_model("bccd", args.data_dir, cache_dir=DEFAULT_CACHE, width=16)
    ckpt = Path(summary["checkpoint"])
    times: dict[str, dict[str, list[float]]] = {
        scene: {name: [] for name in SETTINGS} for scene in ("idle", "beside a busy process")}
    for _ in range(args.repeats):  # interleaved: a burst of load hits every setting alike
        for scene in times:
            for name, env in SETTINGS.items():
                seconds = map_seconds(ckpt, args.data_dir, env, scene != "idle")
                times[scene][name].append(seconds)
                print(f"[bench] {scene:>22} {name:>10} {seconds:6.2f} s", flush=True)
    result = {"command": "python benchmarks/wait_policy.py " + " ".join(sys.argv[1:]),
              "cpus": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
              "seconds": times,
              "median_seconds": {scene: {k: float(np.median(v)) for k, v in d.items()}
                                 for scene, d in times.items()}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "wait_policy.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_seconds"], indent=1))


if __name__ == "__main__":
    main()
