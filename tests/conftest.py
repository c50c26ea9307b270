"""Shared fixtures. Tests that need ../shared/data are marked ``realdata`` and skip without it.

Which comparisons may be bit-exact
----------------------------------
The CPU picks its kernels per batch shape and per instruction set: oneDNN convolutions and
ATen's vectorised loops on AVX-512 and on AVX2 sum in other orders, so the same images in a
batch of 2 and of 6, or on two machines, differ in the last bits (about 1e-7). A test may
assert ``torch.equal`` / ``array_equal`` / equal hashes only where the design forces identity:

- the same computation repeated with the same shapes and seed (determinism, resume that
  replays the same batches, rows from a Ray worker that runs the same batches);
- the cone engine's clean pass, which runs one image at a time by design, so its scores do
  not depend on the batch an image is in;
- integer or boolean results and data that never goes through a kernel (loaders, codecs,
  random starts keyed by dataset index).

Across batch splits, subsets or devices compare with a tolerance (``assert_close``,
atol about 1e-5) and compare decisions (success flags) exactly only where the margin is wide.

Every test that compares bit for bit, or whose name says it checks batches, splits, resume,
seeds or exactness, is marked ``exactness`` here automatically; ``.ci/run`` runs that tier a
second time with AVX2 kernels forced (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``), so a
comparison that holds only on AVX-512 turns CI red on any machine, not only on an AMD EPYC.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("MEDROBUST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


#: bit-for-bit comparisons in a test's source put it in the ``exactness`` tier
EXACT_CALLS = ("torch.equal", "array_equal", "assert_array_equal", "md5", "sha256", "hexdigest")
#: so do names that say the test checks batch splits, resume, seeds or exactness
EXACT_NAMES = re.compile(r"batch|split|resum|exact|identical|bit_|determinis|reproduc|seed|kill"
                         r"|consisten|same_")


def _is_exactness_test(item: pytest.Item) -> bool:
    if EXACT_NAMES.search(getattr(item, "originalname", None) or item.name):
        return True
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        source = ""
    return any(call in source for call in EXACT_CALLS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_exactness_test(item):
            item.add_marker(pytest.mark.exactness)


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
            + (f" (forced by ATEN_CPU_CAPABILITY={forced})" if forced else ""))


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    """No progress bars in tests."""
    monkeypatch.setenv("MEDROBUST_QUIET", "1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic():
    """A small synthetic train/val/test triple (16x16) for fast training in tests."""
    from medrobust.data import load_dataset

    return tuple(load_dataset("synthetic", s, size=16, n=n, seed=3)
                 for s, n in (("train", 600), ("val", 200), ("test", 60)))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_synthetic):
    """A narrow smallcnn trained for a few epochs on ``tiny_synthetic`` (seconds on 2 cores)."""
    from medrobust.training import TrainConfig, train_classifier

    train, val, _ = tiny_synthetic
    result = train_classifier(train, val, TrainConfig(model="smallcnn", model_kwargs={"width": 8},
                                                      epochs=4, seed=0))
    return result.classifier


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_synthetic):
    """A narrow smallcnn trained for 2 epochs on ``tiny_synthetic``, saved as a checkpoint
    folder (campaign and executor tests load it the way workers do)."""
    from medrobust.training import TrainConfig, save_trained, train_classifier

    train, val, _ = tiny_synthetic
    config = TrainConfig(model="smallcnn", model_kwargs={"width": 8}, epochs=2, seed=0)
    result = train_classifier(train, val, config)
    return save_trained(result, config, train, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture
def bright_pixel_classifier():
    """A hand-made sigmoid 'detector': P(positive) rises with the brightest red value.

    Its behaviour is known exactly, so attack semantics can be checked without training: one
    bright red pixel makes a dark image positive, while an image with several bright pixels
    cannot be made negative by changing one pixel.
    """
    from torch import nn

    from medrobust.models import Classifier

    class BrightPixel(nn.Module):
        def forward(self, x):
            # x is normalised with mean 0, std 1, i.e. still in [0,1]
            return (x[:, :1].amax(dim=(1, 2, 3)) - 0.5).mul(20).unsqueeze(1)

    return Classifier(BrightPixel(), mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0],
                      class_names=("normal", "mitosis"), head="sigmoid")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny trainings: one thread avoids OpenMP hand-offs that dominate tiny tensors on a busy
    2-core machine (measured up to 30x faster)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for a whole module of tiny networks: ``pytestmark =
    pytest.mark.usefixtures("one_thread_module")``."""
    with _torch_threads(1):
        yield
