"""Campaigns that survive every way of stopping, and stores/checkpoints that cannot mislead.

Partial confidence maps resume only for the same model and image; SIGTERM is handled like Ctrl-C;
a second process on a live run is refused; every map run ends marked; the demo is idempotent;
corrupt stores give one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.analysis.confidence_map import confidence_map
from medrobust.models import Classifier, build_model


def _clf(seed: int) -> Classifier:
    torch.manual_seed(seed)
    model = build_model("smallcnn", 1, 2, width=8)
    return Classifier(model, mean=[0.4], std=[0.3], class_names=("n", "p"), batch_size=64)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, 6, 1), dtype=np.uint8)


# -- partial confidence maps --------------------------------------------------------------------

def test_partial_map_of_another_model_is_not_resumed(tmp_path):
    ckpt = tmp_path / "partial.npz"
    confidence_map(_clf(1), _image(0), 0, step=51, pixels=[(0, 0), (1, 0)], checkpoint=ckpt)
    other = _clf(2)
    with pytest.warns(UserWarning, match="another model, image or grid"):
        resumed = confidence_map(other, _image(0), 0, step=51, checkpoint=ckpt)
    fresh = confidence_map(other, _image(0), 0, step=51)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, fresh.min)
    np.testing.assert_array_equal(resumed.max, fresh.max)


def test_partial_map_after_in_place_weight_change_is_not_resumed(tmp_path):
    """Weights changed through ``.data`` (no version bump) or a buffer change a checkpoint too."""
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
    next(clf.model.parameters()).data.mul_(3)
    with pytest.warns(UserWarning, match="another model"):
        resumed = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, confidence_map(clf, _image(0), 0, step=51).min)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
    clf.std.data.add_(0.5)  # a buffer, not a parameter
    with pytest.warns(UserWarning, match="another model"):
        assert confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt).passes == 36 * 6


def test_partial_map_of_another_image_is_not_resumed(tmp_path):
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0), (1, 0)], checkpoint=ckpt)
    with pytest.warns(UserWarning, match="another model, image or grid"):
        resumed = confidence_map(clf, _image(5), 0, step=51, checkpoint=ckpt)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, confidence_map(clf, _image(5), 0, step=51).min)


def _write_wrong_shapes(path):
    z = {k: np.zeros((2, 2)) for k in ("min", "max", "mean", "success", "done")}
    np.savez(path, argmin=np.zeros((2, 2, 1), np.uint8), argmax=np.zeros((2, 2, 1), np.uint8),
             key=np.array("x"), **z)


@pytest.mark.parametrize("corrupt", ["random", "text", "truncated", "keys", "shapes"])
def test_corrupt_partial_map_warns_and_starts_afresh(tmp_path, corrupt):
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    if corrupt == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(500))
    elif corrupt == "text":
        ckpt.write_text("not a map\n")
    elif corrupt == "truncated":
        confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif corrupt == "keys":
        np.savez(ckpt, something=np.zeros(3))
    else:
        _write_wrong_shapes(ckpt)
    with pytest.warns(UserWarning, match="partial map .* starting this map afresh"):
        cmap = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert cmap.passes == 36 * 6
    np.testing.assert_array_equal(cmap.min, confidence_map(clf, _image(0), 0, step=51).min)
    # the file was overwritten with a good checkpoint: the next run resumes it silently
    again = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert again.passes == 0
