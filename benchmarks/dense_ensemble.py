"""Does PGD flatter a dense model? The worst-case ensemble against PGD-100, on every task.

Issue 21's measurement. Models (cached under benchmarks/.cache/dense_ensemble):

- segmentation: a U-Net trained on DSB2018 nuclei (64x64, 15 epochs) and one fine-tuned from it
  with VAT at the smallest L2 level (as ``robust_training.py``), at L2 1.74, 3.48, 6.96 (per-pixel
  RMS 4, 8 and 16 grey levels);
- landmarks: the multi-task U-Net on ISBI 2015 at the paper's 200x160, trained for
  ``--landmark-minutes`` of wall clock (the quality recipe's settings; its full 21-minute run
  reaches 2.25 mm), at L2 0.5, 1, 2 (the paper's landmark budgets' order of magnitude);
- detection: the CenterNet on BCCD at 320x320 (width 16), trained for ``--detection-minutes``,
  at L2 1, 2, 4.

Each is attacked through ``medrobust evaluate --attack pgd,ensemble``: the ensemble keeps per image
the worst, by the task's own metric, of PGD on the training loss, IFGSM, APGD on each of the
task's other losses and Square on the metric (3x PGD's cost). Reported per model and budget:
the mean metric under each with a bootstrap 95 % interval, the gap, how many images the ensemble
made worse and whether it was ever better than PGD (it must not be), which member won how
often, the black-box masking check, and the time per image of each. Run from the project root:

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
    train_once,
    write_json,
)

from medrobust.metrics.mean_interval import mean_ci95  # noqa: E402
from medrobust.store import Store  # noqa: E402

#: per task: the metric's name, whether higher is better, the L2 budgets (on [0,1])
TASKS: dict[str, dict[str, Any]] = {
    "segmentation": {"metric": "Dice", "higher": True, "levels": (1.74, 3.48, 6.96)},
    "landmarks": {"metric": "MRE (mm)", "higher": False, "levels": (0.5, 1.0, 2.0)},
    "detection": {"metric": "image mAP", "higher": True, "levels": (1.0, 2.0, 4.0)},
}


def bootstrap(values: np.ndarray) -> list[float]:
    return list(mean_ci95(values) or (float("nan"), float("nan")))


def epochs(minutes: float, seconds_per_epoch: float) -> int:
    """Epochs whose cosine schedule ends within ``minutes`` at the speed the quality benchmarks
    measured on 2 cores (landmarks 10.5 s, detection 6.7 s per epoch); --minutes still stops a
    slower machine, with the learning rate not yet annealed."""
    return max(1, int(0.9 * minutes * 60 / seconds_per_epoch))


def train_models(args: argparse.Namespace, store: str) -> dict[str, dict[str, str]]:
    """task -> {model name: checkpoint}, trained once (a cached checkpoint is reused)."""
    cache = DEFAULT_CACHE / "dense_ensemble"
    out: dict[str, dict[str, str]] = {}
    if "segmentation" in args.tasks:
        data = ["--task", "segmentation", "--dataset", "segfolder", "--data-dir",
                str(args.data_dir / "dsb2018_nuclei"), "--size", "64"]
        level = TASKS["segmentation"]["levels"][0]
        std, vat = cache / "std", cache / f"vat{level:g}"
        train_once(std, *data, "--epochs", "15", "--batch-size", "16", "--store", store)
        train_once(vat, *data, "--epochs", "4", "--batch-size", "16", "--lr", "1e-3", "--robust",
                   "vat", "--eps", str(level), "--xi-from", str(std), "--store", store)
        out["segmentation"] = {"std": str(std), f"vat@{level:g}": str(vat)}
    if "landmarks" in args.tasks:
        ck = cache / f"isbi-200x160-m{args.landmark_minutes:g}"
        train_once(ck, "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
                   str(args.data_dir / "isbi2015_ceph"),
                   "--epochs", str(epochs(args.landmark_minutes, 10.5)),
                   "--minutes", str(args.landmark_minutes), "--store", store)
        out["landmarks"] = {"std": str(ck)}
    if "detection" in args.tasks:
        ck = cache / f"bccd-320-m{args.detection_minutes:g}"
        train_once(ck, "--task", "detection", "--dataset", "bccd-detection", "--data-dir",
                   str(args.data_dir), "--size", "320",
                   "--epochs", str(epochs(args.detection_minutes, 6.7)),
                   "--minutes", str(args.detection_minutes), "--store", store)
        out["detection"] = {"std": str(ck)}
    return out


def compare(store_path: str, cells: list[dict[str, Any]], higher: bool) -> list[dict[str, Any]]:
    """Per budget: PGD against the ensemble, image by image (``higher``: the metric improves
    upwards, so the ensemble is stronger where it is lower)."""
    sign = 1.0 if higher else -1.0
    out = []
    with Store(store_path) as store:
        for eps in sorted({c["eps"] for c in cells}):
            at = {c["attack"]: c for c in cells if c["eps"] == eps}
            stored = {name: store.rows("task_attack_results", run_id=c["run_id"])
                      for name, c in at.items()}
            rows = {name: {r["dataset_index"]: r["adv_metric"] for r in got}
                    for name, got in stored.items()}
            # the per-image metric without attack (detection: image mAP, not the dataset's)
            clean = float(np.mean([r["clean_metric"] for r in stored["pgd"]]))
            runs = {name: store.get_run(c["run_id"]) for name, c in at.items()}
            idx = sorted(rows["pgd"])
            pgd = np.array([rows["pgd"][i] for i in idx])
            ens = np.array([rows["ensemble"][i] for i in idx])
            seconds = {name: (r.get("active_seconds") or (r.get("summary") or {}).get(
                "seconds_this_session")) for name, r in runs.items()}
            summary = runs["ensemble"].get("summary") or {}
            # points: a share (Dice, mAP) in percentage points; MRE in its unit
            scale = 100.0 if higher else 1.0
            out.append({
                "eps": eps, "budget": at["pgd"]["budget"], "images": len(idx),
                "clean": clean,
                "pgd": float(pgd.mean()), "pgd_ci95": bootstrap(pgd),
                "ensemble": float(ens.mean()), "ensemble_ci95": bootstrap(ens),
                "gap": float(scale * sign * (pgd.mean() - ens.mean())),
                "images_worse": int(np.sum(sign * (pgd - ens) > 1e-9)),
                "images_better_than_pgd": int(np.sum(sign * (ens - pgd) > 1e-9)),
                "largest_image_gap": float(scale * np.max(sign * (pgd - ens))),
                "members": summary.get("members"),
                "gradient_masking": summary.get("gradient_masking"),
                "seconds_per_image": {k: (None if v is None else v / len(idx))
                                      for k, v in seconds.items()}})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"PGD-{report['steps']} (random start, step 5 eps / steps) against the worst-case "
             f"ensemble (PGD-{report['steps']}, IFGSM-{report['ifgsm_steps']}, APGD on each of "
             "the task's other losses sharing PGD's steps, Square on the task metric with as "
             f"many queries as PGD's steps); commit {report['commit']}, {report['threads']} "
             "threads. PGD runs already in the store are reused (their time is from the run "
             "that computed them). "
             "Mean (bootstrap 95 % interval) over the first images of each test split; gap: "
             "points of Dice or mAP, mm of MRE, the ensemble's advantage. Members: images each "
             "member's attack was kept on.", "",
             "| task | model | budget | clean | PGD | ensemble | gap (max) | images worse | "
             "ever better than PGD | members kept | Square > gradient? | s/img PGD | s/img "
             "ensemble |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def t(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for m in report["models"]:
        for c in m["budgets"]:
            sec = c["seconds_per_image"]
            kept = ", ".join(f"{k} {v['kept']}" for k, v in (c.get("members") or {}).items()
                             if v.get("kept"))
            mask = c.get("gradient_masking") or {}
            flag = "-" if not mask else ("yes" if mask.get("flagged") else "no")
            lines.append(
                f"| {m['task']} | {m['model']} | {c['budget']} | {c['clean']:.3f} | "
                f"{c['pgd']:.3f} ({c['pgd_ci95'][0]:.3f}-{c['pgd_ci95'][1]:.3f}) | "
                f"{c['ensemble']:.3f} ({c['ensemble_ci95'][0]:.3f}-{c['ensemble_ci95'][1]:.3f})"
                f" | {c['gap']:.1f} ({c['largest_image_gap']:.1f}) | {c['images_worse']} / "
                f"{c['images']} | {c['images_better_than_pgd']} | {kept} | {flag} | "
                f"{t(sec.get('pgd'))} | {t(sec.get('ensemble'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--tasks", default="segmentation,landmarks,detection")
    ap.add_argument("--limit", type=int, default=32, help="images per segmentation model")
    ap.add_argument("--dense-limit", type=int, default=8,
                    help="images per landmark and detection model (200x160 and 320x320 "
                         "attacks cost 10-20x a 64x64 one)")
    ap.add_argument("--landmark-minutes", type=float, default=10.0)
    ap.add_argument("--detection-minutes", type=float, default=12.0)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the CLI calls inherit OMP_NUM_THREADS)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ifgsm-steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    args.tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    store = str(DEFAULT_CACHE / "dense_ensemble" / "runs.db")
    (DEFAULT_CACHE / "dense_ensemble").mkdir(parents=True, exist_ok=True)
    models = train_models(args, store)
    report: dict[str, Any] = {"benchmark": "dense_ensemble", "commit": git_commit(),
                              "limit": args.limit, "dense_limit": args.dense_limit,
                              "steps": args.steps, "ifgsm_steps": args.ifgsm_steps,
                              "threads": args.threads, "tasks": list(args.tasks),
                              "landmark_minutes": args.landmark_minutes,
                              "detection_minutes": args.detection_minutes, "models": []}
    for task, named in models.items():
        spec = TASKS[task]
        limit = args.limit if task == "segmentation" else args.dense_limit
        for name, ckpt in named.items():
            out = cli("evaluate", "--model", ckpt, "--attack", "pgd,ensemble", "--l2",
                      ",".join(f"{v:g}" for v in spec["levels"]), "--steps", str(args.steps),
                      "--ifgsm-steps", str(args.ifgsm_steps), "--limit", str(limit),
                      "--store", store)
            report["models"].append({"task": task, "model": name, "checkpoint": ckpt,
                                     "metric": spec["metric"], "higher": spec["higher"],
                                     "budgets": compare(store, out["cells"], spec["higher"])})
    write_json(args.out / "dense_ensemble.json", report)
    (args.out / "dense_ensemble.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
