"""``medrobust evaluate --attack``: parse the protocol's options, run it, print its table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from medrobust.campaigns.attack_protocol import run_attack_protocol
from medrobust.campaigns.certify import certified_at
from medrobust.campaigns.protocol_attacks import SETTING_USERS, ProtocolSettings
from medrobust.cli.common import budget_levels, emit, fmt, open_model_dataset, refuse_unused
from medrobust.errors import ConfigError
from medrobust.models.loading import load_model
from medrobust.store import Store
from medrobust.tasks import get_task
from medrobust.utils.device import resolve_device
from medrobust.utils.markdown import markdown_table

#: ``evaluate``'s option (parameter name) -> the protocol setting it sets
SETTING_OPTIONS = {"steps": "pgd_steps", "ifgsm_steps": "ifgsm_steps", "restarts": "restarts",
                   "queries": "square_queries"}


def _either(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def protocol_settings(attacks: str, l2: str | None, linf: str | None, steps: int,
                      ifgsm_steps: int, restarts: int, queries: int, seed: int,
                      batch_images: int) -> ProtocolSettings:
    """The protocol's settings from the command line (one norm: --l2 or --linf); a setting
    given for attacks none of which reads it is refused, not ignored."""
    if l2 is not None and linf is not None:
        raise ConfigError("give --l2 or --linf, not both (one norm per protocol run)")
    names = tuple(a.strip() for a in attacks.split(",") if a.strip())
    if not names:
        raise ConfigError("--attack needs at least one attack, e.g. pgd,ifgsm")
    refuse_unused({option: (any(a in SETTING_USERS[field] for a in names),
                            f"to --attack {_either(SETTING_USERS[field])}, not {','.join(names)}")
                   for option, field in SETTING_OPTIONS.items()})
    # an empty --l2 is refused like an empty --linf, not read as 'the default budgets'
    norm, levels = ("linf", budget_levels("--linf", linf)) if linf is not None else (
        "l2", budget_levels("--l2", "0.5,1,2" if l2 is None else l2))
    return ProtocolSettings(attacks=names, norm=norm, levels=levels, pgd_steps=steps,
                            ifgsm_steps=ifgsm_steps, restarts=restarts, square_queries=queries,
                            seed=seed, batch_images=batch_images)


def run_protocol(model_dir: str, meta: dict[str, Any], dataset: str | None,
                 data_dir: str | None, size: int | None, no_verify: bool, split: str,
                 store_path: str, settings: ProtocolSettings, limit: int | None, resume: bool,
                 as_json: bool, device: str, executor: Any = None) -> None:
    task = get_task(str(meta.get("task", "classification")))
    settings.validate(task)  # before loading data or opening the store
    model = load_model(model_dir, resolve_device(device))
    ds = open_model_dataset(meta, model, dataset, split, data_dir, size, no_verify)
    if len(ds) == 0:
        raise ConfigError(f"{ds.name} {split} has no images to evaluate")
    indices = list(range(len(ds) if limit is None else min(limit, len(ds))))
    info = {"dir": str(Path(model_dir).resolve()), "model": meta.get("model"),
            "model_kwargs": meta.get("model_kwargs", {}), "saved_at": meta.get("saved_at"),
            "task": task.name}
    with Store(store_path) as store:
        out = run_attack_protocol(store, task, model, info, ds, indices, settings,
                                  resume=resume, show_progress=not as_json,
                                  executor=executor)
        certified = certified_at(store, info["dir"], {**ds.spec, "split": ds.split}) \
            if settings.norm == "l2" else {}
    summary = {"run_id": out.run_id, "resumed": out.resumed, "computed_now": out.computed_now,
               "store": store_path, **out.summary, "certified": certified}
    for cell in summary["cells"]:  # the certified bound at the same L2 radius, where one ran
        hit = (certified.get("cells") or {}).get(float(cell["eps"]))
        cell["certified"] = None if hit is None else hit["value"]

    def human() -> None:
        s = summary
        unit = f" {s['unit']}" if s["unit"] else ""
        better = "higher" if s["higher_is_better"] else "lower"
        click.echo(f"{task.name} on {s['images']} {ds.name} {split} images: clean {s['metric']} "
                   f"{fmt(s['clean'])}{unit} ({better} is better)")
        cert = s["certified"]
        rows = [(c["attack"], c["budget"], fmt(c["attacked"]), c["run_id"]) for c in s["cells"]]
        head, align = ["attack", "budget", s["metric"], "run"], ["l", "l", "r", "r"]
        if cert:  # a certificate beside the attack: the smoothed model's lower bound
            rows = [(*r, fmt(c["certified"])) for r, c in zip(rows, s["cells"], strict=True)]
            head, align = [*head, f"certified (run {cert['run']})"], [*align, "r"]
        click.echo(markdown_table(head, rows, align))
        for name, value in s["average_by_attack"].items():
            click.echo(f"average under {name}: {fmt(value)}{unit}")
        click.echo(f"average attacked {s['metric']}: {fmt(s['average_attacked'])}{unit} "
                   f"(run {s['run_id']} in {store_path})")
        if cert:
            click.echo(f"certified: {cert['metric']} of the model smoothed at sigma "
                       f"{cert['sigma']:g} that no L2 perturbation within the budget can "
                       f"change (a lower bound, with probability 1 - alpha per image; "
                       f"certify run {cert['run']})")

    emit(summary, as_json, human)
