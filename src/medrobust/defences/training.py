"""Training the impulse autoencoder on clean images with impulse noise added on the fly.

Every batch draws fresh noise (pixel-level impulses of random, black/white and extreme colours,
plus a share of textbook channel-wise salt-and-pepper) at a density swept log-uniformly over
``densities``, so the network sees both the lone impulse of a one-pixel attack and crowded noise.
The loss has two parts: binary cross-entropy of the impulse mask against the locations the noise
really changed (this is what keeps clean pixels untouched; ``pos_weight`` > 1 trades a few
false alarms for faster learning on tiny data) and the L1 error of the output against
the clean image (this teaches the replacement colour). Large images train on random crops
(``patch``), which the fully convolutional network allows and which makes CPU training affordable.
Selection keeps the epoch with the lowest validation error on a fixed, seeded noisy set.

``noise="gaussian"`` trains the same network for denoised smoothing (Salman et al., NeurIPS
2020) instead: Gaussian noise of standard deviation ``gaussian_sd`` on every pixel, unclipped
(randomized smoothing adds it unclipped), every pixel marked as changed, so the mask learns to
replace everything and the output learns the clean image (the L1 term). That is Salman et
al.'s reconstruction objective (``objective="mse"``, their name for it; the loss here is the
mask and L1 terms above, unchanged), and the denoiser stays independent of any classifier.

Their classifier-aware *stability* objective (``objective="stability"``) instead trains the
denoiser D for one frozen classifier f: minimise CE(f(D(x + delta)), argmax f(x)) over the same
Gaussian delta. The target is f's own prediction on the clean image (no labels needed), so D
learns to hand f images it decides as it decides the clean one, which is exactly what the
smoothed classifier needs; a reconstruction that looks close in MSE can still move f's decision
(measured on PneumoniaMNIST: the MSE-trained DAE left the smoothed SmallCNN one class for every
image). ``objective="mse+stability"`` sums both (``_loss``). The classifier is loaded with its
own normalisation inside its wrapper, frozen (eval mode, no gradients to its weights), and fed
float [0,1] images. Those objectives train on whole images (the classifier judges the size it
was trained at, so ``patch`` does not apply) and keep the epoch whose denoised noisy
validation images the classifier agrees with its clean predictions on most. Stability alone,
from this network's near-identity start, can fall into one output image whose class matches
the classifier's prior (PneumoniaMNIST, sigma 0.25: agreement 0.74 = the pneumonia share, from
epoch 1); the reconstruction term of "mse+stability" prevents that at sigma 0.25 (agreement
0.91) but not at 0.5. Salman et al.'s own recipe avoids it: start from a trained MSE denoiser
(``init``, a denoiser folder) and fine-tune it with stability (PneumoniaMNIST, sigma 0.5:
agreement 0.83-0.88 over 4 epochs, where the MSE denoiser leaves 0.71; certified accuracy in
benchmarks/results/certify_denoised.md).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.base import ImageDataset
from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.defences.noise import mixed_impulse
from medrobust.errors import ConfigError
from medrobust.models.classifier import Classifier
from medrobust.training.loop import Judgement, check_fit_settings, fit
from medrobust.utils.seeding import numpy_rng, seed_everything
from medrobust.utils.validation import check_range

#: the noises a denoiser can be trained for
NOISES = ("impulse", "gaussian")
#: what the denoiser is trained for (Salman et al.'s names): reconstruction, the frozen
#: classifier's agreement with its clean prediction, or both summed
OBJECTIVES = ("mse", "stability", "mse+stability")
#: AdamW weight decay of the denoiser (light: the autoencoder is small and must stay near identity)
WEIGHT_DECAY = 1e-5


@dataclass
class DenoiserTrainConfig:
    """Hyper-parameters; the defaults train in a few CPU minutes on MedMNIST-sized data."""

    width: int = 16
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    densities: tuple[float, float] = (0.001, 0.05)
    channel_share: float = 0.1
    clean_share: float = 0.1
    patch: int | None = 32
    max_train: int | None = None
    val_images: int = 256
    mask_weight: float = 1.0
    pos_weight: float = 1.0
    seed: int = 0
    #: "impulse" (the one-pixel defence) or "gaussian" (denoised smoothing)
    noise: str = "impulse"
    gaussian_sd: float = 0.25
    #: "mse" (reconstruction), "stability" or "mse+stability" (Salman et al.'s classifier-aware
    #: objectives, which need ``classifier``)
    objective: str = "mse"
    #: the classifier checkpoint folder the stability objectives train against (as given)
    classifier: str | Path | None = None
    #: a trained denoiser folder to start from instead of the near-identity network (Salman et
    #: al.'s warm start: fine-tune an MSE-trained denoiser with stability)
    init: str | Path | None = None

    @property
    def classifier_aware(self) -> bool:
        """Whether the objective trains against ``classifier`` (stability, alone or summed)."""
        return self.objective != "mse"

    def validate(self) -> None:
        check_range("width", self.width, 2)
        check_fit_settings(self.epochs, self.batch_size, self.lr, WEIGHT_DECAY)
        check_range("channel_share", self.channel_share, 0, 1)
        check_range("clean_share", self.clean_share, 0, 1)
        check_range("val_images", self.val_images, 1)
        check_range("mask_weight", self.mask_weight, 0)
        check_range("pos_weight", self.pos_weight, 0, low_inclusive=False)
        if self.noise not in NOISES:
            raise ConfigError(f"--noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        check_range("gaussian_sd", self.gaussian_sd, 0, low_inclusive=False)
        self._validate_objective()
        if self.init is not None and str(self.init) == "":
            raise ConfigError("--init needs a trained denoiser folder to start from")
        if self.patch is not None:
            check_range("patch", self.patch, 4)
        if self.max_train is not None:
            check_range("max_train", self.max_train, 1)
        lo, hi = self.densities
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"densities must satisfy 0 < low <= high <= 1, got {self.densities}")

    def _validate_objective(self) -> None:
        """The objective, and the classifier exactly when it needs one. Stability is refused
        for impulse noise: it is Salman et al.'s objective for denoised smoothing, whose noise
        is Gaussian, while the impulse defence must learn where impulses are (its mask) and
        stay independent of the classifier ``defend`` puts it in front of."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, "
                              f"got {self.objective!r}")
        given = self.classifier is not None and str(self.classifier) != ""
        if not self.classifier_aware:
            if given:
                raise ConfigError("--classifier is the classifier the stability objective trains "
                                  "against: it needs --objective stability or mse+stability")
            return
        if not given:
            raise ConfigError(f"--objective {self.objective} needs --classifier DIRECTORY: the "
                              "frozen classifier whose clean predictions the denoiser learns "
                              "to keep")
        if self.noise != "gaussian":
            raise ConfigError(f"--objective {self.objective} trains a denoiser for denoised "
                              "smoothing, whose noise is Gaussian: add --noise gaussian (the "
                              "impulse defence learns where impulses are, for any classifier)")


