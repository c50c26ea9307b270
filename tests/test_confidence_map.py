"""The fast (cone) engine is exact, and confidence maps answer the one-pixel question exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.analysis.confidence_map import ConfidenceMap, colour_grid, colour_levels, confidence_map
from medrobust.models import Classifier, build_model
from medrobust.models.engines import ConeEngine, DenseEngine
from medrobust.models.engines import cone as cone_module

ZOO = [("smallcnn", {}, 3, 32), ("smallcnn", {}, 1, 28), ("mitosisnet", {"padding": "keras"}, 3, 32),
       ("mitosisnet", {"padding": "symmetric"}, 3, 32), ("resnet18", {}, 1, 20),
       ("densenet121", {}, 3, 32)]


def _classifier(name: str, kwargs: dict, channels: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = build_model(name, channels, 2, **kwargs)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(6, channels, 32, 32))
    head = "sigmoid" if name == "mitosisnet" else "softmax"
    return Classifier(model, mean=[0.4] * channels, std=[0.3] * channels,
                      class_names=("n", "p"), head=head, batch_size=64)


def _candidates(size: int, channels: int, m: int, images: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images, (m,), generator=g)
    xs = torch.randint(0, size, (m, 1), generator=g)
    ys = torch.randint(0, size, (m, 1), generator=g)
    corners = torch.tensor([[0, 0], [0, size - 1], [size - 1, 0], [size - 1, size - 1]])
    xs[:4, 0], ys[:4, 0] = corners[:, 0], corners[:, 1]
    return idx, xs, ys, torch.rand(m, 1, channels, generator=g)


@pytest.mark.parametrize("name,kwargs,channels,size", ZOO)
def test_fast_engine_matches_reference_on_zoo(name, kwargs, channels, size):
    clf = _classifier(name, kwargs, channels)
    images = torch.rand(2, channels, size, size)
    fast, ref = ConeEngine(clf, images, chunk=40), DenseEngine(clf, images)
    assert fast.fallback_reason is None and fast.dense_layers == []
    cand = _candidates(size, channels, 30 if name == "densenet121" else 100, 2)
    diff = (fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()
    assert float(diff) < 1e-5
    # the confidence-map path: every row of a chunk at one pixel (an edge one, odd and even)
    for x, y in ((size - 1, 1), (2, size // 2)):
        m = 24
        same = (torch.ones(m, dtype=torch.long), torch.full((m, 1), x), torch.full((m, 1), y),
                cand[3][:m])
        diff = (fast.probabilities(*same) - ref.probabilities(*same)).abs().max()
        assert float(diff) < 1e-5


class _Odd(nn.Module):
    """Random weights and layers the zoo does not use: dilation, groups, asymmetric stride,
    average pooling with padding, concatenation, a constant bias map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=(2, 1), padding=2, dilation=2)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.c = nn.Conv2d(16, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = torch.relu(self.a(x))
        y = torch.cat([a, torch.tanh(self.b(a))], dim=1)
        y = self.c(self.pool(y)) * 2.0
        return self.head(y.mean(dim=(2, 3)))


def test_fast_engine_matches_reference_on_random_layers():
    torch.manual_seed(3)
    clf = Classifier(_Odd().eval(), mean=[0.5] * 3, std=[0.5] * 3, class_names=("a", "b", "c"))
    images = torch.rand(2, 3, 17, 20)
    fast, ref = ConeEngine(clf, images), DenseEngine(clf, images)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 2, (80,), generator=g)
    xs, ys = torch.randint(0, 20, (80, 1), generator=g), torch.randint(0, 17, (80, 1), generator=g)
    cols = torch.rand(80, 1, 3, generator=g)
    assert float((fast.probabilities(idx, xs, ys, cols) - ref.probabilities(idx, xs, ys, cols))
                 .abs().max()) < 1e-5


def test_untraceable_model_falls_back_and_says_so():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return x.mean(dim=(2, 3))[:, :2]
            return x.amax(dim=(2, 3))[:, :2]

    clf = Classifier(DataDependent(), mean=[0.0] * 3, std=[1.0] * 3, class_names=("a", "b"))
    images = torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="falls back"):
        fast = ConeEngine(clf, images)
    assert fast.fallback_reason
    cand = _candidates(8, 3, 10, 1)
    assert torch.allclose(fast.probabilities(*cand), DenseEngine(clf, images).probabilities(*cand))


