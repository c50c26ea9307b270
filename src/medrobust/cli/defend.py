"""``medrobust defend``: denoising defences on the one-pixel adversarial images of a store.

Evaluates each defence (a trained denoiser folder or a filter name) on the newest one-pixel run
against ``--model`` (or ``--run``), prints the table (image quality, clean / adversarial accuracy
with and without the defence, recovery rate), optionally attacks the defended model itself
(``--adaptive``) and draws the clean / attacked / denoised / difference grid (``--out``).
Everything is recorded in the store and resumes after a kill; ``campaigns.defend`` does the work.
"""

from __future__ import annotations

import click

from medrobust.campaigns.adaptive_defence import ATTACKS as ADAPTIVE_ATTACKS
from medrobust.campaigns.adaptive_defence import AdaptiveConfig
from medrobust.campaigns.defend import GRID_NAME, DefendRequest, run_defend
from medrobust.cli.common import (
    DEFAULT_STORE,
    budget_levels,
    common_options,
    emit,
    executor_options,
    option_given,
)
from medrobust.defences.registry import available_denoisers
from medrobust.defences.table import markdown
from medrobust.errors import ConfigError

#: options that only the adaptive evaluation reads
ADAPTIVE_OPTIONS = ("adaptive_limit", "linf", "l2", "pgd_steps", "onepixel_population",
                    "onepixel_generations", "attacks", "square_queries")


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
    request = DefendRequest(store_path, model_dir, tuple(split_specs(denoisers)), run_id,
                            clean_limit, config, out, device, resume=not no_resume)
    summary = run_defend(request, show_progress=not as_json, executor=executor)

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

