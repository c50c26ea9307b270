"""``medrobust defend``: denoising defences on the one-pixel adversarial images of a store.

Evaluates each defence (a trained denoiser folder or a filter name) on the newest one-pixel run
against ``--model`` (or ``--run``), prints the table (image quality, clean / adversarial accuracy
with and without the defence, recovery rate), optionally attacks the defended model itself
(``--adaptive``) and draws the clean / attacked / denoised / difference grid (``--out``).
Everything is recorded in the store and resumes after a kill.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from medrobust.attacks.projection import check_budget
from medrobust.campaigns.adaptive_defence import ATTACKS as ADAPTIVE_ATTACKS
from medrobust.campaigns.adaptive_defence import AdaptiveConfig, evaluate_adaptive
from medrobust.campaigns.defence import evaluate_defence
from medrobust.cli.common import (
    DEFAULT_STORE,
    budget_levels,
    check_store,
    common_options,
    emit,
    executor_options,
    model_input_size,
    option_given,
)
from medrobust.defences.base import Denoiser
from medrobust.defences.grid import save_defence_grid
from medrobust.defences.registry import available_denoisers, make_denoiser
from medrobust.defences.source import AttackedSet, attacked_set, find_onepixel_run
from medrobust.defences.table import (
    ACCURACY_COLUMNS,
    QUALITY_COLUMNS,
    accuracy_rows,
    adaptive_columns,
    adaptive_rows,
    markdown,
    masking_warnings,
    quality_rows,
)
from medrobust.errors import ConfigError, MedrobustError
from medrobust.models import load_classifier, read_meta
from medrobust.store import Store
from medrobust.utils.device import resolve_device
from medrobust.utils.validation import check_writable

GRID_NAME = "defence_grid.png"
#: options that only the adaptive evaluation reads
ADAPTIVE_OPTIONS = ("adaptive_limit", "linf", "l2", "pgd_steps", "onepixel_population",
                    "onepixel_generations", "attacks", "square_queries")
MAX_GRID_ROWS = 6
MAX_GRID_DEFENCES = 4


def split_specs(values: tuple[str, ...] | list[str], flag: str = "--denoiser") -> list[str]:
    """Repeated and comma-separated option values, de-duplicated in order."""
    out: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    if not out and flag == "--denoiser":
        raise ConfigError("give at least one --denoiser (a trained denoiser folder or one of "
                          f"{', '.join(available_denoisers())})")
    if not out:
        raise ConfigError(f"give at least one value to {flag}")
    return out


def draw_grid(path: Path, attacked: AttackedSet, denoisers: list[Denoiser]) -> str | None:
    """The clean / attacked / denoised / difference grid of the first fooled images."""
    chosen = [j for j, s in enumerate(attacked.status) if s == "success"][:MAX_GRID_ROWS]
    shown = [d for d in denoisers if d.name != "none"][:MAX_GRID_DEFENCES]
    if not chosen or not shown:
        return None
    sel = np.asarray(chosen)
    adv = attacked.adversarial[sel]
    names = attacked.dataset.class_names
    titles = [f"#{attacked.indices[j]} {names[attacked.labels[j]]}" for j in sel]
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_defence_grid(str(path), attacked.clean[sel], adv,
                             {d.name: d.denoise(adv) for d in shown}, titles)


def run_defend(store_path: str | Path, model_dir: str | Path, specs: list[str],
               run_id: int | None = None, clean_limit: int | None = None,
               adaptive: AdaptiveConfig | None = None, out: str | Path | None = None,
               device: str = "auto", resume: bool = True, show_progress: bool = True,
               executor: Any = None) -> dict[str, Any]:
    """The body of ``defend``; also used by ``demo``. Returns the JSON summary."""
    # Everything is checked before the store is opened: a bad option records no run.
    if out is not None:
        check_writable("--out", out, folder=True)
    if not Path(store_path).is_file():
        raise MedrobustError(f"no store at {store_path}")
    check_store(store_path)
    if clean_limit is not None and clean_limit < 1:
        raise ConfigError("--clean-limit must be at least 1")
    if adaptive is not None:
        adaptive.validate()
    dev = resolve_device(device)
    clf = load_classifier(model_dir, dev)
    if adaptive is not None:
        size = model_input_size(read_meta(model_dir))
        if size is not None:
            for eps in adaptive.l2_eps:
                check_budget("--l2 budget", eps, "l2", shape=(clf.channels, *size))
    denoisers = [make_denoiser(s, dev) for s in specs]
    with Store(store_path) as store:
        run = find_onepixel_run(store, model_dir, run_id)
        attacked = attacked_set(store, run)
        if len(attacked) == 0:
            raise MedrobustError(f"run {run['id']} has no attacked images (all were skipped or "
                                 "none finished)")
        clean_idx = None if clean_limit is None else list(range(min(clean_limit,
                                                                    len(attacked.dataset))))
        results = [evaluate_defence(store, clf, d, attacked, clean_idx, resume=resume,
                                    show_progress=show_progress, executor=executor)
                   for d in denoisers]
        adaptive_out = []
        if adaptive is not None:
            order = [make_denoiser("none")] + [d for d in denoisers if d.name != "none"]
            adaptive_out = [evaluate_adaptive(store, clf, d, attacked, adaptive, resume=resume,
                                              show_progress=show_progress, executor=executor)
                            for d in order]
        grid = draw_grid(Path(out) / GRID_NAME, attacked, denoisers) if out is not None else None
    defences = [{"run_id": r.run_id, "resumed": r.resumed, **r.summary} for r in results]
    adaptive_s = [{"run_id": a.run_id, **a.summary} for a in adaptive_out]
    return {"store": str(store_path), "source_run": run["id"], "defences": defences,
            "adaptive": adaptive_s, "grid": grid,
            "table": {"columns": ACCURACY_COLUMNS, "rows": accuracy_rows(defences)},
            "quality_table": {"columns": QUALITY_COLUMNS, "rows": quality_rows(defences)},
            "adaptive_table": {"columns": adaptive_columns(adaptive_s),
                               "rows": adaptive_rows(adaptive_s)},
            "warnings": masking_warnings(adaptive_s)}


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Checkpoint folder of the attacked classifier.")
@click.option("--denoiser", "denoisers", multiple=True, required=True,
              help=f"A trained denoiser folder or one of {', '.join(available_denoisers())}; "
                   "repeat or comma-separate for several.")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--run", "run_id", type=int, default=None,
              help="One-pixel run to defend (default: the newest on --model).")
@click.option("--clean-limit", type=int, default=None,
              help="Clean accuracy on the first N images of the split (default: all).")
@click.option("--adaptive/--no-adaptive", default=False, show_default=True,
              help="Also attack the defended model itself (one-pixel, PGD, Square and the "
                   "AutoAttack-style ensemble; PGD/Square gaps flag gradient masking).")
@click.option("--attacks", default=",".join(ADAPTIVE_ATTACKS), show_default=True,
              help="Adaptive attacks to run (comma-separated).")
@click.option("--square-queries", type=int, default=1000, show_default=True,
              help="Square's query budget per image (alone and inside the ensemble).")
@click.option("--adaptive-limit", type=int, default=32, show_default=True,
              help="Images attacked adaptively.")
@click.option("--linf", default="1/255,2/255,4/255,8/255", show_default=True,
              help="Linf budgets on the [0,1] pixel scale (fractions such as 8/255).")
@click.option("--l2", default="0.1,0.25,0.5,1.0", show_default=True,
              help="L2 budgets on the [0,1] scale.")
@click.option("--pgd-steps", type=int, default=20, show_default=True)
@click.option("--onepixel-population", type=int, default=100, show_default=True,
              help="Adaptive one-pixel attack: population.")
@click.option("--onepixel-generations", type=int, default=20, show_default=True,
              help="Adaptive one-pixel attack: generations.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help=f"Folder for the image grid ({GRID_NAME}).")
@click.option("--no-resume", is_flag=True, help="Start new runs even if matching ones exist.")
@common_options
@executor_options
def defend(model_dir: str, denoisers: tuple[str, ...], store_path: str, run_id: int | None,
           clean_limit: int | None, adaptive: bool, attacks: str, square_queries: int,
           adaptive_limit: int, linf: str, l2: str, pgd_steps: int, onepixel_population: int,
           onepixel_generations: int, out: str | None, no_resume: bool, as_json: bool,
           seed: int, device: str, executor: object = None) -> None:
    """Evaluate denoising defences against the one-pixel attacks recorded in the store."""
    config = None
    if not adaptive:
        for name in ADAPTIVE_OPTIONS:
            if option_given(name):
                raise ConfigError(f"--{name.replace('_', '-')} applies with --adaptive")
    if adaptive:
        config = AdaptiveConfig(linf_eps=budget_levels("--linf", linf),
                                l2_eps=budget_levels("--l2", l2),
                                pgd_steps=pgd_steps, onepixel_population=onepixel_population,
                                onepixel_generations=onepixel_generations, limit=adaptive_limit,
                                square_queries=square_queries, seed=seed,
                                attacks=tuple(split_specs([attacks], "--attacks")))
    summary = run_defend(store_path, model_dir, split_specs(denoisers), run_id, clean_limit,
                         config, out, device, resume=not no_resume, show_progress=not as_json,
                         executor=executor)

    def human() -> None:
        click.echo(f"one-pixel run {summary['source_run']} in {store_path}")
        click.echo(markdown(summary["table"]["columns"], summary["table"]["rows"]))
        click.echo(markdown(summary["quality_table"]["columns"], summary["quality_table"]["rows"]))
        if summary["adaptive"]:
            click.echo("\nrobust accuracy under attacks that see the defence:")
            click.echo(markdown(summary["adaptive_table"]["columns"],
                                summary["adaptive_table"]["rows"]))
        for warning in summary["warnings"]:
            click.echo(f"warning: {warning}")
        if summary["grid"]:
            click.echo(f"image grid: {summary['grid']}")

    emit(summary, as_json, human)


#: The demo's denoiser step: a short autoencoder training and cheap adaptive budgets, so the
#: whole demo stays within a few CPU minutes.
DEMO_TRAIN = {"epochs": 6, "patch": 16, "batch_size": 32, "lr": 5e-3}
DEMO_ADAPTIVE = {"linf_eps": (2 / 255, 8 / 255), "l2_eps": (0.5,), "pgd_steps": 10,
                 "onepixel_population": 40, "onepixel_generations": 10, "limit": 8,
                 "square_queries": 200}


def demo_defence_step(root: Path, dataset: str | None, data_dir: str | None, size: int | None,
                      no_verify: bool, db: Path, device: str, seed: int,
                      say: Callable[[str], None], show_progress: bool) -> dict[str, Any]:
    """``medrobust demo``'s denoiser step: train the autoencoder, defend, attack adaptively."""
    threads = torch.get_num_threads()
    # Small convolutions on busy cores: one thread is many times faster than two contending.
    torch.set_num_threads(1)
    try:
        return _demo_defence(root, dataset, data_dir, size, no_verify, db, device, seed, say,
                             show_progress)
    finally:
        torch.set_num_threads(threads)


