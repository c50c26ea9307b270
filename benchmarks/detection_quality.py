"""Detection quality bar (issue 12 part 3): BCCD test COCO mAP after a CPU training budget.

Trains the small CenterNet (pure PyTorch, stride 4) on BCCD (train 205 / val 87 / test 72) at
320x320 for ``--epochs`` epochs or until ``--minutes`` of wall clock (whichever comes first; the
cosine schedule follows the clock, and the weights of the best validation mAP@0.5:0.95 are kept),
then writes test mAP@0.5:0.95, mAP@0.5, per-class AP and the times to
``benchmarks/results/detection_quality.{json,md}``. The bar: test mAP@0.5:0.95 >= 0.45 in under
45 minutes on 2 CPU cores (the paper's COCO-pretrained YOLOv5s: 0.599).

    .venv/bin/python benchmarks/detection_quality.py --minutes 44
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

from medrobust.data.voc import load_bccd_detection
from medrobust.training.detection import evaluate_detector, train_detector

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--epochs", type=int, default=400, help="upper bound; the clock usually stops first")
    ap.add_argument("--minutes", type=float, default=44.0, help="wall-clock budget for training")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "detection_quality")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, val, test = (load_bccd_detection(args.data_dir, s, size=args.size)
                        for s in ("train", "val", "test"))
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model, history = train_detector(train, val, epochs=args.epochs, batch_size=args.batch_size,
                                    lr=args.lr, seed=args.seed, width=args.width,
                                    device=args.device, augment=not args.no_augment,
                                    minutes=args.minutes, eval_every=args.eval_every)
    train_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    scores = evaluate_detector(model, test, history["mean"], history["std"], device=args.device)
    eval_s = time.perf_counter() - t2
    epochs_run = len(history["epochs"])
    result = {
        "dataset": "bccd-detection", "size": args.size, "split": {"train": len(train),
                                                                 "val": len(val), "test": len(test)},
        "model": "centernet", "width": args.width,
        "params": sum(p.numel() for p in model.parameters()),
        "test_map": scores["map"], "test_map50": scores["map50"], "per_class_ap": scores["per_class"],
        "best_val_map": history["best_val_map"], "best_epoch": history["best_epoch"],
        "epochs_run": epochs_run, "stopped_by": history["stopped_by"],
        "train_seconds": train_s, "seconds_per_epoch": train_s / max(epochs_run, 1),
        "load_seconds": load_s, "test_eval_seconds": eval_s,
        "bar": {"test_map": 0.45, "minutes": 45}, "passes_bar": bool(scores["map"] >= 0.45
                                                                    and train_s <= 45 * 60),
        "config": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "load_average": list(os.getloadavg()), "commit": git_commit()},
        "history": history["epochs"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    per_class = " | ".join(f"{k} {v:.3f}" if v is not None else f"{k} -"
                           for k, v in scores["per_class"].items())
    md = [
        "# BCCD detection quality (issue 12 part 3)", "",
        f"CenterNet width {args.width} ({result['params']:,} parameters) at {args.size}x{args.size}, "
        f"{args.threads} threads on {args.device}; {epochs_run} epochs in {train_s / 60:.1f} min "
        f"({result['seconds_per_epoch']:.1f} s/epoch, stopped by {history['stopped_by']}), best val "
        f"mAP {history['best_val_map']:.3f} at epoch {history['best_epoch']}.", "",
        "| test mAP@0.5:0.95 | test mAP@0.5 | per-class AP@0.5:0.95 | bar (>= 0.45 in 45 min) |",
        "|---|---|---|---|",
        f"| {scores['map']:.3f} | {scores['map50']:.3f} | {per_class} | "
        f"{'pass' if result['passes_bar'] else 'miss'} |", "",
        "The paper's COCO-pretrained YOLOv5s: 0.599 (its own 101-point AP code, not pycocotools).",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