def test_colour_grid():
    assert colour_levels(5)[-1] == 255 and len(colour_levels(5)) == 52
    assert colour_levels(51) == [0, 51, 102, 153, 204, 255]
    assert colour_levels(100) == [0, 100, 200, 255]
    assert colour_grid(5, 3).shape == (140_608, 3)
    assert colour_grid(5, 1).shape == (52, 1)
    import itertools  # the order maps' argmin/argmax indices have always used

    for step, c in ((5, 3), (100, 2), (51, 1)):
        expected = np.array(list(itertools.product(colour_levels(step), repeat=c)), np.uint8)
        assert np.array_equal(colour_grid(step, c), expected)


@pytest.mark.parametrize("name,kwargs,channels", [("smallcnn", {}, 3),
                                                   ("mitosisnet", {"padding": "keras"}, 3),
                                                   ("smallcnn", {}, 1)])
def test_fast_and_reference_maps_agree_in_every_cell(name, kwargs, channels, tmp_path):
    clf = _classifier(name, kwargs, channels, seed=5)
    image = np.random.default_rng(0).integers(0, 256, (10, 10, channels), dtype=np.uint8)
    fast = confidence_map(clf, image, 1, step=128, engine="fast")
    ref = confidence_map(clf, image, 1, step=128, engine="reference")
    for field in ("min", "max", "mean"):
        assert np.abs(getattr(fast, field) - getattr(ref, field)).max() < 1e-5
    assert np.array_equal(fast.success, ref.success)
    # the map is what brute force says: re-score the argmin colour at one pixel by hand
    y, x = 5, 7
    adv = image.copy()
    adv[y, x] = fast.argmin_colour[y, x]
    score = clf.probabilities(adv)[0, 1]
    assert score == pytest.approx(fast.min[y, x], abs=1e-5)
    again = ConfidenceMap.load(fast.save(tmp_path / "m.npz"))
    assert np.array_equal(again.min, fast.min) and again.step == 128


def test_map_verdict_agrees_with_exhaustive_search(bright_pixel_classifier):
    clf = bright_pixel_classifier
    dark = np.full((6, 6, 3), 20, dtype=np.uint8)
    cmap = confidence_map(clf, dark, 0, step=51)
    # any pixel turned bright red makes the image positive: every pixel is a successful attack
    assert not cmap.robust and cmap.success.all()
    assert cmap.best_attack()["colour"][0] == 255
    assert "36 of 36 pixels can fool it" in repr(cmap) and "array" not in repr(cmap)
    bright = dark.copy()
    bright[1:5, 1:5, 0] = 255
    robust = confidence_map(clf, bright, 1, step=51)
    assert robust.robust and robust.best_attack() is None
    assert not robust.strongest_change()["success"] and "robust on this grid" in repr(robust)


def test_partial_map_resumes_from_checkpoint(tmp_path, monkeypatch):
    clf = _classifier("smallcnn", {}, 1, seed=2)
    image = np.random.default_rng(1).integers(0, 256, (6, 6, 1), dtype=np.uint8)
    ckpt = tmp_path / "partial.npz"
    first = confidence_map(clf, image, 0, step=51, pixels=[(0, 0), (1, 0)], checkpoint=ckpt)
    assert first.passes == 2 * 6
    full = confidence_map(clf, image, 0, step=51, checkpoint=ckpt)
    assert full.passes == (36 - 2) * 6  # the two checkpointed pixels are not recomputed
    assert not np.isnan(full.min).any()
    assert np.allclose(full.min, confidence_map(clf, image, 0, step=51).min, atol=1e-6)


