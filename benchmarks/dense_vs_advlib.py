"""The dense worst-case ensemble against adversarial-library's segmentation attack, same model,
same images, same L2 budgets.

Issue 21 asks, where a peer overlaps, that the ensemble be at least as strong per image.
adversarial-library (Rony et al., ``adv-lib``) is the one library with segmentation attacks: DAG,
ALMA prox, PDGD and PDPGD. They are *minimum-norm* attacks: each looks for the smallest
perturbation that flips 99 % of the pixels, with no budget. So each is run as its authors
designed it and judged at our budgets the way minimum-norm results are read at a budget: the
perturbation found, scaled back onto the L2 ball where it is longer than the budget, then the
image's foreground Dice. Included: PDPGD with the L2 proximal operator (the L2 member of the
family; 500 steps, the library's default). Left out, and why: ALMA prox is Linf only; DAG
returns the clean image whenever it does not reach 99 % flipped pixels, so at a budget it only
says "not reached".

The ensemble's per-image Dice comes from ``dense_ensemble.py``'s store (the same 32 test images
and models; run that first). adv-lib 0.2.8 imports ``visdom`` (its logger) and ``torchvision``
(LPIPS) when its package loads; the segmentation attacks use neither, visdom does not build
here and torchvision has no CPU build on these machines, so this script registers empty
placeholder modules for those two names before importing the attack module. The attack's own
code runs unmodified. Install: ``pip install --no-deps adv-lib==0.2.8``. From the project root:

    python benchmarks/dense_vs_advlib.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DEFAULT_CACHE, SHARED_DATA, cli, git_commit, set_threads, write_json  # noqa: E402

from medrobust.data import load_dataset  # noqa: E402
from medrobust.metrics.mean_interval import mean_ci95  # noqa: E402
from medrobust.models import load_model  # noqa: E402
from medrobust.store import Store  # noqa: E402
from medrobust.tasks import get_task  # noqa: E402

CACHE = DEFAULT_CACHE / "dense_ensemble"
LEVELS = (1.74, 3.48, 6.96)
MODELS = ("std", "vat1.74")


def import_pdpgd() -> Any:
    """adv-lib's PDPGD, its package's unused logger and LPIPS imports satisfied by empty
    modules (see the module docstring); None when adv-lib is not installed."""
    for name in ("visdom", "torchvision", "torchvision.models"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                sys.modules[name] = types.ModuleType(name)
    sys.modules["visdom"].Visdom = getattr(sys.modules["visdom"], "Visdom", object)
    try:
        from adv_lib.attacks.segmentation import pdpgd
    except ImportError:
        return None
    return pdpgd


def onto_ball(x0: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """The perturbation scaled back to L2 ``eps`` where it is longer (inside [0,1] stays
    inside: the scaled point lies between x0 and adv)."""
    delta = (adv - x0).double()
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = torch.clamp(eps * (1 - 1e-6) / norm, max=1.0).view(-1, 1, 1, 1)
    return (x0.double() + delta * scale).float().clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--steps", type=int, default=500, help="PDPGD steps (adv-lib's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    set_threads(args.threads)
    pdpgd = import_pdpgd()
    if pdpgd is None:
        raise SystemExit("adv-lib is not installed: pip install --no-deps adv-lib==0.2.8")
    store = str(CACHE / "runs.db")
    task = get_task("segmentation")
    ds = load_dataset("segfolder", "test", data_dir=args.data_dir / "dsb2018_nuclei", size=64)
    n = args.limit
    report: dict[str, Any] = {"benchmark": "dense_vs_advlib", "commit": git_commit(),
                              "images": n, "pdpgd_steps": args.steps, "threads": args.threads,
                              "rows": []}
    for name in MODELS:
        ckpt = CACHE / name
        if not (ckpt / "meta.json").is_file():
            raise SystemExit(f"no {ckpt}: run benchmarks/dense_ensemble.py first")
        # the ensemble's rows: dense_ensemble.py's finished campaigns (this resumes them)
        out = cli("evaluate", "--model", str(ckpt), "--attack", "pgd,ensemble", "--l2",
                  ",".join(f"{v:g}" for v in LEVELS), "--steps", "100", "--ifgsm-steps", "10",
                  "--limit", str(n), "--store", store)
        model = load_model(str(ckpt))
        x = model.to_tensor(ds.images[:n])
        y = torch.from_numpy(ds.masks[:n].astype(np.int64))
        start = time.perf_counter()
        adv = pdpgd(model, x, y, norm=2, num_steps=args.steps)
        seconds = time.perf_counter() - start
        found = (adv - x).flatten(1).norm(dim=1)
        with Store(store) as st:
            for cell in (c for c in out["cells"] if c["attack"] == "ensemble"):
                rows = {r["dataset_index"]: r["adv_metric"]
                        for r in st.rows("task_attack_results", run_id=cell["run_id"])}
                ours = np.array([rows[i] for i in range(n)])
                with torch.no_grad():
                    theirs = (1 - task.image_damage(model, onto_ball(x, adv, cell["eps"]), y)
                              ).numpy()
                report["rows"].append({
                    "model": name, "eps": cell["eps"], "ensemble": float(ours.mean()),
                    "ensemble_ci95": list(mean_ci95(ours) or ()),
                    "pdpgd": float(theirs.mean()), "pdpgd_ci95": list(mean_ci95(theirs) or ()),
                    "images_at_least_as_strong": int(np.sum(ours <= theirs + 1e-9)),
                    "pdpgd_within_budget": int((found <= cell["eps"]).sum()),
                    "pdpgd_seconds_per_image": seconds / n})
    write_json(args.out / "dense_vs_advlib.json", report)
    lines = [f"Worst-case ensemble (medrobust) vs adv-lib 0.2.8 PDPGD (L2, {args.steps} steps, "
             "minimum-norm, scaled back onto the ball), DSB2018 64x64, first "
             f"{n} test images, commit {report['commit']}. Dice, mean (bootstrap 95 % "
             "interval); lower is a stronger attack.", "",
             "| model | L2 | ensemble | PDPGD at the budget | images ensemble <= PDPGD | PDPGD "
             "already within budget | PDPGD s/img |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['eps']:g} | {r['ensemble']:.3f} "
                     f"({r['ensemble_ci95'][0]:.3f}-{r['ensemble_ci95'][1]:.3f}) | "
                     f"{r['pdpgd']:.3f} ({r['pdpgd_ci95'][0]:.3f}-{r['pdpgd_ci95'][1]:.3f}) | "
                     f"{r['images_at_least_as_strong']} / {n} | {r['pdpgd_within_budget']} / "
                     f"{n} | {r['pdpgd_seconds_per_image']:.2f} |")
    (args.out / "dense_vs_advlib.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
