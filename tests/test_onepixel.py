"""OnePixel: the invariants users rely on, and that it fools a trained model."""

from __future__ import annotations

import numpy as np
import pytest

from medrobust.attacks import OnePixel
from medrobust.errors import ConfigError


def _changed(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    ys, xs = np.nonzero((a != b).any(axis=2))
    return {(int(x), int(y)) for x, y in zip(xs, ys, strict=True)}


@pytest.fixture(scope="module")
def attack_batch(tiny_synthetic):
    _, _, test = tiny_synthetic
    return test.images[:10], test.labels[:10]


@pytest.mark.parametrize("k", [1, 2])
def test_exactly_k_pixels_and_integral_colours(tiny_classifier, attack_batch, k):
    images, labels = attack_batch
    keep = images.copy()
    results = OnePixel(tiny_classifier, pixels=k, population=40, generations=8, seed=0)(
        images, labels).records
    assert np.array_equal(images, keep), "inputs must not be mutated"
    attacked = [r for r in results if r.status != "skipped"]
    assert attacked
    for img, r in zip(images, results, strict=True):
        if r.status == "skipped":
            continue
        assert len(r.pixels) == k and len(set(r.pixels)) == k
        for (x, y), colour in zip(r.pixels, r.colours, strict=True):
            assert 0 <= x < img.shape[1] and 0 <= y < img.shape[0]
            assert all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
            assert len(colour) == img.shape[2]
        adv = r.apply(img)
        changed = _changed(img, adv)
        assert changed <= set(r.pixels)
        if r.success:
            assert len(changed) == k
            # the stored final scores are what the model says about the adversarial image
            assert np.allclose(tiny_classifier.probabilities(adv)[0], r.final_scores, atol=1e-5)
            assert tiny_classifier.predict(adv)[0] != r.label
        assert r.queries <= 40 * 9


def test_same_seed_same_result_and_batch_consistency(tiny_classifier, attack_batch):
    images, labels = attack_batch
    attack = OnePixel(tiny_classifier, population=30, generations=5, seed=7)
    batch = attack(images, labels).records
    again = attack(images, labels).records
    assert [r.to_row() | {"seconds": 0} for r in batch] == [r.to_row() | {"seconds": 0} for r in again]
    for i in (0, 3, 7):
        alone = attack(images[i:i + 1], labels[i:i + 1]).records[0]
        a, b = alone.to_row(), batch[i].to_row()
        a.pop("seconds"), b.pop("seconds")
        assert a == b, f"image {i} differs alone vs in batch"
    other = OnePixel(tiny_classifier, population=30, generations=5, seed=8)(images, labels).records
    assert [r.pixels for r in other] != [r.pixels for r in batch]


def test_targeted_success_means_prediction_equals_target(tiny_classifier, tiny_synthetic):
    _, _, test = tiny_synthetic
    images, labels = test.images[:8], test.labels[:8]
    targets = 1 - labels
    results = OnePixel(tiny_classifier, population=40, generations=10, seed=1)(
        images, labels, targets=targets).records
    for img, r, t in zip(images, results, targets, strict=True):
        assert r.target == int(t)
        pred = int(tiny_classifier.predict(r.apply(img))[0])
        assert r.success == (pred == t) or r.status == "skipped"
    with pytest.raises(ConfigError):
        OnePixel(tiny_classifier)(images[:1], labels[:1], targets=labels[:1])


def test_sigmoid_direction_semantics(bright_pixel_classifier):
    clf = bright_pixel_classifier
    dark = np.full((2, 8, 8, 3), 20, dtype=np.uint8)  # P(positive) ~ 0
    bright = dark.copy()
    bright[:, 2:6, 2:6, 0] = 255  # many bright red pixels: one pixel cannot undo it
    attack = OnePixel(clf, population=30, generations=10, seed=0)
    up = attack(dark, [0, 0]).records
    assert all(r.success and r.direction == "normal->mitosis" for r in up)
    for r in up:
        assert r.final_scores[1] > 0.5 and r.colours[0][0] > 128  # a bright red pixel
    down = attack(bright, [1, 1]).records
    assert all(r.status == "failed" and r.direction == "mitosis->normal" for r in down)
    assert all(r.queries == 30 * 11 for r in down)
    # partial-success thresholds: pushing a negative above 0.1 is enough
    partial = OnePixel(clf, population=30, generations=10, threshold=(0.9, 0.1), seed=0)
    assert all(r.final_scores[1] > 0.1 for r in partial(dark, [0, 0]).records)
    # a forced direction disagrees with the label: the attack tries to raise a negative's score
    forced = OnePixel(clf, direction="neg2pos", population=30, generations=3, seed=0)
    assert forced(dark[:1], [1]).records[0].direction == "normal->mitosis"
    # already on the wrong side of the threshold: nothing to attack
    assert attack(bright[:1], [0]).records[0].status == "skipped"


def test_fools_a_trained_model(tiny_classifier, tiny_synthetic):
    _, _, test = tiny_synthetic
    results = OnePixel(tiny_classifier, population=100, generations=20, seed=0)(
        test.images[:16], test.labels[:16]).records
    attacked = [r for r in results if r.status != "skipped"]
    rate = sum(r.success for r in attacked) / len(attacked)
    assert rate >= 0.3, f"success rate {rate:.2f} below the floor"


def test_parameters_are_validated(tiny_classifier):
    for bad in ({"population": 2}, {"f": 0}, {"crossover": 1.5}, {"strategy": "x"},
                {"pixels": 0}, {"threshold": 2.0}, {"direction": "pos2neg"}):
        with pytest.raises(ConfigError):
            OnePixel(tiny_classifier, **bad)


def test_progress_moves_every_generation_and_adds_up_to_the_images(tiny_classifier, attack_batch):
    """A steady ETA: progress arrives per generation, an early finisher's ticks are taken back,
    and with the finished images counted as 1 each the bar ends at exactly the batch and never
    passes it."""
    images, labels = attack_batch
    events: list[float] = []  # progress ticks, and 1.0 for each finished image, in order
    OnePixel(tiny_classifier, population=20, generations=6, seed=0)(
        images, labels, on_progress=events.append, on_result=lambda pos, r: events.append(1.0))
    running = np.cumsum(events)
    assert running[-1] == pytest.approx(len(images))
    # the first generation tick is 1/(G+1) of an image for each image still being attacked
    first = next(i for i, e in enumerate(events) if e != 1.0)
    active = len(images) - first  # skipped images finished (1.0 each) before any tick
    assert events[first] == pytest.approx(active / 7)
    assert running.max() <= len(images) + 1e-9
    assert sum(0 < e < 1 for e in events) >= 6  # generation ticks, not only whole images
