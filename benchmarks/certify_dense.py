"""Certificates beside the attacks on every task (issue 25's measurements beyond ART's scope).

1. Denoised smoothing on PneumoniaMNIST (Salman et al. 2020): the standard SmallCNN smoothed as
   it is, the same classifier behind the project's autoencoder trained for Gaussian noise
   (``train-denoiser --noise gaussian``: reconstruction, Salman's MSE objective), behind
   autoencoders trained against that classifier with Salman's stability objective (reconstruction
   plus stability from scratch, ``--objective mse+stability --classifier``; and their own
   recipe, the MSE autoencoder fine-tuned 4 epochs with stability alone, ``--objective stability
   --init``: stability alone from scratch collapses to one output image here), and the SmallCNN
   trained under the noise (the upper reference), at sigma 0.25 and 0.5: certified accuracy at
   L2 0.25, 0.5 and 1.
2. SegCertify on DSB2018 nuclei (64x64 U-Net): the standard U-Net and one trained under
   Gaussian noise (``train --noise-sd 0.25``), sigma 0.25: certified Dice and the share of pixels
   abstained per radius.
3. Median smoothing of the ISBI 2015 landmark model at 200x160 and of the BCCD CenterNet at
   320x320 (the checkpoints ``dense_ensemble.py`` trains, reused from its cache) at a small sigma:
   the certified MRE bound (mm) and the share of true boxes certified found at IoU 0.5.

Each with the cost per image. Every step is a ``medrobust`` command into one store, so a killed
run resumes. Run from the project root (after ``dense_ensemble.py``, whose models it reuses):

    python benchmarks/certify_dense.py --data-dir ../shared/data

Writes certify_dense.json and certify_dense.md under --out (``--name`` another stem: a run of
some ``--parts`` only, e.g. ``--parts classification --name certify_denoised``, must not
overwrite the other tasks' results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
from dense_ensemble import train_models  # noqa: E402

CACHE = DEFAULT_CACHE / "certify_dense"


def run_certify(model: str, data: list[str], store: str, sigma: float, radii: str,
                limit: int, n0: int, n: int, batch: int, *more: str) -> dict[str, Any]:
    out = cli("certify", "--model", model, *data, "--sigma", f"{sigma:g}", "--radii", radii,
              "--limit", str(limit), "--n0", str(n0), "--n", str(n), "--alpha", "0.001",
              "--batch-size", str(batch), *more, "--store", store)
    with_time = out.get("seconds_this_session")
    return {"summary": out, "seconds_per_image": None if not out.get("certified_now") else
            with_time / out["certified_now"]}


def classifiers(args: argparse.Namespace, store: str) -> list[dict[str, Any]]:
    data = ["--dataset", "pneumoniamnist", "--data-dir", str(args.data_dir)]
    std = CACHE / "pneumoniamnist-smallcnn-e10"
    train_once(std, *data, "--epochs", "10", "--store", store)
    results = []
    for sigma in (0.25, 0.5):
        noisy = CACHE / f"pneumoniamnist-smallcnn-noise{sigma:g}-e10"
        train_once(noisy, *data, "--epochs", "10", "--noise-sd", f"{sigma:g}", "--store", store)
        dae = CACHE / f"dae-gaussian{sigma:g}"
        if not (dae / "meta.json").is_file():  # train-denoiser refuses a folder it wrote
            cli("train-denoiser", *data, "--noise", "gaussian", "--sd", f"{sigma:g}",
                "--epochs", "8", "--out", str(dae), "--store", store)
        stab = CACHE / f"dae-mse-stability{sigma:g}"  # trained against the standard SmallCNN
        if not (stab / "meta.json").is_file():
            cli("train-denoiser", *data, "--noise", "gaussian", "--sd", f"{sigma:g}",
                "--objective", "mse+stability", "--classifier", str(std),
                "--epochs", "8", "--out", str(stab), "--store", store)
        warm = CACHE / f"dae-stability-from-mse{sigma:g}"  # Salman's recipe: MSE, then stability
        if not (warm / "meta.json").is_file():
            cli("train-denoiser", *data, "--noise", "gaussian", "--sd", f"{sigma:g}",
                "--objective", "stability", "--classifier", str(std), "--init", str(dae),
                "--epochs", "4", "--out", str(warm), "--store", store)
        for label, model, more in (("standard, plain smoothing", std, ()),
                                   ("standard + Gaussian DAE (denoised smoothing)", std,
                                    ("--denoiser", str(dae))),
                                   ("standard + MSE+stability DAE (denoised smoothing)", std,
                                    ("--denoiser", str(stab))),
                                   ("standard + Gaussian DAE fine-tuned for stability", std,
                                    ("--denoiser", str(warm))),
                                   ("trained under the noise", noisy, ())):
            r = run_certify(str(model), [], store, sigma, "0,0.25,0.5,1", args.images,
                            100, args.n, 500, *more)
            results.append({"task": "classification", "sigma": sigma, "model": label, **r})
    return results


def segmenters(args: argparse.Namespace, store: str, std: str) -> list[dict[str, Any]]:
    data = ["--task", "segmentation", "--dataset", "segfolder", "--data-dir",
            str(args.data_dir / "dsb2018_nuclei"), "--size", "64"]
    noisy = CACHE / "dsb2018-unet-noise0.25-e15"
    train_once(noisy, *data, "--epochs", "15", "--batch-size", "16", "--noise-sd", "0.25",
               "--store", store)
    return [{"task": "segmentation", "sigma": 0.25, "model": label,
             **run_certify(model, [], store, 0.25, "0,0.1,0.25,0.5", args.seg_images, 30,
                           args.seg_n, 100)}
            for label, model in (("standard U-Net", std),
                                 ("U-Net trained under the noise", str(noisy)))]


def regressors(args: argparse.Namespace, store: str, models: dict[str, dict[str, str]]
               ) -> list[dict[str, Any]]:
    out = []
    sigma = args.dense_sigma
    radii = ",".join(f"{f * sigma:g}" for f in (0, 0.5, 1, 2))
    for task in ("landmarks", "detection"):
        ckpt = models[task]["std"]
        r = run_certify(ckpt, [], store, sigma, radii, args.dense_images, 1, args.dense_n, 50)
        out.append({"task": task, "sigma": sigma, "model": Path(ckpt).name, **r})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Certificates on every task (alpha 0.001; commit {report['commit']}, "
             f"{report['threads']} threads). Per radius the certified headline with its 95 % "
             "interval (classification and boxes: Wilson; Dice and MRE bound: bootstrap over "
             "images); s/img: wall seconds per certified image.", ""]
    for task in ("classification", "segmentation", "landmarks", "detection"):
        mine = [r for r in report["results"] if r["task"] == task]
        if not mine:
            continue
        first = mine[0]["summary"]
        lines += [f"**{task}** ({first.get('method')}; n = {first.get('n')}, "
                  f"{first.get('images')} test images): certified {first.get('metric')}", "",
                  "| model | sigma | " + " | ".join(f"L2 {c['radius']:g}"
                                                     for c in first["certified"])
                  + " | abstained | s/img |",
                  "|---|---|" + "---|" * (len(first["certified"]) + 2)]
        for r in mine:
            s = r["summary"]
            cells = []
            for c in s["certified"]:
                v, ci = c.get("value"), c.get("ci95")
                cells.append("unbounded" if v is None else f"{v:.3f}" + (
                    "" if not ci or ci[1] is None else f" ({ci[0]:.2f}-{ci[1]:.2f})"))
            sec = r["seconds_per_image"]
            ab = s.get("abstain_rate")
            of = f" ({s['abstain_of']})" if s.get("abstain_of") else ""
            lines.append(f"| {r['model']} | {r['sigma']:g} | " + " | ".join(cells)
                         + f" | {'-' if ab is None else f'{ab:.3f}'}{of}"
                         f" | {'-' if sec is None else f'{sec:.2f}'} |")
        lines.append("")
    if any(r["seconds_per_image"] is None for r in report["results"]):
        lines += ["s/img '-': the row was read back from the benchmark's store, certified by an "
                  "earlier run (whose results file has its cost).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--parts", default="classification,segmentation,dense")
    ap.add_argument("--images", type=int, default=30, help="PneumoniaMNIST test images")
    ap.add_argument("--n", type=int, default=10_000, help="classifier noise samples")
    ap.add_argument("--seg-images", type=int, default=32)
    ap.add_argument("--seg-n", type=int, default=300)
    ap.add_argument("--dense-images", type=int, default=8)
    ap.add_argument("--dense-n", type=int, default=500)
    ap.add_argument("--dense-sigma", type=float, default=0.05)
    ap.add_argument("--landmark-minutes", type=float, default=10.0)
    ap.add_argument("--detection-minutes", type=float, default=12.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="certify_dense",
                    help="stem of the results files (.json, .md) under --out")
    args = ap.parse_args()
    set_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",")}
    CACHE.mkdir(parents=True, exist_ok=True)
    store = str(CACHE / "runs.db")
    # the dense ensemble benchmark's checkpoints (trained there, or here into its cache)
    args.tasks = ((("segmentation",) if "segmentation" in parts else ())
                  + (("landmarks", "detection") if "dense" in parts else ()))
    models = train_models(args, str(DEFAULT_CACHE / "dense_ensemble" / "runs.db"))
    results: list[dict[str, Any]] = []
    if "classification" in parts:
        results += classifiers(args, store)
    if "segmentation" in parts:
        results += segmenters(args, store, models["segmentation"]["std"])
    if "dense" in parts:
        results += regressors(args, store, models)
    report = {"benchmark": "certify_dense", "commit": git_commit(), "threads": args.threads,
              "settings": {k: str(v) if isinstance(v, Path) else v
                           for k, v in vars(args).items()}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", report)
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
