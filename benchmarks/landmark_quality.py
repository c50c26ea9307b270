"""Landmark quality bar (issue 12 part 2): ISBI 2015 test MRE and SDR after a CPU training budget.

Trains the multi-task landmark U-Net on isbi2015_ceph (train 150 / val 50 / test 100) at 200x160 for
``--epochs`` epochs or until ``--minutes`` of wall clock (whichever comes first; the epoch with the
best validation MRE is kept) and writes test MRE, SDR@2/2.5/3/4 mm and the training time to
``benchmarks/results/landmark_quality.{json,md}``. The bar: MRE <= 2.5 mm and SDR@2mm >= 60 % in under
30 minutes on 2 CPU cores (the paper's STD model: 1.55 mm after 500 GPU epochs).

    .venv/bin/python benchmarks/landmark_quality.py --minutes 28 --epochs 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from common import SHARED_DATA, git_commit

from medrobust.data.landmarks import load_landmarks
from medrobust.training.landmarks import evaluate_landmarks, train_landmark_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA / "isbi2015_ceph")
    ap.add_argument("--epochs", type=int, default=200, help="planned epochs (cosine schedule length)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget for training")
    ap.add_argument("--height", type=int, default=200)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heatmap-loss", choices=("bce", "dice"), default="bce")
    ap.add_argument("--heatmap-weight", type=float, default=2.0)
    ap.add_argument("--features", type=str, default=None, help="six comma-separated widths")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--constant-lr", action="store_true", help="the authors' constant rate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "landmark_quality")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    size = (args.height, args.width)
    t0 = time.perf_counter()
    train, val, test = (load_landmarks(args.data_dir, s, size=size) for s in ("train", "val", "test"))
    load_s = time.perf_counter() - t0
    features = tuple(int(f) for f in args.features.split(",")) if args.features else None
    model, history = train_landmark_model(
        train, val, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        heatmap_loss=args.heatmap_loss, heatmap_weight=args.heatmap_weight, seed=args.seed,
        features=features, augment=not args.no_augment, cosine=not args.constant_lr,
        minutes=args.minutes)
    test_metrics = evaluate_landmarks(model, test)
    val_metrics = evaluate_landmarks(model, val)
    best = min(history, key=lambda r: r["val_mre"])
    result = {
        "dataset": str(args.data_dir), "size_hw": list(size), "n": [len(train), len(val), len(test)],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "epochs_run": len(history), "best_epoch": best["epoch"],
        "train_seconds": history[-1]["seconds"], "train_cpu_seconds": history[-1]["cpu_seconds"],
        "seconds_per_epoch": history[-1]["seconds"] / len(history), "load_seconds": load_s,
        "test": test_metrics, "val": val_metrics, "history": history,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "commit": git_commit(),
        "bar": {"mre_mm": 2.5, "sdr_2mm": 0.60, "minutes": 30},
        "passes_bar": bool(test_metrics["mre"] <= 2.5 and test_metrics["sdr"]["2.0"] >= 0.60
                           and history[-1]["seconds"] <= 30 * 60),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    t = test_metrics
    u = t["unit"]
    md = [
        "# Landmark quality (ISBI 2015, test 100 images)", "",
        f"Input {size[0]}x{size[1]} (H x W); {len(history)} epochs in {result['train_seconds'] / 60:.1f} min "
        f"wall ({result['train_cpu_seconds'] / 60:.1f} min CPU, {result['torch_threads']} threads); "
        f"best validation epoch {best['epoch']}; commit {result['commit']}.", "",
        f"| split | MRE ({u}) | SD | SDR@2 | SDR@2.5 | SDR@3 | SDR@4 |", "|---|---|---|---|---|---|---|",
    ]
    for name, m in (("test", t), ("val", val_metrics)):
        s = m["sdr"]
        md.append(f"| {name} | {m['mre']:.2f} | {m['mre_std']:.2f} | {100 * s['2.0']:.1f} % | "
                  f"{100 * s['2.5']:.1f} % | {100 * s['3.0']:.1f} % | {100 * s['4.0']:.1f} % |")
    md += ["", f"Bar (MRE <= 2.5 mm, SDR@2mm >= 60 %, <= 30 min): "
               f"{'met' if result['passes_bar'] else 'not met'}. Paper (STD, 500 GPU epochs): 1.55 mm.", ""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
