"""The reference engine: every candidate is a full forward pass of a perturbed copy."""

from __future__ import annotations

import torch

from medrobust.models.engines.base import PixelEngine, apply_pixels, full_float32


class DenseEngine(PixelEngine):
    """Plain batched forward passes; exact by construction, the baseline for faster engines.

    Forward calls always have ``rows_per_call`` rows (see ``Classifier.probabilities_tensor``), so
    a candidate's score does not depend on which other candidates share its batch.
    """

    name = "reference"

    def __init__(self, classifier, images, **_: object) -> None:
        """Options for other engines (``batch_consistent``) are accepted and ignored: this engine
        is always batch consistent."""
        super().__init__(classifier, images)

    @property
    def rows_per_call(self) -> int:
        return self.classifier.rows_per_call(self.images)

    @torch.inference_mode()
    def probabilities(self, image_index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                      colours: torch.Tensor) -> torch.Tensor:
        clf = self.classifier
        out = []
        rows = self.rows_per_call
        with full_float32(self.images.device):
            for s in range(0, image_index.shape[0], rows):
                sl = slice(s, s + rows)
                batch = apply_pixels(self.images[image_index[sl]], xs[sl], ys[sl], colours[sl])
                out.append(clf.probabilities_tensor(batch, fixed_batch=True))
        if not out:
            return torch.empty(0, clf.num_classes, device=self.images.device)
        return torch.cat(out)
