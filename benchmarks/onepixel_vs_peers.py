"""One-pixel attack: medrobust vs torchattacks vs IBM ART, same model, images, budget and seed.

For each dataset (PneumoniaMNIST 28x28 greyscale, BCCD cell crops 64x64 RGB) a SmallCNN is
trained once through medrobust's API and cached under ``benchmarks/.cache/``. The same correctly
classified test images (seeded, balanced over classes) are then attacked, untargeted with one
pixel, by

* ``medrobust``          medrobust's ``OnePixel`` over all images in one ``run`` call (its normal
                         use: populations of all images scored together);
* ``medrobust-single``   (optional) the same attack, one image per call, like the peers;
* ``medrobust-reference`` (optional) the same attack scoring candidates with the reference engine
                         (full forward passes) instead of the default exact cone engine;
* ``torchattacks``       ``torchattacks.OnePixel``;
* ``art``                ``art.attacks.evasion.PixelAttack`` in differential-evolution mode.

Budget: population 400, 100 generations (at most ~40,400 model evaluations per image). Every
method's result is judged by this script, not by the library: the returned adversarial image is
re-scored by the model (success = predicted label differs from the true label) and the number of
changed pixel positions is checked to be at most one. Model evaluations ("queries") are counted by
a forward pre-hook on the network, so each method is charged for what it really evaluated.

Usage (from the project root)::

    python benchmarks/onepixel_vs_peers.py --data-dir ../shared/data --images 8 --repeats 1 \
        --datasets pneumoniamnist,bccd --out benchmarks/results

Writes ``onepixel_vs_peers.json`` and ``onepixel_vs_peers.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DEFAULT_CACHE,
    DEFAULT_DATA_DIR,
    QueryCounter,
    cached_model,
    changed_pixels,
    load_average,
    machine_info,
    markdown_table,
    median,
    pick_correct,
    set_threads,
    write_json,
)

from medrobust.attacks.onepixel import OnePixel
from medrobust.data import load_dataset
from medrobust.models.classifier import Classifier
from medrobust.models.engines import cone
from medrobust.utils.device import resolve_device

AUTO_ROWS = "size-aware default (64 for 64x64, 256 for 28x28)"
ALL_METHODS = ("medrobust", "medrobust-single", "medrobust-reference", "torchattacks", "art")
DEFAULT_METHODS = ("medrobust", "medrobust-reference", "torchattacks", "art")
REFERENCE = "torchattacks"

# Differences that remain at equal budget; printed under the table.
DIFFERENCES = (
    "DE variant: medrobust runs the paper's DE/rand/1 (F = 0.5, no crossover), colours drawn from "
    "N(128, 127), integer candidates, out-of-range values clipped to the bound. torchattacks and "
    "ART run their own copies of scipy's differential_evolution: best1bin with F dithered in "
    "[0.5, 1), recombination 1 (the trial is the mutant), out-of-range values redrawn uniformly; "
    "torchattacks initialises uniformly, ART by Latin hypercube.",
    "Population: medrobust 400; torchattacks and ART 400 on RGB, 399 on greyscale (their "
    "population is a multiple of the 3 dimensions).",
    "Stopping: medrobust stops an image as soon as any scored candidate succeeds (initial "
    "population included). The peers test only the population's best member, once per "
    "generation (one extra model call each, counted), and never the initial population.",
    "Colours: medrobust and ART write 8-bit colours; torchattacks writes a continuous value in "
    "[0, 1] that no 8-bit image can hold (hence the uint8 column).",
    "Engines: the medrobust row scores candidates with the exact cone engine (only the pixel's "
    "receptive-field cone is recomputed, from cached clean activations); medrobust-reference runs "
    "the same attack with full forward passes. Both give the same attack result (the script "
    "checks that success and pixels agree).",
    "Batching: medrobust scores the populations of all images together in calls of a fixed size "
    "(padding included: batch-independent scores); the peers attack one image "
    "at a time (torchattacks with the same rows per call as medrobust-reference; ART predicts in its "
    "fixed batches of 128). The optional medrobust-single row runs medrobust one image per call.",
    "ART refuses true labels for 2-class models, so it is called with y=None and attacks the "
    "model's prediction, which equals the label for these correctly classified images (one extra "
    "model call per image). Its model wrapper ends in a softmax because ART's fitness is "
    "predict(x)[:, label].",
)


# --- per-image seeds ---------------------------------------------------------------------------
def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` for the peers (they draw from NumPy's global generator)."""
    return (seed * 1_000_003 + index) % 2**32


