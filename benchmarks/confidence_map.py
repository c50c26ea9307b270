"""Fast (cone) vs reference engine for one-pixel confidence maps, side by side in one run.

For smallcnn and mitosisnet on 64x64 RGB images it times both engines on the same pixels and
colours, interleaved (fast, reference, fast, reference, ...) so machine noise hits both, and
reports passes per second, the median speed ratio and the projected time of a full paper-grid map
(64 x 64 pixels x 140,608 colours). Both engines' maps are checked to agree to 1e-5.

    python benchmarks/confidence_map.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medrobust.analysis.confidence_map import colour_grid, confidence_map
from medrobust.models import Classifier, build_model

MODELS = {"smallcnn": {}, "mitosisnet": {"padding": "keras"}}
PAPER_PASSES = 64 * 64 * 140_608
ROWS_CANDIDATES = (16, 32, 64, 128, 256, 512)
CHUNK = 256  # colours per engine call (confidence_map's default); --chunk changes it


def make_classifier(name: str, device: str) -> Classifier:
    """Random weights with non-trivial batch-norm statistics (speed does not depend on them)."""
    torch.manual_seed(0)
    model = build_model(name, 3, 2, **MODELS[name])
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 64, 64))
    head = "sigmoid" if name == "mitosisnet" else "softmax"
    return Classifier(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=("normal", "positive"),
                      head=head, device=device)


def set_chunk(chunk: int) -> None:
    """Colours per engine call for every map this script times."""
    global CHUNK
    CHUNK = chunk


def time_map(clf: Classifier, image: np.ndarray, step: int, pixels: list[tuple[int, int]],
             engine: str) -> tuple[float, object]:
    start = time.perf_counter()
    cmap = confidence_map(clf, image, 1, step=step, engine=engine, pixels=pixels, chunk=CHUNK)
    return time.perf_counter() - start, cmap


def best_reference_rows(clf: Classifier, image: np.ndarray, step: int,
                        pixel: tuple[int, int]) -> tuple[int, dict[int, float]]:
    """The reference engine's fastest rows per forward call on this machine (the comparison is
    against the best plain forward pass, not a badly sized one)."""
    timings = {}
    for rows in ROWS_CANDIDATES:
        clf.batch_size = rows
        timings[rows] = min(time_map(clf, image, step, [pixel], "reference")[0] for _ in range(2))
    clf.batch_size = None
    return min(timings, key=timings.get), timings


def bench(name: str, step: int, n_pixels: int, repeats: int, device: str,
          reference: bool = True) -> dict:
    clf = make_classifier(name, device)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels = [(int(x), int(y)) for x, y in rng.integers(0, 64, (n_pixels, 2))]
    passes = n_pixels * len(colour_grid(step, 3))
    time_map(clf, image, step, pixels[:1], "fast")  # warm-up (tracing, allocator)
    rows, row_timings = (best_reference_rows(clf, image, 51, pixels[0]) if reference
                         else (None, {}))
    fast_t, ref_t, diff = [], [], 0.0
    for _ in range(repeats):
        tf, mf = time_map(clf, image, step, pixels, "fast")
        fast_t.append(tf)
        if not reference:
            continue
        clf.batch_size = rows
        tr, mr = time_map(clf, image, step, pixels, "reference")
        clf.batch_size = None
        ref_t.append(tr)
        mask = ~np.isnan(mf.min)
        diff = max(diff, float(np.abs(mf.min[mask] - mr.min[mask]).max()),
                   float(np.abs(mf.max[mask] - mr.max[mask]).max()),
                   float(np.abs(mf.mean[mask] - mr.mean[mask]).max()))
    ratios = [r / f for f, r in zip(fast_t, ref_t, strict=False)]
    fast_rate = passes / statistics.median(fast_t)
    return {"model": name, "step": step, "pixels": n_pixels, "passes": passes,
            "repeats": repeats, "fast_passes_per_s": fast_rate,
            "reference_passes_per_s": passes / statistics.median(ref_t) if ref_t else None,
            "speedup_median": statistics.median(ratios) if ratios else None, "speedups": ratios,
            "max_abs_difference": diff if ref_t else None,
            "reference_rows": rows,
            "reference_passes_per_s_by_rows": {r: len(colour_grid(51, 3)) / t
                                               for r, t in row_timings.items()},
            "projected_paper_map_hours_fast": PAPER_PASSES / fast_rate / 3600}


def table_row(r: dict) -> str:
    """One Markdown row; reference columns are '-' where the reference was not timed."""
    timed = r["reference_passes_per_s"] is not None
    ref = f"{r['reference_passes_per_s']:,.0f}" if timed else "-"
    speed = f"{r['speedup_median']:.1f}x" if timed else "-"
    diff = f"{r['max_abs_difference']:.1e}" if timed else "-"
    rows = r.get("reference_rows") or "-"
    return (f"| {r['model']} | {r['step']} | {r['pixels']} | {r['passes']:,} | "
            f"{r['fast_passes_per_s']:,.0f} | {ref} | {rows} | {speed} | {diff} | "
            f"{r['projected_paper_map_hours_fast']:.1f} h |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pixels51", type=int, default=24, help="pixels mapped at step 51")
    ap.add_argument("--pixels5", type=int, default=1, help="pixels mapped at step 5 (0 skips)")
    ap.add_argument("--step5-reference", action="store_true",
                    help="also time the reference engine at step 5 (slow: 140,608 passes/pixel)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256,
                    help="colours per engine call (256 is the library default; 512 and 4096 "
                         "show why)")
    args = ap.parse_args()
    set_chunk(args.chunk)
    torch.set_num_threads(args.threads)
    results = []
    for name in MODELS:
        results.append(bench(name, 51, args.pixels51, args.repeats, args.device))
        if args.pixels5 > 0:
            results.append(bench(name, 5, args.pixels5, max(1, args.repeats // 2), args.device,
                                 reference=args.step5_reference))
        for r in results[-2:]:
            print(json.dumps({k: v for k, v in r.items() if k != "speedups"}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
               f"{args.threads} threads, device {args.device}")
    (out / "confidence_map.json").write_text(json.dumps({"machine": machine, "results": results},
                                                         indent=2))
    lines = [f"Machine: {machine}. Median of {args.repeats} interleaved repeats; random-weight "
             f"models (speed does not depend on the weights); {CHUNK} colours per engine call. "
             "The reference engine runs at the "
             f"rows per forward call that were fastest on this machine (tried {ROWS_CANDIDATES}).",
             "",
             "| model | step | pixels | passes | fast passes/s | reference passes/s | "
             "reference rows/call (fastest) | speed-up (median) | max abs diff | "
             "full paper map, fast engine |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(table_row(r))
    (out / "confidence_map.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
