"""Randomized smoothing on PneumoniaMNIST: medrobust's ``certify`` against IBM ART's.

For each noise level sigma a SmallCNN is trained with that Gaussian noise (``train --noise-sd``,
cached), then both libraries certify the same test images with the same n0, n and alpha
(Cohen et al.'s CERTIFY; ART's ``PyTorchRandomizedSmoothing.certify``, no clipping in either):
certified accuracy at L2 radii 0.25, 0.5 and 1.0 with Wilson 95 % intervals (the two draw
different noise, so they should agree within the intervals, not image by image), and the time
per image, measured in interleaved repeats on a subset (median of the ratios). Run from the
project root:

    python benchmarks/certify.py --data-dir ../shared/data --images 30 --n 10000 --repeats 3 \
        --time-images 3 --batch-size 100

Writes ``certify.json`` and ``certify.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    DEFAULT_CACHE,
    SHARED_DATA,
    git_commit,
    median,
    set_threads,
    write_json,
)

from medrobust.certify import SmoothedClassifier  # noqa: E402
from medrobust.data import load_dataset  # noqa: E402
from medrobust.metrics.proportion import proportion  # noqa: E402
from medrobust.models.checkpoint import load_classifier  # noqa: E402
from medrobust.training.evaluate import evaluate_classifier  # noqa: E402
from medrobust.training.trainer import TrainConfig, save_trained, train_classifier  # noqa: E402

RADII = (0.0, 0.25, 0.5, 1.0)


def noise_model(sigma: float, data_dir: Path, epochs: int, seed: int):
    """The SmallCNN trained under Gaussian noise ``sigma`` (cached under benchmarks/.cache)."""
    ckpt = DEFAULT_CACHE / f"pneumoniamnist-smallcnn-noise{sigma:g}-e{epochs}-s{seed}"
    if not (ckpt / "meta.json").is_file():
        train, val, test = (load_dataset("pneumoniamnist", s, data_dir=data_dir)
                            for s in ("train", "val", "test"))
        config = TrainConfig(model="smallcnn", epochs=epochs, seed=seed, noise_sd=sigma)
        print(f"[bench] training {ckpt.name} on {len(train)} images", flush=True)
        result = train_classifier(train, val, config)
        metrics = evaluate_classifier(result.classifier, test)
        metrics.pop("dataset", None)
        save_trained(result, config, train, ckpt, extra={"test": metrics})
    return load_classifier(ckpt), str(ckpt)


def medrobust_certify(clf, images: np.ndarray, keys: list[int], sigma: float, args) -> tuple:
    smooth = SmoothedClassifier(clf, sigma, clf.num_classes, batch_size=args.batch_size,
                                seed=args.seed)
    x = torch.from_numpy(images)  # float [0,1] (N,C,H,W), as ART is given them
    preds, radii = [], []
    for j, key in enumerate(keys):
        cert = smooth.certify(x[j], args.n0, args.n, args.alpha, key=key)
        preds.append(cert.prediction)
        radii.append(cert.radius)
    return np.asarray(preds), np.asarray(radii)


def art_certify(clf, images: np.ndarray, sigma: float, args) -> tuple:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    np.random.seed(args.seed)  # ART draws its noise from NumPy's global generator
    art = PyTorchRandomizedSmoothing(
        model=clf, loss=torch.nn.CrossEntropyLoss(), input_shape=images.shape[1:],
        nb_classes=clf.num_classes, clip_values=None, device_type="cpu",
        sample_size=args.n0, scale=sigma, alpha=args.alpha)
    return art.certify(images, n=args.n, batch_size=args.batch_size)


def certified(preds: np.ndarray, radii: np.ndarray, labels: np.ndarray) -> list[dict]:
    out = []
    for r in RADII:
        p = proportion(int(np.sum((preds == labels) & (radii >= r))), len(labels))
        out.append({"radius": r, "accuracy": p.rate, "ci95": p.ci95, "certified": p.k})
    return out


def overlap(a: dict, b: dict) -> bool:
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


def one_sigma(sigma: float, args) -> dict:
    clf, ckpt = noise_model(sigma, args.data_dir, args.epochs, args.seed)
    test = load_dataset("pneumoniamnist", "test", data_dir=args.data_dir)
    n = min(args.images, len(test))
    images = test.images[:n].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    labels = np.asarray(test.labels[:n])
    t0 = time.perf_counter()
    ours = medrobust_certify(clf, images, list(range(n)), sigma, args)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = art_certify(clf, images, sigma, args)
    art_s = time.perf_counter() - t0
    ca_ours, ca_art = certified(*ours, labels), certified(*theirs, labels)
    # timing: interleaved repeats on a subset, the ratio of each pair, the median ratio
    k = min(args.time_images, n)
    ratios, t_ours, t_art = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        medrobust_certify(clf, images[:k], list(range(k)), sigma, args)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        art_certify(clf, images[:k], sigma, args)
        b = time.perf_counter() - t0
        t_ours.append(a / k)
        t_art.append(b / k)
        ratios.append(b / a)
    return {"sigma": sigma, "checkpoint": ckpt, "images": n,
            "medrobust": {"certified_accuracy": ca_ours, "seconds": ours_s,
                          "abstained": int(np.sum(ours[0] < 0))},
            "art": {"certified_accuracy": ca_art, "seconds": art_s,
                    "abstained": int(np.sum(theirs[0] < 0))},
            "agree_within_intervals": all(overlap(a, b) for a, b in zip(ca_ours, ca_art,
                                                                          strict=True)),
            "seconds_per_image": {"medrobust": median(t_ours), "art": median(t_art)},
            "speedup_median": median(ratios), "speedups": ratios}


def markdown(report: dict) -> str:
    lines = [f"Randomized smoothing on PneumoniaMNIST test images (SmallCNN trained with the same "
             f"noise), n0 = {report['n0']}, n = {report['n']}, alpha = {report['alpha']}, "
             f"{report['threads']} threads, commit {report['commit']}.", "",
             "| sigma | library | " + " | ".join(f"cert. acc. @ {r:g}" for r in RADII)
             + " | abstained | s / image |", "|---|---|" + "---|" * (len(RADII) + 2)]
    for s in report["results"]:
        for lib in ("medrobust", "art"):
            cells = [f"{c['accuracy']:.3f} ({c['ci95'][0]:.2f}-{c['ci95'][1]:.2f})"
                     for c in s[lib]["certified_accuracy"]]
            lines.append(f"| {s['sigma']:g} | {lib} | " + " | ".join(cells)
                         + f" | {s[lib]['abstained']} / {s['images']} | "
                         f"{s['seconds_per_image'][lib]:.3f} |")
    lines += ["", "Speed-up (ART time / medrobust time, median of interleaved repeats): "
              + ", ".join(f"sigma {s['sigma']:g}: {s['speedup_median']:.2f}x"
                          for s in report["results"]),
              "Whole passes over all images, run once each (not interleaved): "
              + ", ".join(f"sigma {s['sigma']:g}: medrobust {s['medrobust']['seconds']:.0f} s, "
                          f"ART {s['art']['seconds']:.0f} s" for s in report["results"]),
              "Certified accuracies agree within their 95 % intervals: "
              + ", ".join(f"sigma {s['sigma']:g}: {'yes' if s['agree_within_intervals'] else 'NO'}"
                          for s in report["results"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--sigmas", default="0.25,0.5")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time-images", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    set_threads(args.threads)
    results = [one_sigma(float(s), args) for s in args.sigmas.split(",")]
    report = {"benchmark": "certify", "commit": git_commit(), "n0": args.n0, "n": args.n,
              "alpha": args.alpha, "threads": args.threads, "results": results,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "certify.json", report)
    (args.out / "certify.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
