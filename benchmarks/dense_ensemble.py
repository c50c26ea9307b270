"""Does PGD flatter a segmentation model? The worst-case ensemble against PGD on DSB2018.

Issue 21's measurement, segmentation part, at the CPU size of ``robust_training.py``: a U-Net
trained on DSB2018 nuclei (64x64, 15 epochs) and one fine-tuned from it with VAT at the
smallest of its L2 levels are attacked through ``medrobust evaluate --attack pgd,ensemble`` at
three L2 budgets (per-pixel RMS 4, 8 and 16 grey levels). The ensemble keeps per image the
worst Dice of PGD on the training loss, IFGSM, and PGD on SEA's masked cross-entropy, JS
divergence and masked margin and CosPGD's weighted cross-entropy (sharing twice PGD's steps).
Reported per model and budget: mean Dice under each with a bootstrap 95 % interval, the gap in
Dice points, how many images the ensemble made worse and whether it was ever better than PGD
(it must not be), and the time per image of each. Run from the project root:

    python benchmarks/dense_ensemble.py --data-dir ../shared/data --limit 32 --steps 100

Every step is a CLI call into one store, so a killed run resumes. Writes dense_ensemble.json
and dense_ensemble.md under --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    DEFAULT_CACHE,
    SHARED_DATA,
    cli,
    git_commit,
    set_threads,
    write_json,
)

from medrobust.metrics.mean_interval import mean_ci95  # noqa: E402
from medrobust.store import Store  # noqa: E402

LEVELS = (1.74, 3.48, 6.96)  # L2 on [0,1] for 3x64x64: RMS 4, 8 and 16 grey levels


def bootstrap(values: np.ndarray) -> list[float]:
    return list(mean_ci95(values) or (float("nan"), float("nan")))


def train_models(args: argparse.Namespace, store: str) -> dict[str, str]:
    cache = DEFAULT_CACHE / "dense_ensemble"
    data = ["--task", "segmentation", "--dataset", "segfolder", "--data-dir",
            str(args.data_dir / "dsb2018_nuclei"), "--size", "64"]
    std, vat = cache / "std", cache / f"vat{LEVELS[0]:g}"
    cli("train", *data, "--epochs", "15", "--batch-size", "16", "--out", str(std),
        "--store", store)
    cli("train", *data, "--epochs", "4", "--batch-size", "16", "--lr", "1e-3", "--robust", "vat",
        "--eps", str(LEVELS[0]), "--xi-from", str(std), "--out", str(vat), "--store", store)
    return {"std": str(std), f"vat@{LEVELS[0]:g}": str(vat)}


def compare(store_path: str, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget: PGD against the ensemble, image by image."""
    out = []
    with Store(store_path) as store:
        for eps in sorted({c["eps"] for c in cells}):
            at = {c["attack"]: c for c in cells if c["eps"] == eps}
            rows = {name: {r["dataset_index"]: r["adv_metric"]
                           for r in store.rows("task_attack_results", run_id=c["run_id"])}
                    for name, c in at.items()}
            runs = {name: store.get_run(c["run_id"]) for name, c in at.items()}
            idx = sorted(rows["pgd"])
            pgd = np.array([rows["pgd"][i] for i in idx])
            ens = np.array([rows["ensemble"][i] for i in idx])
            seconds = {name: (r.get("active_seconds") or (r.get("summary") or {}).get(
                "seconds_this_session")) for name, r in runs.items()}
            out.append({
                "eps": eps, "budget": at["pgd"]["budget"], "images": len(idx),
                "clean_dice": at["pgd"]["clean"],
                "pgd_dice": float(pgd.mean()), "pgd_ci95": bootstrap(pgd),
                "ensemble_dice": float(ens.mean()), "ensemble_ci95": bootstrap(ens),
                "gap_points": float(100 * (pgd.mean() - ens.mean())),
                "images_worse": int(np.sum(ens < pgd - 1e-9)),
                "images_better_than_pgd": int(np.sum(ens > pgd + 1e-9)),
                "largest_image_gap_points": float(100 * np.max(pgd - ens)),
                "seconds_per_image": {k: (None if v is None else v / len(idx))
                                      for k, v in seconds.items()}})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"DSB2018 nuclei, 64x64 U-Net, {report['limit']} test images, PGD-{report['steps']} "
             f"(random start, step 5 eps / steps) against the worst-case ensemble (PGD, IFGSM-"
             f"{report['ifgsm_steps']}, PGD on 4 SEA/CosPGD losses sharing {2 * report['steps']} "
             f"steps); commit {report['commit']}. Dice: mean (bootstrap 95 % interval).", "",
             "| model | budget | clean | PGD | ensemble | gap (points) | images worse | ever "
             "better than PGD | s/img PGD | s/img ensemble |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for c in m["budgets"]:
            t = c["seconds_per_image"]
            fmt_t = (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
            lines.append(
                f"| {m['model']} | {c['budget']} | {c['clean_dice']:.3f} | {c['pgd_dice']:.3f} "
                f"({c['pgd_ci95'][0]:.3f}-{c['pgd_ci95'][1]:.3f}) | {c['ensemble_dice']:.3f} "
                f"({c['ensemble_ci95'][0]:.3f}-{c['ensemble_ci95'][1]:.3f}) | "
                f"{c['gap_points']:.1f} (max {c['largest_image_gap_points']:.1f}) | "
                f"{c['images_worse']} / {c['images']} | {c['images_better_than_pgd']} | "
                f"{fmt_t(t.get('pgd'))} | {fmt_t(t.get('ensemble'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the CLI calls inherit OMP_NUM_THREADS)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ifgsm-steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = str(DEFAULT_CACHE / "dense_ensemble" / "runs.db")
    (DEFAULT_CACHE / "dense_ensemble").mkdir(parents=True, exist_ok=True)
    models = train_models(args, store)
    report: dict[str, Any] = {"benchmark": "dense_ensemble", "commit": git_commit(),
                              "limit": args.limit, "steps": args.steps,
                              "ifgsm_steps": args.ifgsm_steps, "threads": args.threads,
                              "models": []}
    for name, ckpt in models.items():
        out = cli("evaluate", "--model", ckpt, "--attack", "pgd,ensemble", "--l2",
                  ",".join(f"{v:g}" for v in LEVELS), "--steps", str(args.steps),
                  "--ifgsm-steps", str(args.ifgsm_steps), "--limit", str(args.limit),
                  "--store", store)
        report["models"].append({"model": name, "checkpoint": ckpt,
                                 "budgets": compare(store, out["cells"])})
    write_json(args.out / "dense_ensemble.json", report)
    (args.out / "dense_ensemble.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
