"""``DefendedClassifier``: the denoiser then the classifier, as one ``Classifier``.

Built as a ``Classifier`` subclass so every attack and evaluation that takes a classifier (the
one-pixel attack, PGD, accuracy) works on the defended model unchanged: that is what an adaptive
attacker does, attack the whole pipeline rather than the bare classifier. The classifier's network
and normalisation are shared, not copied.
"""

from __future__ import annotations

import torch

from medrobust.defences.base import Denoiser
from medrobust.errors import ConfigError
from medrobust.models.classifier import Classifier


class DefendedClassifier(Classifier):
    """``forward(x) = classifier.forward(denoiser(x))`` for float [0,1] (N,C,H,W) ``x``.

    Gradients flow through a differentiable denoiser (the autoencoder) and through the identity
    (BPDA) for NumPy filters.
    """

    def __init__(self, classifier: Classifier, denoiser: Denoiser,
                 batch_size: int | None = None) -> None:
        if denoiser.channels is not None and denoiser.channels != classifier.channels:
            raise ConfigError(f"denoiser {denoiser.name} is for {denoiser.channels} channel(s), "
                              f"the model takes {classifier.channels}")
        super().__init__(classifier.model, mean=classifier.mean.flatten().tolist(),
                         std=classifier.std.flatten().tolist(),
                         class_names=classifier.class_names, head=classifier.head,
                         batch_size=batch_size or classifier.batch_size, device=classifier.device)
        self.denoiser = denoiser
        self.defence = denoiser.module().to(classifier.device)
        self.defence.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.defence(x))
