"""Denoising defences: noise, filters, autoencoder, quality metrics, store-backed evaluation, BPDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from medrobust.campaigns.defence import evaluate_defence
from medrobust.data.base import ImageDataset
from medrobust.data.catalog import register_dataset
from medrobust.defences import (
    AutoencoderDenoiser,
    DefendedClassifier,
    Denoiser,
    DenoiserTrainConfig,
    ImpulseAutoencoder,
    Median,
    available_denoisers,
    bpda,
    channel_salt_pepper,
    make_denoiser,
    pixel_impulse,
    train_denoiser,
)
from medrobust.defences.source import attacked_set, find_onepixel_run
from medrobust.errors import ConfigError, MedrobustError
from medrobust.metrics.image_quality import PSNR_CAP, mse, psnr, quality, ssim
from medrobust.models import Classifier
from medrobust.store import Campaign, Store


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny convolutions run many times faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grey(n: int = 6, h: int = 20, w: int = 24, c: int = 3) -> np.ndarray:
    return np.full((n, h, w, c), 128, dtype=np.uint8)


# -- noise --------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("colours", ["random", "saltpepper", "extreme"])
def test_pixel_impulse_hits_density_and_replaces_whole_pixels(density, colours):
    images = _grey(n=40, h=32, w=32)
    before = images.copy()
    noisy, mask = pixel_impulse(images, density, colours=colours, seed=3, return_mask=True)
    np.testing.assert_array_equal(images, before)  # input untouched
    assert noisy.dtype == np.uint8 and noisy.shape == images.shape
    per_image = mask.reshape(40, -1).sum(1)
    want = density * 32 * 32
    assert np.all(np.abs(per_image - want) <= 1)  # stochastic rounding: within one pixel
    assert abs(per_image.mean() - want) <= max(0.25 * want, 0.5)
    changed = (noisy != images).any(-1)
    assert not (changed & ~mask).any()  # nothing outside the mask changes
    if colours != "random":  # 128 is never an extreme, so every channel of a hit changes
        assert np.all((noisy != images).all(-1) == mask)
        assert set(np.unique(noisy[mask])) <= {0, 255}
    if colours == "saltpepper":  # black or white: all channels equal
        hits = noisy[mask]
        assert np.all(hits == hits[:, :1])


def test_pixel_impulse_is_seeded_and_keeps_float():
    images = np.random.default_rng(0).random((4, 16, 16, 1))
    a = pixel_impulse(images, 0.05, seed=1)
    b = pixel_impulse(images, 0.05, seed=1)
    c = pixel_impulse(images, 0.05, seed=2)
    assert a.dtype == np.float64 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    single = pixel_impulse(images[0], 0.05, seed=1)
    assert single.shape == (16, 16, 1)


def test_channel_salt_pepper_flips_channels_independently():
    images = _grey(n=20, h=32, w=32)
    noisy = channel_salt_pepper(images, 0.05, seed=0)
    changed = noisy != images
    assert abs(changed.mean() - 0.05) < 0.01  # share of channel values
    assert set(np.unique(noisy[changed])) <= {0, 255}
    # channel-wise: far fewer whole pixels change than single channels
    assert changed.all(-1).mean() < 0.2 * changed.any(-1).mean()


def test_noise_rejects_bad_input():
    with pytest.raises(ConfigError):
        pixel_impulse(_grey(), 1.5)
    with pytest.raises(ConfigError):
        pixel_impulse(_grey(), 0.1, colours="purple")
    with pytest.raises(ConfigError):
        pixel_impulse(np.full((2, 8, 8, 1), 2.0), 0.1)  # float outside [0,1]
    with pytest.raises(ConfigError):
        channel_salt_pepper(np.zeros((8, 8)), 0.1)  # no channel axis


# -- denoisers keep shape, dtype and range ------------------------------------------------------

def _denoisers() -> list[str]:
    names = [n for n in available_denoisers() if n != "art-median"]
    try:
        import art  # noqa: F401

        names.append("art-median")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("name", _denoisers())
@pytest.mark.parametrize("shape", [(3, 15, 17, 1), (2, 16, 16, 3), (16, 16, 3)])
def test_filters_keep_shape_dtype_range(name, shape):
    rng = np.random.default_rng(1)
    d = make_denoiser(name)
    u8 = rng.integers(0, 256, shape, dtype=np.uint8)
    keep = u8.copy()
    out = d(u8)
    assert out.dtype == np.uint8 and out.shape == u8.shape
    np.testing.assert_array_equal(u8, keep)
    for dtype in (np.float32, np.float64):
        x = u8.astype(dtype) / 255.0
        y = d(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_autoencoder_keeps_shape_dtype_range_any_size():
    for c, h, w in [(1, 28, 28), (3, 64, 64), (3, 15, 17), (2, 9, 9)]:
        d = AutoencoderDenoiser(ImpulseAutoencoder(c, width=4))
        x = np.random.default_rng(0).integers(0, 256, (2, h, w, c), dtype=np.uint8)
        y = d(x)
        assert y.dtype == np.uint8 and y.shape == x.shape
        yf = d(x.astype(np.float32) / 255)
        assert yf.dtype == np.float32 and yf.min() >= 0 and yf.max() <= 1
    with pytest.raises(ConfigError):
        AutoencoderDenoiser(ImpulseAutoencoder(3, width=4))(np.zeros((1, 8, 8, 1), np.uint8))


def test_median_matches_scipy_and_art():
    x = np.random.default_rng(2).random((3, 12, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(Median(3)(x), median_filter(x, size=(1, 3, 3, 1), mode="reflect"))
    art = pytest.importorskip("art")
    del art
    np.testing.assert_allclose(make_denoiser("art-median")(x), Median(3)(x))


def test_art_median_without_art_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "art.defences.preprocessor", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install medrobust\[bench\]"):
        make_denoiser("art-median")


def test_unknown_denoiser_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown denoiser"):
        make_denoiser("gaussian-blur")
    with pytest.raises(ConfigError, match="not a trained denoiser"):
        make_denoiser(tmp_path)


# -- the autoencoder learns ---------------------------------------------------------------------

def test_autoencoder_lowers_mse_on_noisy_synthetic_images(tmp_path, tiny_synthetic):
    from medrobust.defences import load_autoencoder, save_denoiser

    train, val, test = tiny_synthetic
    config = DenoiserTrainConfig(width=8, epochs=8, batch_size=32, lr=5e-3, patch=None,
                                 max_train=400, val_images=64, pos_weight=5.0, seed=0)
    result = train_denoiser(train, val, config)
    save_denoiser(result.model, tmp_path / "dae", {"note": "test"})
    model, meta = load_autoencoder(tmp_path / "dae")
    assert model.channels == train.channels
    assert meta["kind"] == "denoiser"
    d = make_denoiser(tmp_path / "dae")
    noisy = pixel_impulse(test.images, 0.03, colours="random", seed=11)
    before = mse(test.images, noisy).mean()
    after = mse(test.images, d(noisy.astype(np.float32) / 255)).mean()
    assert after < 0.6 * before
    # clean images pass nearly unchanged (far less change than the noise it removes)
    assert mse(test.images, d(test.images.astype(np.float32) / 255)).mean() < 0.2 * before


# -- quality metrics ----------------------------------------------------------------------------

def test_psnr_ssim_agree_with_scikit_image():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:24, 0:20]
    ramp = ((xx + yy) * 5 % 256).astype(np.uint8)
    pairs = []
    grey = ramp[..., None]
    one = grey.copy()
    one[5, 7, 0] = 255 - one[5, 7, 0]  # a one-pixel change
    pairs.append((grey, one))
    rgb = np.stack([ramp, ramp[::-1], 255 - ramp], -1).astype(np.uint8)
    noisy = np.clip(rgb.astype(int) + rng.integers(-40, 41, rgb.shape), 0, 255).astype(np.uint8)
    pairs.append((rgb, noisy))
    pairs.append((rgb, pixel_impulse(rgb, 0.05, seed=2)))
    for clean, other in pairs:
        a, b = clean.astype(np.float64) / 255, other.astype(np.float64) / 255
        want_p = peak_signal_noise_ratio(a, b, data_range=1.0)
        # MONAI's SSIM uses the population covariance in each window
        want_s = structural_similarity(a, b, channel_axis=-1, data_range=1.0,
                                       use_sample_covariance=False)
        assert psnr(clean, other)[0] == pytest.approx(want_p, abs=1e-6)
        assert ssim(clean, other)[0] == pytest.approx(want_s, abs=2e-5)  # float32 in MONAI
        assert mse(clean, other)[0] == pytest.approx(np.mean((a - b) ** 2), rel=1e-6)
        # uint8 and float inputs give the same numbers
        assert psnr(a, b)[0] == pytest.approx(want_p, abs=1e-6)
    q = quality(rgb, rgb)
    assert q["psnr"][0] == PSNR_CAP and q["ssim"][0] == pytest.approx(1.0) and q["mse"][0] == 0
    with pytest.raises(ConfigError):
        psnr(rgb, rgb[:10])


# -- store-backed evaluation on a hand-made store -----------------------------------------------

HAND = "defence_handmade_test"


@register_dataset(HAND)
def _handmade(split: str, data_dir, **_: object) -> ImageDataset:
    """Six dark 8x8 images (normal) and one with a red pixel at (3, 3) (positive)."""
    images = np.zeros((7, 8, 8, 3), dtype=np.uint8)
    images[6, 3, 3] = (255, 0, 0)
    labels = np.array([0, 0, 0, 0, 0, 0, 1])
    return ImageDataset(images, labels, ("normal", "mitosis"), HAND, split, {"dataset": HAND})


class _ZeroAt33(Denoiser):
    """Blanks pixel (x=3, y=3): removes attacks there and nothing else (known by construction)."""

    name = "zero33"

    def _denoise(self, x: np.ndarray) -> np.ndarray:
        x[:, 3, 3, :] = 0.0
        return x


def _hand_store(path, bright_pixel_classifier) -> Store:
    store = Store(path)
    run_id, _ = store.start_run("attack onepixel", {"attack": {"population": 4}},
                                model={"dir": "/nowhere", "head": "sigmoid"},
                                dataset={"dataset": HAND, "split": "test"})
    camp = Campaign(store, __import__("medrobust.campaigns.onepixel",
                                      fromlist=["ONEPIXEL_TABLE"]).ONEPIXEL_TABLE, run_id)
    black = [0, 0, 0]
    rows = {  # index: (status, pixel, colour)
        0: ("success", (3, 3), [255, 0, 0]),  # fooled, pixel removed -> recovered
        1: ("success", (3, 3), [250, 10, 0]),  # fooled, recovered
        2: ("success", (7, 2), [255, 0, 0]),  # fooled, pixel elsewhere -> not recovered
        3: ("failed", (1, 1), [40, 0, 0]),  # attack failed: still correct
        4: ("skipped", None, None),  # already wrong before the attack: not attacked
        5: ("success", (2, 2), [100, 0, 0]),  # recorded success, but re-scored correct
    }
    for i, (status, pixel, colour) in rows.items():
        camp.record(i, {"dataset_index": i, "status": status, "label": 0,
                        "pixels": [pixel] if pixel else [], "colours": [colour] if colour else [],
                        "original_colours": [black] if pixel else []})
    store.finish_run(run_id, "completed")
    return store


def test_recovery_numbers_match_hand_made_store(tmp_path, bright_pixel_classifier):
    with _hand_store(tmp_path / "s.db", bright_pixel_classifier) as store:
        run = find_onepixel_run(store)
        attacked = attacked_set(store, run)
        assert attacked.indices.tolist() == [0, 1, 2, 3, 5]
        out = evaluate_defence(store, bright_pixel_classifier, _ZeroAt33(), attacked,
                               show_progress=False)
        s = out.summary
        assert (s["attacked"], s["fooled"], s["recovered"]) == (5, 3, 2)
        assert s["recovery_rate"] == pytest.approx(2 / 3)
        assert s["adversarial_accuracy_plain"] == pytest.approx(2 / 5)
        assert s["adversarial_accuracy_defended"] == pytest.approx(4 / 5)
        assert s["clean_images"] == 7
        assert s["clean_accuracy_plain"] == 1.0
        assert s["clean_accuracy_defended"] == pytest.approx(6 / 7)  # the positive one is lost
        assert s["clean_accuracy_cost"] == pytest.approx(1 / 7)
        # fooled images 0 and 2 change one pixel fully in one channel: MSE 1/192 on [0,1];
        # image 1: (250/255)^2 + (10/255)^2 over 192 values
        want = np.mean([1 / 192, ((250 / 255) ** 2 + (10 / 255) ** 2) / 192, 1 / 192])
        assert s["quality_attacked"]["mse"] == pytest.approx(want)
        # resuming recomputes nothing and gives the same numbers
        again = evaluate_defence(store, bright_pixel_classifier, _ZeroAt33(), attacked,
                                 show_progress=False)
        assert again.resumed and again.computed_now == 0 and again.summary == s


def test_changed_dataset_is_refused(tmp_path, bright_pixel_classifier):
    with _hand_store(tmp_path / "s.db", bright_pixel_classifier) as store:
        run = find_onepixel_run(store)
        store.put("onepixel_results", run["id"], 0,
                  {"dataset_index": 0, "status": "success", "label": 0, "pixels": [(3, 3)],
                   "colours": [[255, 0, 0]], "original_colours": [[9, 9, 9]]})
        with pytest.raises(MedrobustError, match="changed since the attack"):
            attacked_set(store, run)


# -- the composed model and its gradients -------------------------------------------------------

def _toy_classifier(channels: int = 3) -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    return Classifier(net, mean=[0.5] * channels, std=[0.25] * channels, class_names=("a", "b"))


def test_composed_model_matches_denoise_then_classify():
    clf = _toy_classifier()
    x = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    for d in (Median(3), AutoencoderDenoiser(ImpulseAutoencoder(3, width=4))):
        defended = DefendedClassifier(clf, d)
        want = clf.probabilities(d(x.astype(np.float32) / 255))
        np.testing.assert_allclose(defended.probabilities(x), want, atol=1e-5)
    with pytest.raises(ConfigError):
        DefendedClassifier(_toy_classifier(1), AutoencoderDenoiser(ImpulseAutoencoder(3, width=4)))


def test_gradient_flows_through_autoencoder_and_bpda():
    clf = _toy_classifier()
    x = torch.rand(3, 3, 12, 12)
    y = torch.tensor([0, 1, 0])
    ae = AutoencoderDenoiser(ImpulseAutoencoder(3, width=4))
    xa = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(DefendedClassifier(clf, ae)(xa), y).backward()
    assert xa.grad is not None and xa.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.model.parameters())
    # BPDA: the gradient is the classifier's gradient at the filtered image (identity backward)
    xm = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(DefendedClassifier(clf, Median(3))(xm), y).backward()
    z = torch.from_numpy(Median(3)(x.permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)
    z = z.clone().requires_grad_(True)
    nn.functional.cross_entropy(clf(z), y).backward()
    torch.testing.assert_close(xm.grad, z.grad)
    w = torch.rand(2, 1, 5, 5, requires_grad=True)
    bpda(w, lambda a: a * 0 + 0.5).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))


def test_pgd_attacks_the_composed_model():
    from medrobust.attacks.pgd import PGD

    clf = _toy_classifier()
    x = torch.rand(4, 3, 12, 12)
    y = torch.tensor([0, 1, 0, 1])
    for d in (Median(3), AutoencoderDenoiser(ImpulseAutoencoder(3, width=4))):
        model = DefendedClassifier(clf, d)
        adv = PGD(model, norm="linf", eps=8 / 255, steps=3, seed=0)(x, y).adversarial
        assert adv.shape == x.shape and float((adv - x).abs().max()) <= 8 / 255 + 1e-6
        assert float((adv - x).abs().max()) > 0  # the gradient moved the images
