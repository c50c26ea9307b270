"""``PixelModel``: the one pixel-space model base every task's wrapper stands on.

Attacks, defences and metrics hand every model float [0,1] (N,C,H,W) images, or uint8/NumPy
images through ``to_tensor``; the normalisation a network was trained with lives here as buffers
(saved with the weights), never in an attack. A classifier, a segmenter, a landmark model and a
detector differ only in what their outputs mean (``task``) and how they are decoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.models.pixels import pixel_tensor


class PixelModel(nn.Module):
    """A network with its input normalisation, device and batched no-grad inference.

    Subclasses set ``task`` and define ``forward`` (differentiable, float [0,1] in) and their
    decoders; ``checkpoint_meta`` lists what a checkpoint must hold to rebuild them.
    """

    task: ClassVar[str] = "pixel"

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        mean_l, std_l = [float(v) for v in mean], [float(v) for v in std]
        if not mean_l or len(mean_l) != len(std_l):
            raise ConfigError(f"mean and std need one value per channel, got {len(mean_l)} and "
                              f"{len(std_l)}")
        if not all(math.isfinite(v) and v > 0 for v in std_l):
            raise ConfigError(f"std must be positive (it divides the input), got {std_l}")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.to(device)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: (x - mean) / std per channel."""
        return (x - self.mean) / self.std

    def to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Pixel-space images (uint8 0..255 or float [0,1]; NumPy (N,H,W,C), torch (N,C,H,W))
        to a new float [0,1] (N,C,H,W) tensor on this device; never aliases the input."""
        return pixel_tensor(images, self.channels, self.device)

    @torch.inference_mode()
    def batched(self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor, rows: int) -> list[Any]:
        """``fn`` over ``x`` in chunks of ``rows`` images, in eval mode and without gradients
        (inference on thousands of images must not hold a graph or a whole batch at once)."""
        was = self.training
        self.eval()
        try:
            return [fn(x[i:i + rows].to(self.device)) for i in range(0, x.shape[0], rows)]
        finally:
            self.train(was)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The fields a checkpoint needs to rebuild this wrapper (the network's name and
        options are the caller's: they come from the factory that built it)."""
        return {"task": self.task, "channels": self.channels,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
