"""``medrobust map``: exhaustive one-pixel confidence maps (min / max / mean score per pixel)."""

from __future__ import annotations

import click

from medrobust.campaigns.confidence_map import MAP_TABLE, run_map_campaign
from medrobust.cli.common import (
    DEFAULT_STORE,
    common_options,
    dataset_options,
    emit,
    executor_options,
    fmt,
    open_dataset,
)
from medrobust.errors import ConfigError
from medrobust.models import load_classifier, read_meta
from medrobust.store import Store
from medrobust.utils.device import resolve_device
from medrobust.utils.validation import check_range


@click.command(name="map")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Checkpoint folder.")
@dataset_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--index", "indices", type=int, multiple=True,
              help="Image index in the split (repeatable).")
@click.option("--limit", type=int, default=None, help="Map the first N images instead.")
@click.option("--colour-step", "--step", "step", type=int, default=5, show_default=True,
              help="Colour grid step per channel (5 = the paper's 52 levels; 255 is included). "
                   "--step, its old name, still works; attack's --step is PGD's step size.")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast",
              show_default=True, help="fast = exact receptive-field cone engine.")
@click.option("--score-class", type=int, default=None,
              help="Class whose probability is mapped (default: the true class).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the .npz maps and figures.")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--tile-pixels", type=click.IntRange(1), default=None,
              help="Ray: pixels per job (rounded up to the engine's packing groups; default "
                   "256). Smaller tiles spread one image over more workers.")
@common_options
@executor_options
def map_command(model_dir: str, dataset: str | None, data_dir: str | None, size: int | None,
                no_verify: bool, split: str, indices: tuple[int, ...], limit: int | None,
                step: int, engine: str, score_class: int | None, out: str, store_path: str,
                tile_pixels: int | None, as_json: bool, seed: int, device: str,
                executor: object = None) -> None:
    """Score every pixel x every grid colour; save min/max/mean maps, figures and the verdict."""
    # Every option is checked before anything is loaded or recorded: a bad option is one line
    # and never a failed run in the store.
    if limit is not None and indices:
        raise ConfigError("--limit and --index cannot be used together (--index picks the images, "
                          "--limit maps the first N)")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if tile_pixels is not None and executor is None:
        raise ConfigError("--tile-pixels splits maps across Ray workers: add --executor ray")
    check_range("--colour-step", step, 1, 255)
    meta = read_meta(model_dir)
    clf = load_classifier(model_dir, resolve_device(device))
    if score_class is not None and clf.head == "softmax" and not (
            0 <= score_class < clf.num_classes):
        raise ConfigError(f"--score-class must lie in 0..{clf.num_classes - 1}, got {score_class}")
    ds = open_dataset(dataset, split, data_dir, size, no_verify, meta.get("dataset"))
    if len(ds) == 0:
        raise ConfigError(f"{ds.name} {split} has no images to map")
    chosen = list(indices) if indices else list(range(min(limit or 1, len(ds))))
    bad = [i for i in chosen if not 0 <= i < len(ds)]
    if bad:
        raise ConfigError(f"--index {bad[0]} is outside the {len(ds)} images of {ds.name} {split} "
                          f"(valid: 0..{len(ds) - 1})")
    with Store(store_path) as store:
        outcome = run_map_campaign(store, clf, model_dir, ds, chosen, out, step=step,
                                   engine=engine, score_class=score_class,
                                   show_progress=not as_json, executor=executor,
                                   tile_pixels=tile_pixels)
        rows = store.rows(MAP_TABLE, run_id=outcome.run_id)
    summary = {"run_id": outcome.run_id, "maps": rows}

    def human() -> None:
        for r in rows:
            verdict = "robust on this grid" if r["robust"] else (
                f"broken at x={r['best_x']}, y={r['best_y']} by {r['best_colour']} "
                f"({r['score_name']} {fmt(r['clean_score'], 4)} -> {fmt(r['best_score'], 4)})")
            (ee, eo), (oe, oo) = r["parity_min"]["top_table"]
            click.echo(f"#{r['dataset_index']}: {verdict}; most harmful "
                       f"{r['parity_min']['top_k']} pixels by X/Y parity ee/eo/oe/oo "
                       f"{ee}/{eo}/{oe}/{oo}; "
                       f"{r['passes'] / max(r['seconds'], 1e-9):,.0f} passes/s -> {r['npz']}")

    emit(summary, as_json, human)
