"""The small base every attack shares: a model, validated parameters, a seed, ``atk(x, y)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.models.pixels import pixel_tensor
from medrobust.utils.progress import progress as progress_bar_on_stderr
from medrobust.utils.progress import progress_enabled


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a parameter-free module."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def as_image_batch(x: Any, device: torch.device) -> torch.Tensor:
    """A new float32 [0,1] (N,C,H,W) tensor on ``device`` from pixel-space images: a torch
    tensor (N,C,H,W) or a NumPy array (N,H,W,C) like the datasets, uint8 or float [0,1]."""
    if isinstance(x, np.ndarray):
        if x.ndim != 4:
            raise ConfigError(f"NumPy images must be (N,H,W,C), got shape {x.shape}")
        return pixel_tensor(x, int(x.shape[-1]), device)
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"images must be a torch tensor (N,C,H,W) or a NumPy array (N,H,W,C), "
                          f"not {type(x).__name__}")
    if x.ndim != 4:
        raise ConfigError(f"images must be (N,C,H,W), got shape {tuple(x.shape)}")
    return pixel_tensor(x.detach(), int(x.shape[1]), device)


def output_device(images: Any, fallback: torch.device) -> torch.device:
    """Results go back to the device of the images given (NumPy: ``fallback``)."""
    return images.device if isinstance(images, torch.Tensor) else fallback


@dataclass
class LabelledBatch:
    """A classifier attack's checked inputs: the device, float [0,1] images, (N,) long labels,
    one random-stream key per image and the per-image budget."""

    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    keys: list[int]
    eps: torch.Tensor


@dataclass
class TargetBatch:
    """An attack's checked inputs on any task: the device, float [0,1] images, one target per
    image (a tensor, or a list when ragged) and one random-stream key per image, and the
    per-image budget."""

    device: torch.device
    x: torch.Tensor
    targets: torch.Tensor | list[Any]
    keys: list[int]
    eps: torch.Tensor


def as_targets(labels: Any, device: torch.device) -> torch.Tensor | list[Any]:
    """One target per image: a tensor when they stack, else the list as given. Ragged targets
    (a detector's (boxes, labels) per image) are a list of tuples; they are sliced per batch like
    a tensor (``take_targets``) and handed to the loss as they are."""
    if isinstance(labels, list) and labels and isinstance(labels[0], (tuple, dict)):
        return labels
    return torch.as_tensor(labels).to(device)


def take_targets(targets: torch.Tensor | list[Any], idx: torch.Tensor
                 ) -> torch.Tensor | list[Any]:
    """The targets of images ``idx``: a tensor indexed, or ragged per-image targets picked from
    their list."""
    if isinstance(targets, torch.Tensor):
        return targets[idx.to(targets.device)]
    return [targets[i] for i in idx.tolist()]


class AttackProgress:
    """A progress bar counted in images, advanced in fractions of an image as an attack's
    iterations run (a bar that moves every step has a steady ETA; one per image does not).

    Each batch ``settle``s to its full share when it ends, so images that stop early (early
    stop, success, a restart that is not needed) still bring the bar to 100 %. When the bar is
    off every call is a no-op; it is a context manager and closes itself.
    """

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self._shown = 0.0  # what the bar shows (tqdm does not count while disabled)
        self._owed = 0.0  # the shares of the batches finished so far

    def advance(self, images: float) -> None:
        """Count ``images`` (a fraction: the share of one iteration) as done; a negative
        count takes shares back (the one-pixel attack swaps an image's generation shares for
        one whole image when it finishes)."""
        if images:
            self._shown += images
            self.bar.update(images)

    def settle(self, images: float) -> None:
        """The batch that just ended held ``images`` images: show all of them as done."""
        self._owed += images
        rest = self._owed - self._shown
        if rest > 1e-9:
            self.advance(rest)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> AttackProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (NumPy's included), else ConfigError: a string such as
    "false" is truthy, so it is refused rather than read as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class Attack(ABC):
    """An attack on a model in pixel space (a ``Classifier``, or any network mapping float [0,1]
    (N,C,H,W) images to outputs, such as a segmentation net).

    Call it like torchattacks: ``PGD(model, eps=8/255)(images, labels)`` returns an
    ``AttackResult``. Subclasses validate their parameters in ``__init__`` (so a bad value fails
    before any work), expose them through ``params()`` for provenance, and never mutate the
    images they are given.

    ``progress=True`` shows a tqdm bar on stderr while ``run`` works (counted in images,
    advanced every iteration or generation); the default is off, so scripts and campaigns
    (which draw their own bars) stay quiet, and ``MEDROBUST_QUIET`` silences it as it silences
    the CLI's bars. It changes nothing else, so it is not among ``params()`` (what the store
    records and a run's fingerprint hashes), only among ``get_params()``.
    """

    name: str = "attack"
    #: class default, for subclasses that do not call ``Attack.__init__``
    progress: bool = False

    def __init__(self, model: nn.Module, seed: int = 0, progress: bool = False) -> None:
        self.model = model
        self.seed = int(seed)
        self.progress = check_flag("progress", progress)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The attack's settings, JSON-able, as recorded in the store."""

    def get_params(self) -> dict[str, Any]:
        """scikit-learn's name for ``params()``, plus the display-only ``progress``."""
        return {**self.params(), "progress": self.progress}

    def progress_bar(self, images: int, desc: str | None = None, *,
                     show: bool = False) -> AttackProgress:
        """A bar over ``images`` images, on stderr when ``progress`` (or ``show``, a ``run``
        option of some attacks) is set and progress is not silenced; else a silent one."""
        on = (self.progress or show) and progress_enabled()
        label = desc or getattr(self, "label", None) or self.name
        return AttackProgress(progress_bar_on_stderr(
            total=images, desc=str(label), unit="img", unit_scale=True, disable=not on))

    @abstractmethod
    def run(self, images: Any, labels: Any, **kwargs: Any) -> AttackResult:
        """Attack a batch (pixel-space images; labels, masks, landmarks or targets)."""

    def __call__(self, images: Any, labels: Any, **kwargs: Any) -> AttackResult:
        return self.run(images, labels, **kwargs)

    def check_images(self, shape: Sequence[int]) -> None:
        """Refuse a budget no image of ``shape`` (C,H,W) can have, before a campaign opens a
        run: only L2 needs the shape (Linf is checked on construction). Attacks without an
        ``eps`` budget, or with another rule, override it."""
        from medrobust.attacks.projection import check_budget

        norm, eps = getattr(self, "norm", None), getattr(self, "eps", None)
        if norm == "l2" and eps is not None:
            check_budget("eps", eps, "l2", shape=tuple(shape))

    def labelled_batch(self, images: Any, labels: Any, keys: Sequence[int] | None,
                       extra: dict[str, Any]) -> LabelledBatch:
        """``target_batch`` for a classifier attack: the labels as one (N,) long tensor."""
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor)
                            else labels).long().reshape(-1)
        b = self.target_batch(images, y, keys, extra)
        return LabelledBatch(b.device, b.x, b.targets, b.keys, b.eps)

    def target_batch(self, images: Any, labels: Any, keys: Sequence[int] | None,
                     extra: dict[str, Any]) -> TargetBatch:
        """The checks every attack on a task's targets makes before any work (``labelled_batch``
        for targets of any kind): no unknown options, one target and one key per image, the
        budget ``self.eps`` within the image range; keys default to 0..N-1."""
        from medrobust.attacks.projection import per_sample

        if extra:
            raise ConfigError(f"{type(self).__name__}.run got unknown options: "
                              f"{', '.join(sorted(extra))}")
        device = model_device(self.model)
        x = as_image_batch(images, device)
        n = x.shape[0]
        targets = as_targets(labels, device)
        if len(targets) != n:
            raise ConfigError(f"{n} images but {len(targets)} labels/targets")
        keys = list(range(n)) if keys is None else [int(k) for k in keys]
        if len(keys) != n:
            raise ConfigError(f"{n} images but {len(keys)} keys")
        self.check_images(x.shape[1:])
        return TargetBatch(device, x, targets, keys, per_sample(self.eps, n, device, "eps"))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"
