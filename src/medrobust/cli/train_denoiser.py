"""``medrobust train-denoiser``: train the denoising autoencoder on a dataset and save it, for
impulse noise (the one-pixel defence) or Gaussian noise (denoised smoothing, by reconstruction or
by Salman et al.'s stability objective against a frozen classifier); ``campaigns.defend`` does
the work."""

from __future__ import annotations

import click

from medrobust.campaigns.defend import DenoiserRequest, train_denoiser_and_save
from medrobust.cli.common import (
    DEFAULT_STORE,
    common_options,
    data_request,
    dataset_options,
    emit,
    fmt,
    option_given,
)
from medrobust.defences.training import DenoiserTrainConfig
from medrobust.errors import ConfigError


@click.command("train-denoiser")
@dataset_options(required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder to write the denoiser to.")
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--width", type=int, default=16, show_default=True, help="Feature channels.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--density-min", type=float, default=0.001, show_default=True,
              help="Lowest impulse density (share of pixels).")
@click.option("--density-max", type=float, default=0.05, show_default=True,
              help="Highest impulse density.")
@click.option("--channel-share", type=float, default=0.1, show_default=True,
              help="Share of images with channel-wise salt-and-pepper instead of pixel impulses.")
@click.option("--clean-share", type=float, default=None,
              help="Share of training images left clean [default: 0.1 for impulse noise, 0 for "
                   "Gaussian: smoothing never shows the denoiser a clean image].")
@click.option("--noise", type=click.Choice(["impulse", "gaussian"]), default="impulse",
              show_default=True,
              help="impulse: the one-pixel defence; gaussian: denoised smoothing (certify "
                   "--denoiser), trained at --sd.")
@click.option("--sd", "gaussian_sd", type=float, default=0.25, show_default=True,
              help="Gaussian noise standard deviation on the [0,1] scale (certify's --sigma).")
@click.option("--objective", type=click.Choice(["mse", "stability", "mse+stability"]),
              default="mse", show_default=True,
              help="mse: reconstruct the clean image; stability: make --classifier decide the "
                   "denoised noisy image as the clean one (Salman et al. 2020; --noise "
                   "gaussian); mse+stability: both losses summed. Stability from scratch can "
                   "collapse to one output image (PneumoniaMNIST): start it from an MSE-trained "
                   "denoiser (--init).")
@click.option("--classifier", "classifier", type=click.Path(), default=None,
              help="Classifier checkpoint folder the stability objectives train against "
                   "(frozen; its predictions on clean images are the targets).")
@click.option("--init", "init", type=click.Path(), default=None,
              help="Start from this trained denoiser folder (Salman et al.'s warm start: "
                   "fine-tune an MSE-trained one with --objective stability).")
@click.option("--patch", type=int, default=32, show_default=True,
              help="Train on random crops of this side (0: whole images).")
@click.option("--max-train", type=int, default=None, help="Use at most N training images.")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@common_options
def train_denoiser_cmd(dataset: str, data_dir: str | None, size: int | None, no_verify: bool,
                       out: str, epochs: int, width: int, batch_size: int, lr: float,
                       density_min: float, density_max: float, channel_share: float,
                       clean_share: float | None, noise: str, gaussian_sd: float,
                       objective: str, classifier: str | None, init: str | None, patch: int,
                       max_train: int | None, store_path: str, as_json: bool, seed: int,
                       device: str) -> None:
    """Train a denoising autoencoder on impulse or Gaussian noise (safetensors + JSON)."""
    impulse_only = [f"--{n.replace('_', '-')}" for n in ("density_min", "density_max",
                                                         "channel_share") if option_given(n)]
    if noise == "gaussian" and impulse_only:
        raise ConfigError(f"{impulse_only[0]} shapes impulse noise: it does not apply to "
                          "--noise gaussian")
    if noise == "impulse" and option_given("gaussian_sd"):
        raise ConfigError("--sd is the Gaussian noise of --noise gaussian")
    if objective != "mse" and patch and option_given("patch"):
        raise ConfigError(f"--patch trains on crops; --objective {objective} trains on whole "
                          "images, the size the classifier judges")
    if clean_share is None:
        clean_share = 0.0 if noise == "gaussian" else 0.1
    config = DenoiserTrainConfig(width=width, epochs=epochs, batch_size=batch_size, lr=lr,
                                 densities=(density_min, density_max), channel_share=channel_share,
                                 clean_share=clean_share, patch=patch or None, max_train=max_train,
                                 seed=seed, noise=noise, gaussian_sd=gaussian_sd,
                                 objective=objective, classifier=classifier, init=init)
    request = DenoiserRequest(data_request(dataset, data_dir, size, no_verify), config, out,
                              store_path, device)
    summary = train_denoiser_and_save(request)

    def human() -> None:
        v = summary["val"]
        click.echo(f"trained denoiser in {summary['train_seconds']:.0f}s (best epoch "
                   f"{summary['best_epoch']}) -> {summary['denoiser']}")
        line = (f"validation MSE noisy {fmt(v['noisy_mse_before'], 6)} -> denoised "
                f"{fmt(v['noisy_mse_after'], 6)}; clean images changed by MSE "
                f"{fmt(v['clean_mse_after'], 7)}")
        if noise == "impulse":
            line += (f"; impulse recall {fmt(v['mask_recall'])}, precision "
                     f"{fmt(v['mask_precision'])}")
        click.echo(line)
        if "agreement_after" in v:
            click.echo(f"classifier agrees with its clean prediction on {fmt(v['agreement_after'])}"
                       f" of denoised noisy images ({fmt(v['agreement_before'])} undenoised)")

    emit(summary, as_json, human)