@dataclass
class DenoiserTrainResult:
    model: ImpulseAutoencoder
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    seconds: float


def _crop_flip(x: np.ndarray, patch: int | None, rng: np.random.Generator) -> np.ndarray:
    """Random crops of side ``patch`` (when the images are larger) and random flips, (N,H,W,C)."""
    n, h, w, _ = x.shape
    if patch is not None and (h > patch or w > patch):
        ph, pw = min(patch, h), min(patch, w)
        tops = rng.integers(0, h - ph + 1, size=n)
        lefts = rng.integers(0, w - pw + 1, size=n)
        x = np.stack([x[i, t:t + ph, s:s + pw] for i, (t, s) in enumerate(zip(tops, lefts, strict=True))])
    flips = rng.random((n, 2)) < 0.5
    out = x.copy()
    out[flips[:, 0]] = out[flips[:, 0], :, ::-1]
    out[flips[:, 1]] = out[flips[:, 1], ::-1, :]
    return out


def noisy_batch(clean: np.ndarray, config: DenoiserTrainConfig, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy float32 images and their changed-location masks; ``clean_share`` stay clean."""
    if config.noise == "gaussian":
        noisy, mask = gaussian_noise(clean, config.gaussian_sd, seed)
    else:
        noisy, mask = mixed_impulse(clean, config.densities, seed=seed,
                                    channel_share=config.channel_share)
    keep = numpy_rng(seed, 1).random(clean.shape[0]) < config.clean_share
    base = clean.astype(np.float32) / 255.0 if clean.dtype == np.uint8 else clean.astype(np.float32)
    noisy[keep] = base[keep]
    mask[keep] = False
    return noisy, mask


def gaussian_noise(clean: np.ndarray, sd: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` (uint8 or [0,1]) plus unclipped N(0, sd^2) noise, and an all-changed mask."""
    base = clean.astype(np.float32) / 255.0 if clean.dtype == np.uint8 else clean.astype(np.float32)
    noise = numpy_rng(seed, 2).standard_normal(base.shape).astype(np.float32)
    return base + np.float32(sd) * noise, np.ones(base.shape[:3], dtype=bool)


def _to_t(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().to(device)


def frozen_classifier(classifier: Classifier, device: torch.device | str | None = None
                      ) -> Classifier:
    """``classifier`` in eval mode with no gradient to its weights, on ``device`` (None: where
    it is); a copy when it is not already so (the caller's model is never changed). The
    stability loss still sends gradients through it, to the denoiser."""
    device = classifier.device if device is None else torch.device(device)
    if (not classifier.training and classifier.device == device
            and not any(p.requires_grad for p in classifier.parameters())):
        return classifier
    out = copy.deepcopy(classifier)
    out.requires_grad_(False)
    return out.to(device).eval()


def load_frozen_classifier(ckpt_dir: str | Path, device: torch.device | str = "cpu"
                           ) -> Classifier:
    """The classifier a stability objective trains against, by the project's safe loader
    (safetensors and JSON, never a pickle), frozen."""
    from medrobust.models.checkpoint import load_classifier

    return frozen_classifier(load_classifier(ckpt_dir, device))


def _log_probs(classifier: Classifier, logits: torch.Tensor) -> torch.Tensor:
    """(N,K) log class probabilities for either head (sigmoid: [log(1-p), log p], stably)."""
    if classifier.head == "sigmoid":
        z = logits.reshape(-1)
        return torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)
    return F.log_softmax(logits, dim=1)


def stability_loss(classifier: Classifier, denoised: torch.Tensor, clean: torch.Tensor
                   ) -> torch.Tensor:
    """Salman et al.'s stability loss: CE(f(D(x + delta)), argmax f(x)), the target being the
    classifier's prediction on the clean image (no labels). Gradients reach ``denoised`` only
    (the classifier is frozen, its clean pass needs none)."""
    with torch.no_grad():
        target = _log_probs(classifier, classifier(clean)).argmax(dim=1)
    return F.nll_loss(_log_probs(classifier, classifier(denoised)), target)


def _loss(model: ImpulseAutoencoder, noisy: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor,
          mask_weight: float, pos_weight: float, objective: str = "mse",
          classifier: Classifier | None = None) -> torch.Tensor:
    """The batch loss of ``objective``. "mse": mask BCE plus 10 x L1 to the clean image (the
    reconstruction). "stability": ``stability_loss`` alone. "mse+stability": their plain sum:
    reconstruction keeps the output an image near the clean one (the denoiser cannot please
    the classifier with patterns far from any real image, and the mask opens from the first
    steps), while stability fixes what reconstruction misses, the classifier's decision. An
    unweighted sum adds no hyper-parameter to tune per dataset. (Salman et al.'s "Stab+MSE"
    instead fine-tunes an MSE-trained denoiser with stability alone.)"""
    logits, replacement = model.heads(noisy)
    m = torch.sigmoid(logits)
    out = noisy + m * (replacement - noisy)
    if objective == "stability":
        assert classifier is not None
        return stability_loss(classifier, out, clean)
    bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=torch.tensor(pos_weight))
    loss = mask_weight * bce + 10.0 * (out - clean).abs().mean()
    if objective == "mse+stability":
        assert classifier is not None
        loss = loss + stability_loss(classifier, out, clean)
    return loss