def _demo_defence(root: Path, dataset: str | None, data_dir: str | None, size: int | None,
                  no_verify: bool, db: Path, device: str, seed: int,
                  say: Callable[[str], None], show_progress: bool) -> dict[str, Any]:
    from medrobust.cli.train_denoiser import train_denoiser_and_save
    from medrobust.defences.training import DenoiserTrainConfig

    say("[2+] denoising defence: training an impulse autoencoder")
    start = time.perf_counter()
    config = DenoiserTrainConfig(seed=seed, **DEMO_TRAIN)
    trained = train_denoiser_and_save(dataset, data_dir, size, no_verify, config,
                                      root / "denoiser", device, db)
    say(f"      impulse recall {trained['val']['mask_recall']:.3f} on noisy validation images; "
        "evaluating it and the 3x3 median against the attacks, then attacking both")
    summary = run_defend(db, root / "model", [str(root / "denoiser"), "median3"],
                         adaptive=AdaptiveConfig(seed=seed, **DEMO_ADAPTIVE),
                         out=root / "defence", device=device, show_progress=show_progress)
    for s in summary["defences"]:
        rate = "-" if s["recovery_rate"] is None else f"{100 * s['recovery_rate']:.0f} %"
        cost = s["clean_accuracy_cost"]
        say(f"      {s['label']}: recovers {s['recovered']}/{s['fooled']} fooled images ({rate}), "
            f"clean accuracy cost {'-' if cost is None else f'{100 * cost:.1f}'} points")
    for a in summary["adaptive"]:
        pgd = (a.get("pgd-linf") or {}).get(f"{8 / 255:.6g}")
        ens = (a.get("ensemble-linf") or {}).get(f"{8 / 255:.6g}")
        pct = lambda v: "-" if v is None else f"{100 * v:.0f} %"  # noqa: E731
        say(f"      adaptive, {a['label']}: robust accuracy at 8/255 under PGD {pct(pgd)}, "
            f"under the ensemble {pct(ens)} (one-pixel {pct(a.get('onepixel'))}, "
            f"n = {a['images']})")
    for warning in summary["warnings"]:
        say(f"      warning: {warning}")
    say(f"      denoiser step done in {time.perf_counter() - start:.0f} s")
    return summary
