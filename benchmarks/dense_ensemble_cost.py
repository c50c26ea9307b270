"""What the worst-case ensemble costs against PGD-100, side by side on one machine.

Issue 21's cost target: the dense ensemble at most 3x PGD-100's time per image. The accuracy
benchmark (``dense_ensemble.py``) reuses PGD runs already in its store, so its two times can come
from different hours of a shared machine; this one times both in one process, interleaved
(PGD, ensemble, PGD, ensemble, ...), and reports the median of each and their ratio, then each
member run alone once (where the time goes). The models are ``dense_ensemble.py``'s cached
ones (run it first). From the project root:

    python benchmarks/dense_ensemble_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DEFAULT_CACHE, SHARED_DATA, git_commit, set_threads, write_json  # noqa: E402

from medrobust.campaigns.protocol_attacks import (  # noqa: E402
    ProtocolSettings,
    build_attack,
    worst_case,
)
from medrobust.data import load_dataset  # noqa: E402
from medrobust.models import load_model  # noqa: E402
from medrobust.tasks import get_task  # noqa: E402

CACHE = DEFAULT_CACHE / "dense_ensemble"
#: task -> (checkpoint, dataset, its options, middle L2 budget, images per timing)
MODELS: dict[str, tuple[str, str, dict[str, Any], float, int]] = {
    "segmentation": ("std", "segfolder", {"data_dir": SHARED_DATA / "dsb2018_nuclei",
                                          "size": 64}, 3.48, 16),
    "landmarks": ("isbi-200x160-m8", "landmarks", {"data_dir": SHARED_DATA / "isbi2015_ceph"},
                  1.0, 4),
    "detection": ("bccd-320-m10", "bccd-detection", {"data_dir": SHARED_DATA, "size": 320},
                  2.0, 4),
}


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(task_name: str, repeats: int, steps: int) -> dict[str, Any]:
    folder, dataset, options, eps, n = MODELS[task_name]
    model = load_model(str(CACHE / folder))
    ds = load_dataset(dataset, "test", **options)
    task = get_task(task_name)
    idx = list(range(n))
    x = model.to_tensor(ds.images[:n])
    targets = task.attack_targets(ds, idx)
    settings = ProtocolSettings(pgd_steps=steps, batch_images=n)
    pgd = build_attack("pgd", task, model, "l2", eps, settings)
    ensemble = build_attack("ensemble", task, model, "l2", eps, settings)
    times: dict[str, list[float]] = {"pgd": [], "ensemble": []}
    build_attack("pgd", task, model, "l2", eps, ProtocolSettings(pgd_steps=2, batch_images=n))(
        x, targets, keys=idx)  # warm-up: the first call pays for allocations and kernel picks
    for _ in range(repeats):  # interleaved, so a noisy minute hurts both
        times["pgd"].append(timed(lambda: pgd(x, targets, keys=idx)))
        times["ensemble"].append(timed(lambda: ensemble(x, targets, keys=idx)))
    members = worst_case(task, model, "l2", eps, settings)
    alone = {label: timed(lambda m=m: m(x, targets, keys=idx))
             for label, m in zip(members.labels, members.members, strict=True)}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"task": task_name, "model": folder, "eps": eps, "images": n, "repeats": repeats,
            "seconds": times, "median": med, "ratio": med["ensemble"] / med["pgd"],
            "members_alone": alone,
            "members_alone_vs_pgd": {k: v / med["pgd"] for k, v in alone.items()}}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Worst-case ensemble vs PGD-{report['steps']}, timed side by side in one process "
             f"(commit {report['commit']}, {report['threads']} threads, median of "
             f"{report['repeats']} interleaved repeats; target <= 3x).", "",
             "| task | images | L2 | PGD s/img | ensemble s/img | ratio | members alone (x PGD) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        n = r["images"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["members_alone_vs_pgd"].items())
        lines.append(f"| {r['task']} | {n} | {r['eps']:g} | {r['median']['pgd'] / n:.3f} | "
                     f"{r['median']['ensemble'] / n:.3f} | **{r['ratio']:.2f}x** | {parts} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="segmentation,landmarks,detection")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    set_threads(args.threads)
    missing = [t for t in args.tasks.split(",") if not (CACHE / MODELS[t][0] / "meta.json").is_file()]
    if missing:
        raise SystemExit(f"no cached model for {', '.join(missing)}: run "
                         "benchmarks/dense_ensemble.py first")
    report = {"benchmark": "dense_ensemble_cost", "commit": git_commit(),
              "threads": torch.get_num_threads(), "repeats": args.repeats, "steps": args.steps,
              "results": []}
    for task in args.tasks.split(","):
        report["results"].append(measure(task, args.repeats, args.steps))
        print(markdown(report), flush=True)
    write_json(args.out / "dense_ensemble_cost.json", report)
    (args.out / "dense_ensemble_cost.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
