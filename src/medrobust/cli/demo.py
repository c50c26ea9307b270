"""``medrobust demo``: the main job end to end — train, attack, analyse, report (the work is
``campaigns.demo``'s)."""

from __future__ import annotations

import click

from medrobust.campaigns.demo import DemoRequest, run_demo
from medrobust.cli.common import common_options, data_request, dataset_options, emit


@click.command()
@dataset_options()
@click.option("--out", type=click.Path(file_okay=False), default="medrobust-demo",
              show_default=True, help="Folder for the model, store, analysis and report.")
@click.option("--model", "model_name", default="smallcnn", show_default=True)
@click.option("--epochs", type=int, default=None, help="Default: 6 (synthetic) or 12.")
@click.option("--limit", type=int, default=16, show_default=True, help="Test images attacked.")
@click.option("--population", type=int, default=400, show_default=True)
@click.option("--generations", type=int, default=100, show_default=True)
@click.option("--width", type=int, default=None, hidden=True,
              help="smallcnn width (tests: a tiny model).")
@click.option("--skip-defence", is_flag=True, hidden=True,
              help="Leave out the denoiser step (tests: a demo in seconds).")
@common_options
def demo(dataset: str | None, data_dir: str | None, size: int | None, no_verify: bool, out: str,
         model_name: str, epochs: int | None, limit: int, population: int, generations: int,
         width: int | None, skip_defence: bool, as_json: bool, seed: int, device: str) -> None:
    """Train on the embedded synthetic default (or --dataset), attack, analyse, write a report.

    Rerunning the same command into the same --out resumes: a finished training is reused (its
    checkpoint, so every later run keeps its fingerprint and resumes), finished items are not
    recomputed, and the report shows each run once.
    """
    from medrobust.report import build_report

    request = DemoRequest(data_request(dataset, data_dir, size, no_verify),
                          out, model_name, epochs, width, limit, population, generations,
                          defence=not skip_defence, seed=seed, device=device)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    summary = run_demo(request, write_report=build_report, say=say, show_progress=not as_json)
    emit(summary, as_json, lambda: click.echo(f"report: {summary['report']}"))
