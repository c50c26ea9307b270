"""``medrobust certify``: certified L2 robustness of a model of any task, by the smoothing its
task names (randomized smoothing, SegCertify, median smoothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medrobust.campaigns.certify import (
    CertifySettings,
    CheckSettings,
    run_certify_campaign,
    run_crosscheck_campaign,
    run_dense_check_campaign,
)
from medrobust.cli.common import (
    DEFAULT_STORE,
    budget_levels,
    check_model_size,
    common_options,
    dataset_options,
    emit,
    executor_options,
    fmt,
    open_model_dataset,
)
from medrobust.errors import ConfigError
from medrobust.models import read_meta
from medrobust.models.loading import checkpoint_task, load_model
from medrobust.store import Store, check_store_path
from medrobust.tasks import get_task
from medrobust.utils.device import resolve_device


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Checkpoint folder.")
@dataset_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--sigma", type=float, default=0.25, show_default=True,
              help="Noise standard deviation on the [0,1] pixel scale (the model should have "
                   "been trained with this noise: train --noise-sd).")
@click.option("--n0", type=click.IntRange(1), default=100, show_default=True,
              help="Noise samples that choose the class.")
@click.option("--n", "n", type=click.IntRange(1), default=10_000, show_default=True,
              help="Noise samples that bound its probability (the largest certifiable radius "
                   "grows with n).")
@click.option("--alpha", type=float, default=0.001, show_default=True,
              help="Probability that a certificate is wrong.")
@click.option("--radii", default="0,0.25,0.5,1", show_default=True,
              help="L2 radii (on the [0,1] scale) to report certified accuracy at.")
@click.option("--denoiser", default=None,
              help="Denoised smoothing (Salman et al. 2020): this denoiser (a filter name or a "
                   "trained denoiser folder) in front of the unchanged classifier.")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Cross-check: attack the smoothed model (PGD on its noise-averaged loss) at "
                   "each positive radius; what is certified must survive the attack, and an "
                   "image certified but broken is reported as an evaluation bug.")
@click.option("--check-steps", type=click.IntRange(1), default=20, show_default=True)
@click.option("--check-samples", type=click.IntRange(1), default=16, show_default=True,
              help="Noise samples per PGD step of the cross-check.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Certify the first N images.")
@click.option("--batch-size", type=click.IntRange(1), default=200, show_default=True,
              help="Noisy copies per forward pass (CPU: 100-250 keep a small network's "
                   "activations in cache; a GPU wants thousands).")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start a new run even if one matches.")
@common_options
@executor_options
def certify(model_dir: str, dataset: str | None, data_dir: str | None, size: int | None,
            no_verify: bool, split: str, sigma: float, n0: int, n: int, alpha: float,
            radii: str, denoiser: str | None, check: bool, check_steps: int,
            check_samples: int, limit: int | None, batch_size: int,
            store_path: str, no_resume: bool, as_json: bool, seed: int, device: str,
            executor: object = None) -> None:
    """Certify a model: what no perturbation of L2 norm within each of --radii can change.

    Classifiers: randomized smoothing (Cohen, Rosenfeld & Kolter 2019), per image the smoothed
    class and its certified radius (or abstain), certified accuracy at --radii. Segmenters:
    SegCertify (Fischer et al. 2021), per pixel, certified Dice and the abstained share.
    Landmark and detection models: median smoothing (Chiang et al. 2020), certified bounds on
    each landmark's radial error and each box's IoU. Resumes from the store after a kill."""
    settings = CertifySettings(sigma=sigma, n0=n0, n=n, alpha=alpha, radii=_radii(radii),
                               batch_size=batch_size, seed=seed).validate()
    check_store_path(store_path)
    meta = read_meta(model_dir)
    check_model_size(size, meta)
    task = checkpoint_task(model_dir)
    how = get_task(task).certification
    if how is None:
        raise ConfigError(f"{model_dir} holds a {task} model, which has no certificate in this "
                          "version")
    if denoiser is not None and not get_task(task).class_logits:
        raise ConfigError(f"--denoiser (denoised smoothing) applies to classifiers; {model_dir} "
                          f"holds a {task} model")
    if check and not how.checkable:
        raise ConfigError(f"--check (the attack on the smoothed model) is built for "
                          f"classifiers; {model_dir} holds a {task} model")
    if denoiser is not None and executor is not None:
        raise ConfigError("--denoiser runs in this process: leave out --executor ray")
    model = load_model(model_dir, resolve_device(device))
    ds = open_model_dataset(meta, model, dataset, split, data_dir, size, no_verify)
    model, info = _smoothed_model(model, model_dir, meta, task, denoiser)
    indices = list(range(len(ds) if limit is None else min(limit, len(ds))))
    checking = CheckSettings(check_steps, check_samples).validate() if check else None
    with Store(store_path) as store:
        out = run_certify_campaign(store, model, info, ds, settings, indices,
                                   resume=not no_resume, show_progress=not as_json,
                                   executor=executor)
        run_check = run_crosscheck_campaign if how.check is None else run_dense_check_campaign
        crosscheck = None if checking is None else run_check(
            store, model, info, ds, settings, checking,
            store.rows(how.table, run_id=out.run_id), resume=not no_resume,
            show_progress=not as_json, certify_run=out.run_id)
    trained_sd = (meta.get("train_config") or {}).get("noise_sd")
    if info.get("denoiser") is not None:  # denoised smoothing: the denoiser meets the noise
        trained_sd = (info.get("denoiser_noise") or {}).get("sd")
    summary = {"run_id": out.run_id, "resumed": out.resumed, "certified_now": out.computed_now,
               "store": store_path, "trained_noise_sd": trained_sd,
               "denoiser": info.get("denoiser"), **out.summary,
               **({} if crosscheck is None else {"check": {"run_id": crosscheck.run_id,
                                                            **crosscheck.summary}})}

    noise_option = "noise_sd" in get_task(task).options
    emit(summary, as_json, lambda: _print(summary, how.describe(summary), check_steps,
                                          noise_option))


def _smoothed_model(model: Any, model_dir: str, meta: dict[str, Any], task: str,
                    denoiser: str | None) -> tuple[Any, dict[str, Any]]:
    """The model smoothing wraps (the denoiser in front for denoised smoothing) and its
    record for the store."""
    info: dict[str, Any] = {"dir": str(Path(model_dir).resolve()), "model": meta.get("model"),
                            "saved_at": meta.get("saved_at"), "task": task}
    if denoiser is None:
        return model, info
    from medrobust.defences.composed import DefendedClassifier
    from medrobust.defences.registry import make_denoiser
    from medrobust.defences.storage import is_denoiser_dir

    info["denoiser"] = str(Path(denoiser).resolve()) if Path(denoiser).is_dir() else denoiser
    if is_denoiser_dir(denoiser):  # what noise it learnt to remove: smoothing adds Gaussian
        config = read_meta(denoiser).get("train_config") or {}
        info["denoiser_noise"] = {"noise": config.get("noise", "impulse"),
                                  "sd": config.get("gaussian_sd")}
    return DefendedClassifier(model, make_denoiser(denoiser, model.device)), info


def _print(s: dict[str, Any], lines: list[str], check_steps: int, noise_option: bool) -> None:
    click.echo(f"{'resumed' if s['resumed'] else 'ran'} run {s['run_id']}: {s['method']}, "
               f"{s['images']} images, sigma {s['sigma']:g}, n {s['n']}, alpha {s['alpha']:g}; "
               f"abstained {fmt(s['abstain_rate'])}")
    if not s["trained_noise_sd"] and s.get("denoiser"):
        click.echo(f"  note: the denoiser was not trained for Gaussian noise; denoised "
                   f"smoothing needs one that was (train-denoiser --noise gaussian --sd "
                   f"{s['sigma']:g})")
    elif not s["trained_noise_sd"]:
        how = f" (train --noise-sd {s['sigma']:g})" if noise_option else ""
        click.echo(f"  note: the model was trained without noise; smoothing works on models "
                   f"trained with it{how}")
    for line in lines:
        click.echo(f"  {line}")
    for c in (s.get("check") or {}).get("radii", []):
        if "empirical_accuracy" in c:
            click.echo(f"  attacked (PGD-{check_steps} on the smoothed model) at L2 "
                       f"{c['radius']:g}: accuracy {fmt(c['empirical_accuracy'])} >= certified "
                       f"{fmt(c['certified_accuracy'])}; violations {c['violations']}")
        else:
            click.echo(f"  attacked (PGD-{check_steps} on the smoothed model) at L2 "
                       f"{c['radius']:g}: {s['metric']} {fmt(c['attacked'])} beside certified "
                       f"{fmt(c['certified'])}; images with violations {c['violations']}")
    if s.get("check") and not s["check"]["consistent"]:
        click.echo(f"  EVALUATION BUG: {s['check']['violations']} image(s) certified at a "
                   "radius were moved beyond their certificate within it; see "
                   "certify_check_results / certify_dense_check_results")


def _radii(text: str) -> tuple[float, ...]:
    """'0,0.25,1/2' -> (0.0, 0.25, 0.5): like the attacks' budgets, but 0 (the smoothed
    classifier's clean accuracy) is a radius too."""
    if text.strip() in ("0", "0.0"):
        return (0.0,)
    zero = any(part.strip() in ("0", "0.0") for part in text.split(","))
    rest = ",".join(p for p in text.split(",") if p.strip() not in ("0", "0.0"))
    return ((0.0,) if zero else ()) + budget_levels("--radii", rest)
