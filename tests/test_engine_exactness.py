"""The cone engine cannot be silently wrong: batch-invariant, never stale, self-checked.

Each test here failed on the engine as it was before issue 11: clean activations that depended on
the batch (CPU kernel choice), a plan cache keyed on tensor versions, a planner that read ``y + y``
as arithmetic with a constant, and a fallback that covered tracing errors only.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from medrobust.attacks import OnePixel
from medrobust.models import Classifier, build_model
from medrobust.models.engines import ConeEngine, DenseEngine
from medrobust.models.engines import cone as cone_module


def _classifier(model: nn.Module, channels: int = 3, head: str = "softmax") -> Classifier:
    return Classifier(model.eval(), mean=[0.4] * channels, std=[0.3] * channels,
                      class_names=("n", "p"), head=head, batch_size=64)


def _zoo(name: str = "smallcnn", channels: int = 3, seed: int = 0, **kwargs) -> Classifier:
    torch.manual_seed(seed)
    model = build_model(name, channels, 2, **kwargs)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.rand(6, channels, 28, 28))
    return _classifier(model, channels, "sigmoid" if name == "mitosisnet" else "softmax")


def _candidates(b: int, h: int, w: int, c: int, m: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, b, (m,), generator=g), torch.randint(0, w, (m, 1), generator=g),
            torch.randint(0, h, (m, 1), generator=g), torch.rand(m, 1, c, generator=g))


# ---------------------------------------------------------------------------- batch invariance
@pytest.mark.parametrize("name,size,kwargs", [("smallcnn", 28, {"width": 16}),
                                              ("smallcnn", 16, {"width": 8}),
                                              ("mitosisnet", 32, {"padding": "keras"})])
def test_clean_activations_do_not_depend_on_the_batch(name, size, kwargs):
    """Convolution kernels are chosen by batch size (native for one image, oneDNN for more on
    many CPUs) and round differently; each image's cached activations must be the same bits
    whichever batch it came in."""
    clf = _zoo(name, **kwargs)
    images = torch.rand(10, 3, size, size, generator=torch.Generator().manual_seed(5))
    batch = ConeEngine(clf, images, batch_consistent=True)
    for i in (0, 3, 9):
        alone = ConeEngine(clf, images[i:i + 1], batch_consistent=True)
        for key, value in alone.clean.items():
            if isinstance(value, torch.Tensor) and value.dim() and key in batch.clean \
                    and batch.clean[key].shape[0] == 10:
                assert torch.equal(batch.clean[key][i:i + 1], value), f"{key} of image {i}"


def test_scores_alone_and_in_batch_are_bit_identical():
    clf = _zoo("smallcnn", width=16)
    images = torch.rand(10, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    batch = ConeEngine(clf, images, batch_consistent=True)
    idx, xs, ys, cols = _candidates(10, 28, 28, 3, m=300)
    in_batch = batch.probabilities(idx, xs, ys, cols)
    for i in (0, 7):
        rows = idx == i
        alone = ConeEngine(clf, images[i:i + 1], batch_consistent=True)
        got = alone.probabilities(torch.zeros(int(rows.sum()), dtype=torch.long), xs[rows],
                                  ys[rows], cols[rows])
        assert torch.equal(got, in_batch[rows])


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_attack_alone_equals_attack_in_batch_for_a_wide_model(engine):
    """The issue's failing case, on a model wide enough that batch kernels differ here too."""
    clf = _zoo("smallcnn", width=16)
    g = torch.Generator().manual_seed(7)
    images = (torch.rand(8, 28, 28, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    labels = clf.predict(images)
    attack = OnePixel(clf, population=24, generations=3, engine=engine, seed=3)
    batch = attack(images, labels).records
    for i in (0, 5, 7):
        alone = attack(images[i:i + 1], labels[i:i + 1]).records[0]
        assert alone.to_row() | {"seconds": 0} == batch[i].to_row() | {"seconds": 0}


# ---------------------------------------------------------------------------- stale plans
@pytest.mark.parametrize("change", ["conv_data", "bn_var_data", "bn_mean_data", "replace_module"])
def test_fast_engine_is_exact_after_any_weight_change(change):
    clf = _zoo("smallcnn")
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(8))
    cand = _candidates(2, 28, 28, 3)
    ConeEngine(clf, images)  # plan and cache
    convs = [m for m in clf.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in clf.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        if change == "conv_data":
            convs[0].weight.data.mul_(3)  # .data: no version bump
        elif change == "bn_var_data":
            bns[0].running_var.data.add_(0.5)
        elif change == "bn_mean_data":
            bns[-1].running_mean.data.sub_(0.2)
        else:
            parent = next(m for m in clf.modules() if convs[1] in m.children())
            name = next(n for n, m in parent.named_children() if m is convs[1])
            fresh = nn.Conv2d(convs[1].in_channels, convs[1].out_channels,
                              convs[1].kernel_size, convs[1].stride, convs[1].padding)
            setattr(parent, name, fresh)
    fast, ref = ConeEngine(clf, images), DenseEngine(clf, images)
    assert fast.fallback_reason is None  # planned afresh, not rescued by the self-check
    assert float((fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()) < 1e-5


def test_plan_is_reused_while_the_weights_are_unchanged():
    clf = _zoo("smallcnn")
    images = torch.rand(2, 3, 28, 28)
    first = ConeEngine(clf, images)
    assert ConeEngine(clf, images).plan is first.plan
    with torch.no_grad():
        next(clf.parameters()).data[0] += 1e-3
    assert ConeEngine(clf, images).plan is not first.plan


# ---------------------------------------------------------------------------- self-arithmetic
class _SelfArithmetic(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = self.conv1(x)
        if self.op == "add":
            y = torch.relu(y + y)
        elif self.op == "sub":
            y = torch.relu(y - y + self.conv2(y))
        elif self.op == "mul":
            y = torch.relu(y * y)
        else:  # y * y, then a residual sum with itself through a convolution
            z = self.conv2(y)
            y = torch.relu(z * z + z)
        return self.head(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "mixed"])
def test_self_arithmetic_is_exact(op):
    torch.manual_seed(0)
    clf = _classifier(_SelfArithmetic(op))
    images = torch.rand(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact without falling back
        fast = ConeEngine(clf, images)
    ref = DenseEngine(clf, images)
    for batch_consistent in (False, True):
        fast = ConeEngine(clf, images, batch_consistent=batch_consistent)
        cand = _candidates(2, 12, 12, 3)
        assert float((fast.probabilities(*cand) - ref.probabilities(*cand)).abs().max()) < 1e-5
        same = (torch.zeros(16, dtype=torch.long), torch.full((16, 1), 11),
                torch.full((16, 1), 4), cand[3][:16])
        assert float((fast.probabilities(*same) - ref.probabilities(*same)).abs().max()) < 1e-5


# ---------------------------------------------------------------------------- fallbacks
class _Plain(nn.Module):
    """A plain traceable network; the tests below break the engine around it on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_self_check_falls_back_when_fast_and_reference_disagree(monkeypatch):
    torch.manual_seed(0)
    clf = _classifier(_Plain())
    images = torch.rand(2, 3, 10, 10)
    real_plan = cone_module.ConePlanner.plan

    def wrong_plan(self):  # a planner bug: the convolution's weights are folded twice
        plan = real_plan(self)
        for kind in plan.values():
            if getattr(kind, "rule", None) == "conv":
                kind.weight = kind.weight * 1.5
                kind.weight_t = None if kind.weight_t is None else kind.weight_t * 1.5
        return plan

    monkeypatch.setattr(cone_module.ConePlanner, "plan", wrong_plan)
    cone_module._COMPILED.clear()
    with pytest.warns(UserWarning, match="self-check"):
        fast = ConeEngine(clf, images)
    assert fast.used == "reference" and "self-check" in fast.describe()
    cand = _candidates(2, 10, 10, 3)
    assert torch.equal(fast.probabilities(*cand), DenseEngine(clf, images).probabilities(*cand))
    cone_module._COMPILED.clear()


def test_planner_errors_fall_back_and_say_so(monkeypatch):
    torch.manual_seed(0)
    clf = _classifier(_Plain())
    images = torch.rand(1, 3, 10, 10)

    def broken(self):
        raise KeyError("planner gap")

    monkeypatch.setattr(cone_module.ConePlanner, "plan", broken)
    cone_module._COMPILED.clear()
    with pytest.warns(UserWarning, match="cannot plan"):
        fast = ConeEngine(clf, images)
    assert fast.used == "reference" and "planner gap" in fast.fallback_reason
    cone_module._COMPILED.clear()


def test_runtime_errors_fall_back_to_the_reference(monkeypatch):
    torch.manual_seed(0)
    clf = _classifier(_Plain())
    images = torch.rand(1, 3, 10, 10)
    fast = ConeEngine(clf, images)
    assert fast.used == "fast"

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(fast, "_probabilities", broken)
    cand = _candidates(1, 10, 10, 3)
    with pytest.warns(UserWarning, match="kernel exploded"):
        got = fast.probabilities(*cand)
    assert torch.equal(got, DenseEngine(clf, images).probabilities(*cand))
    assert fast.used == "reference"


def test_onepixel_reports_the_engine_that_ran(monkeypatch):
    clf = _zoo("smallcnn")
    images = (torch.rand(2, 28, 28, 3) * 255).to(torch.uint8).numpy()
    attack = OnePixel(clf, population=8, generations=1, seed=0)
    attack(images, clf.predict(images))
    assert attack.engines_used == {"fast"}

    def broken(self):
        raise KeyError("planner gap")

    monkeypatch.setattr(cone_module.ConePlanner, "plan", broken)
    cone_module._COMPILED.clear()
    with pytest.warns(UserWarning):
        attack(images, clf.predict(images))
    assert len(attack.engines_used) == 1
    assert next(iter(attack.engines_used)).startswith("reference (fast engine fell back")
    cone_module._COMPILED.clear()


def test_onepixel_refuses_more_pixels_than_the_image_has():
    from medrobust.errors import ConfigError

    clf = _zoo("smallcnn")
    images = (torch.rand(1, 28, 28, 3) * 255).to(torch.uint8).numpy()
    with pytest.raises(ConfigError, match="28x28"):
        OnePixel(clf, pixels=1000, population=8, generations=1)(images, [0])


def test_self_check_runs_once_per_plan_and_call_path(monkeypatch):
    """A map of a few pixels must not pay a dense batch per engine build."""
    clf = _zoo("smallcnn")
    images = torch.rand(1, 3, 28, 28)
    cone_module._COMPILED.clear()
    calls = []
    real = ConeEngine._self_check

    def counting(self, path):
        calls.append(path)
        return real(self, path)

    monkeypatch.setattr(ConeEngine, "_self_check", counting)
    ConeEngine(clf, images, batch_consistent=True)
    assert calls == ["mixed"]
    ConeEngine(clf, images)  # a map: the same-pixel path is new
    ConeEngine(clf, torch.rand(1, 3, 28, 28))
    assert calls == ["mixed", "same-pixel"]
    with torch.no_grad():
        next(clf.parameters()).data.mul_(1.01)  # new weights: a new plan, checked again
    ConeEngine(clf, images)
    assert calls == ["mixed", "same-pixel", "mixed", "same-pixel"]
    cone_module._COMPILED.clear()