@torch.no_grad()
def _agreement(classifier: Classifier, noisy: torch.Tensor, denoised: torch.Tensor,
               clean: torch.Tensor, batch: int) -> dict[str, float]:
    """The share of images the classifier decides as on the clean image: bare on the noisy
    ones (before) and on the denoised ones (after), the stability objectives' judgement."""
    def preds(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([_log_probs(classifier, classifier(x[s:s + batch])).argmax(dim=1)
                          for s in range(0, x.shape[0], batch)])

    target = preds(clean)
    return {"agreement_before": float((preds(noisy) == target).float().mean()),
            "agreement_after": float((preds(denoised) == target).float().mean())}


@torch.no_grad()
def _validate(model: ImpulseAutoencoder, noisy: torch.Tensor, clean: torch.Tensor,
              mask: torch.Tensor, batch: int, classifier: Classifier | None = None
              ) -> dict[str, float]:
    model.eval()
    outs, ms = [], []
    for s in range(0, noisy.shape[0], batch):
        logits, rep = model.heads(noisy[s:s + batch])
        m = torch.sigmoid(logits)
        outs.append(noisy[s:s + batch] + m * (rep - noisy[s:s + batch]))
        ms.append(m)
    out, m = torch.cat(outs), torch.cat(ms)
    clean_out = torch.cat([model(clean[s:s + batch]) for s in range(0, clean.shape[0], batch)])
    hit = m > 0.5
    tp = float((hit & (mask > 0.5)).sum())
    metrics = {"noisy_mse_before": float(((noisy - clean) ** 2).mean()),
               "noisy_mse_after": float(((out - clean) ** 2).mean()),
               "clean_mse_after": float(((clean_out - clean) ** 2).mean()),
               "mask_recall": tp / max(float((mask > 0.5).sum()), 1.0),
               "mask_precision": tp / max(float(hit.sum()), 1.0)}
    if classifier is not None:
        metrics.update(_agreement(classifier, noisy, out, clean, batch))
    return metrics


def start_weights(config: DenoiserTrainConfig, channels: int,
                  init: ImpulseAutoencoder | None = None) -> dict[str, torch.Tensor] | None:
    """The weights a run starts from: ``init`` (already loaded) or the denoiser saved in
    ``config.init``, checked to be the network this run trains (None: no warm start)."""
    if config.init is None:
        return None
    if init is None:
        from medrobust.defences.storage import load_autoencoder

        init, _ = load_autoencoder(config.init)
    want = ImpulseAutoencoder(channels, config.width)
    if init.cue != want.cue:
        raise ConfigError(f"--init {config.init} is an autoencoder from before the "
                          "neighbour-median cue; train a new one to start from")
    if init.config() != want.config():
        raise ConfigError(f"--init {config.init} holds a width-{init.width} autoencoder for "
                          f"{init.channels} channel(s); this run trains width {config.width} "
                          f"for {channels} (set --width {init.width})")
    return {k: v.detach().clone() for k, v in init.state_dict().items()}


def train_denoiser(train: ImageDataset, val: ImageDataset, config: DenoiserTrainConfig,
                   device: torch.device | str = "cpu", classifier: Classifier | None = None,
                   init: ImpulseAutoencoder | None = None) -> DenoiserTrainResult:
    """Train an ``ImpulseAutoencoder`` for ``train``'s channel count; deterministic per seed.

    The stability objectives train against ``classifier`` (already loaded, e.g. to check it
    before a run is recorded; a frozen copy is used) or, when None, the one loaded from
    ``config.classifier``. With ``config.init`` training starts from that denoiser's weights
    (``init``: that denoiser already loaded; it is not changed)."""
    config.validate()
    if train.channels != val.channels:
        raise ConfigError("train and validation splits differ in channels")
    device = torch.device(device)
    clf = None
    if config.classifier_aware:
        clf = (load_frozen_classifier(config.classifier, device) if classifier is None
               else frozen_classifier(classifier, device))
        if clf.channels != train.channels:
            raise ConfigError(f"the classifier {config.classifier} takes {clf.channels} "
                              f"channel(s), the data has {train.channels}")
    start = start_weights(config, train.channels, init)  # before seeding: it builds networks
    seed_everything(config.seed)
    # the classifier judges whole images, the size it was trained at
    patch = None if config.classifier_aware else config.patch
    model = ImpulseAutoencoder(train.channels, config.width)
    if start is not None:
        model.load_state_dict(start)
    model = model.to(device)
    rng = numpy_rng(config.seed, 7)
    images = train.images
    if config.max_train is not None and len(images) > config.max_train:
        images = images[np.sort(rng.choice(len(images), config.max_train, replace=False))]
    val_idx = np.sort(numpy_rng(config.seed, 8).permutation(len(val))[:config.val_images])
    val_clean = val.images[val_idx]
    val_noisy, val_mask = noisy_batch(val_clean, config, seed=config.seed + 10_007)
    vn, vc = _to_t(val_noisy, device), _to_t(val_clean.astype(np.float32) / 255.0, device)
    vm = torch.from_numpy(val_mask[:, None].astype(np.float32)).to(device)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        clean = _crop_flip(images[idx], patch, rng)
        noisy, mask = noisy_batch(clean, config, seed=int(rng.integers(0, 2**31)))
        return _loss(model, _to_t(noisy, device), _to_t(clean.astype(np.float32) / 255.0, device),
                     torch.from_numpy(mask[:, None].astype(np.float32)).to(device),
                     config.mask_weight, config.pos_weight, config.objective, clf)

    def judge() -> Judgement:
        metrics = _validate(model, vn, vc, vm, config.batch_size, clf)
        # lower is better: impulses left in noisy images plus damage done to clean ones (a
        # Gaussian denoiser only ever sees noisy images: its error on them alone)
        damage = 0.0 if config.noise == "gaussian" else metrics["clean_mse_after"]
        key = (-(metrics["noisy_mse_after"] + damage),)
        postfix = {"val_mse": f"{metrics['noisy_mse_after']:.2e}",
                   "recall": f"{metrics['mask_recall']:.2f}"}
        if clf is not None:
            # stability: the epoch the classifier agrees with most (its clean predictions on
            # the denoised noisy images), the reconstruction error breaking ties
            key = (metrics["agreement_after"], *key)
            postfix = {"agree": f"{metrics['agreement_after']:.3f}", **postfix}
        return Judgement(metrics, key, metrics, postfix)

    done = fit(model, model, len(images), epochs=config.epochs, batch_size=config.batch_size,
               lr=config.lr, weight_decay=WEIGHT_DECAY, shuffle=rng.permutation, batch_loss=batch_loss,
               judge=judge, desc="train denoiser")
    return DenoiserTrainResult(model, done.history, done.best_epoch, done.best_metrics,
                               done.seconds)


def config_dict(config: DenoiserTrainConfig) -> dict[str, Any]:
    """JSON-able config (tuples as lists), for metadata and run parameters."""
    out = asdict(config)
    out["densities"] = list(config.densities)
    if config.noise == "impulse":  # impulse denoisers keep the records (and runs) they had
        out.pop("noise")
        out.pop("gaussian_sd")
    if config.classifier_aware:
        out["classifier"] = str(config.classifier)
    else:  # so do reconstruction-trained ones
        out.pop("objective")
        out.pop("classifier")
    if config.init is None:  # and those trained from scratch
        out.pop("init")
    else:
        out["init"] = str(config.init)
    return out
