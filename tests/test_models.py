"""Model zoo, Classifier wrapper and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.errors import CheckpointError, ConfigError
from medrobust.models import Classifier, build_model, load_classifier, load_weights, save_checkpoint
from medrobust.models.layers import SamePad2d, same_padding


@pytest.mark.parametrize("name", ["smallcnn", "resnet18", "densenet121", "mitosisnet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_zoo_output_shapes(name, channels):
    model = build_model(name, channels, 2).eval()
    out = model(torch.rand(2, channels, 32, 32))
    assert out.shape == ((2, 1) if name == "mitosisnet" else (2, 2))


def test_multiclass_heads():
    assert build_model("smallcnn", 3, 5).eval()(torch.rand(1, 3, 28, 28)).shape == (1, 5)
    with pytest.raises(ConfigError):
        build_model("mitosisnet", 3, 3)
    with pytest.raises(ConfigError):
        build_model("nosuchnet", 3, 2)
    with pytest.raises(ConfigError):
        build_model("smallcnn", 3, 2, bogus=1)


def test_same_padding_matches_tensorflow_rule():
    assert same_padding(64, 3, 2) == (0, 1)  # even input, stride 2: bottom/right only
    assert same_padding(63, 3, 2) == (1, 1)
    assert same_padding(64, 3, 1) == (1, 1)
    assert same_padding(64, 1, 2) == (0, 0)
    assert SamePad2d(3, 2)(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 9, 9)


def _first_layer_reach(padding: str, x: int) -> int:
    """How many first-layer output columns a change at input column x reaches."""
    model = build_model("mitosisnet", 1, 2, padding=padding).eval()
    stem = model.stem
    base = torch.zeros(1, 1, 16, 16)
    pert = base.clone()
    pert[0, 0, 8, x] = 1.0
    with torch.no_grad():
        diff = (stem(pert) - stem(base)).abs().sum(dim=(0, 1, 2))
    return int((diff > 0).sum())


@pytest.mark.parametrize("x", [6, 7, 8, 9])
def test_mitosisnet_padding_parity(x):
    # Keras 'same' on even input: even coordinates feed two stride-2 outputs, odd ones feed one;
    # symmetric padding flips that. This is the mechanism behind the paper's checkerboard.
    even = x % 2 == 0
    assert _first_layer_reach("keras", x) == (2 if even else 1)
    assert _first_layer_reach("symmetric", x) == (1 if even else 2)


def test_classifier_inputs_and_heads():
    model = build_model("smallcnn", 3, 3).eval()
    clf = Classifier(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=("a", "b", "c"))
    u8 = np.random.default_rng(0).integers(0, 256, size=(4, 12, 12, 3), dtype=np.uint8)
    keep = u8.copy()
    p_u8 = clf.probabilities(u8)
    p_float = clf.probabilities(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
    assert np.allclose(p_u8, p_float, atol=1e-6)
    assert np.array_equal(u8, keep)
    assert np.allclose(p_u8.sum(axis=1), 1)
    assert clf.scores(u8).shape == (4, 3)
    assert clf.predict(u8[0]).shape == (1,)
    with pytest.raises(ConfigError):
        clf.probabilities(np.zeros((2, 12, 12, 1), dtype=np.uint8))
    with pytest.raises(ConfigError):
        clf.probabilities(torch.full((1, 3, 12, 12), 2.0))


def test_sigmoid_head_scores_are_p_positive():
    model = build_model("mitosisnet", 3, 2).eval()
    clf = Classifier(model, mean=[0.5] * 3, std=[0.5] * 3, class_names=("neg", "pos"),
                     head="sigmoid")
    x = np.random.default_rng(1).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        logit = model((clf.to_tensor(x) - 0.5) / 0.5).reshape(-1)
    assert np.allclose(clf.scores(x), torch.sigmoid(logit).numpy(), atol=1e-6)
    assert np.allclose(clf.probabilities(x)[:, 0], 1 - clf.scores(x), atol=1e-6)
    assert np.array_equal(clf.predict(x), (clf.scores(x) >= 0.5).astype(int))


@pytest.mark.parametrize("name,kwargs", [("smallcnn", {}), ("mitosisnet", {"padding": "keras"}),
                                         ("mitosisnet", {"padding": "symmetric"})])
def test_checkpoint_round_trip_identical(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, 3, 2, **kwargs)
    # Make batch-norm statistics non-trivial so a lost buffer would show.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    head = "sigmoid" if name == "mitosisnet" else "softmax"
    clf = Classifier(model, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25], class_names=("n", "p"),
                     head=head)
    save_checkpoint(clf, tmp_path, {"model": name, "model_kwargs": kwargs})
    again = load_classifier(tmp_path)
    x = np.random.default_rng(2).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(clf.probabilities(x), again.probabilities(x))
    assert again.head == head


def test_weights_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "code": ConfigError("x")}, path)
    with pytest.raises(CheckpointError):
        load_weights(path)
    ok = tmp_path / "ok.pt"
    torch.save({"a": torch.ones(2)}, ok)
    assert torch.equal(load_weights(ok)["a"], torch.ones(2))
    with pytest.raises(CheckpointError):
        load_classifier(tmp_path / "missing")


def test_user_model_factory(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def make(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("mynet:make", 1, 4)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ConfigError):
        build_model("mynet:absent", 1, 4)