def test_packed_and_per_pixel_map_paths_agree(monkeypatch):
    """Small grids share engine calls between pixels; the per-pixel path must give the same map."""
    import medrobust.analysis.confidence_map as cm

    clf = _classifier("mitosisnet", {"padding": "keras"}, 3, seed=2)
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    packed = confidence_map(clf, image, 1, step=128)  # 27 colours: 18 pixels per call
    monkeypatch.setattr(cm, "PACK_BELOW", 0)
    single = confidence_map(clf, image, 1, step=128)
    for field in ("min", "max", "mean"):
        assert np.abs(getattr(packed, field) - getattr(single, field)).max() < 1e-5
    assert np.array_equal(packed.success, single.success)
    assert not np.isnan(packed.min).any()


@pytest.mark.parametrize("delta_area", [0.0, 100.0])
def test_both_convolution_paths_are_exact_with_groups_and_dilation(monkeypatch, delta_area):
    """Stride-1 convolutions of the change computed over the output window (0.0) or scattered
    from the input window (100.0: every one, grouped and dilated included) agree with full
    passes, for mixed and same-pixel chunks."""
    import medrobust.models.engines.cone_plan as cone_plan

    monkeypatch.setattr(cone_plan, "DELTA_AREA", delta_area)
    torch.manual_seed(4)
    clf = Classifier(_Odd().eval(), mean=[0.5] * 3, std=[0.5] * 3, class_names=("a", "b", "c"))
    images = torch.rand(2, 3, 17, 20)
    fast, ref = ConeEngine(clf, images), DenseEngine(clf, images)
    assert any(getattr(k, "transposed", False) for k in fast.plan.values()) == (delta_area > 1)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 2, (60,), generator=g)
    xs, ys = torch.randint(0, 20, (60, 1), generator=g), torch.randint(0, 17, (60, 1), generator=g)
    cols = torch.rand(60, 1, 3, generator=g)
    same = (torch.zeros(60, dtype=torch.long), torch.full((60, 1), 19), torch.full((60, 1), 0), cols)
    for cand in ((idx, xs, ys, cols), same):
        assert float((fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()) < 1e-5


def test_engine_plans_afresh_when_the_weights_change():
    """Traced graphs and plans are reused across engines, but never for changed weights: the
    plan folds batch norm into convolution weights, so a stale one would score wrongly."""
    clf = _classifier("mitosisnet", {"padding": "keras"}, 3, seed=6)
    images = torch.rand(1, 3, 16, 16)
    cand = _candidates(16, 3, 40, 1)
    first = ConeEngine(clf, images)
    assert ConeEngine(clf, images).plan is first.plan  # reused for the same weights
    with torch.no_grad():
        clf.model.stem[1].weight.mul_(1.5)  # in place, as an optimiser step would
        clf.model.stem[2].running_var.add_(0.5)  # a folded batch norm
    again = ConeEngine(clf, images)
    assert again.plan is not first.plan
    diff = (again.probabilities(*cand) - DenseEngine(clf, images).probabilities(*cand)).abs()
    assert float(diff.max()) < 1e-5


# ------------------------------------------------------------------------- GPU code paths on CPU
@pytest.fixture
def gpu_style(monkeypatch):
    """The engine's GPU paths (NCHW maps, every convolution direct) on CPU tensors, with an
    empty plan cache so no CPU-style plan is reused."""
    import weakref

    from medrobust.models.engines import cone as cone_module
    from medrobust.models.engines import windows

    monkeypatch.setattr(windows, "gpu_style", lambda device: True)
    monkeypatch.setattr(cone_module, "_COMPILED", weakref.WeakKeyDictionary())


@pytest.mark.parametrize("name,kwargs,channels,size", ZOO[:4])
def test_gpu_paths_are_exact_on_the_zoo(gpu_style, name, kwargs, channels, size):
    """The layout and convolution choices a GPU makes are exact too (checked here on CPU
    tensors, so CI holds them without a GPU): mixed and same-pixel calls against full passes."""
    clf = _classifier(name, kwargs, channels)
    images = torch.rand(2, channels, size, size)
    fast, ref = ConeEngine(clf, images, chunk=40), DenseEngine(clf, images)
    assert fast.fallback_reason is None
    assert not any(getattr(k, "transposed", False) for k in fast.plan.values())
    assert not fast.clean["x"].is_contiguous(memory_format=torch.channels_last) or channels == 1
    cand = _candidates(size, channels, 100, 2)
    assert float((fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()) < 1e-5
    for x, y in ((size - 1, 1), (2, size // 2), (0, 0)):
        same = (torch.ones(24, dtype=torch.long), torch.full((24, 1), x), torch.full((24, 1), y),
                cand[3][:24])
        assert float((fast.probabilities(*same) - ref.probabilities(*same)).abs().max()) < 1e-5


def test_gpu_paths_are_exact_with_groups_and_dilation(gpu_style):
    torch.manual_seed(4)
    clf = Classifier(_Odd().eval(), mean=[0.5] * 3, std=[0.5] * 3, class_names=("a", "b", "c"))
    images = torch.rand(2, 3, 17, 20)
    fast, ref = ConeEngine(clf, images), DenseEngine(clf, images)
    g = torch.Generator().manual_seed(1)
    cols = torch.rand(60, 1, 3, generator=g)
    mixed = (torch.randint(0, 2, (60,), generator=g), torch.randint(0, 20, (60, 1), generator=g),
             torch.randint(0, 17, (60, 1), generator=g), cols)
    same = (torch.zeros(60, dtype=torch.long), torch.full((60, 1), 19), torch.full((60, 1), 0), cols)
    for cand in (mixed, same):
        assert float((fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()) < 1e-5


def test_gpu_rows_fill_the_window_budget():
    """On a GPU a call's rows are sized by the largest window: for SmallCNN at 64x64 that is the
    last convolution's 128 channels on a 6x6 window of the 16x16 map."""
    from medrobust.models.engines import cone as cone_module

    clf = _classifier("smallcnn", {}, 3)
    engine = ConeEngine(clf, torch.rand(1, 3, 64, 64))
    assert engine.chunk == 256  # a CPU keeps its cache-sized calls
    assert engine._gpu_rows() == cone_module.GPU_WINDOW_VALUES // (128 * 6 * 6)


def test_engines_score_in_full_float32_and_restore_the_settings():
    """cuDNN's TF32 default would round a GPU's scores to ~1e-3; the engines switch it off while
    they score and put the user's setting back (flags only: no GPU needed)."""
    from medrobust.models.engines.base import _float32_switches, full_float32

    switches = _float32_switches()
    before = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, value in switches:  # the opposite of full float32
            setattr(obj, name, "tf32" if isinstance(value, str) else True)
        with full_float32(torch.device("cuda")):
            assert [getattr(o, n) for o, n, _ in switches] == [v for _, _, v in switches]
        assert [getattr(o, n) for o, n, _ in switches] == [
            "tf32" if isinstance(v, str) else True for _, _, v in switches]
        with full_float32(torch.device("cpu")):  # nothing to switch on a CPU
            assert [getattr(o, n) for o, n, _ in switches] == [
                "tf32" if isinstance(v, str) else True for _, _, v in switches]
    finally:
        for (obj, name, _), value in zip(switches, before, strict=True):
            setattr(obj, name, value)


def test_a_call_out_of_gpu_memory_is_retried_with_fewer_rows(monkeypatch):
    """A GPU call too big for the card's memory halves the rows per call and goes on, with the
    same scores; it must not send the engine to the (much slower) reference for good."""
    clf = _classifier("smallcnn", {}, 3)
    images = torch.rand(1, 3, 16, 16)
    engine = ConeEngine(clf, images, chunk=256)
    cand = (torch.zeros(200, dtype=torch.long), torch.full((200, 1), 5), torch.full((200, 1), 7),
            torch.rand(200, 1, 3, generator=torch.Generator().manual_seed(2)))
    expected = engine.probabilities(*cand)
    real = engine._probabilities
    calls = []

    def small_card(img, *rest):
        calls.append(int(img.shape[0]))
        if img.shape[0] > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(img, *rest)

    monkeypatch.setattr(engine, "_probabilities", small_card)
    monkeypatch.setattr(cone_module, "GPU_ROWS", (16, 2**18))
    got = engine.probabilities(*cand)
    assert engine.fallback_reason is None and engine.chunk == 64
    assert calls[:3] == [200, 128, 64] and max(calls[3:]) == 64
    assert float((got - expected).abs().max()) < 1e-6