# --- peers' adapters ---------------------------------------------------------------------------
class ArtModel(nn.Module):
    """0..255 NCHW input -> class probabilities, for ART's ``PyTorchClassifier``.

    ART's PixelAttack uses ``estimator.predict(x)[:, label]`` as the fitness it minimises, i.e.
    it expects probabilities (the original Keras one-pixel code's models end in a softmax); with
    raw logits it would minimise one logit, which is not the attack the other two run.
    """

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.clf(x / 255.0), dim=1)


def torchattacks_popsize(channels: int, pixels: int, population: int) -> tuple[int, int]:
    """The ``popsize`` argument of torchattacks.OnePixel that gives ``population`` candidates.

    torchattacks computes ``popmul = max(1, int(popsize / len(bounds)))`` with
    ``len(bounds) = pixels * (2 + channels)`` and hands ``popmul`` to its copy of scipy's
    differential_evolution, whose population is ``max(5, popmul * len(bounds))``: ``popsize`` is
    a per-dimension multiplier, not a head count. So we pass ``popmul * len(bounds)`` with
    ``popmul = population // len(bounds)``: 400 candidates for RGB (80 x 5), 399 for greyscale
    (133 x 3; 400 is not a multiple of 3). ART rounds the same way (``400 // len(bounds)``).
    Returns (popsize argument, real population).
    """
    dims = pixels * (2 + channels)
    popmul = max(1, population // dims)
    return popmul * dims, max(5, popmul * dims)


def art_population(channels: int, pixels: int) -> int:
    """ART's PixelAttack hard-codes ``popsize=max(1, 400 // len(bounds))`` (scipy multiplier)."""
    dims = pixels * (2 + channels)
    return max(5, max(1, 400 // dims) * dims)


# --- one method on all images ------------------------------------------------------------------
def _verify(clf: Classifier, originals: np.ndarray, advs: np.ndarray, labels: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(verified success, success after rounding to uint8, changed pixel count) per image.

    ``originals``/``advs`` are float [0,1] (N,H,W,C). Scored one image per forward call so no
    batch-shape effect can decide a borderline case differently from method to method.
    """
    ok = np.zeros(len(advs), dtype=bool)
    ok_u8 = np.zeros(len(advs), dtype=bool)
    changed = np.zeros(len(advs), dtype=np.int64)
    for i in range(len(advs)):
        adv = advs[i]
        pred = clf.probabilities(torch.from_numpy(adv[None]).float().permute(0, 3, 1, 2)).argmax(1)
        adv_u8 = np.clip(np.rint(adv * 255.0), 0, 255).astype(np.uint8)
        pred_u8 = clf.predict(adv_u8[None])
        ok[i] = int(pred[0]) != int(labels[i])
        ok_u8[i] = int(pred_u8[0]) != int(labels[i])
        changed[i] = changed_pixels(originals[i], adv)
    return ok, ok_u8, changed


def run_medrobust(clf: Classifier, images: np.ndarray, labels: np.ndarray, keys: list[int],
                  args: argparse.Namespace, single: bool, counter: QueryCounter,
                  engine: str = "fast") -> dict[str, Any]:
    attack = OnePixel(clf, pixels=1, population=args.population, generations=args.generations,
                      seed=args.seed, engine=engine)
    counter.reset()
    per_image_seconds: list[float] = []
    start = time.perf_counter()
    if single:
        results = []
        for i in range(len(images)):
            t0 = time.perf_counter()
            results += attack(images[i:i + 1], labels[i:i + 1], keys=keys[i:i + 1]).records
            per_image_seconds.append(time.perf_counter() - t0)
    else:
        results = attack(images, labels, keys=keys).records
    seconds = time.perf_counter() - start
    advs = np.stack([r.apply(img) for r, img in zip(results, images, strict=True)])
    return {
        "seconds": seconds,
        "per_image_seconds": per_image_seconds or None,
        "advs": advs.astype(np.float64) / 255.0,
        "claimed": [r.success for r in results],
        "status": [r.status for r in results],
        # the attack's own count: candidates scored (no padding, no clean pass); the cone engine
        # computes windows, not forward passes, so rows are the candidates scored
        "queries": [r.queries for r in results],
        "forward_rows": int(sum(r.queries for r in results)),
        "population": args.population,
    }


def run_torchattacks(clf: Classifier, images: np.ndarray, labels: np.ndarray, keys: list[int],
                     args: argparse.Namespace, counter: QueryCounter) -> dict[str, Any]:
    import torchattacks

    c = images.shape[-1]
    popsize, real_pop = torchattacks_popsize(c, 1, args.population)
    # inf_batch: the forward batch. It gets the same rows per call as medrobust's full forward
    # passes (the Classifier's size-aware default: 64 for 64x64, 256 for 28x28 on a CPU), which
    # beat torchattacks' own default of 128 on these images.
    x0 = torch.zeros(1, c, *images.shape[1:3])
    attack = torchattacks.OnePixel(clf, pixels=1, steps=args.generations, popsize=popsize,
                                   inf_batch=clf.rows_per_call(x0))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).to(clf.device)
    y = torch.from_numpy(labels).long().to(clf.device)
    counter.reset()
    per_s, queries, advs, errors = [], [], [], []
    start = time.perf_counter()
    for i in range(len(images)):
        np.random.seed(image_seed(args.seed, keys[i]))  # torchattacks' DE uses NumPy's global RNG
        t0 = time.perf_counter()
        try:
            adv = attack(x[i:i + 1], y[i:i + 1])
            advs.append(adv[0].permute(1, 2, 0).cpu().double().numpy())
            errors.append(None)
        except Exception as exc:  # a library failure counts as a failed image, and is reported
            advs.append(images[i].astype(np.float64) / 255.0)
            errors.append(f"{type(exc).__name__}: {exc}")
        per_s.append(time.perf_counter() - t0)
        queries.append(counter.reset()[0])
    seconds = time.perf_counter() - start
    # torchattacks returns images only (the best candidate found, successful or not): no flag.
    return {"seconds": seconds, "per_image_seconds": per_s, "advs": np.stack(advs), "claimed": None,
            "status": ["error" if e else "done" for e in errors], "errors": errors,
            "queries": queries, "forward_rows": int(sum(queries)), "population": real_pop,
            "popsize_argument": popsize}


def run_art(clf: Classifier, images: np.ndarray, labels: np.ndarray, keys: list[int],
            args: argparse.Namespace, counter: QueryCounter) -> dict[str, Any]:
    from art.attacks.evasion import PixelAttack
    from art.estimators.classification import PyTorchClassifier

    n, h, w, c = images.shape
    estimator = PyTorchClassifier(
        model=ArtModel(clf), loss=nn.CrossEntropyLoss(), input_shape=(c, h, w),
        nb_classes=clf.num_classes, clip_values=(0.0, 255.0), channels_first=True,
        device_type="gpu" if clf.device.type == "cuda" else "cpu")
    # th = number of pixels for PixelAttack (th=None would binary-search 1..127 pixels);
    # es=1: differential evolution. ART fixes the population itself (see art_population).
    attack = PixelAttack(estimator, th=1, es=1, max_iter=args.generations, targeted=False,
                         verbose=False)
    x = images.transpose(0, 3, 1, 2).astype(np.float32)  # 0..255, as ART's pixel attacks expect
    counter.reset()
    per_s, queries, advs, errors = [], [], [], []
    start = time.perf_counter()
    for i in range(n):
        np.random.seed(image_seed(args.seed, keys[i]))  # ART's DE uses NumPy's global RNG
        t0 = time.perf_counter()
        try:
            # y=None: ART then attacks the model's own prediction, which is the true label for
            # these correctly classified images. (ART refuses y for 2-class models: "not yet
            # been tested for binary classification with a single output classifier".)
            adv = attack.generate(x[i:i + 1], y=None)
            advs.append(adv[0].transpose(1, 2, 0).astype(np.float64) / 255.0)
            errors.append(None)
        except Exception as exc:
            advs.append(images[i].astype(np.float64) / 255.0)
            errors.append(f"{type(exc).__name__}: {exc}")
        per_s.append(time.perf_counter() - t0)
        queries.append(counter.reset()[0])
    seconds = time.perf_counter() - start
    advs_np = np.stack(advs)
    # ART returns the unchanged image when it fails, so "changed" == its own success flag.
    claimed = [bool(changed_pixels(images[i] / 255.0, advs_np[i]) > 0) for i in range(n)]
    return {"seconds": seconds, "per_image_seconds": per_s, "advs": advs_np, "claimed": claimed,
            "status": ["error" if e else "done" for e in errors], "errors": errors,
            "queries": queries, "forward_rows": int(sum(queries)),
            "population": art_population(c, 1)}


def run_method(method: str, clf: Classifier, images: np.ndarray, labels: np.ndarray,
               keys: list[int], args: argparse.Namespace, counter: QueryCounter
               ) -> dict[str, Any]:
    if method.startswith("medrobust"):
        # medrobust counts its own queries. The counter's forward hook must be off: torch.fx runs
        # hooks while tracing, and the cone engine would fall back to full forward passes.
        counter.detach()
        try:
            return run_medrobust(clf, images, labels, keys, args, method == "medrobust-single",
                                 counter, engine="reference" if method == "medrobust-reference"
                                 else "fast")
        finally:
            counter.attach()
    if method == "torchattacks":
        return run_torchattacks(clf, images, labels, keys, args, counter)
    if method == "art":
        return run_art(clf, images, labels, keys, args, counter)
    raise ValueError(method)


def peers_available(methods: list[str]) -> tuple[list[str], dict[str, str]]:
    missing = {}
    for method, module in (("torchattacks", "torchattacks"), ("art", "art")):
        if method in methods:
            try:
                __import__(module)
            except ImportError as exc:
                missing[method] = f"not installed ({exc})"
    return [m for m in methods if m not in missing], missing


# --- profiling ---------------------------------------------------------------------------------
def profile_medrobust(clf: Classifier, images: np.ndarray, labels: np.ndarray, keys: list[int],
                      args: argparse.Namespace, top: int = 25) -> str:
    attack = OnePixel(clf, pixels=1, population=args.population, generations=args.generations,
                      seed=args.seed)
    prof = cProfile.Profile()
    prof.enable()
    attack(images, labels, keys=keys)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --- one dataset -------------------------------------------------------------------------------
def bench_dataset(name: str, args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    device = str(resolve_device(args.device))
    clf, model_info = cached_model(name, args.data_dir, cache_dir=args.cache_dir,
                                   width=args.width, epochs=args.epochs, seed=0, device=device,
                                   batch_size=args.batch_size)
    test = load_dataset(name, "test", data_dir=args.data_dir)
    idx, sel = pick_correct(clf, test, args.images, args.seed)
    images, labels = test.images[idx], test.labels[idx]
    keys = [int(i) for i in idx]
    originals = images.astype(np.float64) / 255.0
    print(f"[bench] {name}: model test accuracy {model_info['test_accuracy']:.3f}; attacking "
          f"{len(idx)} correctly classified test images {keys}", flush=True)

    counter = QueryCounter(clf.model).attach()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(args.repeats):
        order = methods[r % len(methods):] + methods[:r % len(methods)]  # rotate against drift
        for m in order:
            load = load_average()
            cpu0 = time.process_time()
            res = run_method(m, clf, images, labels, keys, args, counter)
            res["cpu_seconds"] = time.process_time() - cpu0
            print(f"[bench] {name} repeat {r + 1}/{args.repeats} {m}: {res['seconds']:.1f}s wall, "
                  f"{res['cpu_seconds']:.1f}s CPU (load before {load})", flush=True)
            res["load_average_before"] = load
            runs[m].append(res)
    counter.detach()

    out: dict[str, Any] = {"dataset": name, "image_shape": list(images.shape[1:]),
                           "classes": list(test.class_names), "model": model_info,
                           "selection": {**sel, "indices": keys, "labels": labels.tolist()},
                           "methods": {}}
    ref_seconds = [x["seconds"] for x in runs.get(REFERENCE, [])]
    ref_cpu = [x["cpu_seconds"] for x in runs.get(REFERENCE, [])]
    for m in methods:
        first = runs[m][0]
        ok, ok_u8, changed = _verify(clf, originals, first["advs"], labels)
        # Deterministic seeds: every repeat must give the same images; check rather than assume.
        same = all(np.array_equal(x["advs"], first["advs"]) for x in runs[m][1:])
        claimed = None if first["claimed"] is None else np.asarray(first["claimed"], dtype=bool)
        secs = [x["seconds"] for x in runs[m]]
        cpu = [x["cpu_seconds"] for x in runs[m]]
        ratios = [rs / s for rs, s in zip(ref_seconds, secs, strict=False)]
        cpu_ratios = [rs / s for rs, s in zip(ref_cpu, cpu, strict=False)]
        n = len(images)
        entry = {
            "population": first["population"],
            "generations": args.generations,
            "images": n,
            "success_rate": float(ok.mean()) if n else None,
            "successes": int(ok.sum()),
            "success_rate_uint8": float(ok_u8.mean()) if n else None,
            "library_claimed_successes": None if claimed is None else int(np.sum(claimed)),
            "claim_disagreements": None if claimed is None else int(np.sum(claimed != ok)),
            "max_changed_pixels": int(changed.max()) if n else 0,
            "over_one_pixel": int(np.sum(changed > 1)),
            "mean_queries": float(np.mean(first["queries"])) if n else None,
            "mean_queries_success": float(np.mean(np.asarray(first["queries"])[ok])) if ok.any()
            else None,
            "forward_rows": int(first["forward_rows"]),
            "seconds": median(secs),
            "seconds_all_repeats": [round(s, 3) for s in secs],
            "images_per_second": n / median(secs) if median(secs) else None,
            "us_per_forward_row": 1e6 * median(secs) / first["forward_rows"]
            if first["forward_rows"] else None,
            "cpu_seconds": median(cpu),
            "cpu_seconds_all_repeats": [round(s, 3) for s in cpu],
            f"speedup_vs_{REFERENCE}": median(ratios),
            f"cpu_speedup_vs_{REFERENCE}": median(cpu_ratios),
            f"speedup_vs_{REFERENCE}_all_repeats": [round(x, 3) for x in ratios],
            "repeats_identical": same,
            "per_image": [
                {"index": keys[i], "label": int(labels[i]), "success": bool(ok[i]),
                 "success_uint8": bool(ok_u8[i]),
                 "claimed": None if claimed is None else bool(claimed[i]),
                 "changed_pixels": int(changed[i]), "queries": int(first["queries"][i]),
                 "seconds": None if first["per_image_seconds"] is None
                 else round(median([x["per_image_seconds"][i] for x in runs[m]]), 3)}
                for i in range(n)],
        }
        for extra in ("popsize_argument", "forward_calls", "errors"):
            if extra in first:
                entry[extra] = first[extra]
        out["methods"][m] = entry
    if "medrobust" in runs and "medrobust-reference" in runs:
        # The cone engine is exact, so both engines must steer DE to the same images.
        out["engines_agree"] = bool(np.array_equal(runs["medrobust"][0]["advs"],
                                                   runs["medrobust-reference"][0]["advs"]))
    if args.profile:
        print(f"[bench] {name}: profiling one medrobust run", flush=True)
        out["profile_medrobust"] = profile_medrobust(clf, images, labels, keys, args)
    return out


# --- report ------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    headers = ["dataset", "method", "population x gens", "images", "success rate",
               "success (uint8)", "mean queries", "forward rows", "seconds", "images/s",
               "CPU s", "µs/row", f"speed vs {REFERENCE} (wall)", "(CPU)"]
    rows = []
    for ds in report["datasets"]:
        for m, e in ds["methods"].items():
            ratio, cratio = e[f"speedup_vs_{REFERENCE}"], e[f"cpu_speedup_vs_{REFERENCE}"]
            rows.append([ds["dataset"], m, f"{e['population']} x {e['generations']}", e["images"],
                         f"{e['successes']}/{e['images']} ({e['success_rate']:.0%})",
                         f"{e['success_rate_uint8']:.0%}", round(e["mean_queries"]),
                         e["forward_rows"], e["seconds"], e["images_per_second"],
                         e["cpu_seconds"], e["us_per_forward_row"],
                         None if ratio is None else f"{ratio:.2f}x",
                         None if cratio is None else f"{cratio:.2f}x"])
    mach = report["machine"]
    lines = [
        "# One-pixel attack: medrobust vs torchattacks vs IBM ART",
        "",
        f"Generated by `benchmarks/onepixel_vs_peers.py` on {report['finished_at']}. "
        f"Command: `{report['command']}`",
        "",
        markdown_table(headers, rows),
        "",
        "* success rate: judged by this script (re-scoring each method's returned image; at most "
        "one changed pixel position is checked); success (uint8): the same after rounding the "
        "adversarial image to 8-bit, which only matters for torchattacks (continuous colours).",
        "* mean queries: model evaluations per image as counted by a forward hook (peers), or the "
        "attack's own count of scored candidates (medrobust). forward rows: rows passed through "
        "the network (peers) or candidates scored (medrobust, whose padding to fixed-size calls "
        "and clean pass are not counted).",
        f"* seconds: median over {report['args']['repeats']} repeat(s) of the wall clock for all "
        "images; CPU s: process CPU time (all threads), less sensitive to other work on a shared "
        f"machine; speed vs {REFERENCE}: median over repeats of {REFERENCE} seconds / method "
        "seconds (>1 = faster); µs/row: wall seconds per forward row.",
        "",
        f"Rows per full forward call (medrobust-reference, padded to exactly; torchattacks' "
        f"inf_batch): {report['args'].get('batch_size') or AUTO_ROWS}; "
        "the cone engine scores candidates in calls of exactly "
        f"{report['args'].get('cone_rows') or cone.CONSISTENT_CHUNK} rows.",
        "",
        *[f"* {d['dataset']}: the cone and reference engines gave "
          f"{'identical' if d['engines_agree'] else 'DIFFERENT'} adversarial images."
          for d in report["datasets"] if "engines_agree" in d],
        "",
        "## Models",
        "",
        markdown_table(["dataset", "model", "epochs (best)", "val acc", "test acc",
                        "correct test images"],
                       [[d["dataset"], f"{d['model']['model']} {d['model']['model_kwargs']}",
                         f"{d['model']['epochs']} ({d['model']['best_epoch']})",
                         d["model"]["val_accuracy"], d["model"]["test_accuracy"],
                         f"{d['selection']['correct']}/{d['selection']['test_images']}"]
                        for d in report["datasets"]]),
        "",
        "## Machine",
        "",
        f"{mach['cpu']}, {mach['logical_cores']} logical cores, torch threads "
        f"{mach['torch_threads']}, device {mach['device']}; load average at start "
        f"{mach.get('load_average_at_start')} (the machine is shared, so absolute seconds are "
        "noisy; ratios from interleaved repeats are more trustworthy). Versions: "
        + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
    ]
    lines += ["", "## How the methods differ (read before comparing)", "",
              *[f"* {n}" for n in DIFFERENCES]]
    if report.get("notes"):
        lines += ["", "## Notes", "", *[f"* {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--datasets", default="pneumoniamnist,bccd")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated subset of {', '.join(ALL_METHODS)}")
    p.add_argument("--images", type=int, default=4, help="correctly classified images per dataset")
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (results are seeded)")
    p.add_argument("--population", type=int, default=400)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16, help="SmallCNN width (medrobust default 32)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=None,
                   help="Classifier rows per forward call (default: medrobust's size-aware "
                        "default); torchattacks gets the same")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cone-rows", type=int, default=None,
                   help="rows per cone-engine call (default: the library's CONSISTENT_CHUNK); "
                        "e.g. 512 shows why the default is smaller")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--render", metavar="JSON",
                   help="only rewrite the Markdown table from an existing results JSON")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile one medrobust run per dataset (top entries in the JSON)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        text = markdown(report)
        Path(args.render).with_suffix(".md").write_text(text)
        print(text)
        return 0
    set_threads(args.threads)
    if args.cone_rows is not None:
        cone.CONSISTENT_CHUNK = args.cone_rows
    warnings.filterwarnings("ignore", category=UserWarning)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {ALL_METHODS}")
    methods, missing = peers_available(methods)
    device = str(resolve_device(args.device))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    report: dict[str, Any] = {
        "benchmark": "onepixel_vs_peers",
        "started_at": started,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": vars(args),
        "machine": machine_info(device, ("torchattacks", "adversarial-robustness-toolbox")),
        "skipped_methods": missing,
        "datasets": [],
        "notes": [],
    }
    report["notes"] += [f"{m} skipped: {why}" for m, why in missing.items()]
    out = Path(args.out)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for k, name in enumerate(names):
        report["datasets"].append(bench_dataset(name, args, methods))
        # written after every dataset, so a long run that dies late keeps what it measured
        report["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        report["complete"] = k == len(names) - 1
        write_json(out / "onepixel_vs_peers.json", report)
        (out / "onepixel_vs_peers.md").write_text(markdown(report))
    print(markdown(report))
    for ds in report["datasets"]:
        if "profile_medrobust" in ds:
            print(f"--- cProfile, medrobust, {ds['dataset']} ---")
            print(ds["profile_medrobust"][:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
