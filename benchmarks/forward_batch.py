"""Images per second of plain forward passes against rows per call, on this machine.

Why ``Classifier`` sizes its calls to the image (``default_batch_size``): on a CPU, large calls of
64x64 images spill the caches. Random-weight models (speed does not depend on the weights); the
median of three timings per batch size.

    python benchmarks/forward_batch.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import medrobust  # noqa: F401  (before torch: sets the OpenMP wait policy)
from medrobust.models import Classifier, build_model
from medrobust.models.classifier import default_batch_size

CASES = [("smallcnn", {"width": 16}, 3, 64), ("smallcnn", {"width": 32}, 3, 64),
         ("smallcnn", {"width": 16}, 1, 28), ("mitosisnet", {}, 3, 64)]
ROWS = (16, 32, 64, 128, 256, 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | input | " + " | ".join(f"{r} rows" for r in ROWS) + " | default rows |")
    print("|---|---|" + "---|" * (len(ROWS) + 1))
    for name, kwargs, c, hw in CASES:
        torch.manual_seed(0)
        model = build_model(name, c, 2, **kwargs).eval()
        x = torch.rand(args.images, c, hw, hw)
        rates = []
        for rows in ROWS:
            clf = Classifier(model, mean=[0.5] * c, std=[0.25] * c, class_names=("a", "b"),
                             head="sigmoid" if name == "mitosisnet" else "softmax",
                             batch_size=rows)
            clf.probabilities_tensor(x[:rows], fixed_batch=True)  # warm-up
            times = []
            for _ in range(3):
                start = time.perf_counter()
                clf.probabilities_tensor(x, fixed_batch=True)
                times.append(time.perf_counter() - start)
            rates.append(args.images / statistics.median(times))
        label = f"{name} {kwargs}" if kwargs else name
        print(f"| {label} | {hw}x{hw}x{c} | " + " | ".join(f"{r:,.0f}" for r in rates)
              + f" | {default_batch_size(hw, hw)} |", flush=True)


if __name__ == "__main__":
    main()
