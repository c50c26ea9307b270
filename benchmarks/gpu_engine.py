"""Cone engine on a GPU: agreement with the reference engine, and the full paper-grid map.

Random-weight SmallCNN (the default width 32) and MitosisNet, 64x64 RGB, as in
``confidence_map.py``. For each model:

* agreement: the largest probability difference between the cone and reference engines on 512
  mixed candidates, on 4,096 colours of one pixel, and in every cell (min, max, mean) of a
  step-5 map of a few pixels (corner, edge, centre);
* speed: step-5 maps (140,608 colours per pixel) of sample pixels, cone engine at its default
  rows per call and reference engine, as scores per second; the projected full map; and, side
  by side, the cone engine as it ran on a GPU before (256 rows per call; CPU layout);
* the full 64x64 step-5 map (575,930,368 scores; the paper's 5 hours on a V100) through
  ``confidence_map`` for the models named by ``--full-map``, image row by image row, within
  ``--full-map-minutes`` for all of them (rows done and a projection are reported otherwise).

    python benchmarks/gpu_engine.py --out benchmarks/results     # needs a CUDA device

``--device cpu --step 51 --full-map-minutes 0.1`` is a quick smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medrobust.analysis.confidence_map import colour_grid, confidence_map
from medrobust.models import Classifier, build_model
from medrobust.models.engines import ConeEngine, DenseEngine

MODELS = {"smallcnn": {}, "mitosisnet": {"padding": "keras"}}
SIDE = 64
SAMPLE_PIXELS = [(31, 30), (0, 0), (63, 17), (5, 40), (47, 62), (20, 9)]


def classifier(name: str, device: str) -> Classifier:
    torch.manual_seed(0)
    model = build_model(name, 3, 2, **MODELS[name])
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(16, 3, SIDE, SIDE))
    head = "sigmoid" if name == "mitosisnet" else "softmax"
    return Classifier(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=("a", "b"), head=head,
                      device=device)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def agreement(clf: Classifier, image: np.ndarray, step: int) -> dict:
    dev = clf.device
    x = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3)).to(dev)
    fast, ref = ConeEngine(clf, x), DenseEngine(clf, x)
    g = torch.Generator().manual_seed(1)
    n = 512
    cand = [torch.randint(0, 4, (n,), generator=g), torch.randint(0, SIDE, (n, 1), generator=g),
            torch.randint(0, SIDE, (n, 1), generator=g), torch.rand(n, 1, 3, generator=g)]
    cand = [t.to(dev) for t in cand]
    m = 4096
    same = (cand[0][:1].expand(m), cand[1][:1].expand(m, 1), cand[2][:1].expand(m, 1),
            torch.rand(m, 1, 3, generator=g).to(dev))
    out = {"fallback": fast.fallback_reason, "rows_per_call": fast.rows_per_call,
           "max_diff_mixed": float((fast.probabilities(*cand) - ref.probabilities(*cand))
                                   .abs().max()),
           "max_diff_same_pixel": float((fast.probabilities(*same) - ref.probabilities(*same))
                                        .abs().max())}
    pixels = [(0, 0), (SIDE - 1, 30), (31, 30)]
    maps = [confidence_map(clf, image, 1, step=step, engine=e, pixels=pixels)
            for e in ("fast", "reference")]
    ys, xs = [p[1] for p in pixels], [p[0] for p in pixels]
    out["max_diff_map_cells"] = max(
        float(np.abs(getattr(maps[0], f)[ys, xs] - getattr(maps[1], f)[ys, xs]).max())
        for f in ("min", "max", "mean"))
    out["map_success_cells_equal"] = bool(np.array_equal(maps[0].success[ys, xs],
                                                         maps[1].success[ys, xs]))
    return out


def speed(clf: Classifier, image: np.ndarray, step: int) -> dict:
    colours = len(colour_grid(step, 3))
    confidence_map(clf, image, 1, step=step, pixels=SAMPLE_PIXELS[:1])  # warm-up (plan, cuDNN)
    fast = [timed(lambda p=p: confidence_map(clf, image, 1, step=step, pixels=[p]))
            for p in SAMPLE_PIXELS]
    reference = timed(lambda: confidence_map(clf, image, 1, step=step, engine="reference",
                                             pixels=SAMPLE_PIXELS[:1]))
    mean = float(np.mean(fast))
    return {"sample_pixels": SAMPLE_PIXELS, "fast_seconds_per_pixel": fast,
            "fast_passes_per_s": colours / mean,
            "reference_passes_per_s": colours / reference,
            "fast_vs_reference": reference / mean,
            "projected_full_map_minutes_fast": SIDE * SIDE * mean / 60,
            "projected_full_map_minutes_reference": SIDE * SIDE * reference / 60}


def variants(clf: Classifier, image: np.ndarray, step: int) -> dict:
    """The centre pixel's step-``step`` map as before this engine's GPU work, side by side:
    fewer rows per call (256 was the old default), and the CPU's choices on the GPU
    (channels-last maps, scattered convolutions) at the default rows."""
    from medrobust.models.engines import cone as cone_module
    from medrobust.models.engines import windows

    colours = len(colour_grid(step, 3))
    pixel = SAMPLE_PIXELS[:1]
    out = {}
    for rows in (256, 4096, 16384):
        seconds = timed(lambda r=rows: confidence_map(clf, image, 1, step=step, pixels=pixel,
                                                      chunk=r))
        out[f"fast_passes_per_s_rows{rows}"] = colours / seconds
    saved = windows.gpu_style
    windows.gpu_style = lambda device: False
    cone_module._COMPILED.clear()
    try:
        confidence_map(clf, image, 1, step=step, pixels=pixel)  # plan and warm up
        out["fast_passes_per_s_cpu_layout"] = colours / timed(
            lambda: confidence_map(clf, image, 1, step=step, pixels=pixel))
    finally:
        windows.gpu_style = saved
        cone_module._COMPILED.clear()
    return out


def full_map(clf: Classifier, image: np.ndarray, minutes: float, step: int) -> dict:
    """The whole map, one image row per ``confidence_map`` call, within ``minutes``."""
    start = time.perf_counter()
    rows_done, successful = 0, 0
    lo = np.full((SIDE, SIDE), np.nan)
    for y in range(SIDE):
        part = confidence_map(clf, image, 1, step=step, pixels=[(x, y) for x in range(SIDE)])
        lo[y] = part.min[y]
        successful += int(part.success[y].sum())
        rows_done += 1
        sync()
        seconds = time.perf_counter() - start
        print(f"[full map] row {y + 1}/{SIDE} after {seconds:.1f} s", flush=True)
        if seconds > minutes * 60 and y + 1 < SIDE:
            break
    seconds = time.perf_counter() - start
    return {"rows_done": rows_done, "seconds": seconds, "complete": rows_done == SIDE,
            "minutes_full_map": seconds / rows_done * SIDE / 60,
            "passes_per_s": rows_done * SIDE * len(colour_grid(step, 3)) / seconds,
            "successful_pixels": successful, "min_score": float(np.nanmin(lo))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--full-map", default="smallcnn",
                    help="models whose whole 64x64 step-5 map is run ('' for none)")
    ap.add_argument("--full-map-minutes", type=float, default=6.0,
                    help="time for all full maps together; a map is stopped when it runs out "
                         "(and the rest projected), or skipped when its projection exceeds it")
    ap.add_argument("--step", type=int, default=5, help="colour grid step (the paper's: 5)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device (this benchmark times the engines on a GPU)")
    started = time.perf_counter()
    result: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                    "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                    "step": args.step, "scores_per_map": SIDE * SIDE * len(colour_grid(args.step, 3))}
    path = Path(args.out) / "gpu_engine.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    image = (np.random.default_rng(0).random((SIDE, SIDE, 3)) * 255).astype(np.uint8)
    full = [m for m in args.full_map.split(",") if m]
    for name in MODELS:
        clf = classifier(name, args.device)
        result[name] = {"agreement": agreement(clf, image, args.step)}
        path.write_text(json.dumps(result, indent=1))
        result[name]["speed"] = speed(clf, image, args.step)
        path.write_text(json.dumps(result, indent=1))
        result[name]["before"] = variants(clf, image, args.step)
        path.write_text(json.dumps(result, indent=1))
        print(json.dumps({name: result[name]}, indent=1), flush=True)
    left = args.full_map_minutes  # one budget for all full maps, in the order named
    for name in full:
        projected = result[name]["speed"]["projected_full_map_minutes_fast"]
        if projected > 1.2 * left:  # not worth the machine time: say so
            result[name]["full_map"] = {"skipped": f"projected {projected:.1f} min, "
                                                   f"{left:.1f} min of budget left"}
            continue
        result[name]["full_map"] = full_map(classifier(name, args.device), image, left,
                                            args.step)
        left -= result[name]["full_map"]["seconds"] / 60
        path.write_text(json.dumps(result, indent=1))
        path.write_text(json.dumps(result, indent=1))
    result["total_seconds"] = time.perf_counter() - started
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
